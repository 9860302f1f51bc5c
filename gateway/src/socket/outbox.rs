//! A socket's bounded outbound queue. Unlike a channel it allocates nothing while empty (a
//! tokio channel allocates a block of slots up front), which matters at thousands of idle
//! sockets a node; it gives its memory back whenever it empties. Pushes never wait: a full queue
//! is the caller's to handle (drop an ephemeral push, or evict the socket).
//!
//! A queue at its capacity is backed up. An ephemeral push is refused then; anything else still
//! goes in, up to [`OVERFLOW_FACTOR`] times the capacity, for the grace: a reader that catches up
//! within it loses nothing, one that stays backed up longer (or fills the overflow) is refused,
//! and its socket is evicted.
//!
//! During a resume, or when the socket joins a conversation with events it has to be given from
//! the stream, the queue is held: conversation events wait (everything else goes out), the
//! missed events are read from the stream, and [`Outbox::release`] puts them before the held
//! ones and drops the held ones they already cover; and since an event read from the stream may
//! still be on its way live, the queue keeps dropping the covered ones afterwards. The client
//! gets each event once, in order. Holds nest: events wait until every hold is released.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chat_proto::client::{self, Delivery};
use chat_proto::subjects;
use chat_proto::v1::ConversationEvent;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::CloseReason;

/// How many times its capacity a backed-up queue may hold during its grace.
pub const OVERFLOW_FACTOR: usize = 4;

/// Missed events read from the stream, to go out as a hold ends ([`Outbox::release`]).
#[derive(Debug, Default, Clone)]
pub struct Replay {
    /// Their frames, conversation by conversation, in order.
    pub frames: Vec<Utf8Bytes>,
    /// Per conversation hash, the position the client has once it got `frames`.
    pub covered: HashMap<u64, u64>,
}

impl Replay {
    /// Adds `events`, the conversation's events after `after` in order; returns how many frames
    /// they gave.
    pub fn add(
        &mut self,
        conversation_id: &str,
        after: u64,
        events: &[ConversationEvent],
    ) -> usize {
        let mut upto = after;
        let mut replayed = 0;
        for event in events {
            upto = upto.max(event.seq);
            if let Some((frame, Delivery::Durable)) = client::conversation_push(event) {
                self.frames.push(Utf8Bytes::from(frame));
                replayed += 1;
            }
        }
        self.covered.insert(subjects::fnv1a(conversation_id), upto);
        replayed
    }
}

/// What a socket's writer sends.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame.
    Text(Utf8Bytes),
    /// A conversation event's frame: `conversation` is the FNV-1a of its id, `seq` its position.
    Event {
        conversation: u64,
        seq: u64,
        frame: Utf8Bytes,
    },
    /// A protocol ping.
    Ping,
    /// A close frame, then the end.
    Close(CloseReason),
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity.
    Full,
    /// The writer is gone.
    Closed,
}

/// The items, and what replays gave the client (per conversation hash, the position up to which
/// events are not queued again).
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    #[expect(
        clippy::box_collection,
        reason = "8 bytes in every socket's queue instead of 48: most sockets never resume"
    )]
    covered: Option<Box<HashMap<u64, u64>>>,
    /// Since when the queue has been at or over its capacity.
    backed_up_since: Option<Instant>,
}

impl Queue {
    fn covers(&self, item: &Outbound) -> bool {
        queue_covers(self.covered.as_deref(), item)
    }
}

fn queue_covers(covered: Option<&HashMap<u64, u64>>, item: &Outbound) -> bool {
    match (covered, item) {
        (
            Some(covered),
            Outbound::Event {
                conversation, seq, ..
            },
        ) => covered.get(conversation).is_some_and(|&upto| *seq <= upto),
        _ => false,
    }
}

/// The queue; shared by the socket's task, the hub and the writer.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    closed: AtomicBool,
    /// Holds not yet released: conversation events wait while there is one.
    holds: AtomicU32,
    capacity: usize,
    grace: Duration,
}

