//! The gRPC service over the placement: node streams, lookups, and the task that expires lapsed
//! nodes and publishes presence changes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::v1::{self, node_update, router_update};
use chat_proto::{subjects, timestamp};
use futures_util::{Stream, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::placement::Placement;

/// Updates a node stream may have waiting to be sent to it.
const OUTBOUND: usize = 256;
/// How long the first update (`Hello`) of a node stream may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The router's shared state; a cheap `Clone`.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    placement: Mutex<Placement>,
    lease: Duration,
    /// Until then, nodes may still be re-registering after the router's start.
    grace_ends: Instant,
    max_sessions_per_user: usize,
    next_generation: AtomicU64,
    metrics: Metrics,
}

impl Router {
    /// A router with an empty placement (see [`Placement::new`]), in its grace (nodes
    /// re-register) for `grace`.
    pub fn new(
        lease: Duration,
        grace: Duration,
        max_sessions_per_user: usize,
        offline_delay: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                placement: Mutex::new(Placement::new(max_sessions_per_user, offline_delay)),
                lease,
                grace_ends: Instant::now() + grace,
                max_sessions_per_user,
                next_generation: AtomicU64::new(1),
                metrics: Metrics::new(),
            }),
        }
    }

    /// The router's metrics, with the placement's sizes now.
    pub fn metrics(&self) -> chat_proto::admin::Reply {
        let (nodes, users) = self.placement().stats();
        self.inner.metrics.encode(&nodes, users)
    }

    /// The NATS connection's counts.
    pub fn nats_metrics(&self) -> chat_proto::metrics::NatsMetrics {
        self.inner.metrics.nats.clone()
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, Placement> {
        self.inner
            .placement
            .lock()
            .expect("placement lock poisoned")
    }

    /// Until `token` is cancelled: every `window`, drops the nodes whose lease lapsed and publishes
    /// the presence changes on `client`; none during the grace after the start, while the nodes
    /// re-register (their users did not change, the router had not heard of them yet).
    pub async fn publish_changes(
        self,
        client: async_nats::Client,
        window: Duration,
        token: CancellationToken,
    ) {
        let grace_ends = self.inner.grace_ends;
        let mut in_grace = Instant::now() < grace_ends;
        let mut tick = tokio::time::interval(window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let changes = {
                let mut placement = self.placement();
                for node in placement.expire(Instant::now().into_std()) {
                    self.inner.metrics.lease_expiries.inc();
                    tracing::warn!(node_id = %node, "node lease lapsed; its sessions are dropped");
                }
                if in_grace {
                    if Instant::now() < grace_ends {
                        continue;
                    }
                    in_grace = false;
                    placement.end_grace();
                    tracing::info!("grace over; presence changes are published");
                }
                placement.take_changes(Instant::now().into_std())
            };
            if changes.is_empty() {
                continue;
            }
            let now = timestamp::now_ms();
            let message = v1::PresenceChanges {
                changes: changes
                    .into_iter()
                    .map(|(user_id, change)| v1::PresenceChange {
                        user_id: user_id.to_string(),
                        previous: change.previous.into(),
                        current: change.current.into(),
                        conversation_ids: change.conversations.to_vec(),
                        timestamp_ms: now,
                    })
                    .collect(),
            };
            tracing::debug!(changes = message.changes.len(), "presence changes");
            self.inner
                .metrics
                .presence_changes
                .inc_by(message.changes.len() as u64);
            if let Err(error) = client
                .publish(subjects::PRESENCE, message.encode_to_vec().into())
                .await
            {
                tracing::warn!(%error, "cannot publish presence changes");
            }
        }
    }

    /// Until `token` is cancelled: applies the membership changes that the workers publish on
    /// `subscription` (who hears of each user's presence). A user this router does not hold is
    /// left alone, so every router applies every change; the same change by `MembersChanged`
    /// (a worker that knows the routers asks it too, for the placement) changes nothing twice.
    pub async fn follow_memberships(
        self,
        mut subscription: async_nats::Subscriber,
        token: CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                () = token.cancelled() => return,
                message = subscription.next() => message,
            };
            let Some(message) = message else { return };
            match v1::MembersChangedRequest::decode(message.payload) {
                Ok(change) => self.placement().members_changed(
                    &change.conversation_id,
                    &change.joined,
                    &change.left,
                ),
                Err(error) => tracing::warn!(%error, "undecodable membership change"),
            }
        }
    }

    /// Serves one node stream until it ends.
    async fn serve_node(
        self,
        mut updates: Streaming<v1::NodeUpdate>,
        outbound: mpsc::Sender<Result<v1::RouterUpdate, Status>>,
    ) {
        let lease = self.inner.lease;
        let first = tokio::time::timeout(HELLO_TIMEOUT, updates.next()).await;
        let Ok(Some(Ok(v1::NodeUpdate {
            kind: Some(node_update::Kind::Hello(hello)),
        }))) = first
        else {
            let _ = outbound
                .send(Err(Status::invalid_argument(
                    "the first update must be hello",
                )))
                .await;
            return;
        };
        let node_id = hello.node_id;
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            %node_id,
            sessions = hello.sessions.len(),
            departed = hello.departed.len(),
            "node attached"
        );
        self.placement().hello(
            &node_id,
            generation,
            (Instant::now() + lease).into_std(),
            hello.sessions,
            hello.departed,
        );
        let welcome = v1::RouterUpdate {
            kind: Some(router_update::Kind::Welcome(v1::Welcome {
                lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            })),
        };
        if outbound.send(Ok(welcome)).await.is_err() {
            return;
        }
        loop {
            // A node that sends nothing for a lease is dead to the router anyway.
            let update = match tokio::time::timeout(lease, updates.next()).await {
                Ok(Some(Ok(update))) => update,
                Ok(Some(Err(error))) => {
                    tracing::info!(%node_id, %error, "node stream failed");
                    return;
                }
                Ok(None) | Err(_) => {
                    tracing::info!(%node_id, "node stream ended");
                    return;
                }
            };
            let reply = {
                let mut placement = self.placement();
                if !placement.is_current(&node_id, generation) {
                    tracing::info!(%node_id, "node re-attached on another stream; this one ends");
                    return;
                }
                placement.renew(&node_id, (Instant::now() + lease).into_std());
                match update.kind {
                    Some(node_update::Kind::Opened(opened)) => {
                        let Some(session) = opened.session else {
                            continue;
                        };
                        let admission =
                            placement.open(&node_id, session, &opened.replaces_session_id);
                        if !admission.admitted {
                            self.inner.metrics.admissions_refused.inc();
                        }
                        Some(v1::Admission {
                            request_id: opened.request_id,
                            admitted: admission.admitted,
                            sessions: u32::try_from(admission.sessions).unwrap_or(u32::MAX),
                            limit: u32::try_from(self.inner.max_sessions_per_user)
                                .unwrap_or(u32::MAX),
                        })
                    }
                    Some(node_update::Kind::Closed(closed)) => {
                        placement.close(&closed.user_id, &closed.session_id);
                        None
                    }
                    Some(node_update::Kind::Conversations(conversations)) => {
                        placement.set_conversations(
                            &conversations.user_id,
                            conversations.conversation_ids,
                        );
                        None
                    }
                    Some(node_update::Kind::Status(change)) => {
                        let status =
                            v1::Status::try_from(change.status).unwrap_or(v1::Status::Online);
                        placement.set_status(&change.user_id, status);
                        None
                    }
                    Some(node_update::Kind::Hello(_))
                    | Some(node_update::Kind::Heartbeat(_))
                    | None => None,
                }
            };
            if let Some(admission) = reply {
                let update = v1::RouterUpdate {
                    kind: Some(router_update::Kind::Admission(admission)),
                };
                if outbound.send(Ok(update)).await.is_err() {
                    return;
                }
            }
        }
    }
}

