//! The worker's request-reply API: membership, conversations and history, on `chat.rpc.*`.
//!
//! Membership changes are made here: the event is published to the stream (durable), written to
//! the store at once (so the next membership check sees it), and only then announced live and
//! answered. Replies stay under the server's payload limit: history pages are cut and say
//! `has_more`.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use chat_proto::client::{MAX_PARTICIPANTS, SYNC_LIMIT};
use chat_proto::routing::Routers;
use chat_proto::v1::{self, conversation_event::Kind, rpc_error::Code};
use chat_proto::{bus, subjects, timestamp};
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::password;
use crate::store::{
    self, LISTED_PARTICIPANTS, MAX_READ_PARTICIPANTS, Membership, Page, Store, StoreError, Window,
};

/// Most conversations `room:list` returns.
const MAX_LISTED_CONVERSATIONS: u32 = 500;
/// Audit records a page: by default, and at most.
pub const AUDIT_LIMIT: (u32, u32) = (100, 1_000);
/// Room kept in a reply for its envelope and headers.
const REPLY_MARGIN: usize = 4 * 1024;

/// Why a request failed; becomes an `RpcError` in [`to_rpc_error`] and nowhere else.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
}

fn to_rpc_error(failure: &Failure) -> v1::RpcError {
    let (code, message) = match failure {
        Failure::NotFound(m) => (Code::NotFound, (*m).to_owned()),
        Failure::Forbidden(m) => (Code::Forbidden, (*m).to_owned()),
        Failure::Invalid(m) => (Code::Invalid, m.clone()),
        Failure::Decode(_) => (Code::Invalid, "malformed request".to_owned()),
        Failure::Store(_) | Failure::Bus(_) => (Code::Internal, "internal error".to_owned()),
    };
    v1::RpcError {
        code: code.into(),
        message,
    }
}

/// How long a health request waits for the store.
const STORE_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers requests with a store.
pub struct Handlers<S> {
    client: async_nats::Client,
    /// Where users' sessions are, for events addressed to one user.
    routers: Option<Routers>,
    js: jetstream::Context,
    store: S,
    max_reply_bytes: usize,
    metrics: Metrics,
}

impl<S: Store> Handlers<S> {
    /// Handlers that answer from `store` and publish membership changes through `client`, to
    /// the nodes `routers` place the user on when there are routers; `metrics` counts them and
    /// tells the lag.
    pub fn new(
        client: async_nats::Client,
        routers: Option<Routers>,
        store: S,
        metrics: Metrics,
    ) -> Self {
        let max_payload = client.server_info().max_payload;
        Self {
            js: jetstream::new(client.clone()),
            client,
            routers,
            store,
            max_reply_bytes: max_payload.saturating_sub(REPLY_MARGIN).max(REPLY_MARGIN),
            metrics,
        }
    }

