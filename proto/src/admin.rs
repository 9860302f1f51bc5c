//! The admin port that every binary serves: `/healthz`, `/readyz` and `/metrics` (Prometheus),
//! answered by the binary's own function. A minimal HTTP/1.1 responder: one GET a connection,
//! the request read in at most 1 KiB, the whole exchange within 5 seconds.

use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one exchange may take.
const EXCHANGE: Duration = Duration::from_secs(5);

/// An answer of the admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status line's code and reason, `200 OK`.
    pub status: &'static str,
    /// The body's media type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// Plain text with `status`.
    pub fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// 200 or 503 with the reason the process is not ready.
    pub fn readiness(not_ready: Option<&str>) -> Self {
        match not_ready {
            None => Self::text("200 OK", "ready\n"),
            Some(reason) => Self::text("503 Service Unavailable", format!("not ready: {reason}\n")),
        }
    }

    /// The metrics of `registry`, in the OpenMetrics text format that Prometheus scrapes.
    pub fn metrics(registry: &Registry) -> Self {
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, registry) {
            Ok(()) => Self {
                status: "200 OK",
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            },
            Err(error) => Self::text(
                "500 Internal Server Error",
                format!("metrics could not be encoded: {error}\n"),
            ),
        }
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::text("404 Not Found", "not found\n")
    }
}

/// Serves `listener` until `shutdown` resolves, answering each request's path with `answer`.
pub async fn serve<F>(listener: TcpListener, shutdown: impl Future<Output = ()>, answer: F)
where
    F: Fn(&str) -> Reply + Clone + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(EXCHANGE, exchange(stream, answer)).await;
                });
            }
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn exchange(mut stream: TcpStream, answer: impl Fn(&str) -> Reply) -> std::io::Result<()> {
    let mut buffer = [0u8; 1024];
    let read = stream.read(&mut buffer).await?;
    let request = String::from_utf8_lossy(&buffer[..read]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let reply = answer(path);
    let head = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.shutdown().await
}
