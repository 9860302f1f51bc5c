//! What every binary of the product starts with: logging, the shutdown signal, and exit codes.

use std::process::ExitCode;
use std::time::Duration;

/// The exit code for bad options (`EX_USAGE` of `sysexits.h`): a command line that does not
/// parse, or a value its binary's `validate` refuses.
pub const EX_USAGE: u8 = 64;

/// The exit code for a command line that did not parse: [`EX_USAGE`] after the error, or 0
/// after `--help` and `--version`.
pub fn exit_for_parse_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if error.use_stderr() {
        ExitCode::from(EX_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs a binary's `work` with its logs and traces (see [`crate::telemetry::init`]) and returns
/// its exit code; the traces are flushed at the end.
pub async fn run_main(
    service: &'static str,
    instance: Option<&str>,
    json: bool,
    trace: &crate::telemetry::TraceOptions,
    work: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let telemetry = match crate::telemetry::init(service, instance, json, trace) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = work.await;
    telemetry.shutdown().await;
    exit_code(result)
}

/// The exit code of a finished run; a failure is logged with its causes.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// The NATS options every service starts from: its connection name, retries from the first
/// attempt (NATS may start after it), a bounded connect, and every connection event logged and
/// counted in `metrics`.
///
/// It also chooses the process's TLS crypto provider (rustls's default, aws-lc-rs), once: the
/// workspace compiles in two (the CQL store's and NATS's), and with two rustls picks none by
/// itself, so a `tls://` NATS URL would fail.
pub fn nats_options(
    name: impl std::fmt::Display,
    metrics: crate::metrics::NatsMetrics,
) -> async_nats::ConnectOptions {
    // An error means a provider is installed already: that one stays.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            metrics.observe(&event);
            async move { tracing::info!(%event, "nats") }
        })
}

/// Waits between retries that double after each failure, up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits from `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max,
        }
    }

    /// The wait the next [`Backoff::wait`] takes.
    pub fn next(&self) -> Duration {
        self.next
    }

    /// Sleeps for the next wait, then doubles it; false when `cancelled` resolved first.
    pub async fn wait(&mut self, cancelled: impl Future<Output = ()>) -> bool {
        let slept = tokio::select! {
            () = cancelled => false,
            () = tokio::time::sleep(self.next) => true,
        };
        self.next = (self.next * 2).min(self.max);
        slept
    }

    /// Starts again from the first wait (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// How long a stopping service waits for NATS to take what it still has to send.
pub const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Flushes what `client` still holds, within [`FINAL_FLUSH`]: NATS may be down when the service
/// stops, and a flush waits for it to come back.
pub async fn final_flush(client: &async_nats::Client) {
    if tokio::time::timeout(FINAL_FLUSH, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS did not take the last publishes in time; stopping without them");
    }
}
