//! The worker's request-reply API on `chat.rpc.*`: one typed request in, one typed reply out,
//! by family as the gateway's socket handlers are: [`conversations`] (membership, the
//! conversation list and details, read markers, create, join, leave), [`moderation`] (bans),
//! [`history`] (pages of messages, one message) and [`operators`] (health, the audit log).
//!
//! Membership changes are made here: the event is published to the stream (durable), written to
//! the store at once (so the next membership check sees it), and only then announced live and
//! answered. Replies stay under the server's payload limit: history pages are cut and say
//! `has_more`.

mod conversations;
mod history;
mod moderation;
mod operators;

use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use chat_proto::routing::Routers;
use chat_proto::v1::{self, conversation_event::Kind, rpc_error::Code};
use chat_proto::{bus, subjects};
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::store::{LISTED_PARTICIPANTS, Store, StoreError};

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
            rpc::HEALTH => self.health().await.encode_to_vec(),
            rpc::AUDIT => self.audit(Message::decode(payload)?).await?.encode_to_vec(),
            rpc::MEMBERSHIP => self
                .membership(Message::decode(payload)?)
                .await?
                .encode_to_vec(),
            rpc::LIST_CONVERSATIONS => self.list(Message::decode(payload)?).await?.encode_to_vec(),
            rpc::CONVERSATION_INFO => self.info(Message::decode(payload)?).await?.encode_to_vec(),
            rpc::MARK_READ => self
                .mark_read(Message::decode(payload)?)
                .await?
                .encode_to_vec(),
            rpc::CREATE_CONVERSATION => {
                conversation_reply(self.create(Message::decode(payload)?).await?)
            }
            rpc::JOIN_CONVERSATION => {
                conversation_reply(self.join(Message::decode(payload)?).await?)
            }
            rpc::LEAVE_CONVERSATION => {
                conversation_reply(self.leave(Message::decode(payload)?).await?)
            }
            rpc::BAN => self.ban(Message::decode(payload)?).await?.encode_to_vec(),
            rpc::UNBAN => self.unban(Message::decode(payload)?).await?.encode_to_vec(),
            rpc::HISTORY => self
                .history(Message::decode(payload)?)
                .await?
                .encode_to_vec(),
            rpc::GET_MESSAGE => self
                .message(Message::decode(payload)?)
                .await?
                .encode_to_vec(),
            _ => return Err(Failure::Invalid(format!("unknown request {subject}"))),
        };
        Ok(Bytes::from(reply))
    }

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

    async fn load(&self, conversation_id: &str) -> Result<v1::Conversation, Failure> {
        Ok(self
            .store
            .conversation(conversation_id, LISTED_PARTICIPANTS)
            .await?
            .ok_or(Failure::NotFound("no such conversation"))?
            .conversation)
    }
}

fn conversation_reply(conversation: v1::Conversation) -> Vec<u8> {
    v1::ConversationReply {
        conversation: Some(conversation),
    }
    .encode_to_vec()
}
