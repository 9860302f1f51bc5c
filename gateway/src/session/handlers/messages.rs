//! `message:send`, `message:edit`, `message:delete` and `messages:sync`.
//!
//! A send is published to the stream at once and answered when the stream acknowledges it
//! ([`PendingSend`]), while the socket's next requests are read: sends keep their order. The
//! acknowledged message is then announced live and acked to the sender.

use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use chat_proto::bus::{self, BusError, Stored};
use chat_proto::client::{self, DeleteData, EditData, MessageJson, SendData, SyncData};
use chat_proto::timestamp::now_ms;
use chat_proto::v1::{self, conversation_event::Kind};
use tracing::Instrument as _;

use super::Reply;
use crate::audit;
use crate::error::RequestError;
use crate::history::{self, Window};
use crate::permissions::Permission;
use crate::session::Session;
use crate::validation;
use crate::{operations, publish};

/// A send awaiting the stream. Its outcome is boxed: it would otherwise widen the request
/// loop's state, held by every idle socket.
pub(in crate::session) type PendingSend = Pin<Box<dyn Future<Output = Box<SendOutcome>> + Send>>;

/// What a send needs once the stream has answered.
pub(in crate::session) struct SendOutcome {
    request_id: Option<String>,
    /// The message as sent (its id comes from the stream's acknowledgement).
    message: v1::ChatMessage,
    result: Result<Stored, BusError>,
    /// How long the stream took to answer.
    took: Duration,
    /// The trace context the message travels with.
    trace: Option<HeaderMap>,
}

impl Session {
    pub(super) async fn send(
        &mut self,
        data: SendData,
        request_id: Option<&str>,
    ) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        if !data.attachments.is_empty() {
            self.require(Permission::SendAttachments)?;
        }
        let mut message = validation::new_message(
            data,
            &self.identity.user_id,
            &shared.limits,
            validation::CLIENT_TYPES,
        )?;
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            // Fails fast instead of waiting out the timeout: the client retries, with the same
            // `clientMessageId`, which never makes a second message.
            return Err(RequestError::unavailable());
        }
        self.require_member(&message.conversation_id).await?;
        message.created_at_ms = now_ms();
        let dedup_id = publish::dedup_id(&message);
        let span = publish::publish_span(&message.conversation_id);
        let trace = chat_proto::telemetry::headers(&span);
        let started = Instant::now();
        let ack = bus::start_durable(
            &shared.js,
            &publish::created(message.clone()),
            dedup_id.as_deref(),
            trace.as_ref(),
        )
        .await?;
        let request_id = request_id.map(str::to_owned);
        let acked = async move {
            let result = bus::finish_durable(ack).await;
            Box::new(SendOutcome {
                request_id,
                message,
                result,
                took: started.elapsed(),
                trace,
            })
        };
        Ok(Reply::Later(Box::pin(acked.instrument(span))))
    }

    /// Answers a send the stream has acknowledged (or not), and announces it live.
    pub(in crate::session) async fn finish_send(&mut self, outcome: Box<SendOutcome>) {
        let SendOutcome {
            request_id,
            message,
            result,
            took,
            trace,
        } = *outcome;
        let shared = &self.gateway.shared;
        let stored = match result {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "send not acknowledged by the stream");
                let error = RequestError::unavailable();
                self.refused(&error, request_id.as_deref(), Some("message:send"));
                return;
            }
        };
        shared.metrics.message_stored(took);
        let message = publish::announce_created(shared, message, stored, trace.as_ref()).await;
        let record = audit::message_event("message.create", &self.identity.user_id, &message);
        self.record(record);
        if let Some(id) = request_id {
            let data = client::MessageData {
                message: MessageJson::from(&message),
            };
            self.emit(client::ack(&id, data));
        }
    }

    /// The message `id` if it is still there and the user may change it: their own, or any in
    /// their conversations with the permission `moderateMessages`.
    async fn changeable_message(
        &self,
        id: u64,
        conversation_id: Option<&str>,
    ) -> Result<v1::ChatMessage, RequestError> {
        if let Some(conversation_id) = conversation_id {
            validation::conversation_id(conversation_id)?;
        }
        let message = publish::existing_message(&self.gateway.shared, id, conversation_id).await?;
        if *message.sender_id != *self.identity.user_id
            && !self.allows(Permission::ModerateMessages)
        {
            return Err(RequestError::forbidden(
                "only the sender may change a message (or a role with the permission moderateMessages)",
            ));
        }
        self.require_member(&message.conversation_id).await?;
        Ok(message)
    }

    pub(super) async fn edit(&mut self, data: EditData) -> Result<Reply, RequestError> {
        validation::content(&data.content, &self.gateway.shared.limits)?;
        let mut message = self
            .changeable_message(data.message_id, data.conversation_id.as_deref())
            .await?;
        let edited_at_ms = now_ms();
        let edit = v1::MessageEdited {
            message_id: message.id,
            editor_id: self.identity.user_id.to_string(),
            content: data.content.clone(),
            edited_at_ms,
        };
        publish::record(
            &self.gateway.shared,
            &message.conversation_id,
            Kind::MessageEdited(edit),
        )
        .await?;
        let record = audit::message_event("message.edit", &self.identity.user_id, &message);
        self.record(record);
        message.content = data.content;
        message.edited_at_ms = Some(edited_at_ms);
        Ok(Reply::ack(&client::MessageData {
            message: MessageJson::from(&message),
        }))
    }

    pub(super) async fn delete(&mut self, data: DeleteData) -> Result<Reply, RequestError> {
        let message = self
            .changeable_message(data.message_id, data.conversation_id.as_deref())
            .await?;
        let deleter_id = &self.identity.user_id;
        operations::delete_message(&self.gateway.shared, self.actor(), &message, deleter_id)
            .await?;
        Ok(Reply::done())
    }

    pub(super) async fn sync(&mut self, data: SyncData) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        let (default, max) = client::SYNC_LIMIT;
        let limit = data.limit.unwrap_or(default);
        if limit == 0 || limit > max {
            return Err(RequestError::invalid(format!("limit must be 1 to {max}")));
        }
        self.require_member(&data.conversation_id).await?;
        let window = Window::new(data.last_message_id, data.before_message_id);
        let shared = &self.gateway.shared;
        let (messages, has_more) = history::sync(
            &shared.worker,
            &shared.reader,
            &data.conversation_id,
            window,
            limit,
        )
        .await?;
        Ok(Reply::ack(&client::MessagesData {
            messages: messages.iter().map(MessageJson::from).collect(),
            has_more,
        }))
    }
}
