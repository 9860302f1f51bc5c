//! The local index: which local sockets each user has, which conversations each socket is in,
//! and the rooms (conversations with local members) with their members. A room's first member
//! starts its shard's subscription and its last ends it ([`super::shards`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::subjects;

use super::Hub;
use super::room::{Room, SeenSeqs};
use super::shards::{Shard, Subscription};
use crate::error::RequestError;
use crate::socket::{SocketHandle, SocketId};

/// How long a join waits for the conversation's subscription.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a socket in `rooms` may join `conversation_id` (a new one when `None`): one it is in
/// already, or one more below `max`. Over it, the only `FORBIDDEN` a join gives.
fn room_limit(
    rooms: &HashSet<Arc<str>>,
    max: usize,
    conversation_id: Option<&str>,
) -> Result<(), RequestError> {
    let joined = conversation_id.is_some_and(|id| rooms.contains(id));
    if rooms.len() < max || joined {
        return Ok(());
    }
    Err(RequestError::forbidden(format!(
        "a connection may be in at most {max} conversations; leave one first"
    )))
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) rooms: HashMap<Arc<str>, Arc<Room>>,
    pub(super) shards: HashMap<u16, Shard>,
    pub(super) users: HashMap<Arc<str>, Vec<SocketHandle>>,
    pub(super) socket_rooms: HashMap<SocketId, HashSet<Arc<str>>>,
}

impl Hub {
    /// Registers a socket under its user.
    pub fn register(&self, socket: &SocketHandle) {
        let mut registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry
            .users
            .entry(Arc::clone(&socket.user_id))
            // Most users have one device on a node.
            .or_insert_with(|| Vec::with_capacity(1))
            .push(socket.clone());
        registry.socket_rooms.entry(socket.id).or_default();
    }

    /// Removes a socket from its rooms and its user.
    pub fn unregister(&self, socket: &SocketHandle) {
        let mut registry = self.inner.registry.lock().expect("registry lock poisoned");
        let rooms = registry.socket_rooms.remove(&socket.id).unwrap_or_default();
        for conversation_id in rooms {
            leave_room(&mut registry, &conversation_id, socket.id);
        }
        if let Some(sockets) = registry.users.get_mut(&socket.user_id) {
            sockets.retain(|s| s.id != socket.id);
            if sockets.is_empty() {
                registry.users.remove(&socket.user_id);
            }
        }
    }

