//! Gap fills: after core NATS may have lost events for the node (a slow-consumer drop, a
//! disconnection), every room reads from the stream what it may have missed and delivers what
//! it had not; each room remembers the recent sequences it delivered, so nothing goes twice.
//! The same read gives a socket that joins a conversation what it missed (see `membership`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_proto::service::Backoff;
use chat_proto::v1::ConversationEvent;
use futures_util::StreamExt;

use super::Hub;
use super::room::Room;
use crate::error::CloseReason;

/// How far below the node's highest known sequence a fill reaches for quiet rooms: events in
/// flight when a loss began (published by other nodes but not yet delivered) are within it.
const FILL_SLACK: u64 = 16_384;
/// Most events one room fills at once; a larger gap evicts its members so they resume.
const MAX_FILL_EVENTS: usize = 5_000;
/// The longest wait between two attempts of a fill; once reached, the fill gives up.
const MAX_FILL_WAIT: Duration = Duration::from_secs(10);
/// Rooms filled at once after a loss.
const FILL_CONCURRENCY: usize = 16;

impl Hub {
    /// Fills every room from the stream, a few at a time.
    pub(super) async fn fill_all(&self) {
        let rooms: Vec<(Arc<str>, Arc<Room>)> = {
            let registry = self.inner.registry.lock().expect("registry lock poisoned");
            registry
                .rooms
                .iter()
                .map(|(id, room)| (Arc::clone(id), Arc::clone(room)))
                .collect()
        };
        futures_util::stream::iter(rooms)
            .for_each_concurrent(FILL_CONCURRENCY, |(conversation_id, room)| async move {
                self.fill(&conversation_id, &room).await;
            })
            .await;
    }

    /// Delivers to `room` the conversation's events that it may have missed and had not
    /// delivered.
    async fn fill(&self, conversation_id: &str, room: &Room) {
        self.inner.stats.num_fills.inc();
        let loss_floor = self.inner.loss_floor.load(Ordering::Relaxed);
        let floor = room.seen.lock().expect("room lock poisoned").floor;
        let after = floor.max(loss_floor.saturating_sub(FILL_SLACK));
        let Some((events, complete)) = self.read_after(conversation_id, after).await else {
            if !self.inner.token.is_cancelled() {
                room.evict_all(CloseReason::TooSlow);
            }
            return;
        };
        let before = room.seen.lock().expect("room lock poisoned").num_inserted;
        for event in events {
            self.dispatch(room, event);
        }
        let filled = room.seen.lock().expect("room lock poisoned").num_inserted - before;
        self.inner.stats.num_filled.inc_by(filled);
        if filled > 0 {
            tracing::info!(conversation_id, filled, "filled events lost on the bus");
        }
        if !complete {
            room.evict_all(CloseReason::TooSlow);
        }
    }

    /// The conversation's events after `after` (at most [`MAX_FILL_EVENTS`]; the flag says
    /// whether that was all), the read tried again for a while; `None` once it gave up (whoever
    /// needed them must resume) or the node stops.
    pub(super) async fn read_after(
        &self,
        conversation_id: &str,
        after: u64,
    ) -> Option<(Vec<ConversationEvent>, bool)> {
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_FILL_WAIT);
        loop {
            match self
                .events_after(conversation_id, after, MAX_FILL_EVENTS)
                .await
            {
                Ok(read) => return Some(read),
                Err(_) if backoff.next() < MAX_FILL_WAIT => {
                    if !backoff.wait(self.inner.token.cancelled()).await {
                        return None;
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        conversation_id,
                        "cannot read from the stream; members must resume"
                    );
                    return None;
                }
            }
        }
    }
}
