//! The node's link to the routers: one stream per router, which registers this node's sessions
//! of the users that router owns, asks for each new session's admission (the per-user session
//! limit), reports closes and status changes, and holds the node's lease by heartbeat.
//!
//! The node keeps its own sessions here, so that a (re)attached stream starts with all of them
//! (`Hello`): the router's state is soft. While a router is unreachable the node keeps serving:
//! admissions fail open (the limit is not enforced), closes are remembered as departures and told
//! on reattachment, and the link retries with a backoff. `/healthz` and the logs say so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::routing::Routers;
use chat_proto::service::Backoff;
use chat_proto::subjects::fnv1a;
use chat_proto::v1::{self, node_update, router_update};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::socket::SocketId;

/// Updates waiting to go to one router.
const OUTBOUND: usize = 1_024;
/// Departures remembered per router while it is unreachable; beyond, the oldest are forgotten
/// (those users may look online to others until they next connect).
const MAX_DEPARTED: usize = 100_000;
/// Longest wait between two attempts to reach a router.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A router's answer to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Registered (or the router could not be asked: the limit fails open).
    Admitted,
    /// The user has `limit` sessions already.
    Refused { limit: u32 },
}

/// What the node holds of one router.
#[derive(Default)]
struct Link {
    /// Where updates go while the stream is up.
    updates: Option<mpsc::Sender<v1::NodeUpdate>>,
    /// Admissions awaited, by request id.
    waiting: HashMap<u64, oneshot::Sender<v1::Admission>>,
    /// Sessions that closed while the router was unreachable.
    departed: Vec<v1::Session>,
}

/// The conversations a local socket is in (the hub knows), read when a stream (re)attaches.
pub type RoomsOf = Arc<dyn Fn(SocketId) -> Vec<Arc<str>> + Send + Sync>;

/// A live session of the node, as small as it can be (one per socket): its conversations are
/// read when a stream (re)attaches ([`RoomsOf`]).
struct Local {
    user_id: Arc<str>,
    socket: SocketId,
    status: i32,
}

/// A session id (32 hex digits) as a compact key.
fn key(session_id: &str) -> u128 {
    u128::from_str_radix(session_id, 16).unwrap_or_else(|_| u128::from(fnv1a(session_id)))
}

