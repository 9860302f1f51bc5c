//! The durable consumer: stream → store, in batches, acknowledged only after the write.
//!
//! A batch starts with the first event that arrives and takes what follows within the batch
//! wait, up to the batch size. It is written, then acknowledged (by one ack of its last event
//! when the worker is alone, else event by event); a failed write is
//! retried (nothing is acked), and while it is under way the server is told so every third of
//! the ack wait, so that a slow store causes no redelivery. The writes are idempotent, so a
//! redelivered event changes nothing.
//!
//! How the consumer is shared follows the store ([`Store::SHARED`]):
//! - **Alone** (SQLite): the batch and the committed position are written in one transaction,
//!   and one ack of its last event acknowledges the whole batch (the consumer acks all). A
//!   worker that starts replaces the consumer with one that starts right after the store's
//!   committed position (kept, it would hold back what it had delivered to a worker that died,
//!   until the ack wait, and hand out only newer events meanwhile), and refuses to start while
//!   another worker is pulling from it.
//! - **Shared** (CQL): every worker pulls from the one durable consumer; the first creates it
//!   after the store's committed position and nobody replaces it while workers use it. After its
//!   acks, a worker records the consumer's ack floor (every event up to it has been written by
//!   some worker) as the store's committed position, highest wins. A worker killed mid-batch
//!   leaves its events unacked, and after the ack wait the server hands them to another.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{AckKind, ErrorCode, Message};
use chat_proto::service::Backoff;
use chat_proto::v1::ConversationEvent;
use chat_proto::{bus, subjects};
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::WorkerError;
use crate::metrics::Metrics;
use crate::store::Store;

/// How the consumer batches and acknowledges.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most events a batch.
    pub batch_size: usize,
    /// How long a batch waits for more after its first event.
    pub batch_wait: Duration,
    /// How long the server waits for an event's ack before it delivers the event again (to any
    /// worker); at least a second.
    pub ack_wait: Duration,
}

impl Settings {
    fn consumer(&self, start_sequence: u64, shared: bool) -> pull::Config {
        pull::Config {
            durable_name: Some(subjects::WORKER_CONSUMER.to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            // Shared, one worker's ack must not cover another's events still being written.
            ack_policy: if shared {
                AckPolicy::Explicit
            } else {
                AckPolicy::All
            },
            ack_wait: self.ack_wait,
            // A few batches in flight, over all the workers.
            max_ack_pending: i64::try_from(self.batch_size * 8).unwrap_or(i64::MAX),
            ..Default::default()
        }
    }
}

/// Refuses a stream whose sequence is behind what the store already holds: a new stream would
/// hand out message ids that are taken.
pub async fn check_stream_position<S: Store>(
    stream: &mut Stream,
    store: &S,
) -> Result<(), WorkerError> {
    let committed = store.committed_seq().await?;
    let last = stream.info().await.map_err(nats)?.state.last_sequence;
    if last < committed {
        return Err(WorkerError::StreamBehindStore { last, committed });
    }
    Ok(())
}

fn nats(error: impl std::fmt::Display) -> WorkerError {
    WorkerError::Nats(error.to_string())
}

/// The consumer this worker pulls from, created or replaced as its store requires.
async fn open<S: Store>(
    stream: &Stream,
    store: &S,
    settings: &Settings,
) -> Result<PullConsumer, WorkerError> {
    let existing = match stream.consumer_info(subjects::WORKER_CONSUMER).await {
        Ok(info) => Some(info),
        Err(error) => match error.kind() {
            ConsumerInfoErrorKind::NotFound => None,
            ConsumerInfoErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND =>
            {
                None
            }
            _ => return Err(nats(error)),
        },
    };
    if let Some(info) = &existing {
        let shared = info.config.ack_policy == AckPolicy::Explicit;
        if S::SHARED && shared {
            if info.config.ack_wait != settings.ack_wait {
                tracing::warn!(
                    kept = ?info.config.ack_wait,
                    "joining the consumer with its ack wait, not this worker's"
                );
            }
            tracing::info!(waiting = info.num_waiting, "joining the shared consumer");
            return stream
                .get_consumer(subjects::WORKER_CONSUMER)
                .await
                .map_err(nats);
        }
        if info.num_waiting > 0 {
            return Err(WorkerError::ConsumerInUse {
                waiting: info.num_waiting,
                why: if S::SHARED {
                    "a worker on the SQLite store is consuming the stream; stop it first"
                } else {
                    "the SQLite store allows exactly one worker (several need --store scylla)"
                },
            });
        }
        stream
            .delete_consumer(subjects::WORKER_CONSUMER)
            .await
            .map_err(nats)?;
    }
    let committed = store.committed_seq().await?;
    let config = settings.consumer(committed + 1, S::SHARED);
    match stream.create_consumer(config).await {
        Ok(consumer) => {
            tracing::info!(committed, "consumer created at the store's position");
            Ok(consumer)
        }
        // Another worker starting at the same time created it first.
        Err(error) if S::SHARED => match stream.get_consumer(subjects::WORKER_CONSUMER).await {
            Ok(consumer) => Ok(consumer),
            Err(_) => Err(nats(error)),
        },
        Err(error) => Err(nats(error)),
    }
}

/// Consumes until `shutdown`.
pub async fn run<S: Store>(
    stream: Stream,
    store: S,
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let consumer = open(&stream, &store, &settings).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch_size)
        .messages()
        .await
        .map_err(nats)?;
    tracing::info!(shared = S::SHARED, "consuming the stream");

    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let Some(first) = first else {
            return Err(nats("the consumer's message stream ended"));
        };
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(error) => {
                tracing::warn!(%error, "consumer hiccup");
                continue;
            }
        };
        let deadline = Instant::now() + settings.batch_wait;
        while batch.len() < settings.batch_size {
            match timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => batch.push(message),
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, "consumer hiccup");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }

        let (events, through) = decode(&batch);
        let _traced = store_spans(&batch);
        let commit_through = (!S::SHARED).then_some(through);
        let written = write_until_committed(&store, events, commit_through, &metrics, &shutdown);
        while_in_progress(&batch, settings.ack_wait, written).await?;
        ack(&batch, S::SHARED).await;
        if S::SHARED {
            record_ack_floor(&consumer, &store).await;
        }
    }
}

