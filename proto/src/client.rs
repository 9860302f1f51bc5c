//! The client protocol v1: JSON envelopes over WebSocket text frames (`docs/protocol.md`).
//!
//! Client frames are read in two steps: [`ClientFrame`] finds the envelope's fields without
//! trusting their types, then the gateway reads `data` into the request type of the event.
//! Server frames are written by [`ack`], [`error`] and [`push`]; [`conversation_push`] turns a
//! bus event into the push a member receives.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::timestamp::iso8601;
use crate::v1;

/// The WebSocket subprotocol of this version.
pub const SUBPROTOCOL: &str = "chat.v1.json";
/// The only `version` a client frame may carry.
pub const VERSION: &str = "1";
/// Most participants a conversation may be created with.
pub const MAX_PARTICIPANTS: usize = 1_000;
/// Most characters of a `requestId`.
pub const MAX_REQUEST_ID_CHARS: usize = 64;
/// `messages:sync` page size when none is asked for, and the largest.
pub const SYNC_LIMIT: (u32, u32) = (50, 100);

/// Error codes of `error` frames, written as [`ErrorCode::as_str`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Missing, bad or expired token.
    Unauthorized,
    /// Authenticated but not allowed (not a member, not the owner).
    Forbidden,
    /// No such conversation or message.
    NotFound,
    /// A field is missing, of the wrong type, or out of its limits.
    ValidationError,
    /// Over a rate limit; `retryAfterMs` says when to try again.
    RateLimited,
    /// Not JSON, unknown event or version, too large.
    ProtocolError,
    /// A fault of the server.
    InternalError,
    /// A dependency is down; the request may be retried.
    Unavailable,
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [Self; 8] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::ValidationError,
        Self::RateLimited,
        Self::ProtocolError,
        Self::InternalError,
        Self::Unavailable,
    ];

    /// The code as it is written on the wire and in metrics, `RATE_LIMITED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::RateLimited => "RATE_LIMITED",
            Self::ProtocolError => "PROTOCOL_ERROR",
            Self::InternalError => "INTERNAL_ERROR",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn recoverable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::InternalError | Self::Unavailable
        )
    }
}

/// WebSocket close codes of the protocol.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A message over the transport cap.
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect and resume.
    pub const RESTARTING: u16 = 1012;
    /// Unauthorized or token expired.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Forbidden (banned).
    pub const FORBIDDEN: u16 = 4403;
    /// No `auth` frame in time.
    pub const AUTH_TIMEOUT: u16 = 4408;
    /// Over a limit (sessions per user, connections per IP).
    pub const OVER_LIMIT: u16 = 4429;
    /// Internal error: reconnect.
    pub const INTERNAL: u16 = 4500;
    /// Too slow: the socket could not take its messages; reconnect and resume.
    pub const TOO_SLOW: u16 = 4503;
}

/// A client frame's envelope, each field still raw so that a wrong type is reported, not fatal.
#[derive(Debug, Deserialize)]
pub struct ClientFrame<'a> {
    /// The event name.
    #[serde(borrow, default)]
    pub event: Option<&'a RawValue>,
    /// The request id, answered exactly once when present.
    #[serde(borrow, default, rename = "requestId")]
    pub request_id: Option<&'a RawValue>,
    /// The event's data.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// The protocol version; absent means v1.
    #[serde(borrow, default)]
    pub version: Option<&'a RawValue>,
}

/// `auth` data.
#[derive(Debug, Deserialize)]
pub struct AuthData {
    /// The JWT.
    pub token: String,
    /// Resume an earlier session on this connection.
    #[serde(default)]
    pub resume: Option<ResumeData>,
}

/// What a client resumes from (`auth.resume`, or the `resume` request's data).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeData {
    /// The `resumeToken` of the earlier session's `connected`.
    pub resume_token: String,
    /// The last `seq` seen, per conversation.
    #[serde(default)]
    pub positions: std::collections::BTreeMap<String, u64>,
}

/// An attachment as a client sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentData {
    /// The id of the file in the application's own file store.
    pub external_file_id: String,
    /// A label, at most 255 characters.
    pub label: Option<String>,
}

