//! What the parent and its agents say to each other: one JSON document a line, the parent on
//! the agent's stdin, the agent on its stdout. Histograms travel as raw `(value, count)` buckets
//! and receipts as counts per sender, so the parent merges exactly (percentiles of several
//! processes cannot be averaged).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One socket an agent opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Socket {
    /// The user it authenticates as.
    pub(crate) user_id: String,
    /// The gateway URL it connects to.
    pub(crate) url: String,
    /// The conversation it sends to and counts receipts of, if any.
    pub(crate) room: Option<String>,
    /// Its sender number, when it sends.
    pub(crate) sender: Option<u32>,
    /// Its class: a phase may ask only one class to send.
    pub(crate) class: u8,
}

/// The agent's job, the first line it reads.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AgentConfig {
    pub(crate) secret: String,
    pub(crate) sockets: Vec<Socket>,
    /// Source addresses to spread the sockets over.
    pub(crate) source_ips: Vec<Ipv4Addr>,
    /// Connections a second this agent opens.
    pub(crate) connect_rate: f64,
}

/// What the parent asks next.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Command {
    /// Send for a while at a rate, then report.
    Run(Phase),
    /// Drop every socket at once and reconnect them; report how long it took.
    Storm,
    /// Close everything and exit.
    Quit,
}

/// One measured period.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Phase {
    /// When sending starts, ms since the epoch (the same wall clock for every agent).
    pub(crate) start_unix_ms: u64,
    /// How long senders send.
    pub(crate) duration_ms: u64,
    /// How long receipts are awaited after the last send.
    pub(crate) drain_ms: u64,
    /// Messages a second each sender sends (open loop).
    pub(crate) rate_per_sender: f64,
    /// Only senders of this class send; all when `None`.
    pub(crate) class: Option<u8>,
}

/// What an agent reports.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    /// All sockets tried: how it went.
    Connected(ConnectReport),
    /// A phase ended.
    Ran(PhaseReport),
    /// A storm ended.
    Stormed(ConnectReport),
}

/// Connections opened.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ConnectReport {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    /// Failures by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Time to `connected`, µs.
    pub(crate) latency: Buckets,
    /// From the first attempt to the last `connected`, ms.
    pub(crate) elapsed_ms: u64,
}

/// Receipts of one socket: per sender, messages of this phase received once, received again,
/// and received after a later one of the same sender.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Receipts {
    pub(crate) room: String,
    pub(crate) from: BTreeMap<u32, SenderReceipts>,
}

/// Receipts from one sender.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SenderReceipts {
    pub(crate) unique: u64,
    pub(crate) duplicate: u64,
    pub(crate) out_of_order: u64,
}

/// A phase, as one agent saw it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PhaseReport {
    /// Intended send time to delivery, µs.
    pub(crate) latency: Buckets,
    /// Intended send time to ack, µs.
    pub(crate) ack_latency: Buckets,
    /// Delivery latency by second of the phase (by intended send time).
    pub(crate) per_second: Vec<Buckets>,
    /// Messages each sender sent in this phase.
    pub(crate) sent: BTreeMap<u32, u64>,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    /// Frames the agent could not read as protocol envelopes.
    pub(crate) unreadable: u64,
    pub(crate) receipts: Vec<Receipts>,
    /// Sockets the gateway closed during the phase, by close code.
    pub(crate) closed: BTreeMap<String, u64>,
}

/// A histogram's non-empty buckets.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Buckets(pub(crate) Vec<(u64, u64)>);

/// A histogram of µs from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl Buckets {
    /// The buckets of `h`.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Self(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets to `h`.
    pub(crate) fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            h.record_n(value.max(1), count).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_merge_exactly() {
        let (mut a, mut b) = (histogram(), histogram());
        for v in 1..=1000 {
            a.record(v).unwrap();
        }
        for v in 1001..=2000 {
            b.record(v * 10).unwrap();
        }
        let mut merged = histogram();
        Buckets::of(&a).add_to(&mut merged);
        Buckets::of(&b).add_to(&mut merged);
        let mut direct = a.clone();
        direct.add(&b).unwrap();
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(merged.value_at_quantile(q), direct.value_at_quantile(q));
        }
        assert_eq!(merged.len(), 2000);
    }
}
