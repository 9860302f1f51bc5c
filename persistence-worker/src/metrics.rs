//! The worker's metrics, `chat_worker_*` on its admin port's `/metrics`: what it stores, in what
//! batches and how fast, and how far the store is behind the stream (the lag, read every few
//! seconds by [`watch_lag`]).

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use chat_proto::metrics::{DURATION_BUCKETS, NatsMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the lag is read.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Batch sizes: one event (a quiet system) to the largest batch (`--batch-size` is at most
/// 1,000).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The worker's metrics; a cheap `Clone`.
#[derive(Debug, Clone)]
pub struct Metrics {
    events_stored: Counter,
    audit_records_stored: Counter,
    batch_size: Histogram,
    write_duration: Histogram,
    write_failures: Counter,
    lag: Gauge,
    stream_last_seq: Gauge,
    committed_seq: Gauge,
    requests: Counter,
    /// The NATS connection's events.
    pub nats: NatsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_stored: Counter::default(),
            audit_records_stored: Counter::default(),
            batch_size: Histogram::new(BATCH_BUCKETS),
            write_duration: Histogram::new(DURATION_BUCKETS),
            write_failures: Counter::default(),
            lag: Gauge::default(),
            stream_last_seq: Gauge::default(),
            committed_seq: Gauge::default(),
            requests: Counter::default(),
            nats: NatsMetrics::default(),
        }
    }
}

impl Metrics {
    /// A registry of these metrics, under `chat_worker_`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("chat_worker");
        registry.register(
            "events_stored",
            "Stream events written to the store",
            self.events_stored.clone(),
        );
        registry.register(
            "audit_records_stored",
            "Audit records written to the store",
            self.audit_records_stored.clone(),
        );
        registry.register(
            "batch_size",
            "Events in a batch written to the store",
            self.batch_size.clone(),
        );
        registry.register(
            "store_write_duration_seconds",
            "How long one write of a batch to the store took",
            self.write_duration.clone(),
        );
        registry.register(
            "store_write_failures",
            "Writes to the store that failed (and are retried)",
            self.write_failures.clone(),
        );
        registry.register(
            "lag_events",
            "Events in the stream that the store does not have yet (stream position minus stored position)",
            self.lag.clone(),
        );
        registry.register(
            "stream_last_sequence",
            "The stream's last sequence",
            self.stream_last_seq.clone(),
        );
        registry.register(
            "committed_sequence",
            "The store's committed stream position",
            self.committed_seq.clone(),
        );
        registry.register(
            "requests",
            "Requests answered (reads, membership changes)",
            self.requests.clone(),
        );
        self.nats.register(&mut registry);
        chat_proto::telemetry::span_counts().register(&mut registry);
        registry
    }

    /// Counts a batch of `events` written in `took`.
    pub fn batch_written(&self, events: usize, took: Duration) {
        self.events_stored.inc_by(events as u64);
        self.batch_size.observe(events as f64);
        self.write_duration.observe(took.as_secs_f64());
    }

    /// Counts a failed write.
    pub fn write_failed(&self) {
        self.write_failures.inc();
    }

    /// Counts audit records written.
    pub fn audit_written(&self, records: usize) {
        self.audit_records_stored.inc_by(records as u64);
    }

    /// Counts a request answered.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// The last lag read.
    pub fn lag(&self) -> i64 {
        self.lag.get()
    }
}

/// Reads the stream's last sequence and the store's committed position every few seconds until
/// `shutdown`: their difference is the lag. A store that does not answer keeps its last
/// position, so the lag grows while the stream does.
pub async fn watch_lag<S: Store>(
    stream: Stream,
    store: S,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(LAG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let last = match tokio::time::timeout(LAG_EVERY, stream.get_info()).await {
            Ok(Ok(info)) => info.state.last_sequence,
            _ => continue,
        };
        if let Ok(Ok(committed)) = tokio::time::timeout(LAG_EVERY, store.committed_seq()).await {
            metrics.committed_seq.set(gauge(committed));
        }
        metrics.stream_last_seq.set(gauge(last));
        let committed = metrics.committed_seq.get();
        metrics.lag.set((gauge(last) - committed).max(0));
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