    /// The conversations a socket is in.
    pub fn rooms_of(&self, socket_id: SocketId) -> Vec<Arc<str>> {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry
            .socket_rooms
            .get(&socket_id)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a socket is in a conversation: it is only put there by the store's membership
    /// (at connect, after a join) or by the worker's membership events, so it is a member.
    pub fn is_joined(&self, socket_id: SocketId, conversation_id: &str) -> bool {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry
            .socket_rooms
            .get(&socket_id)
            .is_some_and(|rooms| rooms.contains(conversation_id))
    }

    /// How many shard subscriptions the node holds.
    pub fn num_subscriptions(&self) -> usize {
        self.inner
            .registry
            .lock()
            .expect("registry lock poisoned")
            .shards
            .len()
    }

    /// Frames queued in the local sockets' outboxes.
    pub fn outbox_frames(&self) -> usize {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry
            .users
            .values()
            .flatten()
            .map(SocketHandle::queued)
            .sum()
    }

    /// How many conversations have local members.
    pub fn num_rooms(&self) -> usize {
        self.inner
            .registry
            .lock()
            .expect("registry lock poisoned")
            .rooms
            .len()
    }

    /// Joins a socket to a conversation; returns once the node's subscription is live, so that
    /// every event published after the join reaches the socket.
    pub async fn join(
        &self,
        socket: &SocketHandle,
        conversation_id: &str,
    ) -> Result<(), RequestError> {
        let mut state = {
            let mut registry = self.inner.registry.lock().expect("registry lock poisoned");
            let registry = &mut *registry;
            let Some(rooms) = registry.socket_rooms.get_mut(&socket.id) else {
                return Ok(()); // The socket is gone.
            };
            room_limit(
                rooms,
                self.inner.max_rooms_per_socket,
                Some(conversation_id),
            )?;
            let shard = subjects::live_shard(conversation_id);
            // The room's id is shared by its members' sets, not copied into each.
            let room = match registry.rooms.get_key_value(conversation_id) {
                Some((id, room)) => {
                    rooms.insert(Arc::clone(id));
                    Arc::clone(room)
                }
                None => {
                    let conversation_id: Arc<str> = conversation_id.into();
                    rooms.insert(Arc::clone(&conversation_id));
                    let room = Arc::new(Room {
                        // Most rooms have one local member (a direct conversation).
                        members: Mutex::new(Vec::with_capacity(1)),
                        seen: Mutex::new(SeenSeqs::new(self.inner.hwm.load(Ordering::Relaxed))),
                    });
                    registry.rooms.insert(conversation_id, Arc::clone(&room));
                    let shard = registry
                        .shards
                        .entry(shard)
                        .or_insert_with(|| self.spawn_shard(shard));
                    shard.num_rooms += 1;
                    room
                }
            };
            let mut members = room.members.lock().expect("room lock poisoned");
            if !members.iter().any(|m| m.id == socket.id) {
                members.push(socket.clone());
            }
            drop(members);
            // The room's shard is there: a shard stays while it has rooms.
            registry.shards[&shard].state.clone()
        };
        let live = tokio::time::timeout(
            JOIN_TIMEOUT,
            state.wait_for(|s| *s != Subscription::Pending),
        )
        .await;
        if matches!(live, Ok(Ok(s)) if *s == Subscription::Live) {
            return Ok(());
        }
        self.leave(socket.id, conversation_id);
        Err(RequestError::unavailable())
    }

    /// Takes a socket out of a conversation; the last local member's leave drops the room, and
    /// the shard's last room ends its subscription.
    pub fn leave(&self, socket_id: SocketId, conversation_id: &str) {
        let mut registry = self.inner.registry.lock().expect("registry lock poisoned");
        if let Some(rooms) = registry.socket_rooms.get_mut(&socket_id) {
            rooms.remove(conversation_id);
        }
        leave_room(&mut registry, conversation_id, socket_id);
    }

    /// The local sockets in any of `conversation_ids`, each once, but those of `except_user`.
    pub fn sockets_in(&self, conversation_ids: &[String], except_user: &str) -> Vec<SocketHandle> {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        let mut seen = HashSet::new();
        let mut sockets = Vec::new();
        for room in conversation_ids
            .iter()
            .filter_map(|c| registry.rooms.get(c.as_str()))
        {
            for socket in room.members.lock().expect("room lock poisoned").iter() {
                if *socket.user_id != *except_user && seen.insert(socket.id) {
                    sockets.push(socket.clone());
                }
            }
        }
        sockets
    }

    pub(super) fn sockets_of(&self, user_id: &str) -> Vec<SocketHandle> {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry
            .users
            .get(user_id)
            .map(|sockets| sockets.to_vec())
            .unwrap_or_default()
    }

    /// Whether a socket may join `conversation_id` (a new conversation when `None`) within its
    /// room limit, as [`Hub::join`] will check.
    pub fn check_room_limit(
        &self,
        socket_id: SocketId,
        conversation_id: Option<&str>,
    ) -> Result<(), RequestError> {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        match registry.socket_rooms.get(&socket_id) {
            Some(rooms) => room_limit(rooms, self.inner.max_rooms_per_socket, conversation_id),
            None => Ok(()),
        }
    }
}

fn leave_room(registry: &mut Registry, conversation_id: &str, socket_id: SocketId) {
    let Some(room) = registry.rooms.get(conversation_id) else {
        return;
    };
    let empty = {
        let mut members = room.members.lock().expect("room lock poisoned");
        members.retain(|m| m.id != socket_id);
        members.is_empty()
    };
    if !empty {
        return;
    }
    registry.rooms.remove(conversation_id);
    let shard = subjects::live_shard(conversation_id);
    if let Some(entry) = registry.shards.get_mut(&shard) {
        entry.num_rooms -= 1;
        if entry.num_rooms == 0 {
            entry.cancel.cancel();
            registry.shards.remove(&shard);
        }
    }
}
