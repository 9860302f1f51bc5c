//! The persistence worker: the only database client.
//!
//! It owns the stream's configuration ([`stream`]), consumes the stream into the store in
//! batches ([`consumer`]), and answers the reads and membership changes that need the store over
//! NATS request-reply ([`rpc`]). [`store`] is the storage interface with the embedded SQLite
//! implementation. [`run`] starts all of it, exactly as `main` and the tests do; `main` first
//! checks the options ([`Config::validate`]).

mod admin;
pub mod audit;
pub mod config;
pub mod consumer;
pub mod import;
pub mod metrics;
mod password;
pub mod rpc;
pub mod store;
pub mod stream;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::future::Future;

use async_nats::jetstream;
use chat_proto::routing::Routers;
use tokio_util::sync::CancellationToken;

pub use config::{Command, Config, StoreKind};
use metrics::Metrics;
use store::cql::{CqlStore, migrations};
use store::{Store, StoreError, sqlite::SqliteStore};

/// Failures that stop the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS refused or failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stream could not be created or brought to its settings.
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// A router URL is not valid.
    #[error(transparent)]
    Router(#[from] chat_proto::routing::RoutingError),
    /// The admin port could not be bound.
    #[error("cannot listen on {0} (--admin-listen): {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
    /// A task of the worker panicked.
    #[error("worker task failed: {0}")]
    Task(String),
    /// Another worker pulls from the consumer that this one would have to replace.
    #[error("refusing to start: {why} ({waiting} pull requests of another worker are waiting)")]
    ConsumerInUse {
        /// Pull requests waiting on the consumer.
        waiting: usize,
        /// Why the consumer cannot be shared.
        why: &'static str,
    },
    /// The stream is behind the store: a new stream would reuse message ids.
    #[error(
        "refusing the stream: its last sequence {last} is behind the store's committed sequence \
         {committed}, so it would reuse message ids the store already has (restore the stream, or \
         start with a new store)"
    )]
    StreamBehindStore {
        /// The stream's last sequence.
        last: u64,
        /// The store's committed sequence.
        committed: u64,
    },
}

/// Connects to NATS (one URL or several, comma-separated) with the worker's options, its events
/// counted in `metrics`.
pub async fn connect(
    nats_url: &str,
    metrics: chat_proto::metrics::NatsMetrics,
) -> Result<async_nats::Client, WorkerError> {
    let servers = chat_proto::options::nats_servers(nats_url)
        .map_err(|e| WorkerError::Nats(e.to_string()))?;
    chat_proto::service::nats_options("chat-persistence-worker", metrics)
        .connect(servers)
        .await
        .map_err(|e| WorkerError::Nats(e.to_string()))
}

/// Runs the worker on the embedded store until `shutdown` resolves, then finishes the batch and
/// the requests under way.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let routers = if config.router_urls.is_empty() {
        None
    } else {
        Some(Routers::new(&config.router_urls, config.router_timeout)?)
    };
    match config.store {
        StoreKind::Sqlite => {
            let store = SqliteStore::open(&config.db_path)?;
            tracing::info!(db = %config.db_path.display(), "store: SQLite");
            serve(config, routers, store, shutdown).await
        }
        StoreKind::Scylla => {
            let store = cql_store(&config, config.migrate).await?;
            tracing::info!(nodes = ?config.scylla_nodes, keyspace = %config.scylla_keyspace, "store: CQL");
            serve(config, routers, store, shutdown).await
        }
    }
}

/// Connects to the CQL store, applying the migrations first when `migrate`.
pub async fn cql_store(config: &Config, migrate: bool) -> Result<CqlStore, WorkerError> {
    let mut builder = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&config.scylla_nodes)
        .connection_timeout(std::time::Duration::from_secs(5));
    if let (Some(user), Some(password)) = (&config.scylla_user, &config.scylla_password) {
        builder = builder.user(user, password);
    }
    if let Some(ca) = &config.scylla_tls_ca {
        builder = builder.tls_context(Some(store::cql::tls::client_config(ca)?));
    }
    let session = builder.build().await.map_err(StoreError::database)?;
    let keyspace = &config.scylla_keyspace;
    if migrate {
        migrations::apply(&session, keyspace, &config.scylla_replication).await?;
    } else {
        session
            .use_keyspace(keyspace, false)
            .await
            .map_err(StoreError::database)?;
    }
    Ok(CqlStore::new(session, config.scylla_consistency.into()).await?)
}

/// Consumes the stream into `store` and answers requests from it until `shutdown`.
async fn serve<S: Store + Clone>(
    config: Config,
    routers: Option<Routers>,
    store: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|error| WorkerError::Admin(config.admin_listen, error))?;
    let metrics = Metrics::default();
    let client = connect(&config.nats_url, metrics.nats.clone()).await?;
    let js = jetstream::new(client.clone());
    let mut stream = stream::ensure(&js, &config.stream()).await?;
    consumer::check_stream_position(&mut stream, &store).await?;
    let audit_stream = stream::ensure_audit(&js, &config.stream()).await?;

    let token = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin,
        client.clone(),
        metrics.clone(),
        token.child_token().cancelled_owned(),
    ));
    let lag_task = tokio::spawn(metrics::watch_lag(
        stream.clone(),
        store.clone(),
        metrics.clone(),
        token.child_token(),
    ));
    let settings = consumer::Settings {
        batch_size: usize::from(config.batch_size),
        batch_wait: config.batch_wait,
        ack_wait: config.ack_wait,
    };
    let mut consuming = tokio::spawn(consumer::run(
        stream,
        store.clone(),
        settings,
        metrics.clone(),
        token.child_token(),
    ));
    let mut auditing = tokio::spawn(audit::run(
        audit_stream,
        store.clone(),
        config.audit_retention,
        metrics.clone(),
        token.child_token(),
    ));
    let handlers = rpc::Handlers::new(client.clone(), routers, store, metrics.clone());
    let serving = tokio::spawn(handlers.serve(config.max_concurrent_requests, token.child_token()));
    tracing::info!("worker ready");

    let consumed = tokio::select! {
        () = shutdown => {
            token.cancel();
            (&mut consuming).await
        }
        consumed = &mut consuming => {
            token.cancel();
            consumed
        }
        // The audit writer stops only with the worker: if it ends, so does the worker.
        audited = &mut auditing => {
            token.cancel();
            let _ = (&mut consuming).await;
            audited
        }
    };
    if let Ok(Err(error)) = serving.await {
        tracing::warn!(%error, "request handling ended with an error");
    }
    if !auditing.is_finished() {
        // Cancelled with the others: it ends within its batch.
        let _ = auditing.await;
    }
    chat_proto::service::final_flush(&client).await;
    let _ = admin_task.await;
    let _ = lag_task.await;
    consumed.map_err(|e| WorkerError::Task(e.to_string()))?
}
