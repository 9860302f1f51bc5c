//! The admin port: `/healthz` (the process is up; the routers' reachability in the body), `/readyz` (NATS is connected and the node is
//! not draining) and `/metrics` (Prometheus text). A minimal HTTP/1.1 responder: one request per
//! connection, bounded in size and time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// Serves the admin port until `shutdown`.
pub async fn serve(listener: TcpListener, gateway: Gateway, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let gateway = gateway.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &gateway))
                        .await;
                });
            }
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, gateway: &Gateway) -> std::io::Result<()> {
    let mut buffer = [0u8; 1024];
    let read = stream.read(&mut buffer).await?;
    let request = String::from_utf8_lossy(&buffer[..read]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/healthz" => ("200 OK", health(gateway)),
        "/readyz" => match gateway.not_ready_reason() {
            None => ("200 OK", "ready\n".to_owned()),
            Some(reason) => ("503 Service Unavailable", format!("not ready: {reason}\n")),
        },
        "/metrics" => ("200 OK", metrics(gateway)),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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

fn metrics(gateway: &Gateway) -> String {
    let shared = &gateway.shared;
    let stats = shared.hub.stats();
    let gauges = [
        ("chat_gateway_connections", shared.num_connections() as u64),
        (
            "chat_gateway_subscriptions",
            shared.hub.num_subscriptions() as u64,
        ),
        ("chat_gateway_rooms", shared.hub.num_rooms() as u64),
        (
            "chat_gateway_routers_unreachable",
            shared
                .router
                .as_ref()
                .map_or(0, |r| r.unreachable().len() as u64),
        ),
        (
            "chat_gateway_foreign_events_total",
            stats.num_foreign_events.load(Ordering::Relaxed),
        ),
        (
            "chat_gateway_dropped_ephemeral_total",
            stats.pushes.num_dropped_ephemeral.load(Ordering::Relaxed),
        ),
        (
            "chat_gateway_evicted_slow_total",
            stats.pushes.num_evicted_slow.load(Ordering::Relaxed),
        ),
        (
            "chat_gateway_fills_total",
            stats.num_fills.load(Ordering::Relaxed),
        ),
        (
            "chat_gateway_filled_events_total",
            stats.num_filled.load(Ordering::Relaxed),
        ),
    ];
    gauges
        .iter()
        .map(|(name, value)| format!("{name} {value}\n"))
        .collect()
}
