//! Membership events: the users' joins and removals announced by the worker (on the node's own
//! subject, through the routers' placement), applied to the local sockets of the user, and
//! disconnects ordered through the server API; the
//! membership cache kept true; the router told each local user's conversations; and, after a
//! reconnection, every local user's rooms brought in line with the store.

use std::collections::HashSet;
use std::sync::Arc;

use chat_proto::client::{self, ConversationJson, Delivery};
use chat_proto::v1::{self, user_event};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Hub;
use crate::error::CloseReason;
use crate::socket::SocketHandle;
use crate::socket::outbox::Replay;

impl Hub {
    pub(super) fn forget_membership(&self, user_id: &str, conversation_id: &str) {
        self.inner
            .membership
            .invalidate(&(Arc::from(user_id), Arc::from(conversation_id)));
    }

    /// Joins every local socket of `user_id` to a conversation; a socket that cannot join is
    /// evicted (it reconnects and gets its rooms again; one over its room limit is told so).
    pub async fn join_user(&self, user_id: &str, conversation_id: &str) -> Vec<SocketHandle> {
        self.forget_membership(user_id, conversation_id);
        self.join_sockets(self.sockets_of(user_id), conversation_id)
            .await
    }

    async fn join_sockets(
        &self,
        sockets: Vec<SocketHandle>,
        conversation_id: &str,
    ) -> Vec<SocketHandle> {
        let mut joined = Vec::new();
        for socket in sockets {
            match self.join(&socket, conversation_id).await {
                Ok(()) => joined.push(socket),
                Err(error) => {
                    tracing::warn!(conversation_id, ?error, "join failed; evicting");
                    socket.evict(CloseReason::of_failed_join(&error));
                }
            }
        }
        joined
    }

    /// Takes every local socket of `user_id` out of a conversation.
    pub fn leave_user(&self, user_id: &str, conversation_id: &str) -> Vec<SocketHandle> {
        self.forget_membership(user_id, conversation_id);
        let sockets = self.sockets_of(user_id);
        for socket in &sockets {
            self.leave(socket.id, conversation_id);
        }
        sockets
    }

    /// Joins the user's local sockets to `conversation` and tells them with `event`. A socket
    /// new to it then gets what the conversation had after `since` (the stream sequence of the
    /// event that made the user a member, 0 when unknown) from the stream, before any later
    /// event: a message sent right after the join may have been published before this node's
    /// subscription to the conversation was live. The sockets are also told which of its
    /// participants are online.
    async fn user_joined(
        &self,
        user_id: &str,
        conversation: &v1::Conversation,
        event: &str,
        since: u64,
    ) {
        let frame = Utf8Bytes::from(client::push(
            event,
            serde_json::json!({ "conversation": ConversationJson::from(conversation) }),
        ));
        self.forget_membership(user_id, &conversation.id);
        let sockets = self.sockets_of(user_id);
        let newcomers: Vec<SocketHandle> = sockets
            .iter()
            .filter(|socket| since > 0 && !self.is_joined(socket.id, &conversation.id))
            .cloned()
            .collect();
        // Their conversation events wait, from before they join until the replay is read.
        for socket in &newcomers {
            socket.outbox().hold();
        }
        let joined = self.join_sockets(sockets, &conversation.id).await;
        for socket in &joined {
            socket.push(&frame, Delivery::Durable, &self.inner.stats.pushes);
        }
        // Told once per membership: the requester's own sockets joined before its ack, the
        // others join here.
        self.introduce_members(joined, user_id, conversation);
        if newcomers.is_empty() {
            return;
        }
        let replay = match self.read_after(&conversation.id, since).await {
            Some((events, true)) => {
                let mut replay = Replay::default();
                replay.add(&conversation.id, since, &events);
                Some(replay)
            }
            _ => None,
        };
        for socket in &newcomers {
            match &replay {
                Some(replay) => socket.outbox().release(replay.clone()),
                None => {
                    socket.outbox().release(Replay::default());
                    if !self.inner.token.is_cancelled() {
                        // Too much to replay, or the stream unreadable: the client resumes.
                        socket.evict(CloseReason::TooSlow);
                    }
                }
            }
        }
    }

    fn user_removed(&self, user_id: &str, conversation_id: &str) {
        let frame = Utf8Bytes::from(client::push(
            "conversation:removed",
            serde_json::json!({ "conversationId": conversation_id }),
        ));
        for socket in self.leave_user(user_id, conversation_id) {
            socket.push(&frame, Delivery::Durable, &self.inner.stats.pushes);
        }
    }

    /// Tells the router a local user's conversations (who hears of their presence), when they
    /// are first known and after each change.
    pub fn tell_router_conversations(&self, user_id: &str) {
        let Some(router) = &self.inner.router else {
            return;
        };
        if let Some(socket) = self.sockets_of(user_id).first() {
            let rooms = self.rooms_of(socket.id);
            router.conversations(user_id, rooms.iter().map(|c| c.to_string()).collect());
        }
    }

    pub(super) async fn on_user_event(&self, event: v1::UserEvent) {
        match event.kind {
            Some(user_event::Kind::Joined(joined)) => {
                let Some(conversation) = joined.conversation else {
                    return;
                };
                let name = if joined.created {
                    "conversation:new"
                } else {
                    "conversation:joined"
                };
                self.user_joined(&event.user_id, &conversation, name, joined.seq)
                    .await;
                self.tell_router_conversations(&event.user_id);
            }
            Some(user_event::Kind::Removed(removed)) => {
                self.user_removed(&event.user_id, &removed.conversation_id);
                self.tell_router_conversations(&event.user_id);
            }
            Some(user_event::Kind::Disconnect(disconnect)) => {
                let reason = if disconnect.banned {
                    CloseReason::Forbidden
                } else {
                    CloseReason::Normal
                };
                for socket in self.sockets_of(&event.user_id) {
                    socket.evict(reason);
                }
            }
            None => {}
        }
    }

    /// After a reconnection: user events may have been lost, so each local user's rooms are
    /// compared with the store's membership and brought in line.
    pub(super) async fn resync_users(&self) {
        let users: Vec<Arc<str>> = {
            let registry = self.inner.registry.lock().expect("registry lock poisoned");
            registry.users.keys().cloned().collect()
        };
        for user_id in users {
            let Ok(conversations) = self.inner.directory.conversations_of(&user_id).await else {
                tracing::warn!("cannot resync memberships: the worker is unavailable");
                return;
            };
            let member_of: HashSet<&str> = conversations.iter().map(|c| c.id.as_str()).collect();
            for socket in self.sockets_of(&user_id) {
                let rooms = self.rooms_of(socket.id);
                for room in rooms.iter().filter(|r| !member_of.contains(&***r)) {
                    self.user_removed(&user_id, room);
                }
                for conversation in conversations
                    .iter()
                    .filter(|c| !rooms.iter().any(|r| **r == *c.id))
                {
                    self.user_joined(&user_id, conversation, "conversation:joined", 0)
                        .await;
                }
            }
        }
    }
}
