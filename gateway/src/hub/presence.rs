//! Presence pushes: the frames a change of what others see of a user makes, and the
//! introductions made when users come to share a conversation. A router tells of a user's
//! changes (`crate::presence` relays them); it does not tell of a user who is online already
//! when a conversation is made with them, or when they are added to one or join it. So a socket
//! that joins a conversation of up to [`MAX_INTRODUCED_PARTICIPANTS`] is told which of its
//! participants are online, and a node that delivers `participant:added` tells the room's local
//! members whether the added user is.
//!
//! Introductions are ephemeral pushes, like every presence push, and bounded: at most
//! [`MAX_INTRODUCTIONS`] router look-ups at once per node; past that, one is skipped (counted),
//! as a full outbox drops a presence push.

use std::sync::Arc;

use chat_proto::client::{self, Delivery};
use chat_proto::timestamp::{iso8601, now_ms};
use chat_proto::v1::{self, Status};
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Hub;
use crate::socket::SocketHandle;

/// Most introductions (router look-ups) one node makes at once.
pub const MAX_INTRODUCTIONS: usize = 64;
/// The largest conversation whose participants a socket new to it is told of: all its
/// participants are listed up to this size; in a larger one (a room of a thousand made at once
/// would tell each member of up to a hundred others) the client asks `room:online`.
pub const MAX_INTRODUCED_PARTICIPANTS: usize = 100;

/// The protocol's name of a status.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Offline => "offline",
        Status::Online => "online",
        Status::Away => "away",
        Status::Busy => "busy",
        Status::Invisible => "invisible",
    }
}

/// The pushes a change makes, in order.
pub fn frames(change: &v1::PresenceChange) -> Vec<Utf8Bytes> {
    let previous = Status::try_from(change.previous).unwrap_or(Status::Offline);
    let current = Status::try_from(change.current).unwrap_or(Status::Offline);
    let at = iso8601(change.timestamp_ms);
    let user_id = &change.user_id;
    let online = || client::push("user:online", json!({ "userId": user_id, "timestamp": at }));
    let changed = || {
        client::push(
            "presence:changed",
            json!({ "userId": user_id, "status": status_name(current) }),
        )
    };
    let pushes = match (previous, current) {
        (Status::Offline, Status::Online) => vec![online()],
        (Status::Offline, _) => vec![online(), changed()],
        (_, Status::Offline) => vec![client::push(
            "user:offline",
            json!({ "userId": user_id, "timestamp": at }),
        )],
        _ => vec![changed()],
    };
    pushes.into_iter().map(Utf8Bytes::from).collect()
}

/// The participants of `conversation` that `user_id`, new to it, is told of: the others, none
/// in a conversation of more than [`MAX_INTRODUCED_PARTICIPANTS`].
fn introduced(user_id: &str, conversation: &v1::Conversation) -> Vec<String> {
    let size = usize::try_from(conversation.num_participants).unwrap_or(usize::MAX);
    if size > MAX_INTRODUCED_PARTICIPANTS {
        return Vec::new();
    }
    conversation
        .participant_ids
        .iter()
        .filter(|id| **id != *user_id)
        .cloned()
        .collect()
}

impl Hub {
    /// Pushes the frames of `change` to each of `sockets`.
    pub fn tell(&self, sockets: &[SocketHandle], change: &v1::PresenceChange) {
        if sockets.is_empty() {
            return;
        }
        let frames = frames(change);
        for socket in sockets {
            for frame in &frames {
                socket.push(frame, Delivery::Ephemeral, &self.inner.stats.pushes);
            }
        }
    }

    /// Tells `sockets`, new to `conversation`, which of its participants (but their own user)
    /// are online; none in a conversation of more than [`MAX_INTRODUCED_PARTICIPANTS`].
    pub(super) fn introduce_members(
        &self,
        sockets: Vec<SocketHandle>,
        user_id: &str,
        conversation: &v1::Conversation,
    ) {
        let others = introduced(user_id, conversation);
        if sockets.is_empty() || others.is_empty() {
            return;
        }
        self.introduce(others, move |_, _| sockets.clone());
    }

    /// Tells the local members of `conversation_id` but `user_id`'s own sockets whether
    /// `user_id`, just added to it, is online.
    pub(super) fn introduce_user(&self, conversation_id: &str, user_id: &str) {
        let conversation_ids = [conversation_id.to_owned()];
        self.introduce(vec![user_id.to_owned()], move |hub, user_id| {
            hub.sockets_in(&conversation_ids, user_id)
        });
    }

    /// Asks the routers what others were last told of `user_ids` (a change on its way reaches
    /// the conversation by itself), then tells the sockets that `audience` names for each one who
    /// is online that they are; in a task of the hub's, bounded.
    fn introduce(
        &self,
        user_ids: Vec<String>,
        audience: impl Fn(&Hub, &str) -> Vec<SocketHandle> + Send + 'static,
    ) {
        let Some(router) = &self.inner.router else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.inner.introductions).try_acquire_owned() else {
            self.inner.stats.num_introductions_skipped.inc();
            return;
        };
        let routers = router.routers().clone();
        let hub = self.clone();
        self.inner.tracker.spawn(async move {
            let _permit = permit;
            let statuses = tokio::select! {
                () = hub.inner.token.cancelled() => return,
                statuses = routers.presence(user_ids, true) => statuses,
            };
            let statuses = match statuses {
                Ok(statuses) => statuses,
                Err(error) => {
                    tracing::debug!(%error, "no introduction: the routers did not answer");
                    return;
                }
            };
            for (user_id, status) in statuses {
                if status == Status::Offline {
                    continue;
                }
                let change = v1::PresenceChange {
                    user_id,
                    previous: Status::Offline.into(),
                    current: status.into(),
                    conversation_ids: Vec::new(),
                    timestamp_ms: now_ms(),
                };
                hub.tell(&audience(&hub, &change.user_id), &change);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(previous: Status, current: Status) -> Vec<String> {
        let change = v1::PresenceChange {
            user_id: "ann".into(),
            previous: previous.into(),
            current: current.into(),
            conversation_ids: vec!["c".into()],
            timestamp_ms: 0,
        };
        frames(&change)
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_str(p).unwrap();
                v["event"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_newcomer_hears_of_the_others_in_conversations_of_up_to_100() {
        let room = |n: usize| v1::Conversation {
            participant_ids: (0..n.min(100)).map(|i| format!("u{i}")).collect(),
            num_participants: n as u32,
            ..Default::default()
        };
        assert_eq!(introduced("u0", &room(3)), ["u1", "u2"]);
        assert_eq!(introduced("u0", &room(100)).len(), 99);
        assert!(introduced("u0", &room(101)).is_empty());
        assert!(introduced("u0", &room(1)).is_empty());
    }

    #[test]
    fn each_change_makes_the_protocols_events() {
        assert_eq!(events(Status::Offline, Status::Online), ["user:online"]);
        assert_eq!(
            events(Status::Offline, Status::Away),
            ["user:online", "presence:changed"]
        );
        assert_eq!(events(Status::Busy, Status::Offline), ["user:offline"]);
        assert_eq!(events(Status::Online, Status::Away), ["presence:changed"]);
    }
}
