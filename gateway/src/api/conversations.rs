//! Conversations and their participants. Membership changes are made by the worker, which
//! tells the users' nodes: the participants' live sockets join or leave at once and get
//! `conversation:new`, `conversation:joined` or `conversation:removed`; the other members get
//! `participant:added` or `participant:removed` from the conversation's events.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use chat_proto::client::{ConversationData, CreateData, Done, UserIdsData};
use chat_proto::v1;
use serde::Deserialize;

use super::{Actor, Api, ApiError, Body};
use crate::error::RequestError;
use crate::worker::Detail;
use crate::{operations, presence, validation};

/// `POST /conversations`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewConversation {
    title: Option<String>,
    participant_ids: Vec<String>,
    private: Option<bool>,
    password: Option<String>,
    created_by: Option<String>,
}

/// `POST /conversations/{id}/bans`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewBan {
    user_id: String,
    duration_secs: Option<u64>,
    reason: Option<String>,
}

/// `POST /conversations/{id}/participants`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewParticipant {
    user_id: String,
}

fn conversation(conversation: &v1::Conversation) -> Response {
    Json(ConversationData::from(conversation)).into_response()
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Body(data): Body<NewConversation>,
) -> Result<(StatusCode, Response), ApiError> {
    let creator = data.created_by.unwrap_or_default();
    if !creator.is_empty() {
        validation::user_id(&creator)?;
    }
    if creator.is_empty() && data.participant_ids.is_empty() {
        return Err(
            RequestError::invalid("a conversation needs participantIds or createdBy").into(),
        );
    }
    let request = validation::new_conversation(
        CreateData {
            title: data.title,
            participant_ids: data.participant_ids,
            private: data.private,
            password: data.password,
        },
        &creator,
    )?;
    let created = operations::create_conversation(&api.gateway.shared, actor.op(), request).await?;
    Ok((StatusCode::CREATED, conversation(&created)))
}

pub(super) async fn get(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    validation::conversation_id(&id)?;
    let found = api
        .gateway
        .shared
        .worker
        .conversation(&id, Detail::ForReader(""))
        .await?;
    Ok(conversation(&found))
}

pub(super) async fn add_participant(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Body(data): Body<NewParticipant>,
) -> Result<Response, ApiError> {
    validation::conversation_id(&id)?;
    validation::user_id(&data.user_id)?;
    let joined =
        operations::add_participant(&api.gateway.shared, actor.op(), id, data.user_id).await?;
    Ok(conversation(&joined))
}

pub(super) async fn remove_participant(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validation::conversation_id(&id)?;
    validation::user_id(&user_id)?;
    let left = operations::remove_participant(&api.gateway.shared, actor.op(), id, user_id).await?;
    Ok(conversation(&left))
}

pub(super) async fn online(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<UserIdsData>, ApiError> {
    validation::conversation_id(&id)?;
    let user_ids = presence::online_members(&api.gateway.shared, &id).await?;
    Ok(Json(UserIdsData { user_ids }))
}

pub(super) async fn ban(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Body(data): Body<NewBan>,
) -> Result<Json<Done>, ApiError> {
    // Banned by the backend: by no member.
    let request = validation::ban(id, data.user_id, data.duration_secs, data.reason, "")?;
    operations::ban(&api.gateway.shared, actor.op(), request).await?;
    Ok(Json(Done {}))
}

pub(super) async fn unban(
    State(api): State<Api>,
    Extension(actor): Extension<Actor>,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<Done>, ApiError> {
    validation::conversation_id(&id)?;
    validation::user_id(&user_id)?;
    operations::unban(&api.gateway.shared, actor.op(), &id, &user_id).await?;
    Ok(Json(Done {}))
}
