//! NATS subjects and the stream.
//!
//! Ids come from tokens and clients. Before one becomes a subject token it is encoded: ASCII
//! letters, digits, `-` and `_` stand for themselves and every other byte becomes `%XX`, so no
//! `.`, `*`, `>`, space or control character can reach a subject, and two ids never share a token.
//! Ids longer than [`MAX_ID_CHARS`] characters are refused before they get here.

/// The longest user or conversation id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// The JetStream stream that holds every durable conversation event.
pub const STREAM: &str = "CHAT";
/// The subjects the stream captures.
pub const STREAM_SUBJECTS: &str = "chat.stream.>";
/// The durable consumer of the persistence worker.
pub const WORKER_CONSUMER: &str = "persistence-worker";
/// The audit log's stream.
pub const AUDIT_STREAM: &str = "CHAT_AUDIT";
/// The subjects the audit stream captures.
pub const AUDIT_SUBJECTS: &str = "chat.audit.>";
/// The subject of the gateways' batches of audit records (`AuditBatch`). Gateways before
/// batching published each record alone on `chat.audit.<kind>`.
pub const AUDIT_BATCH: &str = "chat.audit.batch";
/// The durable consumer that stores the audit log.
pub const AUDIT_CONSUMER: &str = "audit-writer";

/// The queue group the workers answer requests in.
pub const WORKER_QUEUE: &str = "persistence-worker";

/// Subjects of the worker's request-reply API.
pub mod rpc {
    /// `MembershipRequest` → `MembershipReply`.
    pub const MEMBERSHIP: &str = "chat.rpc.membership";
    /// `ListConversationsRequest` → `ListConversationsReply`.
    pub const LIST_CONVERSATIONS: &str = "chat.rpc.conversations.list";
    /// `ConversationInfoRequest` → `ConversationInfoReply`.
    pub const CONVERSATION_INFO: &str = "chat.rpc.conversation.info";
    /// `CreateConversationRequest` → `ConversationReply`.
    pub const CREATE_CONVERSATION: &str = "chat.rpc.conversation.create";
    /// `JoinConversationRequest` → `ConversationReply`.
    pub const JOIN_CONVERSATION: &str = "chat.rpc.conversation.join";
    /// `LeaveConversationRequest` → `ConversationReply`.
    pub const LEAVE_CONVERSATION: &str = "chat.rpc.conversation.leave";
    /// `HistoryRequest` → `HistoryReply`.
    pub const HISTORY: &str = "chat.rpc.history";
    /// `GetMessageRequest` → `GetMessageReply`.
    pub const GET_MESSAGE: &str = "chat.rpc.message.get";
    /// `MarkReadRequest` → `MarkReadReply`.
    pub const MARK_READ: &str = "chat.rpc.conversation.mark-read";
    /// `BanRequest` → `BanReply`.
    pub const BAN: &str = "chat.rpc.conversation.ban";
    /// `UnbanRequest` → `BanReply`.
    pub const UNBAN: &str = "chat.rpc.conversation.unban";
    /// `AuditQuery` → `AuditPage`.
    pub const AUDIT: &str = "chat.rpc.audit";
    /// `HealthRequest` → `HealthReply`.
    pub const HEALTH: &str = "chat.rpc.health";
    /// Every subject above, for the worker to subscribe to.
    pub const ALL: &[&str] = &[
        MEMBERSHIP,
        LIST_CONVERSATIONS,
        CONVERSATION_INFO,
        CREATE_CONVERSATION,
        JOIN_CONVERSATION,
        LEAVE_CONVERSATION,
        HISTORY,
        GET_MESSAGE,
        MARK_READ,
        BAN,
        UNBAN,
        AUDIT,
        HEALTH,
    ];
    /// Header set on a reply that carries an `RpcError` instead of the expected reply.
    pub const ERROR_HEADER: &str = "Chat-Error";
}

/// The stream subject of a conversation's durable events.
pub fn conversation_stream(conversation_id: &str) -> String {
    format!("chat.stream.conv.{}", encode(conversation_id))
}

