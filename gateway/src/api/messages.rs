//! Messages posted by the backend (also `system` and `robot` ones, which clients cannot send)
//! and deleted by moderation. A post goes through the stream as a socket's send does: members get
//! `message:new`, and a repeated `clientMessageId` yields the first message.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use chat_proto::client::{AttachmentData, Done, MessageData, MessageJson, SendData};
use chat_proto::timestamp::now_ms;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Actor, Api, ApiError, Body};
use crate::audit;
use crate::error::RequestError;
use crate::worker::Detail;
use crate::{operations, publish, validation};

/// `POST /conversations/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewMessage {
    sender_id: String,
    content: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    metadata: Option<Box<RawValue>>,
    #[serde(default)]
    attachments: Vec<AttachmentData>,
    reply_to: Option<u64>,
    client_message_id: Option<String>,
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Body(data): Body<NewMessage>,
) -> Result<(StatusCode, Response), ApiError> {
    let shared = &api.gateway.shared;
    validation::user_id(&data.sender_id)?;
    let send = SendData {
        conversation_id: id,
        content: data.content,
        kind: data.kind,
        attachments: data.attachments,
        reply_to: data.reply_to,
        metadata: data.metadata,
        client_message_id: data.client_message_id,
    };
    let mut message = validation::new_message(
        send,
        &data.sender_id,
        &shared.limits,
        validation::SERVER_TYPES,
    )?;
    // The conversation must exist; the sender need not be a member (a bot, the system).
    shared
        .worker
        .conversation(&message.conversation_id, Detail::ForReader(""))
        .await?;
    message.created_at_ms = now_ms();
    let message = publish::create_message(shared, message).await?;
    let record = audit::message_event("message.create", &actor.0, &message);
    shared.audit.record(record);
    let data = MessageData {
        message: MessageJson::from(&message),
    };
    Ok((StatusCode::CREATED, Json(data).into_response()))
}

pub(super) async fn delete(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<Json<Done>, ApiError> {
    let shared = &api.gateway.shared;
    validation::conversation_id(&id)?;
    let message_id: u64 = message_id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| RequestError::invalid("messageId must be a positive integer"))?;
    let message = publish::existing_message(shared, message_id, Some(&id)).await?;
    // Deleted by moderation: by no member.
    operations::delete_message(shared, actor.op(), &message, "").await?;
    Ok(Json(Done {}))
}
