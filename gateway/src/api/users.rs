//! Users: their conversations, their presence, and closing their sockets on every node.

use axum::Json;
use axum::extract::{Path, State};
use chat_proto::bus;
use chat_proto::client::ConversationJson;
use chat_proto::v1::{self, user_event};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, ApiError, Query};
use crate::error::RequestError;
use crate::{presence, validation};

/// `POST /users/{userId}/disconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Disconnect {
    /// `banned` closes the sockets with 4403 (do not reconnect); anything else with 1000.
    reason: Option<String>,
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
) -> Result<Json<Value>, ApiError> {
    validation::user_id(&user_id)?;
    let conversations = api.gateway.shared.worker.conversations_of(&user_id).await?;
    let conversations: Vec<_> = conversations.iter().map(ConversationJson::from).collect();
    Ok(Json(json!({ "conversations": conversations })))
}

pub(super) async fn disconnect(
    State(api): State<Api>,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    validation::user_id(&user_id)?;
    // The body is optional.
    let data: Disconnect = if body.is_empty() {
        Disconnect::default()
    } else {
        super::parse(&body)?
    };
    let banned = data.reason.as_deref() == Some("banned");
    let event = v1::UserEvent {
        user_id,
        kind: Some(user_event::Kind::Disconnect(v1::Disconnect { banned })),
    };
    // To every node: each closes the sockets of the user it holds.
    bus::publish_user(&api.gateway.shared.client, &event, None)
        .await
        .map_err(|_| RequestError::unavailable())?;
    Ok(Json(json!({})))
}

pub(super) async fn presence(
    State(api): State<Api>,
    Query(query): Query<PresenceQuery>,
) -> Result<Json<Value>, ApiError> {
    let user_ids: Vec<String> = query.user_ids.split(',').map(str::to_owned).collect();
    let statuses = presence::statuses(&api.gateway.shared, user_ids).await?;
    Ok(Json(json!({ "statuses": statuses })))
}
