//! The node's fan-out: subscriptions shared by all local sockets, and the index of local
//! sockets by user and by conversation.
//!
//! Conversation subjects are spread over [`subjects::LIVE_SHARDS`] shards; the node subscribes
//! once per shard in which it has local members (at most that many subscriptions, whatever its
//! number of users), each subscription owned by a shard task that starts with the shard's first
//! local room and ends with its last. The task decodes each event once, finds the local room,
//! serializes the push once, and hands the same bytes to every local member's outbox; events of
//! conversations without local members are dropped (counted). A push that carries a message and
//! does not fit an outbox (backed up past its grace or its overflow) evicts that socket (close
//! 4503, the client resumes); ephemeral pushes (typing, receipts) to a backed-up outbox are
//! dropped and counted instead.
//!
//! Core NATS may lose events for the node: a slow-consumer drop, or a disconnection. Either
//! wakes the filler task: every room reads from the stream the events after the last it knows it
//! has delivered, and delivers those it did not (each room remembers the recent sequences it
//! delivered, so nothing is delivered twice).
//!
//! The parts: [`index`] (local sockets by user, rooms by conversation, joins and leaves),
//! [`room`] (a room's members and the sequences it delivered), [`shards`] (the subscriptions
//! and their fan-out), [`fill`] (gap fills), [`membership`] (the users' joins and removals
//! announced by the worker, and the resync after a reconnection), [`presence`] (presence
//! frames, and who is online when users come to share a conversation).

pub mod bus;
mod fill;
mod index;
mod membership;
#[cfg(test)]
mod memory;
pub mod presence;
mod room;
mod shards;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chat_proto::subjects;
use chat_proto::v1;
use futures_util::StreamExt;
use moka::sync::Cache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message as _;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::history::ReadError;
use crate::router::RouterLink;
use crate::socket::PushStats;
use bus::{Bus, Directory};
use index::Registry;

/// The hub could not subscribe to its node's subjects.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to {0}")]
pub struct StartError(String);

/// Counters of the hub (registered in [`crate::metrics::Metrics`]).
#[derive(Debug)]
pub struct Stats {
    /// Pushes queued, and what full outboxes cost.
    pub pushes: PushStats,
    /// Events delivered by fills after a loss.
    pub num_filled: Counter,
    /// Rooms filled.
    pub num_fills: Counter,
    /// Events of conversations without local members, received through a shard and dropped.
    pub num_foreign_events: Counter,
    /// How long a live event took from its arrival to its last local member's outbox.
    pub fanout_duration: Histogram,
    /// Introductions skipped: [`presence::MAX_INTRODUCTIONS`] were under way.
    pub num_introductions_skipped: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            pushes: PushStats::default(),
            num_filled: Counter::default(),
            num_fills: Counter::default(),
            num_foreign_events: Counter::default(),
            fanout_duration: Histogram::new(chat_proto::metrics::DURATION_BUCKETS),
            num_introductions_skipped: Counter::default(),
        }
    }
}

/// Membership look-ups cached by (user, conversation).
pub type MembershipCache = Cache<(Arc<str>, Arc<str>), bool>;

struct Inner {
    bus: Arc<dyn Bus>,
    directory: Arc<dyn Directory>,
    /// Told of the local users' membership changes (their presence audience).
    router: Option<RouterLink>,
    membership: MembershipCache,
    registry: Mutex<Registry>,
    /// The highest stream sequence this node has seen.
    hwm: AtomicU64,
    /// `hwm` when the last loss was noticed.
    loss_floor: AtomicU64,
    /// Wakes the filler task.
    refill: Notify,
    stats: Stats,
    token: CancellationToken,
    tracker: TaskTracker,
    /// Most conversations one socket may be in.
    max_rooms_per_socket: usize,
    /// Permits for introductions under way ([`presence`]).
    introductions: Arc<Semaphore>,
}

/// The node's fan-out; a cheap `Clone`.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// What NATS tells the hub about the connection.
#[derive(Debug, Clone, Copy)]
pub enum BusSignal {
    /// The connection dropped: what is published now is lost to this node.
    Disconnected,
    /// The connection is back.
    Connected,
    /// The client dropped messages of a subscription whose buffer was full.
    SlowConsumer,
}

