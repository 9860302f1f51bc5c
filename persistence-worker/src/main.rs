//! `chat-persistence-worker`: see the library for what it does.

use std::process::ExitCode;

use anyhow::Context as _;
use chat_persistence_worker::store::sqlite::SqliteStore;
use chat_persistence_worker::{Command, StoreKind};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match chat_persistence_worker::Config::try_parse() {
        Ok(config) => config,
        Err(error) => return chat_proto::service::exit_for_parse_error(&error),
    };
    if let Err(error) = config.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(chat_proto::service::EX_USAGE);
    }
    let (json, trace) = (config.log_json, config.trace.clone());
    chat_proto::service::run_main("chat-persistence-worker", None, json, &trace, run(config)).await
}

async fn run(config: chat_persistence_worker::Config) -> anyhow::Result<()> {
    match &config.command {
        Some(Command::Migrate) => {
            anyhow::ensure!(
                config.store == StoreKind::Scylla,
                "migrate applies the CQL store's migrations: give --store scylla (the SQLite \
                 store migrates itself when it opens)"
            );
            chat_persistence_worker::cql_store(&config, true)
                .await
                .context("failed to migrate the CQL store")?;
            tracing::info!(keyspace = %config.scylla_keyspace, "migrated");
            return Ok(());
        }
        Some(Command::ImportSqlite { from }) => {
            anyhow::ensure!(
                config.store == StoreKind::Scylla,
                "import-sqlite copies into the CQL store: give --store scylla and its options"
            );
            anyhow::ensure!(from.is_file(), "no SQLite store at {}", from.display());
            let source = SqliteStore::open(from)
                .with_context(|| format!("failed to open {}", from.display()))?;
            let target = chat_persistence_worker::cql_store(&config, true)
                .await
                .context("failed to reach the CQL store")?;
            let copied = chat_persistence_worker::import::sqlite_into(&source, &target)
                .await
                .context("the import stopped (run it again to resume)")?;
            tracing::info!(?copied, keyspace = %config.scylla_keyspace, "imported");
            return Ok(());
        }
        None => {}
    }
    chat_persistence_worker::run(config, chat_proto::service::shutdown_signal())
        .await
        .context("the worker stopped")
}
