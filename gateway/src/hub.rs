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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::client::{self, ConversationJson, Delivery, close};
use chat_proto::v1::{self, ConversationEvent, conversation_event::Kind, user_event};
use chat_proto::{bus, subjects};
use futures_util::StreamExt;
use moka::sync::Cache;
use prost::Message as _;
use tokio::sync::{Notify, mpsc, watch};

use crate::outbox::{Outbound, Outbox, PushError};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::RequestError;
use crate::history::StreamReader;
use crate::router::RouterLink;
use crate::worker::WorkerClient;

/// How far below the node's highest known sequence a fill reaches for quiet rooms: events in
/// flight when a loss began (published by other nodes but not yet delivered) are within it.
const FILL_SLACK: u64 = 16_384;
/// Most events one room fills at once; a larger gap evicts its members so they resume.
const MAX_FILL_EVENTS: usize = 5_000;
/// Rooms filled at once after a loss.
const FILL_CONCURRENCY: usize = 16;
/// Recent sequences a room remembers to drop duplicates.
const RECENT_SEQS: usize = 1_024;
/// How long a join waits for the conversation's subscription.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Ends a socket from outside its task, with a close code.
#[derive(Debug, Default)]
pub struct Eviction {
    ready: Notify,
    code: AtomicU16,
}

impl Eviction {
    /// Evicts with `code`; the first code wins.
    pub fn evict(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.ready.notify_waiters();
    }

    /// The close code, once evicted.
    pub fn code(&self) -> Option<u16> {
        Some(self.code.load(Ordering::Acquire)).filter(|&c| c != 0)
    }

    /// Resolves once evicted, with the close code.
    pub async fn evicted(&self) -> u16 {
        loop {
            // Registered before the check, so an eviction in between is not missed.
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.code() {
                return code;
            }
            notified.await;
        }
    }
}

impl SocketHandle {
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

    /// Queues a push without waiting; see the module documentation for a full outbox.
    pub fn push(&self, frame: &Utf8Bytes, delivery: Delivery, stats: &Stats) {
        self.queue(Outbound::Text(frame.clone()), delivery, stats);
    }

    /// Queues a conversation event (held while the socket resumes).
    fn push_event(&self, frame: &Utf8Bytes, conversation: u64, seq: u64, stats: &Stats) {
        let event = Outbound::Event {
            conversation,
            seq,
            frame: frame.clone(),
        };
        self.queue(event, Delivery::Durable, stats);
    }

    fn queue(&self, item: Outbound, delivery: Delivery, stats: &Stats) {
        let pushed = match delivery {
            Delivery::Ephemeral => self.outbox.try_push_ephemeral(item),
            Delivery::Durable => self.outbox.try_push(item),
        };
        match pushed {
            Ok(()) => {}
            Err(PushError::Full) => match delivery {
                Delivery::Ephemeral => {
                    stats.num_dropped_ephemeral.fetch_add(1, Ordering::Relaxed);
                }
                Delivery::Durable => {
                    stats.num_evicted_slow.fetch_add(1, Ordering::Relaxed);
                    self.eviction.evict(close::TOO_SLOW);
                }
            },
            Err(PushError::Closed) => {}
        }
    }
}

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

/// The close code of a socket that could not join its rooms: over its room limit, or a fault.
pub fn join_close_code(error: &RequestError) -> u16 {
    if error.code == client::ErrorCode::Forbidden {
        close::OVER_LIMIT
    } else {
        close::INTERNAL
    }
}

/// Counters of the hub.
#[derive(Debug, Default)]
pub struct Stats {
    /// Ephemeral pushes dropped for full outboxes.
    pub num_dropped_ephemeral: AtomicU64,
    /// Sockets evicted because a message did not fit their outbox.
    pub num_evicted_slow: AtomicU64,
    /// Events delivered by fills after a loss.
    pub num_filled: AtomicU64,
    /// Rooms filled.
    pub num_fills: AtomicU64,
    /// Events of conversations without local members, received through a shard and dropped.
    pub num_foreign_events: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    Pending,
    Live,
    Failed,
}

