//! `room:create`, `room:join`, `room:leave`, `room:list`, `room:info`, `room:online`,
//! `participant:add`, `participant:remove`, `room:ban` and `room:unban`.
//! Membership changes are made by the worker (durable before they are announced); this node's
//! sockets of the user join before the ack, so nothing published after it is missed.

use chat_proto::client::{
    ConversationData, ConversationRef, ConversationsData, CreateData, ErrorCode, JoinData,
    UserIdsData,
};
use chat_proto::v1;

use super::Reply;
use crate::error::RequestError;
use crate::permissions::{self, Permission};
use crate::request::{BanData, ParticipantData};
use crate::session::Session;
use crate::validation;
use crate::worker::Detail;
use crate::{operations, presence};

impl Session {
    /// Joins this user's local sockets to a conversation before the ack; the user event that
    /// follows tells them.
    async fn join_local(&self, conversation: &v1::Conversation) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        shared
            .hub
            .join_user(&self.identity.user_id, &conversation.id)
            .await;
        Ok(Reply::ack(&ConversationData::from(conversation)))
    }

    pub(super) async fn create(&mut self, data: CreateData) -> Result<Reply, RequestError> {
        self.require(Permission::CreateConversations)?;
        let request = validation::new_conversation(data, &self.identity.user_id)?;
        let shared = &self.gateway.shared;
        shared.hub.check_room_limit(self.socket.id, None)?;
        let conversation = operations::create_conversation(shared, self.actor(), request).await?;
        self.join_local(&conversation).await
    }

    pub(super) async fn join(&mut self, data: JoinData) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        validation::password(data.password.as_deref())?;
        if !self.allows(Permission::JoinPublic) {
            // Without it, a user may only join what they are a member of (a no-op).
            match self.require_member(&data.conversation_id).await {
                Err(error) if error.code == ErrorCode::Forbidden => {
                    return Err(permissions::refusal(
                        self.identity.role.as_deref(),
                        Permission::JoinPublic,
                    ));
                }
                checked => checked?,
            }
        }
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
        self.record(self.audit("join", &self.identity.user_id, &conversation.id));
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
        self.record(self.audit("leave", &self.identity.user_id, &data.conversation_id));
        Ok(Reply::done())
    }

    pub(super) async fn list(&mut self) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        let rooms = shared
            .worker
            .conversations_of(&self.identity.user_id)
            .await?;
        Ok(Reply::ack(&ConversationsData::from(&rooms[..])))
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
        Ok(Reply::ack(&ConversationData::from(&conversation)))
    }

    /// A member adds another user (privacy and passwords do not apply to members) or removes
    /// one, with the permission `manageParticipants`; as through the server API.
    pub(super) async fn change_participant(
        &mut self,
        data: ParticipantData,
        add: bool,
    ) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        validation::user_id(&data.user_id)?;
        self.require(Permission::ManageParticipants)?;
        self.require_member(&data.conversation_id).await?;
        let shared = &self.gateway.shared;
        let (conversation_id, user_id) = (data.conversation_id, data.user_id);
        let conversation = if add {
            operations::add_participant(shared, self.actor(), conversation_id, user_id).await?
        } else {
            operations::remove_participant(shared, self.actor(), conversation_id, user_id).await?
        };
        Ok(Reply::ack(&ConversationData::from(&conversation)))
    }

    /// A member with the permission `ban` bans another from the conversation.
    pub(super) async fn ban(&mut self, data: BanData) -> Result<Reply, RequestError> {
        let request = validation::ban(
            data.conversation_id,
            data.user_id,
            data.duration_secs,
            data.reason,
            &self.identity.user_id,
        )?;
        self.require(Permission::Ban)?;
        self.require_member(&request.conversation_id).await?;
        operations::ban(&self.gateway.shared, self.actor(), request).await?;
        Ok(Reply::done())
    }

    /// A member with the permission `ban` ends a ban.
    pub(super) async fn unban(&mut self, data: ParticipantData) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        validation::user_id(&data.user_id)?;
        self.require(Permission::Ban)?;
        self.require_member(&data.conversation_id).await?;
        let (conversation_id, user_id) = (&data.conversation_id, &data.user_id);
        operations::unban(&self.gateway.shared, self.actor(), conversation_id, user_id).await?;
        Ok(Reply::done())
    }

    /// Which members are visibly online (answered by the routers).
    pub(super) async fn online(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let user_ids =
            presence::online_members(&self.gateway.shared, &data.conversation_id).await?;
        Ok(Reply::ack(&UserIdsData { user_ids }))
    }
}
