//! `room:create`, `room:join`, `room:leave`, `room:list`, `room:info` and `room:online`.
//! Membership changes are made by the worker (durable before they are announced); this node's
//! sockets of the user join before the ack, so nothing published after it is missed.

use chat_proto::client::{ConversationJson, ConversationRef, CreateData, JoinData};
use chat_proto::v1;
use serde_json::json;

use super::Reply;
use crate::error::RequestError;
use crate::presence;
use crate::session::Session;
use crate::validation;
use crate::worker::Detail;

impl Session {
    /// Joins this user's local sockets to a conversation before the ack; the user event that
    /// follows tells them.
    async fn join_local(&self, conversation: &v1::Conversation) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        shared
            .hub
            .join_user(&self.identity.user_id, &conversation.id)
            .await;
        Ok(Reply::Ack(
            json!({ "conversation": ConversationJson::from(conversation) }),
        ))
    }

    pub(super) async fn create(&mut self, data: CreateData) -> Result<Reply, RequestError> {
        let request = validation::new_conversation(data, &self.identity.user_id)?;
        let shared = &self.gateway.shared;
        shared.hub.check_room_limit(self.socket.id, None)?;
        let conversation = shared.worker.create(request).await?;
        self.join_local(&conversation).await
    }

    pub(super) async fn join(&mut self, data: JoinData) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        validation::password(data.password.as_deref())?;
        let shared = &self.gateway.shared;
        shared
            .hub
            .check_room_limit(self.socket.id, Some(&data.conversation_id))?;
        let request = v1::JoinConversationRequest {
            user_id: self.identity.user_id.to_string(),
            conversation_id: data.conversation_id,
            password: data.password,
            by_server: false,
        };
        let conversation = shared.worker.join(request).await?;
        self.join_local(&conversation).await
    }

    pub(super) async fn leave(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        let shared = &self.gateway.shared;
        let request = v1::LeaveConversationRequest {
            user_id: self.identity.user_id.to_string(),
            conversation_id: data.conversation_id.clone(),
        };
        shared.worker.leave(request).await?;
        shared
            .hub
            .leave_user(&self.identity.user_id, &data.conversation_id);
        Ok(Reply::Ack(json!({})))
    }

    pub(super) async fn list(&mut self) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        let rooms = shared
            .worker
            .conversations_of(&self.identity.user_id)
            .await?;
        let rooms: Vec<_> = rooms.iter().map(ConversationJson::from).collect();
        Ok(Reply::Ack(json!({ "conversations": rooms })))
    }

    pub(super) async fn info(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        let shared = &self.gateway.shared;
        let conversation = shared
            .worker
            .conversation(
                &data.conversation_id,
                Detail::ForReader(&self.identity.user_id),
            )
            .await?;
        if conversation.private {
            self.require_member(&conversation.id).await?;
        }
        Ok(Reply::Ack(
            json!({ "conversation": ConversationJson::from(&conversation) }),
        ))
    }

    /// Which members are visibly online (answered by the routers).
    pub(super) async fn online(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let user_ids =
            presence::online_members(&self.gateway.shared, &data.conversation_id).await?;
        Ok(Reply::Ack(json!({ "userIds": user_ids })))
    }
}
