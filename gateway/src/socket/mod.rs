//! One client socket as the rest of the node sees it: its bounded outbox ([`outbox`]), the writer
//! task that drains it ([`writer`]), and the switch that evicts it from outside its task. What
//! happens when the outbox is full is decided here, in one place: an ephemeral push (typing,
//! receipts, presence) is dropped and counted, anything that carries a message evicts the socket
//! (close 4503: the client resumes).

pub mod outbox;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use chat_proto::client::Delivery;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::CloseReason;
use outbox::{Outbound, Outbox, PushError};

/// Pushes queued, and what full outboxes cost, counted over the node's sockets.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Pushes queued.
    pub deliveries: Counter,
    /// Ephemeral pushes dropped for full outboxes.
    pub num_dropped_ephemeral: Counter,
    /// Sockets evicted because a message did not fit their outbox.
    pub num_evicted_slow: Counter,
}

/// A socket's id, unique within the node.
pub type SocketId = u64;

/// A live socket as the hub sees it: its outbox and its eviction switch; a cheap `Clone`.
#[derive(Clone, Debug)]
pub struct SocketHandle {
    /// The socket's id.
    pub id: SocketId,
    /// Its user.
    pub user_id: Arc<str>,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
}

/// Ends a socket from outside its task, with a reason.
#[derive(Debug, Default)]
pub struct Eviction {
    ready: Notify,
    /// The reason's close code; 0 until evicted.
    code: AtomicU16,
}

impl Eviction {
    /// Evicts for `reason`; the first reason wins. True when this call evicted the socket.
    pub fn evict(&self, reason: CloseReason) -> bool {
        let first = self
            .code
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.ready.notify_waiters();
        first
    }

    /// The reason, once evicted.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.code.load(Ordering::Acquire))
    }

    /// Resolves once evicted, with the reason.
    pub async fn evicted(&self) -> CloseReason {
        loop {
            // Registered before the check, so an eviction in between is not missed.
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }
}

impl SocketHandle {
    /// Frames queued, not yet written.
    pub fn queued(&self) -> usize {
        self.outbox.queued()
    }

    /// A handle over a socket's outbox and eviction switch.
    pub fn new(
        id: SocketId,
        user_id: Arc<str>,
        outbox: Arc<Outbox>,
        eviction: Arc<Eviction>,
    ) -> Self {
        Self {
            id,
            user_id,
            outbox,
            eviction,
        }
    }

    /// Ends the socket from outside its task; true when this call ended it (the first reason).
    pub fn evict(&self, reason: CloseReason) -> bool {
        self.eviction.evict(reason)
    }

    /// The socket's outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The socket's eviction switch, to wait on.
    pub fn eviction(&self) -> Arc<Eviction> {
        Arc::clone(&self.eviction)
    }

    /// Queues a frame of the socket's own (an ack, an error); a socket that cannot take it is
    /// too slow and is evicted.
    pub fn emit(&self, frame: String) {
        if let Err(PushError::Full) = self.outbox.try_push(Outbound::Text(frame.into())) {
            self.evict(CloseReason::TooSlow);
        }
    }

    /// Queues the close; a socket that cannot take it is evicted for the same reason.
    pub fn close(&self, reason: CloseReason) {
        if self.outbox.try_push(Outbound::Close(reason)).is_err() {
            self.evict(reason);
        }
    }

    /// Queues a push without waiting; see the module documentation for a full outbox.
    pub fn push(&self, frame: &Utf8Bytes, delivery: Delivery, stats: &PushStats) {
        self.queue(Outbound::Text(frame.clone()), delivery, stats);
    }

    /// Queues a conversation event (held while the socket resumes).
    pub fn push_event(&self, frame: &Utf8Bytes, conversation: u64, seq: u64, stats: &PushStats) {
        let event = Outbound::Event {
            conversation,
            seq,
            frame: frame.clone(),
        };
        self.queue(event, Delivery::Durable, stats);
    }

    fn queue(&self, item: Outbound, delivery: Delivery, stats: &PushStats) {
        let pushed = match delivery {
            Delivery::Ephemeral => self.outbox.try_push_ephemeral(item),
            Delivery::Durable => self.outbox.try_push(item),
        };
        match pushed {
            Ok(()) => {
                stats.deliveries.inc();
            }
            Err(PushError::Full) => match delivery {
                Delivery::Ephemeral => {
                    stats.num_dropped_ephemeral.inc();
                }
                Delivery::Durable => {
                    // Counted once a socket: pushes that follow before it closes fail too.
                    if self.evict(CloseReason::TooSlow) {
                        stats.num_evicted_slow.inc();
                    }
                }
            },
            Err(PushError::Closed) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backed_up_outbox_drops_ephemeral_pushes_and_evicts_past_its_overflow() {
        let grace = std::time::Duration::from_secs(60);
        let outbox = Arc::new(Outbox::new(1, grace));
        let eviction = Arc::new(Eviction::default());
        let socket = SocketHandle::new(1, "u".into(), outbox, Arc::clone(&eviction));
        let stats = PushStats::default();
        let frame = Utf8Bytes::from_static("{}");
        socket.push(&frame, Delivery::Durable, &stats);
        socket.push(&frame, Delivery::Ephemeral, &stats);
        assert_eq!(stats.num_dropped_ephemeral.get(), 1);
        for _ in 1..outbox::OVERFLOW_FACTOR {
            socket.push(&frame, Delivery::Durable, &stats);
        }
        assert_eq!(
            eviction.reason(),
            None,
            "messages overflow within the grace"
        );
        socket.push(&frame, Delivery::Durable, &stats);
        assert_eq!(eviction.reason(), Some(CloseReason::TooSlow));
    }
}
