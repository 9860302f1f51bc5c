//! The request handlers, one module per family: [`auth`] (auth, resume, ping), [`messages`]
//! (send, edit, delete, sync), [`rooms`] (create, join, leave, list, info, online,
//! participants added and removed by members, bans),
//! [`presence`], [`typing`] and [`receipts`]. Each takes its typed data and answers with a
//! [`Reply`] or a [`RequestError`]; [`Session::on_text`] decodes the frame, dispatches it and
//! puts the answer on the wire.

mod auth;
mod messages;
mod presence;
mod receipts;
mod rooms;
mod typing;

use std::sync::Arc;

use chat_proto::client;
use serde_json::value::RawValue;
use tracing::Instrument as _;

use super::Session;
use crate::error::RequestError;
use crate::permissions::Permission;
use crate::request::{self, Body, Refusal};
use crate::socket::outbox::Replay;

pub(super) use messages::PendingSend;

/// What a handled request answers.
pub(super) enum Reply {
    /// Ack with this data now (serialized from a typed answer: [`Reply::ack`]).
    Ack(Box<RawValue>),
    /// Ack a resume with this data, then release the replay.
    Resumed(client::Recovered, Option<Replay>),
    /// The answer comes when this send is acknowledged by the stream.
    Later(PendingSend),
}

impl Reply {
    /// An ack with `data`, one of the protocol's answers (`chat_proto::client`).
    pub(super) fn ack(data: &impl serde::Serialize) -> Self {
        Self::Ack(
            serde_json::value::to_raw_value(data).expect("answers serialize: string keys, no NaN"),
        )
    }

    /// The ack of a request that has nothing more to say.
    pub(super) fn done() -> Self {
        Self::ack(&client::Done {})
    }
}

impl Session {
    /// Handles one text frame; a send comes back to wait for the stream.
    pub(super) async fn on_text(&mut self, text: &str) -> Option<PendingSend> {
        let max_bytes = self.gateway.shared.settings.config.max_message_bytes;
        let decoded = request::decode(text, max_bytes);
        // The event, as far as the frame could be read.
        let event = match &decoded {
            Ok(request) => Some(request.body.name()),
            Err(refusal) => refusal.event.as_deref(),
        };
        if self.resume_wait.is_some() && event.is_some_and(|e| e != "resume") {
            // The first request is not `resume`: nothing to wait for. (A frame that could not be
            // read, or a `resume` with bad data, leaves the wait: the client may send it again.)
            self.resume_wait = None;
            self.release(None);
        }
        self.gateway.shared.metrics.requests.inc();
        let request = match decoded {
            Ok(request) => request,
            Err(refusal) => {
                self.refuse(&refusal);
                return None;
            }
        };
        let request_id = request.request_id;
        let event = request.body.name();
        let span = chat_proto::telemetry::traced(|| {
            tracing::info_span!("request", event, trace_id = tracing::field::Empty)
        });
        let dispatched = if !span.is_none() {
            // Boxed: the socket's idle task keeps the size it has without traces.
            Box::pin(
                self.dispatch(request.body, request_id.as_deref())
                    .instrument(span),
            )
            .await
        } else {
            self.dispatch(request.body, request_id.as_deref()).await
        };
        match dispatched {
            Ok(Reply::Ack(data)) => {
                if let Some(id) = request_id {
                    self.emit(client::ack(&id, data));
                }
                None
            }
            Ok(Reply::Resumed(data, replay)) => {
                if let Some(id) = request_id {
                    self.emit(client::ack(&id, data));
                }
                self.release(replay);
                None
            }
            Ok(Reply::Later(send)) => Some(send),
            Err(error) => {
                self.refused(&error, request_id.as_deref(), Some(event));
                None
            }
        }
    }

    /// Answers a request with its refusal, and counts it.
    pub(super) fn refused(
        &self,
        error: &RequestError,
        request_id: Option<&str>,
        event: Option<&str>,
    ) {
        self.gateway.shared.metrics.refuse_request(error.code);
        self.emit(error.to_frame(request_id, event));
    }

