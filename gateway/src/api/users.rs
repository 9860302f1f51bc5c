//! Users: their conversations, their presence, and closing their sockets on every node.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use chat_proto::bus;
use chat_proto::client::{ConversationsData, Done, StatusesData};
use chat_proto::timestamp::iso8601;
use chat_proto::v1::{self, user_event};
use serde::{Deserialize, Serialize};

use super::{Actor, Api, ApiError, Query};
use crate::error::RequestError;
use crate::{presence, validation};

/// `POST /users/{userId}/disconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Disconnect {
    /// `banned` closes the sockets with 4403 (do not reconnect); anything else with 1000.
    reason: Option<String>,
}

/// `GET /audit?conversationId=&userId=&after=&limit=`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AuditQuery {
    conversation_id: Option<String>,
    user_id: Option<String>,
    after: Option<u64>,
    limit: Option<u32>,
}

/// `GET /presence?userIds=a,b`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PresenceQuery {
    user_ids: String,
}

pub(super) async fn conversations(
    State(api): State<Api>,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    validation::user_id(&user_id)?;
    let conversations = api.gateway.shared.worker.conversations_of(&user_id).await?;
    Ok(Json(ConversationsData::from(&conversations[..])).into_response())
}

pub(super) async fn disconnect(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Done>, ApiError> {
    validation::user_id(&user_id)?;
    // The body is optional.
    let data: Disconnect = if body.is_empty() {
        Disconnect::default()
    } else {
        super::parse(&body)?
    };
    let banned = data.reason.as_deref() == Some("banned");
    let mut record = actor.op().audit("user.disconnect", &user_id, "");
    record.detail = data.reason.unwrap_or_default();
    let event = v1::UserEvent {
        user_id,
        kind: Some(user_event::Kind::Disconnect(v1::Disconnect { banned })),
    };
    // To every node: each closes the sockets of the user it holds.
    let shared = &api.gateway.shared;
    bus::publish_user(&shared.client, &event, None)
        .await
        .map_err(|_| RequestError::unavailable())?;
    shared.audit.record(record);
    Ok(Json(Done {}))
}

pub(super) async fn presence(
    State(api): State<Api>,
    Query(query): Query<PresenceQuery>,
) -> Result<Json<StatusesData>, ApiError> {
    let user_ids: Vec<String> = query.user_ids.split(',').map(str::to_owned).collect();
    Ok(Json(
        presence::statuses(&api.gateway.shared, user_ids).await?,
    ))
}

pub(super) async fn audit(
    State(api): State<Api>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(RequestError::invalid("limit must be 1 to 1000").into());
    }
    let conversation_id = query.conversation_id.unwrap_or_default();
    if !conversation_id.is_empty() {
        validation::conversation_id(&conversation_id)?;
    }
    let user_id = query.user_id.unwrap_or_default();
    if !user_id.is_empty() {
        validation::user_id(&user_id)?;
    }
    let page = api
        .gateway
        .shared
        .worker
        .audit(v1::AuditQuery {
            conversation_id,
            user_id,
            after: query.after.unwrap_or(0),
            limit,
        })
        .await?;
    let answer = AuditPageJson {
        events: page.events.iter().map(AuditJson::from).collect(),
        next: (page.next > 0).then_some(page.next),
    };
    Ok(Json(answer).into_response())
}

/// `{events, next}`: a page of the audit log.
#[derive(Serialize)]
struct AuditPageJson<'a> {
    events: Vec<AuditJson<'a>>,
    next: Option<u64>,
}

/// An audit record as the API shows it: empty fields left out.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditJson<'a> {
    seq: u64,
    at: String,
    kind: &'a str,
    actor: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    conversation_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    node: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    address: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<u64>,
}

impl<'a> From<&'a v1::AuditEvent> for AuditJson<'a> {
    fn from(event: &'a v1::AuditEvent) -> Self {
        Self {
            seq: event.seq,
            at: iso8601(event.at_ms),
            kind: &event.kind,
            actor: &event.actor,
            user_id: &event.user_id,
            conversation_id: &event.conversation_id,
            node: &event.node,
            address: &event.address,
            detail: &event.detail,
            message_id: (event.message_id > 0).then_some(event.message_id),
        }
    }
}
