//! The chat gateway: the edge of the product.
//!
//! It terminates client WebSockets ([`session`]), checks tokens ([`auth`]) and origins, speaks
//! the client protocol v1, and holds no state that must survive it. Messages go durably through
//! the JetStream stream and live through core NATS ([`chat_proto::bus`]); the node subscribes to a
//! conversation once, whatever its number of local members, and fans out locally ([`hub`]). Reads
//! come from the persistence worker ([`worker`]) completed from the stream ([`history`]).
//! Membership look-ups are cached (moka), invalidated by bus events and flushed after a
//! reconnection. [`admin`] serves health, readiness and [`metrics`]. [`run`] starts it all, exactly
//! as `main` and the tests do; `testing` (feature `test-util`) starts a whole cluster for tests.

pub mod admin;
pub mod api;
pub mod api_keys;
mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod history;
pub mod hub;
pub mod limits;
pub mod metrics;
mod operations;
pub mod permissions;
pub mod presence;
mod publish;
pub mod request;
pub mod resume_token;
pub mod router;
pub mod session;
pub mod socket;
pub mod validation;
pub mod worker;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chat_proto::metrics::NatsMetrics;
use chat_proto::routing::Routers;
use chat_proto::subjects;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use audit::AuditLog;
pub use config::{Config, Settings};
use history::StreamReader;
use hub::{BusSignal, Hub, MembershipCache};
use limits::Limiter;
use metrics::Metrics;
use router::RouterLink;
use validation::ContentLimits;
use worker::WorkerClient;

/// Failures that stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// NATS could not be reached or refused.
    #[error("nats: {0}")]
    Nats(String),
    /// A router URL is not valid.
    #[error(transparent)]
    Router(#[from] chat_proto::routing::RoutingError),
    /// The NATS URLs are not valid.
    #[error(transparent)]
    Option(#[from] chat_proto::options::OptionError),
}

/// What every connection of the node shares.
pub struct Shared {
    /// The checked settings.
    pub settings: Settings,
    client: async_nats::Client,
    js: jetstream::Context,
    reader: StreamReader,
    worker: WorkerClient,
    hub: Hub,
    membership: MembershipCache,
    limits: ContentLimits,
    /// Messages sent, edited or deleted, by user.
    message_rates: Limiter<Arc<str>>,
    /// Connections, by client address.
    connect_rates: Limiter<IpAddr>,
    /// Failed authentications, by client address.
    failed_auths: Limiter<IpAddr>,
    /// The link to the routers, when there are any.
    router: Option<RouterLink>,
    audit: AuditLog,
    ws_config: WebSocketConfig,
    next_socket_id: AtomicU64,
    connections: Arc<Semaphore>,
    max_connections: usize,
    draining: AtomicBool,
    metrics: Metrics,
}

impl Shared {
    fn num_connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// The routers, or why presence cannot be answered.
    fn router(&self) -> Result<&RouterLink, error::RequestError> {
        self.router.as_ref().ok_or_else(|| {
            error::RequestError::unavailable_because(
                "presence is not tracked by this deployment (no router)",
            )
        })
    }
}

/// Files kept for everything but client connections (NATS, the admin port, logs).
const RESERVED_FILES: u64 = 1_024;

/// Raises the soft open-files limit to the hard one and says how many connections fit.
fn connection_limit(configured: Option<usize>) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot raise the open-files limit");
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1_024, |(soft, _)| soft)
    });
    let fit = usize::try_from(files.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
    let limit = configured.unwrap_or(fit);
    if limit > fit {
        tracing::warn!(
            limit,
            files,
            "more connections allowed than open files: raise the hard limit (ulimit -Hn)"
        );
    }
    tracing::info!(
        open_files = files,
        max_connections = limit,
        "connection limit"
    );
    limit
}

/// A handle on the node; a cheap `Clone`.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Why the node should not get traffic now, if it should not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.shared.draining.load(Ordering::Relaxed) {
            return Some("draining");
        }
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Some("nats disconnected");
        }
        None
    }
}

