//! The contract crate: everything the gateways, the persistence worker and the router agree on.
//!
//! - [`v1`]: the protobuf schemas (`proto/chat/v1/*.proto`): events on the bus, the worker's
//!   request-reply messages, and the router's gRPC service (`v1::router_server`,
//!   `v1::router_client`) with the presence changes it publishes.
//! - [`subjects`]: the NATS subject names and the stream name, with the encoding that keeps user
//!   and conversation ids from ever forming a wildcard or an extra subject token.
//! - [`client`]: the client protocol v1 (JSON over WebSocket): envelopes, codes, payloads.
//! - [`history`]: the window of a history read, shared by the gateway and the worker.
//! - [`bus`]: publishing conversation events durably, then live.
//! - [`routing`]: clients of the routers, the users split over them by hash of user id.
//! - [`options`]: the checks of the options every binary shares (durations, counts, NATS and
//!   router URLs), from which each binary's `validate` is built.
//! - [`timestamp`]: the protocol's ISO 8601 UTC timestamps.
//! - `service` (feature `service`): logging and the shutdown signal of every binary; `admin`
//!   (feature `service`): the admin port (health, readiness, metrics); `metrics` (feature
//!   `service`): what the binaries' metrics share; `telemetry` (feature `service`): logs, and
//!   traces over OTLP with their context in NATS headers.
//! - `testing` (feature `test-util`): a real `nats-server` for tests.
//!
//! Nothing here depends on a binary.

pub mod bus;
pub mod client;
pub mod history;
pub mod options;
pub mod routing;
pub mod subjects;
pub mod timestamp;

#[cfg(feature = "service")]
pub mod admin;
#[cfg(feature = "service")]
pub mod metrics;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod telemetry;

/// Generated code of the `chat.v1` protobuf package.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/chat.v1.rs"));
}

#[cfg(feature = "test-util")]
pub mod testing;