/// The batch's events, and the highest stream sequence among its messages.
fn decode(batch: &[Message]) -> (Vec<ConversationEvent>, u64) {
    let mut events = Vec::with_capacity(batch.len());
    let mut through = 0;
    for message in batch {
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
    (events, through)
}

/// A `store` span for each event of the batch that is in a kept trace (its NATS headers carry
/// the trace context), open until the batch is written and acknowledged.
fn store_spans(batch: &[Message]) -> Vec<tracing::Span> {
    if !chat_proto::telemetry::enabled() {
        return Vec::new();
    }
    batch
        .iter()
        .filter_map(|message| {
            let span = tracing::info_span!("store", subject = %message.subject);
            chat_proto::telemetry::follow(&span, message.headers.as_ref()).then_some(span)
        })
        .collect()
}

/// Runs `write`, telling the server every third of the ack wait that the batch is in progress.
async fn while_in_progress(
    batch: &[Message],
    ack_wait: Duration,
    write: impl Future<Output = Result<(), WorkerError>>,
) -> Result<(), WorkerError> {
    let mut progress = tokio::time::interval(ack_wait / 3);
    progress.tick().await; // The first tick is at once.
    tokio::pin!(write);
    loop {
        tokio::select! {
            written = &mut write => return written,
            _ = progress.tick() => {
                for message in batch {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%error, "progress not sent");
                    }
                }
            }
        }
    }
}

/// Acknowledges the batch: every event when the consumer is `shared`, else its last (which acks
/// all before it). The last ack waits for the server's confirmation, so that the consumer's ack
/// floor includes the whole batch when this returns (one connection's acks are processed in
/// order).
async fn ack(batch: &[Message], shared: bool) {
    let Some((last, rest)) = batch.split_last() else {
        return;
    };
    for message in rest.iter().filter(|_| shared) {
        if let Err(error) = message.ack().await {
            // Redelivery is harmless: the writes are idempotent.
            tracing::debug!(%error, "ack failed");
        }
    }
    if let Err(error) = last.double_ack().await {
        tracing::debug!(%error, "ack not confirmed");
    }
}

/// Records the consumer's ack floor as the store's committed position. A failure only leaves
/// the position behind (reads then take more from the stream); the next batch records it.
async fn record_ack_floor<S: Store>(consumer: &PullConsumer, store: &S) {
    let floor = match consumer.get_info().await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(error) => {
            tracing::warn!(%error, "no ack floor; the committed position stays behind");
            return;
        }
    };
    if let Err(error) = store.apply(Vec::new(), Some(floor)).await {
        tracing::warn!(%error, floor, "committed position not recorded");
    }
}

async fn write_until_committed<S: Store>(
    store: &S,
    events: Vec<ConversationEvent>,
    commit_through: Option<u64>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let started = Instant::now();
        match store.apply(events.clone(), commit_through).await {
            Ok(()) => {
                metrics.batch_written(events.len(), started.elapsed());
                return Ok(());
            }
            Err(error) => {
                metrics.write_failed();
                tracing::error!(%error, ?commit_through, "store write failed; retrying");
                if !backoff.wait(shutdown.cancelled()).await {
                    return Err(WorkerError::Store(error));
                }
            }
        }
    }
}
