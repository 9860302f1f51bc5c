//! The admin port: `/healthz` (the process is up; the routers' reachability in the body),
//! `/readyz` (NATS is connected and the node is not draining) and `/metrics` (Prometheus).

use chat_proto::admin::Reply;

use crate::Gateway;
use crate::metrics::Snapshot;

/// Serves the admin port until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) {
    chat_proto::admin::serve(listener, shutdown, move |path| answer(&gateway, path)).await;
}

fn answer(gateway: &Gateway, path: &str) -> Reply {
    match path {
        "/healthz" => Reply::text("200 OK", health(gateway)),
        "/readyz" => Reply::readiness(gateway.not_ready_reason()),
        "/metrics" => metrics(gateway),
        _ => Reply::not_found(),
    }
}

/// The process is up; what it misses is said, not failed: without a router the node still
/// serves chat (presence and the session limit wait for it).
fn health(gateway: &Gateway) -> String {
    let Some(router) = &gateway.shared.router else {
        return "ok\nrouter: none configured\n".to_owned();
    };
    let unreachable = router.unreachable();
    if unreachable.is_empty() {
        "ok\nrouter: attached\n".to_owned()
    } else {
        format!(
            "ok\nrouter: {} of {} unreachable (presence and the session limit degraded)\n",
            unreachable.len(),
            router.routers().len()
        )
    }
}

fn metrics(gateway: &Gateway) -> Reply {
    let shared = &gateway.shared;
    shared.metrics.encode(Snapshot {
        connections: shared.num_connections(),
        max_connections: shared.max_connections,
        subscriptions: shared.hub.num_subscriptions(),
        rooms: shared.hub.num_rooms(),
        outbox_frames: shared.hub.outbox_frames(),
        routers_unreachable: shared.router.as_ref().map_or(0, |r| r.unreachable().len()),
        ready: gateway.not_ready_reason().is_none(),
    })
}
