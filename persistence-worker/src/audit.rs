//! The audit log's writer: the gateways publish batches of records on `chat.audit.batch`, the
//! audit stream keeps them, and the workers store them (one durable consumer; a batch is
//! acknowledged once stored, and stored twice it is kept once, by its records' sequences). The store keeps
//! them for `--audit-retention`: the CQL store expires them by TTL, the SQLite store is pruned
//! every ten minutes.

use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream::Stream;
use chat_proto::subjects;
use chat_proto::timestamp::now_ms;
use chat_proto::v1::{AuditBatch, AuditEvent};
use futures_util::StreamExt;
use prost::Message as _;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::WorkerError;
use crate::metrics::Metrics;
use crate::store::Store;

/// Stream messages stored a batch.
const BATCH: usize = 256;
/// Audit records numbered per stream message: a gateway's batch holds at most this many.
const SEQS_PER_MESSAGE: u64 = 1_024;
/// How long a batch waits for more records after its first.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// How often the SQLite store drops what is past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// The longest pause between tries of a batch the store refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn nats(error: impl std::fmt::Display) -> WorkerError {
    WorkerError::Nats(error.to_string())
}

/// The records of one stream message: a gateway's batch (`chat.audit.batch`), or one record
/// alone (`chat.audit.<kind>`, from gateways before batching). Each is numbered by the
/// message's stream sequence times [`SEQS_PER_MESSAGE`] plus its index, so that the log keeps
/// the stream's order and a record stored twice is kept once.
fn records(message: &Message) -> Vec<AuditEvent> {
    let Ok(info) = message.info() else {
        tracing::warn!(subject = %message.subject, "an audit message without metadata");
        return Vec::new();
    };
    let stream_seq = info.stream_sequence;
    let decoded = if message.subject.as_str() == subjects::AUDIT_BATCH {
        AuditBatch::decode(message.payload.as_ref()).map(|batch| batch.events)
    } else {
        AuditEvent::decode(message.payload.as_ref()).map(|event| vec![event])
    };
    match decoded {
        Ok(events) => {
            if events.len() as u64 > SEQS_PER_MESSAGE {
                tracing::warn!(
                    stream_seq,
                    records = events.len(),
                    "audit batch cut to its first 1,024"
                );
            }
            (0..SEQS_PER_MESSAGE)
                .zip(events)
                .map(|(index, event)| AuditEvent {
                    seq: stream_seq * SEQS_PER_MESSAGE + index,
                    ..event
                })
                .collect()
        }
        Err(error) => {
            tracing::warn!(stream_seq, %error, "skipping undecodable audit records");
            Vec::new()
        }
    }
}

/// Stores the audit stream into `store` until `shutdown`.
pub async fn run<S: Store>(
    stream: Stream,
    store: S,
    keep: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // One worker (SQLite) acknowledges a batch with one ack of its last record; workers that
    // share the consumer acknowledge each record, so that one's ack never covers another's
    // records still being written.
    let ack_policy = if S::SHARED {
        AckPolicy::Explicit
    } else {
        AckPolicy::All
    };
    let mut consumer = stream
        .get_or_create_consumer(
            subjects::AUDIT_CONSUMER,
            pull::Config {
                durable_name: Some(subjects::AUDIT_CONSUMER.to_owned()),
                ack_policy,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
    // The consumer's own policy decides (it may have been made by another kind of worker).
    let ack_all = consumer.info().await.map_err(nats)?.config.ack_policy == AckPolicy::All;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .map_err(nats)?;
    let mut next_prune = Instant::now();
    loop {
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            let before =
                now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
            match store.prune_audit(before).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "audit records past the retention dropped"),
                Err(error) => tracing::warn!(%error, "audit records not pruned"),
            }
        }
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(next_prune) => continue,
            next = messages.next() => next,
        };
        let mut batch = match first {
            Some(Ok(message)) => vec![message],
            Some(Err(error)) => {
                tracing::warn!(%error, "audit consumer hiccup");
                continue;
            }
            None => return Err(nats("the audit consumer's message stream ended")),
        };
        let deadline = Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            match timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => batch.push(message),
                _ => break,
            }
        }
        let events: Vec<AuditEvent> = batch.iter().flat_map(records).collect();
        let mut backoff = Duration::from_millis(100);
        while let Err(error) = store.append_audit(events.clone(), keep).await {
            tracing::warn!(%error, "audit records not stored; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        metrics.audit_written(events.len());
        let acked = if ack_all {
            &batch[batch.len() - 1..]
        } else {
            &batch[..]
        };
        for message in acked {
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "audit record not acknowledged; it comes again");
            }
        }
    }
}
