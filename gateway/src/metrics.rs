//! The gateway's metrics, `chat_gateway_*` on the admin port's `/metrics`: counters and
//! histograms updated where things happen (the hub's own in [`crate::hub::Stats`]), gauges read
//! from the node's state at each scrape.

use std::time::Duration;

use chat_proto::admin::Reply;
use chat_proto::client::ErrorCode;
use chat_proto::metrics::{DURATION_BUCKETS, NatsMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::hub::Stats;

/// One label: its name and value.
type Label = Vec<(&'static str, &'static str)>;

/// Why a socket is refused: at the upgrade (`origin`, `full`, `connect_rate`), or at its
/// session's start (a close reason's label, or `session_limit`).
const CONNECTION_REFUSALS: [&str; 8] = [
    "origin",
    "full",
    "connect_rate",
    "unauthorized",
    "auth_timeout",
    "over_limit",
    "session_limit",
    "internal",
];

/// The node's metrics.
pub struct Metrics {
    /// Sockets that opened a session.
    pub connects: Counter,
    /// Sockets refused before or at their session's start, by reason.
    connection_refusals: Family<Label, Counter>,
    /// Requests answered, refused or not.
    pub requests: Counter,
    /// Requests refused, by the protocol's error code.
    request_refusals: Family<Label, Counter>,
    /// Chat messages taken into the stream (sockets and the server API).
    messages_received: Counter,
    /// How long the stream took to acknowledge a message.
    publish_duration: Histogram,
    /// The NATS connection's events.
    pub nats: NatsMetrics,
    /// Audit records lost (the queue full, or NATS away).
    pub audit_dropped: Counter,
    gauges: Gauges,
    registry: Registry,
}

/// What is read from the node at each scrape.
#[derive(Default)]
struct Gauges {
    connections: Gauge,
    max_connections: Gauge,
    subscriptions: Gauge,
    rooms: Gauge,
    outbox_frames: Gauge,
    routers_unreachable: Gauge,
    ready: Gauge,
}

/// The node's state at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Open sockets.
    pub connections: usize,
    /// The most the node takes.
    pub max_connections: usize,
    /// Live-subject subscriptions.
    pub subscriptions: usize,
    /// Conversations with local members.
    pub rooms: usize,
    /// Frames queued in the sockets' outboxes.
    pub outbox_frames: usize,
    /// Routers that do not answer.
    pub routers_unreachable: usize,
    /// Whether the node takes traffic.
    pub ready: bool,
}

impl Metrics {
    /// The metrics, with the hub's counters and the NATS connection's.
    pub fn new(hub: &Stats, nats: NatsMetrics) -> Self {
        let mut registry = Registry::with_prefix("chat_gateway");
        let metrics = Self {
            connects: Counter::default(),
            connection_refusals: Family::default(),
            requests: Counter::default(),
            request_refusals: Family::default(),
            messages_received: Counter::default(),
            audit_dropped: Counter::default(),
            publish_duration: Histogram::new(DURATION_BUCKETS),
            nats,
            gauges: Gauges::default(),
            registry: Registry::default(),
        };
        let gauges = &metrics.gauges;
        for (name, help, gauge) in [
            ("connections", "Open client sockets", &gauges.connections),
            (
                "max_connections",
                "The most client sockets the node takes (its open-files limit)",
                &gauges.max_connections,
            ),
            (
                "subscriptions",
                "Live-subject subscriptions (shards with local members)",
                &gauges.subscriptions,
            ),
            ("rooms", "Conversations with local members", &gauges.rooms),
            (
                "outbox_frames",
                "Frames queued in the sockets' outboxes, not yet written",
                &gauges.outbox_frames,
            ),
            (
                "routers_unreachable",
                "Routers that do not answer",
                &gauges.routers_unreachable,
            ),
            (
                "ready",
                "1 when the node takes traffic (connected to NATS, not draining)",
                &gauges.ready,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        for (name, help, counter) in [
            (
                "connects",
                "Sockets that opened a session",
                &metrics.connects,
            ),
            ("requests", "Client requests answered", &metrics.requests),
            (
                "messages_received",
                "Chat messages taken into the stream (sockets and the server API)",
                &metrics.messages_received,
            ),
            (
                "audit_records_dropped",
                "Audit records lost: the node's audit queue was full, or NATS refused the batch",
                &metrics.audit_dropped,
            ),
            (
                "deliveries",
                "Pushes queued to local sockets (messages out)",
                &hub.pushes.deliveries,
            ),
            (
                "slow_consumer_closes",
                "Sockets closed (4503) because a message did not fit their outbox",
                &hub.pushes.num_evicted_slow,
            ),
            (
                "dropped_ephemeral",
                "Ephemeral pushes (typing, receipts) dropped for a full outbox",
                &hub.pushes.num_dropped_ephemeral,
            ),
            (
                "gap_fills",
                "Rooms filled from the stream after events were lost on the bus",
                &hub.num_fills,
            ),
            (
                "filled_events",
                "Events delivered by gap fills",
                &hub.num_filled,
            ),
            (
                "foreign_events",
                "Events of conversations without local members, received and dropped",
                &hub.num_foreign_events,
            ),
            (
                "presence_introductions_skipped",
                "Introductions (who is online in a conversation newly shared) skipped: too many under way",
                &hub.num_introductions_skipped,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "connection_refusals",
            "Sockets refused before or at their session's start, by reason",
            metrics.connection_refusals.clone(),
        );
        registry.register(
            "request_refusals",
            "Client requests refused, by the protocol's error code",
            metrics.request_refusals.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "How long the stream took to acknowledge a chat message",
            metrics.publish_duration.clone(),
        );
        registry.register(
            "fanout_duration_seconds",
            "How long the node took to queue a live event to all its local members",
            hub.fanout_duration.clone(),
        );
        metrics.nats.register(&mut registry);
        chat_proto::telemetry::span_counts().register(&mut registry);
        // Every known label value starts at 0: a rate over them has data before the first one.
        for reason in CONNECTION_REFUSALS {
            let _ = metrics
                .connection_refusals
                .get_or_create(&vec![("reason", reason)]);
        }
        for code in ErrorCode::ALL {
            let _ = metrics
                .request_refusals
                .get_or_create(&vec![("code", code.as_str())]);
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a chat message the stream took after `took`.
    pub fn message_stored(&self, took: Duration) {
        self.messages_received.inc();
        self.publish_duration.observe(took.as_secs_f64());
    }

    /// Counts a socket refused for `reason` (`connections_full`, `unauthorized`, …).
    pub fn refuse_connection(&self, reason: &'static str) {
        self.connection_refusals
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts a request refused with `code`.
    pub fn refuse_request(&self, code: ErrorCode) {
        self.request_refusals
            .get_or_create(&vec![("code", code.as_str())])
            .inc();
    }

    /// The metrics, with the gauges of `snapshot`.
    pub fn encode(&self, snapshot: Snapshot) -> Reply {
        let gauges = &self.gauges;
        for (gauge, value) in [
            (&gauges.connections, snapshot.connections),
            (&gauges.max_connections, snapshot.max_connections),
            (&gauges.subscriptions, snapshot.subscriptions),
            (&gauges.rooms, snapshot.rooms),
            (&gauges.outbox_frames, snapshot.outbox_frames),
            (&gauges.routers_unreachable, snapshot.routers_unreachable),
            (&gauges.ready, usize::from(snapshot.ready)),
        ] {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        Reply::metrics(&self.registry)
    }
}
