//! The worker's admin port (`--admin-listen`): `/healthz` (the process is up, with its lag),
//! `/readyz` (connected to NATS) and `/metrics` (Prometheus).

use chat_proto::admin::Reply;
use prometheus_client::registry::Registry;

use crate::metrics::Metrics;

/// Serves the admin port until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    client: async_nats::Client,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let registry = std::sync::Arc::new(metrics.registry());
    let answer = move |path: &str| answer(path, &client, &metrics, &registry);
    chat_proto::admin::serve(listener, shutdown, answer).await;
}

fn answer(
    path: &str,
    client: &async_nats::Client,
    metrics: &Metrics,
    registry: &Registry,
) -> Reply {
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    match path {
        "/healthz" => Reply::text(
            "200 OK",
            format!(
                "ok\nnats: {}\nlag: {} events\n",
                if connected {
                    "connected"
                } else {
                    "disconnected"
                },
                metrics.lag()
            ),
        ),
        "/readyz" => Reply::readiness((!connected).then_some("nats disconnected")),
        "/metrics" => Reply::metrics(registry),
        _ => Reply::not_found(),
    }
}