impl Outbox {
    /// An empty queue of `capacity` items, which may stay backed up for `grace`.
    pub fn new(capacity: usize, grace: Duration) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            holds: AtomicU32::new(0),
            capacity,
            grace,
        }
    }

    /// Items queued.
    pub fn queued(&self) -> usize {
        self.queue.lock().expect("outbox lock poisoned").items.len()
    }

    /// Queues `item` without waiting; a backed-up queue takes it within its grace.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        self.push(item, true)
    }

    /// Queues `item` without waiting, only below the capacity (what may be dropped).
    pub fn try_push_ephemeral(&self, item: Outbound) -> Result<(), PushError> {
        self.push(item, false)
    }

    fn push(&self, item: Outbound, may_overflow: bool) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        {
            let mut queue = self.queue.lock().expect("outbox lock poisoned");
            if queue.covers(&item) {
                return Ok(()); // The client has it from a resume's replay.
            }
            let len = queue.items.len();
            if len >= self.capacity {
                let now = Instant::now();
                let since = *queue.backed_up_since.get_or_insert(now);
                let overflowing = len >= self.capacity * OVERFLOW_FACTOR;
                if !may_overflow || overflowing || now.duration_since(since) > self.grace {
                    return Err(PushError::Full);
                }
            }
            queue.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next item if there is one (while held, the next that is not a conversation event).
    pub fn try_pop(&self) -> Option<Outbound> {
        self.pop_if(|_| true)
    }

    /// The next item's frame if it is text (a frame or an event), as [`Outbox::try_pop`] would
    /// give it; anything else stays.
    pub fn try_pop_text(&self) -> Option<Utf8Bytes> {
        let text = |item: &Outbound| matches!(item, Outbound::Text(_) | Outbound::Event { .. });
        match self.pop_if(text)? {
            Outbound::Text(frame) | Outbound::Event { frame, .. } => Some(frame),
            Outbound::Ping | Outbound::Close(_) => None,
        }
    }

    /// Takes the next item when `wanted` says so.
    fn pop_if(&self, wanted: impl FnOnce(&Outbound) -> bool) -> Option<Outbound> {
        let mut queue = self.queue.lock().expect("outbox lock poisoned");
        let items = &mut queue.items;
        let next = if self.holds.load(Ordering::Acquire) > 0 {
            items
                .iter()
                .position(|item| !matches!(item, Outbound::Event { .. }))?
        } else {
            0
        };
        if !wanted(items.get(next)?) {
            return None;
        }
        let item = items.remove(next);
        if items.is_empty() {
            // An idle socket keeps no slots (four would be 224 bytes in each).
            *items = VecDeque::new();
        }
        if items.len() < self.capacity {
            queue.backed_up_since = None;
        }
        item
    }

    /// The next item; `None` once the queue is closed and drained.
    pub async fn next(&self) -> Option<Outbound> {
        loop {
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            // A push between the check and this wait leaves a permit: no wake-up is lost.
            self.ready.notified().await;
        }
    }

    /// Holds conversation events until a matching [`Outbox::release`].
    pub fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends a hold: the replay's frames go first (before the held events, after what was queued
    /// before them), and a held event of a conversation at or below its position in the replay's
    /// `covered` is dropped: the client has it, or has it in the replay.
    pub fn release(&self, replay: Replay) {
        let Replay {
            frames: replayed,
            covered,
        } = replay;
        {
            let mut queue = self.queue.lock().expect("outbox lock poisoned");
            if !covered.is_empty() {
                let known = queue.covered.get_or_insert_default();
                for (conversation, upto) in covered {
                    let known = known.entry(conversation).or_default();
                    *known = (*known).max(upto);
                }
            }
            let Queue { items, covered, .. } = &mut *queue;
            let mut kept = VecDeque::with_capacity(items.len());
            for item in items.drain(..) {
                if !queue_covers(covered.as_deref(), &item) {
                    kept.push_back(item);
                }
            }
            let at = kept
                .iter()
                .position(|item| matches!(item, Outbound::Event { .. }))
                .unwrap_or(kept.len());
            for (i, frame) in replayed.into_iter().enumerate() {
                kept.insert(at + i, Outbound::Text(frame));
            }
            queue.items = kept;
            // Every release follows its hold; one too many must not end another's.
            let _ = self
                .holds
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        self.ready.notify_one();
    }

    /// No more pushes; the writer drains what is queued and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_order_and_drained_after_close() {
        let outbox = Outbox::new(1, Duration::ZERO);
        outbox.try_push(Outbound::Ping).unwrap();
        // Backed up: within the (here zero) grace only.
        outbox
            .try_push(Outbound::Text(Utf8Bytes::from_static("a")))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(outbox.try_push(Outbound::Ping), Err(PushError::Full));
        outbox.close();
        assert_eq!(outbox.try_push(Outbound::Ping), Err(PushError::Closed));
        assert!(matches!(outbox.next().await, Some(Outbound::Ping)));
        assert!(matches!(outbox.next().await, Some(Outbound::Text(_))));
        assert!(outbox.next().await.is_none());
    }

    fn event(seq: u64) -> Outbound {
        Outbound::Event {
            conversation: 7,
            seq,
            frame: Utf8Bytes::from(format!("e{seq}")),
        }
    }

    /// A replay of `frames` that covers `(conversation, upto)`.
    fn replay(frames: &[&str], (conversation, upto): (u64, u64)) -> Replay {
        Replay {
            frames: frames.iter().map(|f| Utf8Bytes::from(*f)).collect(),
            covered: HashMap::from([(conversation, upto)]),
        }
    }

    fn text(item: Outbound) -> String {
        match item {
            Outbound::Text(frame) | Outbound::Event { frame, .. } => frame.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_hold_keeps_events_back_and_its_release_puts_the_replay_first_without_duplicates() {
        let outbox = Outbox::new(16, Duration::from_secs(1));
        outbox.hold();
        outbox.try_push(event(5)).unwrap();
        outbox.try_push(Outbound::Text("connected".into())).unwrap();
        outbox.try_push(event(6)).unwrap();
        // Only what is not a conversation event goes out while held.
        assert_eq!(text(outbox.try_pop().unwrap()), "connected");
        assert!(outbox.try_pop().is_none());
        // The replay read up to 5: the held 5 is a duplicate, 6 is new.
        outbox.release(replay(&["e4", "e5"], (7, 5)));
        // Still on its way live after the release: not queued twice.
        outbox.try_push(event(5)).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| outbox.try_pop()).map(text).collect();
        assert_eq!(order, ["e4", "e5", "e6"]);
    }

    #[test]
    fn holds_nest_and_each_release_adds_what_it_covers() {
        let outbox = Outbox::new(16, Duration::from_secs(1));
        let other = |seq| Outbound::Event {
            conversation: 8,
            seq,
            frame: Utf8Bytes::from(format!("o{seq}")),
        };
        // A resume's hold, then a join's (of conversation 8) inside it.
        outbox.hold();
        outbox.hold();
        outbox.try_push(other(3)).unwrap();
        outbox.try_push(event(6)).unwrap();
        outbox.release(replay(&["o2", "o3"], (8, 3)));
        assert_eq!(text(outbox.try_pop().unwrap()), "o2");
        assert_eq!(text(outbox.try_pop().unwrap()), "o3");
        assert!(outbox.try_pop().is_none(), "still held by the resume");
        outbox.release(replay(&["e5"], (7, 5)));
        // Both positions stay covered.
        outbox.try_push(other(3)).unwrap();
        outbox.try_push(event(5)).unwrap();
        outbox.try_push(other(4)).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| outbox.try_pop()).map(text).collect();
        assert_eq!(order, ["e5", "e6", "o4"]);
        // A release too many ends no later hold early.
        outbox.release(Replay::default());
        outbox.hold();
        outbox.try_push(event(7)).unwrap();
        assert!(outbox.try_pop().is_none());
    }

    #[test]
    fn a_backed_up_queue_takes_more_within_its_grace_and_its_overflow_only() {
        let outbox = Outbox::new(2, Duration::from_secs(60));
        for _ in 0..2 {
            outbox.try_push(Outbound::Ping).unwrap();
        }
        assert_eq!(
            outbox.try_push_ephemeral(Outbound::Ping),
            Err(PushError::Full),
            "nothing ephemeral once backed up"
        );
        for _ in 2..2 * OVERFLOW_FACTOR {
            outbox.try_push(Outbound::Ping).unwrap();
        }
        assert_eq!(outbox.try_push(Outbound::Ping), Err(PushError::Full));
        // Caught up: below the capacity, the grace starts over.
        while outbox.try_pop().is_some() {}
        outbox.try_push_ephemeral(Outbound::Ping).unwrap();
    }

    #[test]
    fn a_queue_backed_up_past_its_grace_is_refused() {
        let outbox = Outbox::new(1, Duration::from_millis(20));
        outbox.try_push(Outbound::Ping).unwrap();
        outbox.try_push(Outbound::Ping).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(outbox.try_push(Outbound::Ping), Err(PushError::Full));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_a_push() {
        let outbox = std::sync::Arc::new(Outbox::new(4, Duration::from_secs(1)));
        let writer = tokio::spawn({
            let outbox = std::sync::Arc::clone(&outbox);
            async move { outbox.next().await.is_some() }
        });
        tokio::task::yield_now().await;
        outbox.try_push(Outbound::Ping).unwrap();
        assert!(writer.await.unwrap());
    }
}
