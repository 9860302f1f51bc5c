//! Requests to the persistence worker over NATS request-reply, each with a deadline.

use std::time::Duration;

use bytes::Bytes;
use chat_proto::subjects::rpc;
use chat_proto::v1;
use prost::Message;

use crate::error::RequestError;

/// Why a call to the worker failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No worker answered in time (down, or NATS down).
    #[error("the persistence worker is unavailable")]
    Unavailable,
    /// The worker refused the request.
    #[error("the worker refused: {message}")]
    Rejected {
        /// Its code.
        code: v1::rpc_error::Code,
        /// Its message, safe for clients.
        message: String,
    },
    /// The reply could not be read.
    #[error("malformed reply")]
    Malformed,
}

/// What a conversation look-up includes besides the conversation.
#[derive(Debug, Clone, Copy)]
pub enum Detail<'a> {
    /// The first 100 participants, and this user's read marker.
    ForReader(&'a str),
    /// Every participant (up to 10,000), for `room:online`.
    AllParticipants,
}

/// A client of the worker's API; a cheap `Clone`.
#[derive(Clone, Debug)]
pub struct WorkerClient {
    client: async_nats::Client,
    timeout: Duration,
}

impl WorkerClient {
    /// Calls through `client`, each waiting at most `timeout`.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn call<Reply: Message + Default>(
        &self,
        subject: &'static str,
        request: &impl Message,
    ) -> Result<Reply, CallError> {
        let call = self
            .client
            .request(subject, Bytes::from(request.encode_to_vec()));
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                tracing::debug!(%error, subject, "worker request failed");
                return Err(CallError::Unavailable);
            }
            Err(_) => return Err(CallError::Unavailable),
        };
        let failed = reply
            .headers
            .as_ref()
            .is_some_and(|h| h.get(rpc::ERROR_HEADER).is_some());
        if failed {
            let error = v1::RpcError::decode(reply.payload).map_err(|_| CallError::Malformed)?;
            return Err(CallError::Rejected {
                code: error.code(),
                message: error.message,
            });
        }
        Reply::decode(reply.payload).map_err(|_| CallError::Malformed)
    }

    /// `(exists, member)` of a user in a conversation.
    pub async fn membership(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<v1::MembershipReply, CallError> {
        let request = v1::MembershipRequest {
            user_id: user_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
        };
        self.call(rpc::MEMBERSHIP, &request).await
    }

    /// The user's conversations.
    pub async fn conversations_of(
        &self,
        user_id: &str,
    ) -> Result<Vec<v1::Conversation>, CallError> {
        let request = v1::ListConversationsRequest {
            user_id: user_id.to_owned(),
        };
        let reply: v1::ListConversationsReply =
            self.call(rpc::LIST_CONVERSATIONS, &request).await?;
        Ok(reply.conversations)
    }

    /// One conversation, as `detail` asks.
    pub async fn conversation(
        &self,
        conversation_id: &str,
        detail: Detail<'_>,
    ) -> Result<v1::Conversation, CallError> {
        let (all_participants, user_id) = match detail {
            Detail::ForReader(user_id) => (false, user_id.to_owned()),
            Detail::AllParticipants => (true, String::new()),
        };
        let request = v1::ConversationInfoRequest {
            conversation_id: conversation_id.to_owned(),
            all_participants,
            user_id,
        };
        let reply: v1::ConversationInfoReply = self.call(rpc::CONVERSATION_INFO, &request).await?;
        reply.conversation.ok_or(CallError::Malformed)
    }

    /// Creates a conversation.
    pub async fn create(
        &self,
        request: v1::CreateConversationRequest,
    ) -> Result<v1::Conversation, CallError> {
        self.conversation_call(rpc::CREATE_CONVERSATION, &request)
            .await
    }

    /// Joins a conversation.
    pub async fn join(
        &self,
        request: v1::JoinConversationRequest,
    ) -> Result<v1::Conversation, CallError> {
        self.conversation_call(rpc::JOIN_CONVERSATION, &request)
            .await
    }

    /// Leaves a conversation.
    pub async fn leave(
        &self,
        request: v1::LeaveConversationRequest,
    ) -> Result<v1::Conversation, CallError> {
        self.conversation_call(rpc::LEAVE_CONVERSATION, &request)
            .await
    }

    async fn conversation_call(
        &self,
        subject: &'static str,
        request: &impl Message,
    ) -> Result<v1::Conversation, CallError> {
        let reply: v1::ConversationReply = self.call(subject, request).await?;
        reply.conversation.ok_or(CallError::Malformed)
    }

    /// Records that `user_id` has read `conversation_id` up to `message_id` (a marker only moves
    /// forward).
    pub async fn mark_read(
        &self,
        user_id: &str,
        conversation_id: &str,
        message_id: u64,
    ) -> Result<(), CallError> {
        let request = v1::MarkReadRequest {
            user_id: user_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            message_id,
        };
        let _: v1::MarkReadReply = self.call(rpc::MARK_READ, &request).await?;
        Ok(())
    }

    /// A page of the audit log.
    pub async fn audit(&self, query: v1::AuditQuery) -> Result<v1::AuditPage, CallError> {
        self.call(rpc::AUDIT, &query).await
    }

    /// Whether a worker answers, reaches its store, and its lag.
    pub async fn health(&self) -> Result<v1::HealthReply, CallError> {
        self.call(rpc::HEALTH, &v1::HealthRequest {}).await
    }

    /// Bans a user from a conversation (removing them if they are a member).
    pub async fn ban(&self, request: v1::BanRequest) -> Result<(), CallError> {
        let _: v1::BanReply = self.call(rpc::BAN, &request).await?;
        Ok(())
    }

    /// Ends a user's ban from a conversation.
    pub async fn unban(&self, conversation_id: &str, user_id: &str) -> Result<(), CallError> {
        let request = v1::UnbanRequest {
            conversation_id: conversation_id.to_owned(),
            user_id: user_id.to_owned(),
        };
        let _: v1::BanReply = self.call(rpc::UNBAN, &request).await?;
        Ok(())
    }

    /// A page of history from the store, with the store's committed position.
    pub async fn history(
        &self,
        request: v1::HistoryRequest,
    ) -> Result<v1::HistoryReply, CallError> {
        self.call(rpc::HISTORY, &request).await
    }

    /// One message as the store has it, with the store's committed position.
    pub async fn message(&self, message_id: u64) -> Result<v1::GetMessageReply, CallError> {
        self.call(rpc::GET_MESSAGE, &v1::GetMessageRequest { message_id })
            .await
    }
}

/// How a worker's failure reaches the client.
impl From<CallError> for RequestError {
    fn from(error: CallError) -> Self {
        use chat_proto::v1::rpc_error::Code;
        match error {
            CallError::Unavailable => Self::unavailable(),
            CallError::Rejected { code, message } => match code {
                Code::NotFound => Self::not_found(message),
                Code::Forbidden => Self::forbidden(message),
                Code::Invalid => Self::invalid(message),
                Code::Internal => Self::internal(),
            },
            CallError::Malformed => Self::internal(),
        }
    }
}