type NodeStream = Pin<Box<dyn Stream<Item = Result<v1::RouterUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl v1::router_server::Router for Router {
    type AttachStream = NodeStream;

    async fn attach(
        &self,
        request: Request<Streaming<v1::NodeUpdate>>,
    ) -> Result<Response<NodeStream>, Status> {
        let (outbound, replies) = mpsc::channel(OUTBOUND);
        tokio::spawn(self.clone().serve_node(request.into_inner(), outbound));
        let stream = futures_util::stream::unfold(replies, |mut replies| async move {
            replies.recv().await.map(|reply| (reply, replies))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn user_sessions(
        &self,
        request: Request<v1::UserSessionsRequest>,
    ) -> Result<Response<v1::UserSessionsReply>, Status> {
        let sessions = self.placement().sessions_of(&request.get_ref().user_id);
        let complete = Instant::now() >= self.inner.grace_ends;
        Ok(Response::new(v1::UserSessionsReply { sessions, complete }))
    }

    async fn presence(
        &self,
        request: Request<v1::PresenceRequest>,
    ) -> Result<Response<v1::PresenceReply>, Status> {
        let request = request.into_inner();
        let placement = self.placement();
        let statuses = request
            .user_ids
            .into_iter()
            .map(|user_id| v1::UserStatus {
                status: if request.announced {
                    placement.announced(&user_id)
                } else {
                    placement.visible(&user_id)
                }
                .into(),
                user_id,
            })
            .collect();
        Ok(Response::new(v1::PresenceReply { statuses }))
    }

    async fn online_members(
        &self,
        request: Request<v1::OnlineMembersRequest>,
    ) -> Result<Response<v1::OnlineMembersReply>, Status> {
        let placement = self.placement();
        let user_ids = request
            .into_inner()
            .member_ids
            .into_iter()
            .filter(|user_id| placement.visible(user_id) != v1::Status::Offline)
            .collect();
        Ok(Response::new(v1::OnlineMembersReply { user_ids }))
    }

    async fn members_changed(
        &self,
        request: Request<v1::MembersChangedRequest>,
    ) -> Result<Response<v1::UserNodesReply>, Status> {
        let request = request.into_inner();
        let mut placement = self.placement();
        placement.members_changed(&request.conversation_id, &request.joined, &request.left);
        let users = placement.nodes_of(request.joined.into_iter().chain(request.left).collect());
        let complete = Instant::now() >= self.inner.grace_ends;
        Ok(Response::new(v1::UserNodesReply { users, complete }))
    }

    async fn cluster_stats(
        &self,
        _request: Request<v1::ClusterStatsRequest>,
    ) -> Result<Response<v1::ClusterStatsReply>, Status> {
        let (nodes, users_online) = self.placement().stats();
        Ok(Response::new(v1::ClusterStatsReply {
            nodes: nodes
                .into_iter()
                .map(|(node_id, sessions)| v1::NodeStats {
                    node_id: node_id.to_string(),
                    sessions: sessions as u64,
                })
                .collect(),
            users_online: users_online as u64,
        }))
    }
}