    /// Serves until `shutdown`, at most `max_concurrent` requests at once (counted in its
    /// metrics); waits for the ones under way before it returns.
    pub async fn serve(
        self,
        max_concurrent: usize,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let this = Arc::new(self);
        let mut requests = this
            .client
            .queue_subscribe("chat.rpc.>", subjects::WORKER_QUEUE.to_owned())
            .await?;
        let permits = Arc::new(Semaphore::new(max_concurrent));
        let tracker = TaskTracker::new();
        loop {
            let request = tokio::select! {
                () = shutdown.cancelled() => break,
                request = requests.next() => request,
            };
            let Some(request) = request else { break };
            let Some(reply_to) = request.reply.clone() else {
                continue;
            };
            this.metrics.request();
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let this = Arc::clone(&this);
            tracker.spawn(async move {
                let _permit = permit;
                this.answer(&request.subject, &request.payload, reply_to)
                    .await;
            });
        }
        requests.unsubscribe().await.ok();
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    async fn answer(&self, subject: &str, payload: &[u8], reply_to: async_nats::Subject) {
        let result = self.dispatch(subject, payload).await;
        let sent = match result {
            Ok(reply) => self.client.publish(reply_to, reply).await,
            Err(failure) => {
                if matches!(failure, Failure::Store(_) | Failure::Bus(_)) {
                    tracing::error!(%subject, error = %failure, "request failed");
                }
                let error = to_rpc_error(&failure).encode_to_vec();
                self.client
                    .publish_with_headers(reply_to, bus::error_headers(), Bytes::from(error))
                    .await
            }
        };
        if let Err(error) = sent {
            tracing::debug!(%error, "reply not sent");
        }
    }

    async fn dispatch(&self, subject: &str, payload: &[u8]) -> Result<Bytes, Failure> {
        use subjects::rpc;
        let reply = match subject {
            rpc::HEALTH => {
                let store = tokio::time::timeout(STORE_PROBE, self.store.committed_seq()).await;
                let store_error = match store {
                    Ok(Ok(_)) => String::new(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {STORE_PROBE:?}"),
                };
                v1::HealthReply {
                    store_ok: store_error.is_empty(),
                    store_error,
                    lag_events: self.metrics.lag(),
                }
                .encode_to_vec()
            }
            rpc::MEMBERSHIP => {
                let r = v1::MembershipRequest::decode(payload)?;
                let membership = self
                    .store
                    .membership(&r.user_id, &r.conversation_id)
                    .await?;
                v1::MembershipReply {
                    exists: membership != Membership::NoConversation,
                    member: membership == Membership::Active,
                }
                .encode_to_vec()
            }
            rpc::LIST_CONVERSATIONS => {
                let r = v1::ListConversationsRequest::decode(payload)?;
                let mut conversations = self
                    .store
                    .conversations_of(&r.user_id, MAX_LISTED_CONVERSATIONS)
                    .await?;
                let mut size = 0;
                conversations.retain(|c| {
                    // With its field's tag and length.
                    size += c.encoded_len() + 8;
                    size <= self.max_reply_bytes
                });
                v1::ListConversationsReply { conversations }.encode_to_vec()
            }
            rpc::CONVERSATION_INFO => {
                let r = v1::ConversationInfoRequest::decode(payload)?;
                let max_participants = if r.all_participants {
                    MAX_READ_PARTICIPANTS
                } else {
                    LISTED_PARTICIPANTS
                };
                let stored = self
                    .store
                    .conversation(&r.conversation_id, max_participants)
                    .await?
                    .ok_or(Failure::NotFound("no such conversation"))?;
                let mut conversation = stored.conversation;
                // A room of many long ids is cut to what a reply may carry.
                let mut size = 0;
                conversation.participant_ids.retain(|id| {
                    size += id.len() + 8;
                    size <= self.max_reply_bytes
                });
                if !r.user_id.is_empty() {
                    let conversation = std::slice::from_mut(&mut conversation);
                    store::add_read_markers(&self.store, &r.user_id, conversation).await?;
                }
                v1::ConversationInfoReply {
                    conversation: Some(conversation),
                }
                .encode_to_vec()
            }
            rpc::MARK_READ => {
                let r = v1::MarkReadRequest::decode(payload)?;
                if r.message_id == 0 || i64::try_from(r.message_id).is_err() {
                    return Err(Failure::Invalid("no such message id".into()));
                }
                self.store
                    .mark_read(&r.user_id, &r.conversation_id, r.message_id)
                    .await?;
                v1::MarkReadReply {}.encode_to_vec()
            }
            rpc::CREATE_CONVERSATION => {
                let conversation = self
                    .create(v1::CreateConversationRequest::decode(payload)?)
                    .await?;
                conversation_reply(conversation)
            }
            rpc::JOIN_CONVERSATION => {
                let conversation = self
                    .join(v1::JoinConversationRequest::decode(payload)?)
                    .await?;
                conversation_reply(conversation)
            }
            rpc::LEAVE_CONVERSATION => {
                let conversation = self
                    .leave(v1::LeaveConversationRequest::decode(payload)?)
                    .await?;
                conversation_reply(conversation)
            }
            rpc::AUDIT => {
                let mut query = v1::AuditQuery::decode(payload)?;
                query.limit = match query.limit {
                    0 => AUDIT_LIMIT.0,
                    limit => limit.min(AUDIT_LIMIT.1),
                };
                // Nothing older than the audit stream's first record is kept.
                let first_seq = match self.js.get_stream(subjects::AUDIT_STREAM).await {
                    Ok(stream) => stream.cached_info().state.first_sequence,
                    Err(_) => 0,
                };
                self.store.audit(query, first_seq).await?.encode_to_vec()
            }
            rpc::BAN => {
                self.ban(v1::BanRequest::decode(payload)?).await?;
                v1::BanReply {}.encode_to_vec()
            }
            rpc::UNBAN => {
                let r = v1::UnbanRequest::decode(payload)?;
                self.load(&r.conversation_id).await?;
                let unbanned = v1::ParticipantUnbanned {
                    user_id: r.user_id,
                    at_ms: timestamp::now_ms(),
                };
                self.record(&r.conversation_id, Kind::ParticipantUnbanned(unbanned))
                    .await?;
                v1::BanReply {}.encode_to_vec()
            }
            rpc::HISTORY => {
                let r = v1::HistoryRequest::decode(payload)?;
                let window = Window::new(r.after_id, r.before_id);
                let committed_seq = self.store.committed_seq().await?;
                let page = self
                    .store
                    .history(&r.conversation_id, window, r.limit.min(SYNC_LIMIT.1))
                    .await?;
                let page = fit_page(page, window, self.max_reply_bytes);
                v1::HistoryReply {
                    messages: page.messages,
                    has_more: page.has_more,
                    committed_seq,
                }
                .encode_to_vec()
            }
            rpc::GET_MESSAGE => {
                let r = v1::GetMessageRequest::decode(payload)?;
                let committed_seq = self.store.committed_seq().await?;
                v1::GetMessageReply {
                    message: self.store.message(r.message_id).await?,
                    committed_seq,
                }
                .encode_to_vec()
            }
            _ => return Err(Failure::Invalid(format!("unknown request {subject}"))),
        };
        Ok(Bytes::from(reply))
    }

    /// Stores an event durably, applies it to the store, and announces it on the conversation.
    /// Stores `kind` durably, applies it to the store and announces it; its stream sequence.
    async fn record(&self, conversation_id: &str, kind: Kind) -> Result<u64, Failure> {
        let mut event = v1::ConversationEvent::new(conversation_id.to_owned(), kind);
        event.seq = bus::finish_durable(bus::start_durable(&self.js, &event, None, None).await?)
            .await?
            .seq;
        self.store.apply(vec![event.clone()], None).await?;
        bus::publish_live(&self.client, &event, None).await?;
        Ok(event.seq)
    }

    /// Tells the routers that `joined` and `left` joined or left a conversation (who hears of
    /// their presence follows): published for every router to follow, and asked of the routers
    /// this worker knows, which say where each user is connected. `None` (announce to every
    /// node) without routers or when they cannot say.
    async fn members_changed(
        &self,
        conversation_id: &str,
        joined: &[String],
        left: &[String],
    ) -> Option<HashMap<String, Vec<String>>> {
        let change = v1::MembersChangedRequest {
            conversation_id: conversation_id.to_owned(),
            joined: joined.to_vec(),
            left: left.to_vec(),
        };
        let published = self
            .client
            .publish(subjects::MEMBERS_CHANGED, change.encode_to_vec().into())
            .await;
        if let Err(error) = published {
            tracing::warn!(%error, "membership change not published to the routers");
        }
        let routers = self.routers.as_ref()?;
        routers
            .members_changed(conversation_id, joined.to_vec(), left.to_vec())
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "no placement; the events go to every node");
                None
            })
    }

    /// Announces `kind` to `user_id` on the nodes of `placement` (every node when `None`). The
    /// change is durable already: an announcement that cannot be published is logged, and the
    /// others go on (the user's sockets get the change at their next connect or resync).
    async fn announce(
        &self,
        user_id: &str,
        kind: v1::user_event::Kind,
        placement: Option<&HashMap<String, Vec<String>>>,
    ) {
        let event = v1::UserEvent {
            user_id: user_id.to_owned(),
            kind: Some(kind),
        };
        let nodes = placement.map(|p| p.get(user_id).map_or(&[][..], Vec::as_slice));
        if let Err(error) = bus::publish_user(&self.client, &event, nodes).await {
            tracing::warn!(%error, user_id, "membership change not announced");
        }
    }

    async fn load(&self, conversation_id: &str) -> Result<v1::Conversation, Failure> {
        Ok(self
            .store
            .conversation(conversation_id, LISTED_PARTICIPANTS)
            .await?
            .ok_or(Failure::NotFound("no such conversation"))?
            .conversation)
    }

    async fn create(&self, r: v1::CreateConversationRequest) -> Result<v1::Conversation, Failure> {
        // The creator first; the server API may create a conversation without one.
        let mut participant_ids: Vec<String> = Some(r.creator_id.clone())
            .filter(|id| !id.is_empty())
            .into_iter()
            .collect();
        for id in r.participant_ids {
            if !participant_ids.contains(&id) {
                participant_ids.push(id);
            }
        }
        if participant_ids.len() > MAX_PARTICIPANTS {
            return Err(Failure::Invalid(format!(
                "at most {MAX_PARTICIPANTS} participants"
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let conversation = v1::Conversation {
            id: id.clone(),
            title: r.title,
            private: r.private,
            created_by: r.creator_id,
            created_at_ms: timestamp::now_ms(),
            num_participants: u32::try_from(participant_ids.len()).unwrap_or(u32::MAX),
            participant_ids,
            last_read_message_id: None,
        };
        let created = v1::ConversationCreated {
            conversation: Some(conversation),
            password_hash: r.password.as_deref().map(password::hash),
        };
        let seq = self
            .record(&id, Kind::ConversationCreated(created.clone()))
            .await?;
        let participant_ids = created
            .conversation
            .map(|c| c.participant_ids)
            .unwrap_or_default();
        // As stored: the participant list it carries is cut for large rooms; every participant
        // is told all the same.
        let conversation = self.load(&id).await?;
        let placement = self.members_changed(&id, &participant_ids, &[]).await;
        for user_id in &participant_ids {
            let joined = v1::ConversationJoined {
                conversation: Some(conversation.clone()),
                created: true,
                seq,
            };
            let kind = v1::user_event::Kind::Joined(joined);
            self.announce(user_id, kind, placement.as_ref()).await;
        }
        Ok(conversation)
    }

    async fn join(&self, r: v1::JoinConversationRequest) -> Result<v1::Conversation, Failure> {
        let stored = self
            .store
            .conversation(&r.conversation_id, LISTED_PARTICIPANTS)
            .await?
            .ok_or(Failure::NotFound("no such conversation"))?;
        match self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?
        {
            Membership::Active => return Ok(stored.conversation),
            Membership::Left | Membership::Never | Membership::NoConversation
                if !r.by_server && self.banned(&r.user_id, &r.conversation_id).await? =>
            {
                return Err(Failure::Forbidden("banned from this conversation"));
            }
            Membership::Left => {}
            Membership::Never | Membership::NoConversation if !r.by_server => {
                if stored.conversation.private {
                    return Err(Failure::Forbidden("this conversation is private"));
                }
                if let Some(hash) = &stored.password_hash {
                    let given = r.password.as_deref().unwrap_or_default();
                    if !password::verify(given, hash) {
                        return Err(Failure::Forbidden("wrong password"));
                    }
                }
            }
            // Added by the application's backend: neither privacy nor a password applies.
            Membership::Never | Membership::NoConversation => {}
        }
        let added = v1::ParticipantAdded {
            user_id: r.user_id.clone(),
            at_ms: timestamp::now_ms(),
        };
        let seq = self
            .record(&r.conversation_id, Kind::ParticipantAdded(added))
            .await?;
        let conversation = self.load(&r.conversation_id).await?;
        let joined = v1::ConversationJoined {
            conversation: Some(conversation.clone()),
            created: false,
            seq,
        };
        let users = [r.user_id];
        let placement = self.members_changed(&conversation.id, &users, &[]).await;
        let kind = v1::user_event::Kind::Joined(joined);
        self.announce(&users[0], kind, placement.as_ref()).await;
        Ok(conversation)
    }

    /// Whether a ban keeps `user_id` out of the conversation now.
    async fn banned(&self, user_id: &str, conversation_id: &str) -> Result<bool, Failure> {
        Ok(match self.store.ban(user_id, conversation_id).await? {
            Some(0) => true,
            Some(until_ms) => until_ms > timestamp::now_ms(),
            None => false,
        })
    }

    /// Bans a user (recorded first, so that no join slips in between) and removes them if they
    /// are a member: their sockets leave at once, the others get `participant:removed`.
    async fn ban(&self, r: v1::BanRequest) -> Result<(), Failure> {
        self.load(&r.conversation_id).await?;
        if r.duration_ms < 0 {
            return Err(Failure::Invalid("durationSecs must not be negative".into()));
        }
        let now = timestamp::now_ms();
        let banned = v1::ParticipantBanned {
            user_id: r.user_id.clone(),
            until_ms: if r.duration_ms == 0 {
                0
            } else {
                now.saturating_add(r.duration_ms)
            },
            reason: r.reason,
            banned_by: r.banned_by,
            at_ms: now,
        };
        self.record(&r.conversation_id, Kind::ParticipantBanned(banned))
            .await?;
        let member = self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?;
        if member == Membership::Active {
            let leave = v1::LeaveConversationRequest {
                user_id: r.user_id,
                conversation_id: r.conversation_id,
            };
            self.leave(leave).await?;
        }
        Ok(())
    }

    async fn leave(&self, r: v1::LeaveConversationRequest) -> Result<v1::Conversation, Failure> {
        if self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?
            != Membership::Active
        {
            return Err(Failure::NotFound("not a member of this conversation"));
        }
        let removed = v1::ParticipantRemoved {
            user_id: r.user_id.clone(),
            at_ms: timestamp::now_ms(),
        };
        self.record(&r.conversation_id, Kind::ParticipantRemoved(removed))
            .await?;
        let gone = v1::ConversationRemoved {
            conversation_id: r.conversation_id.clone(),
        };
        let users = [r.user_id];
        let placement = self.members_changed(&r.conversation_id, &[], &users).await;
        let kind = v1::user_event::Kind::Removed(gone);
        self.announce(&users[0], kind, placement.as_ref()).await;
        self.load(&r.conversation_id).await
    }
}

fn conversation_reply(conversation: v1::Conversation) -> Vec<u8> {
    v1::ConversationReply {
        conversation: Some(conversation),
    }
    .encode_to_vec()
}

/// Cuts a page to `budget` encoded bytes, keeping the messages nearest the window's anchor.
fn fit_page(mut page: Page, window: Window, budget: usize) -> Page {
    let mut size = 0;
    let fits = |m: &&v1::ChatMessage| {
        size += m.encoded_len() + 8;
        size <= budget
    };
    let keep = if window.anchored_at_oldest() {
        page.messages.iter().take_while(fits).count()
    } else {
        page.messages.iter().rev().take_while(fits).count()
    };
    page.has_more |= window.cut(&mut page.messages, keep);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u64) -> Page {
        Page {
            messages: (1..=n)
                .map(|id| v1::ChatMessage {
                    id,
                    content: "x".repeat(1000),
                    ..Default::default()
                })
                .collect(),
            has_more: false,
        }
    }

    #[test]
    fn a_page_over_budget_keeps_the_messages_nearest_its_anchor() {
        let after = fit_page(page(10), Window::After(0), 3_100);
        assert_eq!(
            after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(after.has_more);
        let newest = fit_page(page(10), Window::Newest, 3_100);
        assert_eq!(
            newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert!(!fit_page(page(2), Window::Newest, 3_100).has_more);
    }
}
