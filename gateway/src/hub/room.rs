//! A room: a conversation with local members, and the sequences it has delivered to them (so a
//! gap fill or a late live event delivers nothing twice).

use std::collections::BTreeSet;
use std::sync::Mutex;

use chat_proto::client::Delivery;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::CloseReason;
use crate::socket::{PushStats, SocketHandle};

/// Recent sequences a room remembers to drop duplicates.
const RECENT_SEQS: usize = 1_024;

/// A conversation with local members.
pub(super) struct Room {
    /// Usually one or two: a list is smaller than a map.
    pub(super) members: Mutex<Vec<SocketHandle>>,
    pub(super) seen: Mutex<SeenSeqs>,
}

impl Room {
    /// Pushes `frame` to every member but `skip_user`; a durable event with a position
    /// (`event`: conversation hash and seq) is one a resume may hold back.
    pub(super) fn deliver(
        &self,
        frame: &Utf8Bytes,
        delivery: Delivery,
        event: Option<(u64, u64)>,
        skip_user: Option<&str>,
        stats: &PushStats,
    ) {
        let members = self.members.lock().expect("room lock poisoned");
        for socket in members.iter() {
            if skip_user.is_some_and(|u| *u == *socket.user_id) {
                continue;
            }
            match (delivery, event) {
                (Delivery::Durable, Some((conversation, seq))) => {
                    socket.push_event(frame, conversation, seq, stats);
                }
                _ => socket.push(frame, delivery, stats),
            }
        }
    }

    pub(super) fn evict_all(&self, reason: CloseReason) {
        for socket in self.members.lock().expect("room lock poisoned").iter() {
            socket.evict(reason);
        }
    }
}

/// The sequences a room has delivered: everything at or below `floor`, and the recent ones above.
pub(super) struct SeenSeqs {
    pub(super) floor: u64,
    recent: BTreeSet<u64>,
    pub(super) num_inserted: u64,
}

impl SeenSeqs {
    pub(super) fn new(floor: u64) -> Self {
        Self {
            floor,
            recent: BTreeSet::new(),
            num_inserted: 0,
        }
    }

    /// Records `seq`; false when it was delivered already (or precedes the subscription).
    pub(super) fn insert(&mut self, seq: u64) -> bool {
        if seq <= self.floor || !self.recent.insert(seq) {
            return false;
        }
        self.num_inserted += 1;
        if self.recent.len() > RECENT_SEQS
            && let Some(oldest) = self.recent.pop_first()
        {
            self.floor = oldest;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_seqs_drop_duplicates_and_what_precedes_the_subscription() {
        let mut seen = SeenSeqs::new(10);
        assert!(!seen.insert(10));
        assert!(seen.insert(12));
        assert!(seen.insert(11), "out of order is fine");
        assert!(!seen.insert(12));
        for seq in 13..13 + RECENT_SEQS as u64 {
            assert!(seen.insert(seq));
        }
        assert_eq!(seen.recent.len(), RECENT_SEQS);
        // 1,026 were delivered: the two oldest (11 and 12) fell below the floor.
        assert_eq!(seen.floor, 12);
        assert!(!seen.insert(12));
    }
}
