//! `chat-gateway`: see the library for what it does.

use std::process::ExitCode;

use anyhow::Context as _;
use chat_gateway::config::{Cli, Command};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return chat_proto::service::exit_for_parse_error(&error),
    };
    if let Some(Command::DevToken { user, ttl, role }) = &cli.command {
        let Some(secret) = &cli.config.jwt_secret else {
            eprintln!("dev-token needs --jwt-secret (or CHAT_JWT_SECRET)");
            return ExitCode::from(chat_proto::service::EX_USAGE);
        };
        println!(
            "{}",
            chat_gateway::auth::mint_hs256(secret.as_bytes(), user, *ttl, role.as_deref())
        );
        return ExitCode::SUCCESS;
    }
    let settings = match cli.config.validate() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(chat_proto::service::EX_USAGE);
        }
    };
    let (node, json) = (settings.node_id.clone(), settings.config.log_json);
    let trace = settings.config.trace.clone();
    chat_proto::service::run_main("chat-gateway", Some(&node), json, &trace, serve(settings)).await
}

async fn serve(settings: chat_gateway::Settings) -> anyhow::Result<()> {
    let config = &settings.config;
    let ws = bind(config.listen, "the WebSocket port").await?;
    let admin = bind(config.admin_listen, "the admin port").await?;
    let api = match config.api_listen {
        Some(address) => Some(bind(address, "the server API's port").await?),
        None => None,
    };
    tracing::info!(
        ws = %ws.local_addr()?,
        admin = %admin.local_addr()?,
        api = ?api.as_ref().map(|l| l.local_addr()).transpose()?,
        "listening"
    );
    let listeners = chat_gateway::Listeners { ws, admin, api };
    chat_gateway::run(settings, listeners, chat_proto::service::shutdown_signal())
        .await
        .context("the gateway stopped")
}

async fn bind(
    address: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to bind {what} {address}"))
}