/// A conversation with local members.
struct Room {
    /// Usually one or two: a list is smaller than a map.
    members: Mutex<Vec<SocketHandle>>,
    seen: Mutex<SeenSeqs>,
}

impl Room {
    /// Pushes `frame` to every member but `skip_user`; a durable event with a position
    /// (`event`: conversation hash and seq) is one a resume may hold back.
    fn deliver(
        &self,
        frame: &Utf8Bytes,
        delivery: Delivery,
        event: Option<(u64, u64)>,
        skip_user: Option<&str>,
        stats: &Stats,
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

    fn evict_all(&self, code: u16) {
        for socket in self.members.lock().expect("room lock poisoned").iter() {
            socket.eviction.evict(code);
        }
    }
}

/// A shard subscription of the node.
struct Shard {
    /// Local rooms in the shard; the subscription ends with the last.
    num_rooms: usize,
    /// Tells this subscription apart from a later one of the same shard.
    generation: u64,
    cancel: CancellationToken,
    state: watch::Receiver<Subscription>,
}

#[derive(Default)]
struct Registry {
    rooms: HashMap<Arc<str>, Arc<Room>>,
    shards: HashMap<u16, Shard>,
    users: HashMap<Arc<str>, Vec<SocketHandle>>,
    socket_rooms: HashMap<SocketId, HashSet<Arc<str>>>,
    next_generation: u64,
}

/// Membership look-ups cached by (user, conversation).
pub type MembershipCache = Cache<(Arc<str>, Arc<str>), bool>;

struct Inner {
    client: async_nats::Client,
    /// Told of the local users' membership changes (their presence audience).
    router: Option<RouterLink>,
    reader: StreamReader,
    worker: WorkerClient,
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
    /// A hub over `client`; its tasks end when `token` is cancelled.
    pub fn new(
        client: async_nats::Client,
        reader: StreamReader,
        worker: WorkerClient,
        membership: MembershipCache,
        router: Option<RouterLink>,
        token: CancellationToken,
        max_rooms_per_socket: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                router,
                reader,
                worker,
                membership,
                registry: Mutex::default(),
                hwm: AtomicU64::new(0),
                loss_floor: AtomicU64::new(0),
                refill: Notify::new(),
                stats: Stats::default(),
                token,
                tracker: TaskTracker::new(),
                max_rooms_per_socket,
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
    ) -> Result<(), async_nats::SubscribeError> {
        // Events for users: through the routers' placement on the node's own subject, or to
        // every node when the publisher could not ask a router.
        let mut user_events = futures_util::stream::select(
            self.inner
                .client
                .subscribe(subjects::node_users(node_id))
                .await?,
            self.inner
                .client
                .subscribe(subjects::ALL_USERS_LIVE)
                .await?,
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
                    let shard = registry.shards.entry(shard).or_insert_with(|| {
                        registry.next_generation += 1;
                        self.spawn_shard(shard, registry.next_generation)
                    });
                    shard.num_rooms += 1;
                    room
                }
            };
            let mut members = room.members.lock().expect("room lock poisoned");
            if !members.iter().any(|m| m.id == socket.id) {
                members.push(socket.clone());
            }
            drop(members);
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

    fn spawn_shard(&self, shard: u16, generation: u64) -> Shard {
        let (state_tx, state) = watch::channel(Subscription::Pending);
        let cancel = self.inner.token.child_token();
        let hub = self.clone();
        let task_cancel = cancel.clone();
        self.inner.tracker.spawn(async move {
            hub.run_shard(shard, generation, state_tx, task_cancel)
                .await
        });
        Shard {
            num_rooms: 0,
            generation,
            cancel,
            state,
        }
    }

