//! What the binaries' metrics share: the buckets of their duration histograms, and the counts of
//! their NATS connection's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Buckets for durations of this workload, in seconds: from 100 µs (a publish to a local NATS, a
/// small fan-out) to 5 s (a timeout), about three a decade.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Counts of a NATS connection's events; a cheap `Clone`.
#[derive(Debug, Clone, Default)]
pub struct NatsMetrics {
    reconnects: Counter,
    slow_consumers: Counter,
    connected_once: Arc<AtomicBool>,
}

impl NatsMetrics {
    /// Registers the counts in `registry` (`nats_reconnects_total`, `nats_slow_consumers_total`
    /// under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "nats_reconnects",
            "Connections to NATS made again after one was lost",
            self.reconnects.clone(),
        );
        registry.register(
            "nats_slow_consumers",
            "Times NATS dropped messages of a subscription whose buffer was full",
            self.slow_consumers.clone(),
        );
    }

    /// Counts `event`.
    pub fn observe(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected if self.connected_once.swap(true, Ordering::Relaxed) => {
                self.reconnects.inc();
            }
            async_nats::Event::SlowConsumer(_) => {
                self.slow_consumers.inc();
            }
            _ => {}
        }
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_connection_is_not_a_reconnection() {
        let metrics = NatsMetrics::default();
        metrics.observe(&async_nats::Event::Connected);
        assert_eq!(metrics.reconnects(), 0);
        metrics.observe(&async_nats::Event::Disconnected);
        metrics.observe(&async_nats::Event::Connected);
        assert_eq!(metrics.reconnects(), 1);
    }

    #[test]
    fn counts_are_encoded_with_the_binarys_prefix() {
        let metrics = NatsMetrics::default();
        let mut registry = Registry::with_prefix("chat_test");
        metrics.register(&mut registry);
        metrics.observe(&async_nats::Event::Connected);
        metrics.observe(&async_nats::Event::Connected);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("chat_test_nats_reconnects_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE chat_test_nats_slow_consumers counter"),
            "{text}"
        );
    }
}