    /// Answers a frame refused before it became a request. A message request counts against the
    /// rate even when its data is bad.
    fn refuse(&self, refusal: &Refusal) {
        let event = refusal.event.as_deref();
        if event.is_some_and(request::is_message)
            && let Err(error) = self.take_message_token()
        {
            self.refused(&error, refusal.request_id.as_deref(), event);
            return;
        }
        self.refused(
            &refusal.error,
            refusal.request_id.as_deref(),
            refusal.event.as_deref(),
        );
    }

    async fn dispatch(
        &mut self,
        body: Body,
        request_id: Option<&str>,
    ) -> Result<Reply, RequestError> {
        if request::is_message(body.name()) {
            self.take_message_token()?;
        }
        match body {
            Body::Ping => Ok(auth::pong()),
            Body::Auth(data) => self.reauthenticate(data).await,
            Body::Resume(data) => self.resume(data).await,
            Body::Send(data) => self.send(data, request_id).await,
            Body::Edit(data) => self.edit(data).await,
            Body::Delete(data) => self.delete(data).await,
            Body::Sync(data) => self.sync(data).await,
            Body::Create(data) => self.create(data).await,
            Body::Join(data) => self.join(data).await,
            Body::Leave(data) => self.leave(data).await,
            Body::List => self.list().await,
            Body::Info(data) => self.info(data).await,
            Body::Online(data) => self.online(data).await,
            Body::Typing(data, is_typing) => self.typing(data, is_typing).await,
            Body::Receipt(data, read) => self.receipt(data, read).await,
            Body::PresenceUpdate(data) => self.update_presence(&data),
            Body::PresenceQuery(data) => self.query_presence(data).await,
            Body::Participant(data, add) => self.change_participant(data, add).await,
            Body::Ban(data) => self.ban(data).await,
            Body::Unban(data) => self.unban(data).await,
        }
    }

    /// `FORBIDDEN`, naming the permission, unless the user's role has it.
    fn require(&self, permission: Permission) -> Result<(), RequestError> {
        self.gateway
            .shared
            .settings
            .permissions
            .require(self.identity.role.as_deref(), permission)
    }

    /// Whether the user's role has `permission`.
    fn allows(&self, permission: Permission) -> bool {
        self.gateway
            .shared
            .settings
            .permissions
            .allows(self.identity.role.as_deref(), permission)
    }

    /// Counts a message sent, edited or deleted against the user's rate on this node.
    fn take_message_token(&self) -> Result<(), RequestError> {
        let shared = &self.gateway.shared;
        let config = &shared.settings.config;
        let rate = match self.identity.role.as_deref() {
            Some("guest") => config.guest_message_rate,
            _ => config.message_rate,
        };
        shared
            .message_rates
            .take(Arc::clone(&self.identity.user_id), rate)
            .map_err(|wait| RequestError::rate_limited("too many messages; slow down", wait))
    }

    /// Checks that the user is a member: from the socket's own rooms, the cache, or the worker.
    async fn require_member(&self, conversation_id: &str) -> Result<(), RequestError> {
        let shared = &self.gateway.shared;
        if shared.hub.is_joined(self.socket.id, conversation_id) {
            return Ok(());
        }
        let key = (
            Arc::clone(&self.identity.user_id),
            Arc::<str>::from(conversation_id),
        );
        let member = match shared.membership.get(&key) {
            Some(member) => member,
            None => {
                let reply = shared
                    .worker
                    .membership(&self.identity.user_id, conversation_id)
                    .await?;
                if !reply.exists {
                    return Err(RequestError::not_found("no such conversation"));
                }
                shared.membership.insert(key, reply.member);
                reply.member
            }
        };
        if member {
            Ok(())
        } else {
            Err(RequestError::forbidden("not a member of this conversation"))
        }
    }
}