    async fn run_shard(
        &self,
        shard: u16,
        generation: u64,
        state: watch::Sender<Subscription>,
        cancel: CancellationToken,
    ) {
        let subject = subjects::conversation_live_shard(shard);
        let subscribed = tokio::select! {
            () = cancel.cancelled() => return,
            subscribed = async {
                let subscriber = self.inner.client.subscribe(subject).await.ok()?;
                // The server has the subscription once a flush returns.
                self.inner.client.flush().await.ok()?;
                Some(subscriber)
            } => subscribed,
        };
        let Some(mut subscriber) = subscribed else {
            let _ = state.send(Subscription::Failed);
            let mut registry = self.inner.registry.lock().expect("registry lock poisoned");
            if registry
                .shards
                .get(&shard)
                .is_some_and(|s| s.generation == generation)
            {
                registry.shards.remove(&shard);
            }
            return;
        };
        let _ = state.send(Subscription::Live);
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let message = tokio::select! {
                biased;
                () = &mut cancelled => break,
                message = subscriber.next() => message,
            };
            let Some(message) = message else { break };
            let event = match bus::decode_event(&message.payload, None) {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "undecodable live event");
                    continue;
                }
            };
            if subjects::live_shard(&event.conversation_id) != shard {
                tracing::warn!("an event on another shard's subject");
                continue;
            }
            match self.room(&event.conversation_id) {
                Some(room) => self.dispatch(&room, event),
                None => {
                    self.inner
                        .stats
                        .num_foreign_events
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Dropping the subscriber unsubscribes.
    }

    fn room(&self, conversation_id: &str) -> Option<Arc<Room>> {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry.rooms.get(conversation_id).cloned()
    }

    fn dispatch(&self, room: &Room, event: ConversationEvent) {
        if event.seq > 0 {
            if !room
                .seen
                .lock()
                .expect("room lock poisoned")
                .insert(event.seq)
            {
                return;
            }
            self.observe(event.seq);
        }
        let skip_user = match &event.kind {
            Some(Kind::ParticipantAdded(p)) => {
                self.forget_membership(&p.user_id, &event.conversation_id);
                None
            }
            Some(Kind::ParticipantRemoved(p)) => {
                self.forget_membership(&p.user_id, &event.conversation_id);
                None
            }
            Some(Kind::Typing(t)) => Some(t.user_id.as_str()),
            _ => None,
        };
        let Some((frame, delivery)) = client::conversation_push(&event) else {
            return;
        };
        let position =
            (event.seq > 0).then(|| (subjects::fnv1a(&event.conversation_id), event.seq));
        room.deliver(
            &Utf8Bytes::from(frame),
            delivery,
            position,
            skip_user,
            &self.inner.stats,
        );
    }

    /// Fills every room from the stream, a few at a time.
    async fn fill_all(&self) {
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

    async fn fill(&self, conversation_id: &str, room: &Room) {
        self.inner.stats.num_fills.fetch_add(1, Ordering::Relaxed);
        let loss_floor = self.inner.loss_floor.load(Ordering::Relaxed);
        let floor = room.seen.lock().expect("room lock poisoned").floor;
        let after = floor.max(loss_floor.saturating_sub(FILL_SLACK));
        let mut backoff = Duration::from_millis(100);
        let (events, complete) = loop {
            match self
                .inner
                .reader
                .events_after(conversation_id, after, MAX_FILL_EVENTS)
                .await
            {
                Ok(read) => break read,
                Err(_) if backoff < Duration::from_secs(10) => {
                    tokio::select! {
                        () = self.inner.token.cancelled() => return,
                        () = tokio::time::sleep(backoff) => backoff *= 2,
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        conversation_id,
                        "cannot fill from the stream; members must resume"
                    );
                    room.evict_all(close::TOO_SLOW);
                    return;
                }
            }
        };
        let before = room.seen.lock().expect("room lock poisoned").num_inserted;
        for event in events {
            self.dispatch(room, event);
        }
        let filled = room.seen.lock().expect("room lock poisoned").num_inserted - before;
        self.inner
            .stats
            .num_filled
            .fetch_add(filled, Ordering::Relaxed);
        if filled > 0 {
            tracing::info!(conversation_id, filled, "filled events lost on the bus");
        }
        if !complete {
            room.evict_all(close::TOO_SLOW);
        }
    }

    fn forget_membership(&self, user_id: &str, conversation_id: &str) {
        self.inner
            .membership
            .invalidate(&(Arc::from(user_id), Arc::from(conversation_id)));
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

    fn sockets_of(&self, user_id: &str) -> Vec<SocketHandle> {
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

    /// Joins every local socket of `user_id` to a conversation; a socket that cannot join is
    /// evicted (it reconnects and gets its rooms again; one over its room limit is told so).
    pub async fn join_user(&self, user_id: &str, conversation_id: &str) -> Vec<SocketHandle> {
        self.forget_membership(user_id, conversation_id);
        let mut joined = Vec::new();
        for socket in self.sockets_of(user_id) {
            match self.join(&socket, conversation_id).await {
                Ok(()) => joined.push(socket),
                Err(error) => {
                    tracing::warn!(conversation_id, ?error, "join failed; evicting");
                    socket.eviction.evict(join_close_code(&error));
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

    async fn user_joined(&self, user_id: &str, conversation: &v1::Conversation, event: &str) {
        let frame = Utf8Bytes::from(client::push(
            event,
            serde_json::json!({ "conversation": ConversationJson::from(conversation) }),
        ));
        for socket in self.join_user(user_id, &conversation.id).await {
            socket.push(&frame, Delivery::Durable, &self.inner.stats);
        }
    }

    fn user_removed(&self, user_id: &str, conversation_id: &str) {
        let frame = Utf8Bytes::from(client::push(
            "conversation:removed",
            serde_json::json!({ "conversationId": conversation_id }),
        ));
        for socket in self.leave_user(user_id, conversation_id) {
            socket.push(&frame, Delivery::Durable, &self.inner.stats);
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

    async fn on_user_event(&self, event: v1::UserEvent) {
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
                self.user_joined(&event.user_id, &conversation, name).await;
                self.tell_router_conversations(&event.user_id);
            }
            Some(user_event::Kind::Removed(removed)) => {
                self.user_removed(&event.user_id, &removed.conversation_id);
                self.tell_router_conversations(&event.user_id);
            }
            None => {}
        }
    }

    /// After a reconnection: user events may have been lost, so each local user's rooms are
    /// compared with the store's membership and brought in line.
    async fn resync_users(&self) {
        let users: Vec<Arc<str>> = {
            let registry = self.inner.registry.lock().expect("registry lock poisoned");
            registry.users.keys().cloned().collect()
        };
        for user_id in users {
            let Ok(conversations) = self.inner.worker.conversations_of(&user_id).await else {
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
                    self.user_joined(&user_id, conversation, "conversation:joined")
                        .await;
                }
            }
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

/// The sequences a room has delivered: everything at or below `floor`, and the recent ones above.
struct SeenSeqs {
    floor: u64,
    recent: BTreeSet<u64>,
    num_inserted: u64,
}

impl SeenSeqs {
    fn new(floor: u64) -> Self {
        Self {
            floor,
            recent: BTreeSet::new(),
            num_inserted: 0,
        }
    }

    /// Records `seq`; false when it was delivered already (or precedes the subscription).
    fn insert(&mut self, seq: u64) -> bool {
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

    #[test]
    fn a_backed_up_outbox_drops_ephemeral_pushes_and_evicts_past_its_overflow() {
        let grace = std::time::Duration::from_secs(60);
        let outbox = Arc::new(Outbox::new(1, grace));
        let eviction = Arc::new(Eviction::default());
        let socket = SocketHandle::new(1, "u".into(), outbox, Arc::clone(&eviction));
        let stats = Stats::default();
        let frame = Utf8Bytes::from_static("{}");
        socket.push(&frame, Delivery::Durable, &stats);
        socket.push(&frame, Delivery::Ephemeral, &stats);
        assert_eq!(stats.num_dropped_ephemeral.load(Ordering::Relaxed), 1);
        for _ in 1..crate::outbox::OVERFLOW_FACTOR {
            socket.push(&frame, Delivery::Durable, &stats);
        }
        assert_eq!(eviction.code(), None, "messages overflow within the grace");
        socket.push(&frame, Delivery::Durable, &stats);
        assert_eq!(eviction.code(), Some(close::TOO_SLOW));
    }
}
