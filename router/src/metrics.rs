//! The router's metrics, `chat_router_*` on its admin port's `/metrics`: counters updated where
//! things happen, the placement's sizes read at each scrape.

use chat_proto::admin::Reply;
use chat_proto::metrics::NatsMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The router's metrics.
pub struct Metrics {
    /// Nodes dropped because their lease lapsed.
    pub lease_expiries: Counter,
    /// Sessions refused over the per-user limit.
    pub admissions_refused: Counter,
    /// Presence changes published.
    pub presence_changes: Counter,
    /// The NATS connection's events.
    pub nats: NatsMetrics,
    nodes: Gauge,
    users: Gauge,
    node_sessions: Family<Vec<(&'static str, String)>, Gauge>,
    registry: Registry,
}

impl Metrics {
    /// The metrics, registered under `chat_router_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chat_router");
        let metrics = Self {
            lease_expiries: Counter::default(),
            admissions_refused: Counter::default(),
            presence_changes: Counter::default(),
            nats: NatsMetrics::default(),
            nodes: Gauge::default(),
            users: Gauge::default(),
            node_sessions: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lease_expiries",
            "Gateway nodes dropped because their lease lapsed (crashed or cut off)",
            metrics.lease_expiries.clone(),
        );
        registry.register(
            "admissions_refused",
            "Sessions refused over the per-user session limit",
            metrics.admissions_refused.clone(),
        );
        registry.register(
            "presence_changes",
            "Presence changes published",
            metrics.presence_changes.clone(),
        );
        registry.register("nodes", "Gateway nodes attached", metrics.nodes.clone());
        registry.register(
            "users",
            "Users with at least one session",
            metrics.users.clone(),
        );
        registry.register(
            "sessions",
            "Sessions, by gateway node",
            metrics.node_sessions.clone(),
        );
        metrics.nats.register(&mut registry);
        chat_proto::telemetry::span_counts().register(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    /// The metrics, with the placement's `nodes` (their sessions) and `users`.
    pub fn encode(&self, nodes: &[(std::sync::Arc<str>, usize)], users: usize) -> Reply {
        self.nodes.set(gauge(nodes.len()));
        self.users.set(gauge(users));
        self.node_sessions.clear();
        for (node, sessions) in nodes {
            self.node_sessions
                .get_or_create(&vec![("node", node.to_string())])
                .set(gauge(*sessions));
        }
        Reply::metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
