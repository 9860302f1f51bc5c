//! The audit log's records of what happens on this node: connects and disconnects (user, node,
//! address), joins and leaves, participant changes, messages created, edited and deleted (ids,
//! never content), bans, and what the server API does (its actor is `api:<key name>`).
//!
//! Records are gathered, never waited for: a bounded queue feeds one task that publishes them in
//! batches on `chat.audit.batch` (up to [`BATCH`] records, or what came within [`BATCH_WAIT`] of
//! the first); the audit stream keeps each batch and the worker stores its records. A batch
//! costs NATS one message and the stream one write, where a record each cost one of each. A full
//! queue, or NATS away, loses records with a warning (counted), and the chat goes on.

use std::time::Duration;

use chat_proto::bus;
use chat_proto::timestamp::now_ms;
use chat_proto::v1::{AuditBatch, AuditEvent};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

/// Most records a batch (the worker numbers a batch's records within 1,024).
const BATCH: usize = 512;
/// How long a batch waits for more records after its first.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Records waiting for their batch, at most.
const QUEUE: usize = 16_384;

/// The node's audit log: where its records go.
#[derive(Debug)]
pub(crate) struct AuditLog {
    node: String,
    queue: mpsc::Sender<AuditEvent>,
    dropped: Counter,
}

impl AuditLog {
    /// The log of node `node`, and its publishing task, which publishes what is queued and ends
    /// once `stop` is cancelled. Lost records are counted in `dropped`.
    pub(crate) fn start(
        client: async_nats::Client,
        node: String,
        dropped: Counter,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (queue, records) = mpsc::channel(QUEUE);
        let task = tokio::spawn(publish(client, records, dropped.clone(), stop));
        (
            Self {
                node,
                queue,
                dropped,
            },
            task,
        )
    }

    /// Queues `event`, stamped with the time and this node.
    pub(crate) fn record(&self, event: AuditEvent) {
        let event = AuditEvent {
            at_ms: now_ms(),
            node: self.node.clone(),
            ..event
        };
        if self.queue.try_send(event).is_err() {
            self.dropped.inc();
            tracing::warn!("audit queue full: record lost");
        }
    }
}

/// Publishes the queued records in batches until `stop`, then what is left.
async fn publish(
    client: async_nats::Client,
    mut records: mpsc::Receiver<AuditEvent>,
    dropped: Counter,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            first = records.recv() => first,
        };
        let Some(first) = first else { break };
        let mut batch = AuditBatch {
            events: vec![first],
        };
        let deadline = Instant::now() + BATCH_WAIT;
        while batch.events.len() < BATCH {
            match timeout_at(deadline, records.recv()).await {
                Ok(Some(event)) => batch.events.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        send(&client, &batch, &dropped).await;
    }
    records.close();
    let mut batch = AuditBatch::default();
    while let Ok(event) = records.try_recv() {
        batch.events.push(event);
        if batch.events.len() == BATCH {
            send(&client, &std::mem::take(&mut batch), &dropped).await;
        }
    }
    if !batch.events.is_empty() {
        send(&client, &batch, &dropped).await;
    }
}

async fn send(client: &async_nats::Client, batch: &AuditBatch, dropped: &Counter) {
    if let Err(error) = bus::publish_audit(client, batch).await {
        dropped.inc_by(batch.events.len() as u64);
        tracing::warn!(%error, records = batch.events.len(), "audit records lost");
    }
}

/// A record of `kind` by `actor` about `user_id` in `conversation_id`.
pub(crate) fn event(kind: &str, actor: &str, user_id: &str, conversation_id: &str) -> AuditEvent {
    AuditEvent {
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        user_id: user_id.to_owned(),
        conversation_id: conversation_id.to_owned(),
        ..AuditEvent::default()
    }
}

/// A record of `kind` by `actor` about a message (its sender, conversation and id).
pub(crate) fn message_event(
    kind: &str,
    actor: &str,
    message: &chat_proto::v1::ChatMessage,
) -> AuditEvent {
    AuditEvent {
        message_id: message.id,
        ..event(kind, actor, &message.sender_id, &message.conversation_id)
    }
}

/// A ban's audit detail: how long, and why.
pub(crate) fn ban_detail(request: &chat_proto::v1::BanRequest) -> String {
    let duration = match request.duration_ms {
        0 => "until unbanned".to_owned(),
        ms => format!("{} s", ms / 1000),
    };
    format!("{duration}; {}", request.reason)
}
