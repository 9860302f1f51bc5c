//! What operators ask: the worker's health (its store and lag) and pages of the audit log.

use std::time::Duration;

use chat_proto::{subjects, v1};

use super::{AUDIT_LIMIT, Failure, Handlers};
use crate::store::Store;

/// How long a health request waits for the store.
const STORE_PROBE: Duration = Duration::from_secs(2);

impl<S: Store> Handlers<S> {
    pub(super) async fn health(&self) -> v1::HealthReply {
        let store = tokio::time::timeout(STORE_PROBE, self.store.committed_seq()).await;
        let store_error = match store {
            Ok(Ok(_)) => String::new(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {STORE_PROBE:?}"),
        };
        v1::HealthReply {
            store_ok: store_error.is_empty(),
            store_error,
            lag_events: self.metrics.lag(),
        }
    }

    /// A page of the audit log; nothing older than the audit stream's first record is kept.
    pub(super) async fn audit(&self, mut query: v1::AuditQuery) -> Result<v1::AuditPage, Failure> {
        query.limit = match query.limit {
            0 => AUDIT_LIMIT.0,
            limit => limit.min(AUDIT_LIMIT.1),
        };
        let first_seq = match self.js.get_stream(subjects::AUDIT_STREAM).await {
            Ok(stream) => stream.cached_info().state.first_sequence,
            Err(_) => 0,
        };
        Ok(self.store.audit(query, first_seq).await?)
    }
}