/// How many shards the live conversation subjects are spread over. A gateway subscribes once
/// per shard in which it has local members, so its subscriptions are bounded by this number
/// whatever its users. Every publisher and gateway must agree on it.
pub const LIVE_SHARDS: u16 = 256;

/// The shard of a conversation: FNV-1a of its id, stable across processes and versions.
pub fn live_shard(conversation_id: &str) -> u16 {
    u16::try_from(fnv1a(conversation_id) % u64::from(LIVE_SHARDS))
        .expect("a shard is below LIVE_SHARDS")
}

/// FNV-1a of an id: a stable hash, the same in every process and version (conversation shards,
/// and the router that owns a user).
pub fn fnv1a(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The core subject on which a conversation's events are delivered live:
/// `chat.live.conv.<shard>.<id>`.
pub fn conversation_live(conversation_id: &str) -> String {
    format!(
        "chat.live.conv.{}.{}",
        live_shard(conversation_id),
        encode(conversation_id)
    )
}

/// Every conversation of one shard, for a gateway's subscription.
pub fn conversation_live_shard(shard: u16) -> String {
    format!("chat.live.conv.{shard}.*")
}

/// The core subject of events addressed to one user.
pub fn user_live(user_id: &str) -> String {
    format!("chat.live.user.{}", encode(user_id))
}

/// Every user's events; a gateway node subscribes to it once and keeps the ones of its own
/// users. Publishers use it when the router's placement is unknown (no router, or unreachable).
pub const ALL_USERS_LIVE: &str = "chat.live.user.*";

/// Events addressed to users with a session on one node, published there through the router's
/// placement: one subscription per node, whatever its number of users.
pub fn node_users(node_id: &str) -> String {
    format!("chat.node.{}.users", encode(node_id))
}

/// Presence changes published by the routers ([`crate::v1::PresenceChanges`]); every gateway
/// subscribes once and tells its local users who share a conversation with the user.
pub const PRESENCE: &str = "chat.presence";

/// Membership changes published by the workers ([`crate::v1::MembersChangedRequest`]), once
/// durable and before the users are told: every router follows them, so that who hears of a
/// user's presence follows their conversations whether or not the worker knows the routers.
pub const MEMBERS_CHANGED: &str = "chat.presence.members";

/// Encodes an id into one subject token (see the module documentation).
pub fn encode(id: &str) -> String {
    let mut token = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

/// The de-duplication id of a send: the same user, conversation and `clientMessageId` always
/// give the same id, and different ones never do (each part is encoded, and `.` separates them).
pub fn dedup_id(user_id: &str, conversation_id: &str, client_message_id: &str) -> String {
    format!(
        "{}.{}.{}",
        encode(user_id),
        encode(conversation_id),
        encode(client_message_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_separators_never_reach_a_subject() {
        let token = encode("a.b*c>d e\tf%");
        assert_eq!(token, "a%2Eb%2Ac%3Ed%20e%09f%25");
        assert!(conversation_live("x.>").ends_with(".x%2E%3E"));
        assert!(!user_live("*").ends_with('*'));
    }

    #[test]
    fn a_conversation_lives_in_one_stable_shard() {
        let subject = conversation_live("room-1");
        let shard = live_shard("room-1");
        assert_eq!(subject, format!("chat.live.conv.{shard}.room-1"));
        assert_eq!(shard, live_shard("room-1"));
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(live_shard("a"), (0xaf63_dc4c_8601_ec8c_u64 % 256) as u16);
        let used: std::collections::HashSet<u16> =
            (0..10_000).map(|i| live_shard(&format!("c{i}"))).collect();
        assert_eq!(used.len(), usize::from(LIVE_SHARDS), "every shard is used");
    }

    #[test]
    fn encoding_is_injective_on_lookalikes() {
        assert_ne!(encode("a.b"), encode("a%2Eb"));
        assert_ne!(encode("é"), encode("e"));
        assert_ne!(dedup_id("a.b", "c", "d"), dedup_id("a", "b.c", "d"));
    }
}
