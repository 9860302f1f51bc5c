//! The stream's configuration, owned by the worker: it creates or updates the stream at start.
//!
//! Limits retention (the stream is the resume horizon, not the archive), file storage, the
//! de-duplication window, replicas, direct gets allowed (reads beyond the store's committed
//! position and gap fills use them), oldest events discarded first.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chat_proto::subjects;

/// The settings that an operator chooses.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How long events are kept.
    pub max_age: Duration,
    /// How many bytes are kept.
    pub max_bytes: i64,
    /// The de-duplication window.
    pub dedup_window: Duration,
    /// Replicas.
    pub replicas: usize,
    /// How long the audit log is kept.
    pub audit_retention: Duration,
}

/// The full stream configuration for `settings`.
pub fn config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::STREAM.to_owned(),
        subjects: vec![subjects::STREAM_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        duplicate_window: settings.dedup_window,
        num_replicas: settings.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the stream, or brings an existing one to `settings`.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Stream, async_nats::Error> {
    js.create_or_update_stream(config(settings)).await?;
    Ok(js.get_stream(subjects::STREAM).await?)
}

/// The audit log's stream: what the gateways publish on `chat.audit.>`, kept for the retention
/// (and at most the main stream's bytes), until the worker has stored it.
pub fn audit_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::AUDIT_STREAM.to_owned(),
        subjects: vec![subjects::AUDIT_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: settings.audit_retention,
        max_bytes: settings.max_bytes,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// Creates the audit stream, or brings an existing one to `settings`.
pub async fn ensure_audit(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Stream, async_nats::Error> {
    js.create_or_update_stream(audit_config(settings)).await?;
    Ok(js.get_stream(subjects::AUDIT_STREAM).await?)
}
