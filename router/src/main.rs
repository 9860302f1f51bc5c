//! `chat-router`: see the library for what it does.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match chat_router::Config::try_parse() {
        Ok(config) => config,
        Err(error) => return chat_proto::service::exit_for_parse_error(&error),
    };
    if let Err(error) = config.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(chat_proto::service::EX_USAGE);
    }
    let (json, trace) = (config.log_json, config.trace.clone());
    chat_proto::service::run_main("chat-router", None, json, &trace, run(config)).await
}

async fn run(config: chat_router::Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    chat_router::run(config, listener, chat_proto::service::shutdown_signal())
        .await
        .context("the router stopped")
}
