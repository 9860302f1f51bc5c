//! The audit log's records of what happens on this node: connects and disconnects (user, node,
//! address), joins and leaves, participant changes, messages created, edited and deleted (ids,
//! never content), bans, and what the server API does (its actor is `api:<key name>`). Each is
//! published on `chat.audit.<kind>`; the audit stream keeps it and the worker stores it. A
//! record costs one message to NATS and is never waited for: if NATS is away, it is lost with a
//! warning, and the chat goes on.

use chat_proto::bus;
use chat_proto::timestamp::now_ms;
use chat_proto::v1::AuditEvent;

use crate::Shared;

/// Publishes `event`, stamped with the time and this node.
pub(crate) async fn record(shared: &Shared, event: AuditEvent) {
    let event = AuditEvent {
        at_ms: now_ms(),
        node: shared.settings.node_id.clone(),
        ..event
    };
    if let Err(error) = bus::publish_audit(&shared.client, &event).await {
        tracing::warn!(%error, kind = event.kind, "audit record lost");
    }
}

/// A record of `kind` by `actor` about `user_id` in `conversation_id`.
pub(crate) fn event(kind: &str, actor: &str, user_id: &str, conversation_id: &str) -> AuditEvent {
    AuditEvent {
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        user_id: user_id.to_owned(),
        conversation_id: conversation_id.to_owned(),
        ..AuditEvent::default()
    }
}

/// A record of `kind` by `actor` about a message (its sender, conversation and id).
pub(crate) fn message_event(
    kind: &str,
    actor: &str,
    message: &chat_proto::v1::ChatMessage,
) -> AuditEvent {
    AuditEvent {
        message_id: message.id,
        ..event(kind, actor, &message.sender_id, &message.conversation_id)
    }
}

/// A ban's audit detail: how long, and why.
pub(crate) fn ban_detail(request: &chat_proto::v1::BanRequest) -> String {
    let duration = match request.duration_ms {
        0 => "until unbanned".to_owned(),
        ms => format!("{} s", ms / 1000),
    };
    format!("{duration}; {}", request.reason)
}
