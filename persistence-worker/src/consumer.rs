//! The durable consumer: stream → store, in batches, acknowledged only after the commit.
//!
//! A batch starts with the first event that arrives and takes what follows within the batch
//! wait, up to the batch size. It is written in one transaction that also advances the committed
//! position; only then is the batch acknowledged (ack-all, by its last event). A failed write is
//! retried (nothing is acked). A worker that starts creates the consumer anew after the store's
//! committed position, so after a crash at any point the next worker reads on at once from
//! there; the conditional writes absorb what was written but not acked.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, Stream};
use chat_proto::service::Backoff;
use chat_proto::{bus, subjects};
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::WorkerError;
use crate::store::Store;

/// How the consumer batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most events a batch.
    pub size: usize,
    /// How long a batch waits for more after its first event.
    pub wait: Duration,
}

/// Refuses a stream whose sequence is behind what the store already holds: a new stream would
/// hand out message ids that are taken.
pub async fn check_stream_position<S: Store>(
    stream: &mut Stream,
    store: &S,
) -> Result<(), WorkerError> {
    let committed = store.committed_seq().await?;
    let last = stream
        .info()
        .await
        .map_err(|e| WorkerError::Nats(e.to_string()))?
        .state
        .last_sequence;
    if last < committed {
        return Err(WorkerError::StreamBehindStore { last, committed });
    }
    Ok(())
}

fn is_not_found(error: &ConsumerError) -> bool {
    matches!(error.kind(), ConsumerErrorKind::JetStream(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// Consumes until `shutdown`.
pub async fn run<S: Store>(
    stream: Stream,
    store: S,
    batching: Batching,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let committed = store.committed_seq().await?;
    let config = pull::Config {
        durable_name: Some(subjects::WORKER_CONSUMER.to_owned()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: committed + 1,
        },
        // One ack per batch: acking the last event acks all before it.
        ack_policy: AckPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: i64::try_from(batching.size * 4).unwrap_or(1024),
        ..Default::default()
    };
    let nats = |e: &dyn std::fmt::Display| WorkerError::Nats(e.to_string());
    // The store knows what is written: the consumer starts anew after it. Kept, it would hold
    // back what it had delivered to a worker that died (until its ack wait, 30 s) and hand out
    // only newer events meanwhile.
    match stream.delete_consumer(subjects::WORKER_CONSUMER).await {
        Ok(_) => tracing::info!(committed, "consumer replaced at the store's position"),
        Err(error) if is_not_found(&error) => {}
        Err(error) => return Err(nats(&error)),
    }
    let consumer: PullConsumer = stream.create_consumer(config).await.map_err(|e| nats(&e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| WorkerError::Nats(e.to_string()))?;
    tracing::info!(committed, "consuming the stream");

    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let Some(first) = first else {
            return Err(WorkerError::Nats(
                "the consumer's message stream ended".into(),
            ));
        };
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(error) => {
                tracing::warn!(%error, "consumer hiccup");
                continue;
            }
        };
        let deadline = Instant::now() + batching.wait;
        while batch.len() < batching.size {
            match timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => batch.push(message),
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, "consumer hiccup");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }

        let mut events = Vec::with_capacity(batch.len());
        let mut through = 0;
        for message in &batch {
            let Ok(info) = message.info() else {
                tracing::warn!(subject = %message.subject, "a stream message without metadata");
                continue;
            };
            let seq = info.stream_sequence;
            through = through.max(seq);
            match bus::decode_event(&message.payload, Some(seq)) {
                Ok(event) => events.push(event),
                Err(error) => tracing::error!(seq, %error, "skipping an undecodable event"),
            }
        }
        write_until_committed(&store, events, through, &shutdown).await?;
        if let Some(last) = batch.last()
            && let Err(error) = last.ack().await
        {
            // Redelivery is harmless: the writes are idempotent.
            tracing::debug!(%error, "ack failed");
        }
    }
}

async fn write_until_committed<S: Store>(
    store: &S,
    events: Vec<chat_proto::v1::ConversationEvent>,
    through: u64,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match store.apply(events.clone(), Some(through)).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::error!(%error, through, "store write failed; retrying");
                if !backoff.wait(shutdown.cancelled()).await {
                    return Err(WorkerError::Store(error));
                }
            }
        }
    }
}