/// `message:send` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendData {
    /// The conversation.
    pub conversation_id: String,
    /// The text.
    pub content: String,
    /// `chat` (default), `file`, `image` or `graph`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<AttachmentData>,
    /// The id of the message this one answers.
    pub reply_to: Option<u64>,
    /// Any JSON object.
    pub metadata: Option<Box<RawValue>>,
    /// Makes the send idempotent within the de-duplication window.
    pub client_message_id: Option<String>,
}

/// `message:edit` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditData {
    /// The message.
    pub message_id: u64,
    /// The new text.
    pub content: String,
    /// The conversation, when the client knows it.
    pub conversation_id: Option<String>,
}

/// `message:delete` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteData {
    /// The message.
    pub message_id: u64,
    /// The conversation, when the client knows it.
    pub conversation_id: Option<String>,
}

/// `messages:sync` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncData {
    /// The conversation.
    pub conversation_id: String,
    /// Messages after this id.
    pub last_message_id: Option<u64>,
    /// Messages before this id.
    pub before_message_id: Option<u64>,
    /// How many, 50 by default, at most 100.
    pub limit: Option<u32>,
}

/// `room:create` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateData {
    /// The title.
    pub title: Option<String>,
    /// The other members.
    pub participant_ids: Vec<String>,
    /// True by default.
    pub private: Option<bool>,
    /// A password a non-member must give to join a public room.
    pub password: Option<String>,
}

/// `room:join` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinData {
    /// The conversation.
    pub conversation_id: String,
    /// The room's password, where one was set.
    pub password: Option<String>,
}

/// Data that names one conversation (`room:leave`, `room:info`, `typing:*`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    /// The conversation.
    pub conversation_id: String,
}

/// `message:delivered` and `message:read` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptData {
    /// The conversation.
    pub conversation_id: String,
    /// The message.
    pub message_id: u64,
}

/// A message as clients see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson<'a> {
    id: u64,
    seq: u64,
    conversation_id: &'a str,
    sender_id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    attachments: Vec<AttachmentJson<'a>>,
    reply_to: Option<u64>,
    metadata: Option<&'a RawValue>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentJson<'a> {
    external_file_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
}

impl<'a> From<&'a v1::ChatMessage> for MessageJson<'a> {
    fn from(m: &'a v1::ChatMessage) -> Self {
        let metadata = (!m.deleted && !m.metadata_json.is_empty())
            .then(|| serde_json::from_str::<&RawValue>(&m.metadata_json).ok())
            .flatten();
        Self {
            id: m.id,
            seq: m.id,
            conversation_id: &m.conversation_id,
            sender_id: &m.sender_id,
            kind: &m.r#type,
            content: (!m.deleted).then_some(m.content.as_str()),
            attachments: if m.deleted {
                Vec::new()
            } else {
                m.attachments
                    .iter()
                    .map(|a| AttachmentJson {
                        external_file_id: &a.external_file_id,
                        label: a.label.as_deref(),
                    })
                    .collect()
            },
            reply_to: m.reply_to,
            metadata,
            created_at: iso8601(m.created_at_ms),
            edited_at: m.edited_at_ms.map(iso8601),
            deleted: m.deleted,
        }
    }
}

/// `{message}`: the data of `message:new` and of the acks of sends and edits.
#[derive(Debug, Serialize)]
pub struct MessageData<'a> {
    /// The message.
    pub message: MessageJson<'a>,
}

/// A conversation as clients see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationJson<'a> {
    id: &'a str,
    title: &'a str,
    private: bool,
    created_by: &'a str,
    created_at: String,
    participant_ids: &'a [String],
    num_participants: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_read_message_id: Option<u64>,
}

impl<'a> From<&'a v1::Conversation> for ConversationJson<'a> {
    fn from(c: &'a v1::Conversation) -> Self {
        Self {
            id: &c.id,
            title: &c.title,
            private: c.private,
            created_by: &c.created_by,
            created_at: iso8601(c.created_at_ms),
            participant_ids: &c.participant_ids,
            num_participants: c.num_participants,
            last_read_message_id: c.last_read_message_id,
        }
    }
}

/// `{conversation}`: the ack of `room:create`, `room:join`, `room:info`, `participant:add` and
/// `participant:remove`, and the server API's answer about one conversation.
#[derive(Debug, Serialize)]
pub struct ConversationData<'a> {
    /// The conversation.
    pub conversation: ConversationJson<'a>,
}