impl Hub {
    /// A hub over `bus` and `directory`; its tasks end when `token` is cancelled.
    pub fn new(
        bus: Arc<dyn Bus>,
        directory: Arc<dyn Directory>,
        membership: MembershipCache,
        router: Option<RouterLink>,
        token: CancellationToken,
        max_rooms_per_socket: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                directory,
                router,
                membership,
                registry: Mutex::default(),
                hwm: AtomicU64::new(0),
                loss_floor: AtomicU64::new(0),
                refill: Notify::new(),
                stats: Stats::default(),
                token,
                tracker: TaskTracker::new(),
                max_rooms_per_socket,
                introductions: Arc::new(Semaphore::new(presence::MAX_INTRODUCTIONS)),
            }),
        }
    }

    /// The hub's counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Notes a stream sequence this node has seen (its own publishes' acks).
    pub fn observe(&self, seq: u64) {
        self.inner.hwm.fetch_max(seq, Ordering::Relaxed);
    }

    /// Starts the node-level tasks: user events (for `node_id`), and loss handling from `signals`.
    pub async fn start(
        &self,
        node_id: &str,
        mut signals: mpsc::Receiver<BusSignal>,
    ) -> Result<(), StartError> {
        // Events for users: through the routers' placement on the node's own subject, or to
        // every node when the publisher could not ask a router.
        let subscribe = |subject: String| async {
            let subscription = self.inner.bus.subscribe(subject.clone()).await;
            subscription.ok_or(StartError(subject))
        };
        let mut user_events = futures_util::stream::select(
            subscribe(subjects::node_users(node_id)).await?,
            subscribe(subjects::ALL_USERS_LIVE.to_owned()).await?,
        );
        let hub = self.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let message = tokio::select! {
                    () = hub.inner.token.cancelled() => break,
                    message = user_events.next() => message,
                };
                let Some(message) = message else { break };
                match v1::UserEvent::decode(message.payload) {
                    Ok(event) => hub.on_user_event(event).await,
                    Err(error) => tracing::warn!(%error, "undecodable user event"),
                }
            }
        });
        let hub = self.clone();
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = hub.inner.token.cancelled() => break,
                    () = hub.inner.refill.notified() => hub.fill_all().await,
                }
            }
        });
        let hub = self.clone();
        self.inner.tracker.spawn(async move {
            let mut disconnected = false;
            loop {
                let signal = tokio::select! {
                    () = hub.inner.token.cancelled() => break,
                    signal = signals.recv() => signal,
                };
                let Some(signal) = signal else { break };
                match signal {
                    BusSignal::Disconnected => {
                        disconnected = true;
                        hub.note_loss();
                    }
                    BusSignal::SlowConsumer => {
                        hub.note_loss();
                        hub.refill_all();
                    }
                    BusSignal::Connected if disconnected => {
                        disconnected = false;
                        hub.inner.membership.invalidate_all();
                        hub.refill_all();
                        hub.resync_users().await;
                    }
                    BusSignal::Connected => {}
                }
            }
        });
        Ok(())
    }

    /// The conversation's events with `seq > after` from the durable log (at most `max`; the
    /// flag says whether that was all).
    pub async fn events_after(
        &self,
        conversation_id: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<v1::ConversationEvent>, bool), ReadError> {
        self.inner
            .bus
            .events_after(conversation_id, after, max)
            .await
    }

    /// Stops the hub's tasks and waits for them.
    pub async fn stop(&self) {
        self.inner.token.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    fn note_loss(&self) {
        let hwm = self.inner.hwm.load(Ordering::Relaxed);
        self.inner.loss_floor.store(hwm, Ordering::Relaxed);
        tracing::warn!(
            hwm,
            "events may have been lost on the bus; filling from the stream"
        );
    }

    fn refill_all(&self) {
        self.inner.refill.notify_one();
    }
}

#[cfg(test)]
mod tests;
