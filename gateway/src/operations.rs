//! The changes that both entry points make, a socket's requests (`session::handlers`) and the
//! server API's routes (`api`): one function each, taking who asks ([`Actor`]) and a typed
//! request, that makes the change (through the worker, or the stream) and writes its audit
//! record. What each entry point checks before is its own: a socket its user's permissions and
//! membership, the server API its key.

use chat_proto::timestamp::now_ms;
use chat_proto::v1::{self, conversation_event::Kind};

use crate::Shared;
use crate::audit;
use crate::error::RequestError;
use crate::publish;

/// Who asks for a change, as the audit log names them: a user's id, or `api:<key name>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor<'a>(pub(crate) &'a str);

impl Actor<'_> {
    /// A record of `kind` by this actor, about `user_id` in `conversation_id`.
    pub(crate) fn audit(self, kind: &str, user_id: &str, conversation_id: &str) -> v1::AuditEvent {
        audit::event(kind, self.0, user_id, conversation_id)
    }
}

/// Creates a conversation (its participants' sockets join wherever they are).
pub(crate) async fn create_conversation(
    shared: &Shared,
    actor: Actor<'_>,
    request: v1::CreateConversationRequest,
) -> Result<v1::Conversation, RequestError> {
    let created = shared.worker.create(request).await?;
    let record = actor.audit("conversation.create", &created.created_by, &created.id);
    shared.audit.record(record);
    Ok(created)
}

/// Adds `user_id` to a conversation: neither privacy nor a password applies.
pub(crate) async fn add_participant(
    shared: &Shared,
    actor: Actor<'_>,
    conversation_id: String,
    user_id: String,
) -> Result<v1::Conversation, RequestError> {
    let record = actor.audit("participant.add", &user_id, &conversation_id);
    let request = v1::JoinConversationRequest {
        user_id,
        conversation_id,
        password: None,
        by_server: true,
    };
    let conversation = shared.worker.join(request).await?;
    shared.audit.record(record);
    Ok(conversation)
}

/// Removes `user_id` from a conversation (`NOT_FOUND` when not a participant).
pub(crate) async fn remove_participant(
    shared: &Shared,
    actor: Actor<'_>,
    conversation_id: String,
    user_id: String,
) -> Result<v1::Conversation, RequestError> {
    let record = actor.audit("participant.remove", &user_id, &conversation_id);
    let request = v1::LeaveConversationRequest {
        user_id,
        conversation_id,
    };
    let conversation = shared.worker.leave(request).await?;
    shared.audit.record(record);
    Ok(conversation)
}

/// Bans a user from a conversation (and removes them if they are in it).
pub(crate) async fn ban(
    shared: &Shared,
    actor: Actor<'_>,
    request: v1::BanRequest,
) -> Result<(), RequestError> {
    let mut record = actor.audit("ban", &request.user_id, &request.conversation_id);
    record.detail = audit::ban_detail(&request);
    shared.worker.ban(request).await?;
    shared.audit.record(record);
    Ok(())
}

/// Ends a ban.
pub(crate) async fn unban(
    shared: &Shared,
    actor: Actor<'_>,
    conversation_id: &str,
    user_id: &str,
) -> Result<(), RequestError> {
    shared.worker.unban(conversation_id, user_id).await?;
    shared
        .audit
        .record(actor.audit("unban", user_id, conversation_id));
    Ok(())
}

/// Deletes `message` (found with [`publish::existing_message`]); `deleter_id` is the member who
/// deletes it, empty for moderation by the server API.
pub(crate) async fn delete_message(
    shared: &Shared,
    actor: Actor<'_>,
    message: &v1::ChatMessage,
    deleter_id: &str,
) -> Result<(), RequestError> {
    let delete = v1::MessageDeleted {
        message_id: message.id,
        deleter_id: deleter_id.to_owned(),
        deleted_at_ms: now_ms(),
    };
    publish::record(
        shared,
        &message.conversation_id,
        Kind::MessageDeleted(delete),
    )
    .await?;
    let record = audit::message_event("message.delete", actor.0, message);
    shared.audit.record(record);
    Ok(())
}