impl<'a> From<&'a v1::Conversation> for ConversationData<'a> {
    fn from(conversation: &'a v1::Conversation) -> Self {
        Self {
            conversation: conversation.into(),
        }
    }
}

/// `{conversations}`: the ack of `room:list`, and the server API's list of a user's.
#[derive(Debug, Serialize)]
pub struct ConversationsData<'a> {
    /// The conversations.
    pub conversations: Vec<ConversationJson<'a>>,
}

impl<'a> From<&'a [v1::Conversation]> for ConversationsData<'a> {
    fn from(conversations: &'a [v1::Conversation]) -> Self {
        Self {
            conversations: conversations.iter().map(ConversationJson::from).collect(),
        }
    }
}

/// `{messages, hasMore}`: the ack of `messages:sync`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesData<'a> {
    /// The messages, in order.
    pub messages: Vec<MessageJson<'a>>,
    /// Whether there are more beyond them.
    pub has_more: bool,
}

/// `{userIds}`: who is visibly online (`room:online`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdsData {
    /// The users, sorted.
    pub user_ids: Vec<String>,
}

/// `{statuses}`: what others see of each user asked about (`presence:query`).
#[derive(Debug, Serialize)]
pub struct StatusesData {
    /// `{userId: status}`.
    pub statuses: std::collections::BTreeMap<String, &'static str>,
}

/// `{}`: the ack of a request that has nothing to say but that it was done.
#[derive(Debug, Serialize)]
pub struct Done {}

/// `{event: "pong", timestamp}`: the ack of `ping` (milliseconds since the epoch).
#[derive(Debug, Serialize)]
pub struct Pong {
    /// Always `pong`.
    pub event: &'static str,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// What a resume recovered: `{recovered: true, conversations: {id: {replayed, complete}}}` or
/// `{recovered: false, error}`.
#[derive(Debug, Serialize)]
pub struct Recovered {
    /// Whether the missed events were replayed.
    pub recovered: bool,
    /// Per conversation: how many events were replayed, and whether that was all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversations: Option<std::collections::BTreeMap<String, Replayed>>,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Recovered {
    /// Nothing recovered, for `error`.
    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            recovered: false,
            conversations: None,
            error: Some(error.into()),
        }
    }
}

/// One conversation of a resume: events replayed, and whether the gap is closed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Replayed {
    /// Events replayed.
    pub replayed: usize,
    /// False when there were more than one replay carries: page the rest with `messages:sync`.
    pub complete: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Frame<'a, T> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    data: T,
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("protocol frames serialize: string keys, no NaN")
}

/// `{"event":"ack","requestId":…,"data":…}`.
pub fn ack<T: Serialize>(request_id: &str, data: T) -> String {
    to_json(&Frame {
        event: "ack",
        request_id: Some(request_id),
        data,
    })
}

/// A server push `{"event":…,"data":…}`.
pub fn push<T: Serialize>(event: &str, data: T) -> String {
    to_json(&Frame {
        event,
        request_id: None,
        data,
    })
}

/// The data of an `error` frame.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorData<'a> {
    /// The code.
    pub code: ErrorCode,
    /// A message for people; never internals.
    pub message: &'a str,
    /// Whether a retry may succeed.
    pub recoverable: bool,
    /// The event that failed, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_event: Option<&'a str>,
    /// With `RATE_LIMITED`: when to try again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// When it happened.
    pub timestamp: String,
}

/// An `error` frame, answering `request_id` when there is one.
pub fn error(request_id: Option<&str>, data: &ErrorData<'_>) -> String {
    to_json(&Frame {
        event: "error",
        request_id,
        data,
    })
}

/// Whether a push may be dropped when a socket's queue is full (ephemeral) or must close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Typing and receipts: may be dropped.
    Ephemeral,
    /// Anything that carries a message or a membership change: never dropped.
    Durable,
}