/// Bytes of frames gathered before they are written even without a flush.
const WRITE_BUFFER: usize = 16 * 1024;

fn ws_config(config: &Config) -> WebSocketConfig {
    // Small buffers: tungstenite allocates its read buffer per connection up front and
    // zero-fills it on reads. Client frames are mostly under 512 bytes (a larger one takes a few
    // more reads); 512 instead of 4,096 bytes brought an idle socket from 11 to 8 KiB. The
    // writer sends what is queued as one batch: frames gather in the write buffer and go out in
    // one write at the flush, so a busy socket costs one syscall per batch, not per frame (the
    // buffer keeps the capacity of the largest batch; an idle socket's is one small frame).
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + config.max_transport_bytes * 2)
        .max_message_size(Some(config.max_transport_bytes))
        .max_frame_size(Some(config.max_transport_bytes))
}

/// A started node: the gateway's handle, and the background tasks it stops.
pub(crate) struct Node {
    gateway: Gateway,
    client: async_nats::Client,
    hub: Hub,
    router: Option<RouterLink>,
    relay: tokio::task::JoinHandle<()>,
    audit: tokio::task::JoinHandle<()>,
    /// Ends the presence relay and the audit log's publisher.
    relay_token: CancellationToken,
}

impl Node {
    /// Connects to NATS and the routers and starts the node's fan-out and presence relay.
    pub(crate) async fn start(settings: Settings) -> Result<Self, GatewayError> {
        let config = settings.config.clone();
        let max_connections = connection_limit(config.max_connections);
        let (signals_tx, signals) = mpsc::channel(64);
        let nats_metrics = NatsMetrics::default();
        let events = nats_metrics.clone();
        // The service's options, with a callback (in place of theirs) that also tells the hub of
        // losses.
        let client = chat_proto::service::nats_options(
            format!("chat-gateway {}", settings.node_id),
            nats_metrics.clone(),
        )
        .request_timeout(Some(config.request_timeout))
        .event_callback(move |event| {
            let signals = signals_tx.clone();
            events.observe(&event);
            async move {
                let signal = match event {
                    async_nats::Event::Connected => Some(BusSignal::Connected),
                    async_nats::Event::Disconnected => Some(BusSignal::Disconnected),
                    async_nats::Event::SlowConsumer(_) => Some(BusSignal::SlowConsumer),
                    _ => None,
                };
                tracing::info!(%event, "nats");
                if let Some(signal) = signal {
                    // A full queue already holds a signal that triggers the same fill.
                    let _ = signals.try_send(signal);
                }
            }
        })
        .connect(chat_proto::options::nats_servers(&config.nats_url)?)
        .await
        .map_err(|e| GatewayError::Nats(e.to_string()))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let stream = js
            .get_stream_no_info(subjects::STREAM)
            .await
            .map_err(|e| GatewayError::Nats(e.to_string()))?;
        let reader = StreamReader::new(stream);
        let worker = WorkerClient::new(client.clone(), config.request_timeout);
        let membership: MembershipCache = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.cache_ttl)
            .build();
        let router = if config.router_urls.is_empty() {
            tracing::warn!(
                "no router: presence is not tracked and the session limit is not enforced"
            );
            None
        } else {
            let routers = Routers::new(&config.router_urls, config.router_timeout)?;
            Some(RouterLink::new(
                routers,
                settings.node_id.clone(),
                config.router_timeout,
            ))
        };
        let hub = Hub::new(
            Arc::new(hub::bus::NatsBus::new(client.clone(), reader.clone())),
            Arc::new(worker.clone()),
            membership.clone(),
            router.clone(),
            CancellationToken::new(),
            config.max_rooms_per_socket,
        );
        hub.start(&settings.node_id, signals)
            .await
            .map_err(|e| GatewayError::Nats(e.to_string()))?;
        if let Some(router) = &router {
            let local = hub.clone();
            router.start(Arc::new(move |socket| local.rooms_of(socket)));
        }
        let presence_changes = client
            .subscribe(subjects::PRESENCE)
            .await
            .map_err(|e| GatewayError::Nats(e.to_string()))?;
        let relay_token = CancellationToken::new();
        let relay = tokio::spawn(presence::relay(
            hub.clone(),
            presence_changes,
            relay_token.clone(),
        ));
        let metrics = Metrics::new(hub.stats(), nats_metrics);
        let (audit, audit_task) = AuditLog::start(
            client.clone(),
            settings.node_id.clone(),
            metrics.audit_dropped.clone(),
            relay_token.clone(),
        );
        let gateway = Gateway {
            shared: Arc::new(Shared {
                metrics,
                limits: ContentLimits {
                    max_content_chars: config.max_content_chars,
                    max_attachments: config.max_attachments,
                    max_metadata_bytes: config.max_metadata_bytes,
                    max_metadata_depth: config.max_metadata_depth,
                },
                ws_config: ws_config(&config),
                message_rates: Limiter::new(),
                connect_rates: Limiter::new(),
                failed_auths: Limiter::new(),
                connections: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                settings,
                client: client.clone(),
                js,
                reader,
                worker,
                hub: hub.clone(),
                membership,
                router: router.clone(),
                audit,
                next_socket_id: AtomicU64::new(1),
                draining: AtomicBool::new(false),
            }),
        };
        Ok(Self {
            gateway,
            client,
            hub,
            router,
            relay,
            audit: audit_task,
            relay_token,
        })
    }

    /// Stops the node's background tasks, once its connections are gone.
    pub(crate) async fn stop(self) {
        self.relay_token.cancel();
        let _ = self.relay.await;
        let _ = self.audit.await;
        if let Some(router) = &self.router {
            router.stop().await;
        }
        self.hub.stop().await;
        chat_proto::service::final_flush(&self.client).await;
    }
}

