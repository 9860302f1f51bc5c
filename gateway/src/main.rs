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
    chat_proto::service::init_tracing(cli.config.log_json);
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
    chat_proto::service::exit_code(serve(settings).await)
}

async fn serve(settings: chat_gateway::Settings) -> anyhow::Result<()> {
    let listen = settings.config.listen;
    let admin_listen = settings.config.admin_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to bind {listen}"))?;
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("failed to bind the admin port {admin_listen}"))?;
    tracing::info!(ws = %listener.local_addr()?, admin = %admin.local_addr()?, "listening");
    chat_gateway::run(
        settings,
        listener,
        admin,
        chat_proto::service::shutdown_signal(),
    )
    .await
    .context("the gateway stopped")
}