struct Inner {
    routers: Routers,
    node_id: String,
    timeout: Duration,
    /// Every live session of the node, by session id.
    sessions: Mutex<HashMap<u128, Local>>,
    /// The sockets' conversations, for a `Hello` (set by `start`, dropped by `stop`).
    rooms_of: Mutex<Option<RoomsOf>>,
    links: Vec<Mutex<Link>>,
    up: Vec<AtomicBool>,
    next_request: AtomicU64,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// The node's link to the routers; a cheap `Clone`.
#[derive(Clone)]
pub struct RouterLink {
    inner: Arc<Inner>,
}

impl RouterLink {
    /// A link for node `node_id` to `routers`; each wait for a router is bounded by `timeout`.
    pub fn new(routers: Routers, node_id: String, timeout: Duration) -> Self {
        let links = (0..routers.len()).map(|_| Mutex::default()).collect();
        let up = (0..routers.len()).map(|_| AtomicBool::new(false)).collect();
        Self {
            inner: Arc::new(Inner {
                routers,
                node_id,
                timeout,
                sessions: Mutex::default(),
                rooms_of: Mutex::default(),
                links,
                up,
                next_request: AtomicU64::new(1),
                token: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The routers, for lookups.
    pub fn routers(&self) -> &Routers {
        &self.inner.routers
    }

    /// Starts one attachment task per router; `rooms_of` tells the sessions' conversations.
    pub fn start(&self, rooms_of: RoomsOf) {
        *self.inner.rooms_of.lock().expect("rooms lock poisoned") = Some(rooms_of);
        for index in 0..self.inner.routers.len() {
            self.inner.tracker.spawn(self.clone().attach_loop(index));
        }
    }

    /// Ends the attachments (the routers drop this node's sessions when its lease lapses, or at
    /// once for sessions closed before).
    pub async fn stop(&self) {
        self.inner.token.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner
            .rooms_of
            .lock()
            .expect("rooms lock poisoned")
            .take();
    }

    /// A session as the router sees it, with its socket's conversations.
    fn session(&self, session_id: u128, local: &Local) -> v1::Session {
        let rooms_of = self.inner.rooms_of.lock().expect("rooms lock poisoned");
        let rooms = rooms_of.as_ref().map(|rooms_of| rooms_of(local.socket));
        v1::Session {
            user_id: local.user_id.to_string(),
            session_id: format!("{session_id:032x}"),
            status: local.status,
            conversation_ids: rooms
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_string())
                .collect(),
        }
    }

    /// The routers that cannot be reached now, as "index/count" for health reports.
    pub fn unreachable(&self) -> Vec<usize> {
        (0..self.inner.up.len())
            .filter(|&i| !self.inner.up[i].load(Ordering::Relaxed))
            .collect()
    }

    /// Registers a new session and waits for its admission. Fails open: without an answer in
    /// time (router down or slow), the session is admitted and stays registered with the node.
    pub async fn open(
        &self,
        user_id: &Arc<str>,
        session_id: &str,
        socket: SocketId,
        replaces: Option<String>,
    ) -> Admission {
        let index = self.inner.routers.owner(user_id);
        let session = v1::Session {
            user_id: user_id.to_string(),
            session_id: session_id.to_owned(),
            status: v1::Status::Online.into(),
            conversation_ids: Vec::new(),
        };
        let request_id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (answer, admission) = oneshot::channel();
        let sent = {
            let mut sessions = self.inner.sessions.lock().expect("sessions lock poisoned");
            let local = Local {
                user_id: Arc::clone(user_id),
                socket,
                status: v1::Status::Online.into(),
            };
            sessions.insert(key(session_id), local);
            let mut link = self.link(index);
            let update = v1::NodeUpdate {
                kind: Some(node_update::Kind::Opened(v1::Opened {
                    request_id,
                    session: Some(session),
                    replaces_session_id: replaces.unwrap_or_default(),
                })),
            };
            let sent = link
                .updates
                .as_ref()
                .is_some_and(|updates| updates.try_send(update).is_ok());
            if sent {
                link.waiting.insert(request_id, answer);
            }
            sent
        };
        if !sent {
            return Admission::Admitted;
        }
        match tokio::time::timeout(self.inner.timeout, admission).await {
            Ok(Ok(admission)) if !admission.admitted => {
                self.inner
                    .sessions
                    .lock()
                    .expect("sessions lock poisoned")
                    .remove(&key(session_id));
                Admission::Refused {
                    limit: admission.limit,
                }
            }
            Ok(_) => Admission::Admitted,
            Err(_) => {
                self.link(index).waiting.remove(&request_id);
                tracing::warn!("no admission from the router in time; admitted");
                Admission::Admitted
            }
        }
    }

    /// A session ended (told before its socket leaves its rooms).
    pub fn close(&self, user_id: &str, session_id: &str) {
        let id = key(session_id);
        let Some(local) = self
            .inner
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .remove(&id)
        else {
            return;
        };
        let index = self.inner.routers.owner(user_id);
        let link = self.link(index);
        let update = v1::NodeUpdate {
            kind: Some(node_update::Kind::Closed(v1::Closed {
                user_id: user_id.to_owned(),
                session_id: session_id.to_owned(),
            })),
        };
        let sent = link
            .updates
            .as_ref()
            .is_some_and(|updates| updates.try_send(update).is_ok());
        if !sent {
            drop(link);
            let session = self.session(id, &local);
            let mut link = self.link(index);
            link.departed.retain(|s| s.user_id != user_id);
            if link.departed.len() >= MAX_DEPARTED {
                link.departed.remove(0);
            }
            link.departed.push(session);
        }
    }

    /// A user's conversations, as a session found them at connect or after a membership
    /// change (who hears of the user's presence).
    pub fn conversations(&self, user_id: &str, conversation_ids: Vec<String>) {
        self.send(
            user_id,
            node_update::Kind::Conversations(v1::Conversations {
                user_id: user_id.to_owned(),
                session_id: String::new(),
                conversation_ids,
            }),
        );
    }

    /// A user set their status (it applies to all their sessions).
    pub fn set_status(&self, user_id: &str, status: v1::Status) {
        for session in self
            .inner
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .values_mut()
            .filter(|s| *s.user_id == *user_id)
        {
            session.status = status.into();
        }
        self.send(
            user_id,
            node_update::Kind::Status(v1::StatusChanged {
                user_id: user_id.to_owned(),
                status: status.into(),
            }),
        );
    }

    /// Sends an update about `user_id` to its router, if attached (otherwise the next `Hello`
    /// carries the node's sessions as they are then).
    fn send(&self, user_id: &str, kind: node_update::Kind) {
        let index = self.inner.routers.owner(user_id);
        if let Some(updates) = &self.link(index).updates {
            let _ = updates.try_send(v1::NodeUpdate { kind: Some(kind) });
        }
    }

    fn link(&self, index: usize) -> std::sync::MutexGuard<'_, Link> {
        self.inner.links[index].lock().expect("link lock poisoned")
    }

    /// Keeps router `index` attached until the link stops.
    async fn attach_loop(self, index: usize) {
        let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF);
        let mut reported_down = false;
        loop {
            let attached = tokio::select! {
                () = self.inner.token.cancelled() => return,
                attached = self.attach(index) => attached,
            };
            let was_up = self.inner.up[index].swap(false, Ordering::Relaxed);
            {
                let mut link = self.link(index);
                link.updates = None;
                link.waiting.clear();
            }
            if was_up {
                tracing::warn!(router = index, "lost the router; attaching again");
                reported_down = false;
                backoff.reset();
            }
            if let Err(error) = attached {
                if reported_down {
                    tracing::debug!(router = index, %error, "router still unreachable");
                } else {
                    tracing::warn!(router = index, %error, "router unreachable; serving without it (the session limit fails open)");
                    reported_down = true;
                }
            }
            if !backoff.wait(self.inner.token.cancelled()).await {
                return;
            }
        }
    }

    /// One attachment of router `index`, until its stream ends.
    async fn attach(&self, index: usize) -> Result<(), tonic::Status> {
        let (updates, outbound) = mpsc::channel(OUTBOUND);
        // The snapshot and the switch to the new stream under both locks: a session opened or
        // closed meanwhile is either in the snapshot or sent on the stream, never lost.
        let hello = {
            let sessions = self.inner.sessions.lock().expect("sessions lock poisoned");
            let mut link = self.link(index);
            let routers = &self.inner.routers;
            let hello = v1::Hello {
                node_id: self.inner.node_id.clone(),
                sessions: sessions
                    .iter()
                    .filter(|(_, local)| routers.owner(&local.user_id) == index)
                    .map(|(&id, local)| self.session(id, local))
                    .collect(),
                departed: std::mem::take(&mut link.departed),
            };
            link.updates = Some(updates.clone());
            hello
        };
        let first = v1::NodeUpdate {
            kind: Some(node_update::Kind::Hello(hello)),
        };
        let requests = futures_util::stream::once(async move { first }).chain(
            futures_util::stream::unfold(outbound, |mut outbound| async move {
                outbound.recv().await.map(|update| (update, outbound))
            }),
        );
        let mut client = self.inner.routers.client(index);
        let mut replies = client.attach(requests).await?.into_inner();
        let mut heartbeat: Option<tokio::time::Interval> = None;
        loop {
            let reply = tokio::select! {
                reply = replies.next() => reply,
                _ = async { heartbeat.as_mut().expect("set").tick().await }, if heartbeat.is_some() => {
                    let beat = v1::NodeUpdate { kind: Some(node_update::Kind::Heartbeat(v1::Heartbeat {})) };
                    if updates.try_send(beat).is_err() {
                        tracing::warn!(router = index, "router stream backed up");
                    }
                    continue;
                }
            };
            match reply {
                None => return Ok(()),
                Some(Err(status)) => return Err(status),
                Some(Ok(v1::RouterUpdate {
                    kind: Some(router_update::Kind::Welcome(welcome)),
                })) => {
                    let every =
                        Duration::from_millis(welcome.lease_ms / 3).max(Duration::from_millis(10));
                    heartbeat = Some(tokio::time::interval(every));
                    self.inner.up[index].store(true, Ordering::Relaxed);
                    tracing::info!(
                        router = index,
                        lease_ms = welcome.lease_ms,
                        "attached to the router"
                    );
                }
                Some(Ok(v1::RouterUpdate {
                    kind: Some(router_update::Kind::Admission(admission)),
                })) => {
                    if let Some(answer) = self.link(index).waiting.remove(&admission.request_id) {
                        let _ = answer.send(admission);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
