//! A socket's bounded outbound queue. Unlike a channel it allocates nothing while empty (a
//! tokio channel allocates a block of slots up front), which matters at thousands of idle
//! sockets a node; it shrinks back after a burst. Pushes never wait: a full queue is the
//! caller's to handle (drop an ephemeral push, or evict the socket).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Capacity kept after the queue empties; beyond it the memory goes back.
const KEEP_CAPACITY: usize = 16;

/// What a socket's writer sends.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame.
    Text(Utf8Bytes),
    /// A protocol ping.
    Ping,
    /// A close frame, then the end.
    Close(u16, &'static str),
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity.
    Full,
    /// The writer is gone.
    Closed,
}

/// The queue; shared by the socket's task, the hub and the writer.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    closed: AtomicBool,
    capacity: usize,
}

impl Outbox {
    /// An empty queue of at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            capacity,
        }
    }

    /// Queues `item` without waiting.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        {
            let mut queue = self.queue.lock().expect("outbox lock poisoned");
            if queue.len() >= self.capacity {
                return Err(PushError::Full);
            }
            queue.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next item if there is one.
    pub fn try_pop(&self) -> Option<Outbound> {
        let mut queue = self.queue.lock().expect("outbox lock poisoned");
        let item = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            *queue = VecDeque::new();
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
        let outbox = Outbox::new(2);
        outbox.try_push(Outbound::Ping).unwrap();
        outbox
            .try_push(Outbound::Text(Utf8Bytes::from_static("a")))
            .unwrap();
        assert_eq!(outbox.try_push(Outbound::Ping), Err(PushError::Full));
        outbox.close();
        assert_eq!(outbox.try_push(Outbound::Ping), Err(PushError::Closed));
        assert!(matches!(outbox.next().await, Some(Outbound::Ping)));
        assert!(matches!(outbox.next().await, Some(Outbound::Text(_))));
        assert!(outbox.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_a_push() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let writer = tokio::spawn({
            let outbox = std::sync::Arc::clone(&outbox);
            async move { outbox.next().await.is_some() }
        });
        tokio::task::yield_now().await;
        outbox.try_push(Outbound::Ping).unwrap();
        assert!(writer.await.unwrap());
    }
}