/// The listeners of a gateway, bound by the caller.
pub struct Listeners {
    /// Client WebSockets (`--listen`).
    pub ws: TcpListener,
    /// Health, readiness and metrics (`--admin-listen`).
    pub admin: TcpListener,
    /// The server API (`--api-listen`), when it is on.
    pub api: Option<TcpListener>,
}

/// Runs a gateway on its listeners until `shutdown` resolves; then tells every client to
/// reconnect elsewhere and waits for them within the grace period.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let Listeners {
        ws: listener,
        admin,
        api,
    } = listeners;
    let config = settings.config.clone();
    let api_keys = settings.api_keys.clone();
    let node = Node::start(settings).await?;
    let gateway = node.gateway.clone();
    let admin_token = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin,
        gateway.clone(),
        admin_token.clone().cancelled_owned(),
    ));
    let api_task = match (api, api_keys) {
        (Some(listener), Some(keys)) => Some(tokio::spawn(api::serve(
            listener,
            gateway.clone(),
            keys,
            admin_token.clone(),
        ))),
        _ => None,
    };
    let sessions = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracing::info!(
        node_id = %gateway.shared.settings.node_id,
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "gateway ready"
    );
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let permit = Arc::clone(&gateway.shared.connections)
                    .try_acquire_owned()
                    .ok();
                tracker.spawn(session::serve(
                    gateway.clone(),
                    stream,
                    peer,
                    permit,
                    // A clone, not a child token: a child per socket costs a node in the token's
                    // tree (112 bytes) and a lock at every connect and close.
                    sessions.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    tracing::info!("draining");
    gateway.shared.draining.store(true, Ordering::Relaxed);
    drop(listener);
    sessions.cancel();
    tracker.close();
    if tokio::time::timeout(config.drain_time + config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "connections still open after the grace period");
    }
    admin_token.cancel();
    let _ = admin_task.await;
    if let Some(api_task) = api_task {
        // Requests under way are answered, within the grace period.
        let _ = tokio::time::timeout(config.shutdown_grace, api_task).await;
    }
    node.stop().await;
    Ok(())
}

#[cfg(feature = "test-util")]
pub mod testing;
