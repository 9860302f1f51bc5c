//! The routing broker: which user has which sessions on which gateway node, with what presence
//! status.
//!
//! Gateways attach one stream per node ([`service`]): they register their live sessions, ask for
//! the admission of each new one (the per-user session limit), report closes and status changes,
//! and hold a lease by heartbeat. The state ([`placement`]) is soft and in memory: after a restart
//! the gateways re-register on reconnect, and presence changes wait for a grace of one lease
//! meanwhile, so nobody sees a false `user:offline`. A node whose lease lapses (crash, partition)
//! loses its sessions, and its users go offline unless they have a session elsewhere. Presence
//! changes are gathered over a short window and published on NATS ([`chat_proto::subjects::PRESENCE`]);
//! the gateways tell their local users who share a conversation with the user.
//!
//! Several routers can share the users by hash of user id: each gateway attaches to all of them
//! and sends each user's updates and lookups to its owner (`chat_proto::routing`).
//!
//! [`config`] holds the options, checked by [`Config::validate`] before anything is bound or
//! connected.

pub mod config;
pub mod metrics;
pub mod placement;
pub mod service;

use std::future::Future;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use service::Router;

/// Failures that stop the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// NATS could not be reached.
    #[error("nats: {0}")]
    Nats(String),
    /// The gRPC server failed.
    #[error("grpc: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The admin port could not be bound.
    #[error("cannot listen on {0} (--admin-listen): {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
}

/// Runs the router on `listener` (and its admin port on `--admin-listen`) until `shutdown`
/// resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|error| RouterError::Admin(config.admin_listen, error))?;
    // The grace after the start is a lease: every live node re-registers within it.
    let router = Router::new(
        config.lease,
        config.lease,
        config.max_sessions_per_user as usize,
        config.offline_delay,
    );
    let client = chat_proto::service::nats_options("chat-router", router.nats_metrics())
        .connect(
            chat_proto::options::nats_servers(&config.nats_url)
                .map_err(|e| RouterError::Nats(e.to_string()))?,
        )
        .await
        .map_err(|e| RouterError::Nats(e.to_string()))?;
    let memberships = client
        .subscribe(chat_proto::subjects::MEMBERS_CHANGED)
        .await
        .map_err(|e| RouterError::Nats(e.to_string()))?;
    let token = CancellationToken::new();
    let follower = tokio::spawn(
        router
            .clone()
            .follow_memberships(memberships, token.clone()),
    );
    let admin_task = tokio::spawn(serve_admin(
        admin,
        router.clone(),
        client.clone(),
        token.clone().cancelled_owned(),
    ));
    let publisher = tokio::spawn(router.clone().publish_changes(
        client.clone(),
        config.presence_window,
        token.clone(),
    ));
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        lease = ?config.lease,
        max_sessions_per_user = config.max_sessions_per_user,
        "router ready"
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(chat_proto::v1::router_server::RouterServer::new(router))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    token.cancel();
    let _ = publisher.await;
    let _ = follower.await;
    let _ = admin_task.await;
    chat_proto::service::final_flush(&client).await;
    served?;
    Ok(())
}

/// The admin port: `/healthz` (the process is up), `/readyz` (connected to NATS, where presence
/// changes go) and `/metrics` (Prometheus).
async fn serve_admin(
    listener: TcpListener,
    router: Router,
    client: async_nats::Client,
    shutdown: impl Future<Output = ()>,
) {
    use chat_proto::admin::Reply;
    let answer = move |path: &str| {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        match path {
            "/healthz" => Reply::text("200 OK", "ok\n"),
            "/readyz" => Reply::readiness((!connected).then_some("nats disconnected")),
            "/metrics" => router.metrics(),
            _ => Reply::not_found(),
        }
    };
    chat_proto::admin::serve(listener, shutdown, answer).await;
}