/// The push that a member of the conversation receives for a bus event, if any.
pub fn conversation_push(event: &v1::ConversationEvent) -> Option<(String, Delivery)> {
    use v1::conversation_event::Kind;
    let conversation_id = event.conversation_id.as_str();
    let seq = event.seq;
    let frame = match event.kind.as_ref()? {
        Kind::MessageCreated(created) => {
            // The hot path: serialized straight from the message, not through a `Value` tree.
            let message = MessageJson::from(created.message.as_ref()?);
            push("message:new", MessageData { message })
        }
        Kind::MessageEdited(e) => push(
            "message:updated",
            serde_json::json!({
                "messageId": e.message_id, "conversationId": conversation_id, "seq": seq,
                "content": e.content, "isEdited": true, "editedAt": iso8601(e.edited_at_ms),
            }),
        ),
        Kind::MessageDeleted(d) => push(
            "message:deleted",
            serde_json::json!({
                "messageId": d.message_id, "conversationId": conversation_id, "seq": seq,
                "deletedAt": iso8601(d.deleted_at_ms),
            }),
        ),
        Kind::ParticipantAdded(p) => push(
            "participant:added",
            serde_json::json!({
                "conversationId": conversation_id, "userId": p.user_id, "seq": seq,
                "timestamp": iso8601(p.at_ms),
            }),
        ),
        Kind::ParticipantRemoved(p) => push(
            "participant:removed",
            serde_json::json!({
                "conversationId": conversation_id, "userId": p.user_id, "seq": seq,
                "timestamp": iso8601(p.at_ms),
            }),
        ),
        Kind::Typing(t) => {
            let frame = push(
                "typing",
                serde_json::json!({
                    "conversationId": conversation_id, "userId": t.user_id, "isTyping": t.is_typing,
                }),
            );
            return Some((frame, Delivery::Ephemeral));
        }
        Kind::Receipt(r) => {
            let frame = push(
                "message:receipt",
                serde_json::json!({
                    "conversationId": conversation_id, "messageId": r.message_id,
                    "userId": r.user_id, "kind": if r.read { "read" } else { "delivered" },
                }),
            );
            return Some((frame, Delivery::Ephemeral));
        }
        // A ban is told through the removal it comes with; members are not told of bans.
        Kind::ConversationCreated(_)
        | Kind::ParticipantBanned(_)
        | Kind::ParticipantUnbanned(_) => {
            return None;
        }
    };
    Some((frame, Delivery::Durable))
}

