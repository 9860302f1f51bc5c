//! The stream's configuration, owned by the worker: it creates or updates the stream at start.
//!
//! Limits retention (the stream is the resume horizon, not the archive), file storage, the
//! de-duplication window, replicas, direct gets allowed (reads beyond the store's committed
//! position and gap fills use them), oldest events discarded first.

use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, ErrorCode, stream};
use chat_proto::subjects;

/// Why a stream could not be created or brought to its settings.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// JetStream reserves each stream's byte limit against its file storage at creation.
    #[error(
        "JetStream has too little file storage left for the stream {stream} of {max_bytes} bytes \
         (it reserves every stream's limit): give nats-server a larger `max_file_store` (by \
         default 75% of the disk that was free at its start), or lower --stream-max-bytes or \
         --audit-stream-max-bytes"
    )]
    Storage {
        /// The stream.
        stream: &'static str,
        /// Its byte limit.
        max_bytes: i64,
    },
    /// NATS refused or failed otherwise.
    #[error("the stream {stream}: {source}")]
    Nats {
        /// The stream.
        stream: &'static str,
        /// What NATS said.
        source: async_nats::Error,
    },
}

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
    /// How many bytes the audit stream keeps.
    pub audit_max_bytes: i64,
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
) -> Result<stream::Stream, StreamError> {
    create_or_update(js, config(settings), subjects::STREAM).await
}

/// Creates the stream `name` of `config`, or brings it to `config`.
async fn create_or_update(
    js: &jetstream::Context,
    config: stream::Config,
    name: &'static str,
) -> Result<stream::Stream, StreamError> {
    let max_bytes = config.max_bytes;
    js.create_or_update_stream(config)
        .await
        .map_err(|error| refused(error, name, max_bytes))?;
    js.get_stream(name)
        .await
        .map_err(|error| StreamError::Nats {
            stream: name,
            source: error.into(),
        })
}

/// What a refusal to create the stream `name` means.
fn refused(error: CreateStreamError, name: &'static str, max_bytes: i64) -> StreamError {
    match error.kind() {
        CreateStreamErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
        {
            StreamError::Storage {
                stream: name,
                max_bytes,
            }
        }
        _ => StreamError::Nats {
            stream: name,
            source: error.into(),
        },
    }
}

/// The audit log's stream: what the gateways publish on `chat.audit.>`, kept for the retention
/// (and at most its own bytes), until the worker has stored it.
pub fn audit_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::AUDIT_STREAM.to_owned(),
        subjects: vec![subjects::AUDIT_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: settings.audit_retention,
        max_bytes: settings.audit_max_bytes,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// Creates the audit stream, or brings an existing one to `settings`.
pub async fn ensure_audit(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Stream, StreamError> {
    create_or_update(js, audit_config(settings), subjects::AUDIT_STREAM).await
}