/// Server frames as a client reads them: the counterparts of [`ack`], [`error`], [`push`] and
/// [`MessageJson`], for clients written in Rust (the load harness). Fields come in any order,
/// fields not named here are skipped, and strings borrow from the frame's text unless they hold
/// escapes, so reading a frame allocates nothing.
pub mod received {
    use std::borrow::Cow;

    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    /// A server frame's envelope, `{"event":…,"requestId":…,"data":…}`, its fields in any order.
    ///
    /// `D` reads `data`. The default keeps it raw, to be read by its event afterwards (a second
    /// pass over it); a struct of optional fields (`message`, `code`, …) reads the data of several
    /// events in the same pass, which is what a client that reads many frames a second wants.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Frame<'a, D = &'a RawValue> {
        /// The event name.
        #[serde(borrow)]
        pub event: Cow<'a, str>,
        /// The request that an `ack` or `error` answers.
        #[serde(borrow, default, deserialize_with = "optional_text")]
        pub request_id: Option<Cow<'a, str>>,
        /// The event's data.
        pub data: Option<D>,
    }

    /// `{message}`: the data of `message:new` and of the acks of sends and edits.
    #[derive(Debug, Deserialize)]
    pub struct MessageData<'a> {
        /// The message.
        #[serde(borrow)]
        pub message: Message<'a>,
    }

    /// A message, with the fields a client places and shows it by.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Message<'a> {
        /// Its id, which is also its `seq` in the conversation.
        pub id: u64,
        /// The conversation.
        #[serde(borrow)]
        pub conversation_id: Cow<'a, str>,
        /// The user who sent it.
        #[serde(borrow)]
        pub sender_id: Cow<'a, str>,
        /// The text; empty in a tombstone.
        #[serde(borrow, default)]
        pub content: Cow<'a, str>,
        /// The JSON object the sender attached, if any.
        #[serde(borrow, default)]
        pub metadata: Option<&'a RawValue>,
        /// Whether it was deleted (a tombstone).
        #[serde(default)]
        pub deleted: bool,
    }

    /// The data of an `error` frame.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ErrorData<'a> {
        /// The code (`UNAUTHORIZED`, `RATE_LIMITED`, …); a string, so that a code added later
        /// still reads.
        #[serde(borrow)]
        pub code: Cow<'a, str>,
        /// The message for people.
        #[serde(borrow, default)]
        pub message: Cow<'a, str>,
        /// Whether a retry may succeed.
        #[serde(default)]
        pub recoverable: bool,
        /// With `RATE_LIMITED`: when to try again.
        #[serde(default)]
        pub retry_after_ms: Option<u64>,
    }

    /// An optional string, borrowed where it can be (serde borrows a `Cow` field only when the
    /// field's type is `Cow` itself, not `Option<Cow>`).
    fn optional_text<'de: 'a, 'a, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Cow<'a, str>>, D::Error> {
        #[derive(Deserialize)]
        struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
        Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|text| text.0))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::client::{ErrorCode, ErrorData as WrittenError, ack, conversation_push, error};
        use crate::timestamp::iso8601;
        use crate::v1;

        #[test]
        fn what_the_server_writes_reads_back() {
            let message = v1::ChatMessage {
                id: 42,
                conversation_id: "c-1".into(),
                sender_id: "u-1".into(),
                r#type: "chat".into(),
                content: "say \"hi\"".into(),
                metadata_json: r#"{"t":1}"#.into(),
                ..Default::default()
            };
            let event = v1::ConversationEvent {
                conversation_id: "c-1".into(),
                seq: 42,
                kind: Some(v1::conversation_event::Kind::MessageCreated(
                    v1::MessageCreated {
                        message: Some(message),
                    },
                )),
            };
            let (text, _) = conversation_push(&event).expect("a message is pushed");
            let frame: Frame<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(frame.event, "message:new");
            assert_eq!(frame.request_id, None);
            let data: MessageData<'_> = serde_json::from_str(frame.data.unwrap().get()).unwrap();
            let m = data.message;
            assert_eq!(
                (m.id, &*m.conversation_id, &*m.sender_id),
                (42, "c-1", "u-1")
            );
            assert_eq!(m.content, "say \"hi\"");
            assert!(
                matches!(m.content, Cow::Owned(_)),
                "escaped text is unescaped"
            );
            assert_eq!(m.metadata.map(RawValue::get), Some(r#"{"t":1}"#));
            assert!(!m.deleted);

            let text = ack("r-1", serde_json::json!({}));
            let frame: Frame<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (&*frame.event, frame.request_id.as_deref()),
                ("ack", Some("r-1"))
            );
            assert!(matches!(frame.request_id, Some(Cow::Borrowed(_))));

            let text = error(
                Some("r-2"),
                &WrittenError {
                    code: ErrorCode::RateLimited,
                    message: "slow down",
                    recoverable: true,
                    original_event: Some("message:send"),
                    retry_after_ms: Some(250),
                    timestamp: iso8601(0),
                },
            );
            let frame: Frame<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (&*frame.event, frame.request_id.as_deref()),
                ("error", Some("r-2"))
            );
            let data: ErrorData<'_> = serde_json::from_str(frame.data.unwrap().get()).unwrap();
            assert_eq!(
                (&*data.code, data.retry_after_ms),
                ("RATE_LIMITED", Some(250))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frame_has_the_protocol_fields() {
        let frame = error(
            Some("r-1"),
            &ErrorData {
                code: ErrorCode::RateLimited,
                message: "slow down",
                recoverable: ErrorCode::RateLimited.recoverable(),
                original_event: Some("message:send"),
                retry_after_ms: Some(250),
                timestamp: iso8601(0),
            },
        );
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["event"], "error");
        assert_eq!(value["requestId"], "r-1");
        assert_eq!(value["data"]["code"], "RATE_LIMITED");
        assert_eq!(value["data"]["recoverable"], true);
        assert_eq!(value["data"]["retryAfterMs"], 250);
        assert_eq!(value["data"]["originalEvent"], "message:send");
    }

    #[test]
    fn a_tombstone_has_no_content() {
        let message = v1::ChatMessage {
            id: 7,
            conversation_id: "c".into(),
            sender_id: "u".into(),
            r#type: "chat".into(),
            content: "secret".into(),
            metadata_json: r#"{"a":1}"#.into(),
            deleted: true,
            ..Default::default()
        };
        let json = serde_json::to_value(MessageJson::from(&message)).unwrap();
        assert_eq!(json["deleted"], true);
        assert!(json.get("content").is_none());
        assert!(json["metadata"].is_null());
        assert_eq!(json["seq"], 7);
    }
}
