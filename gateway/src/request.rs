//! A client's text frame decoded, once, into a typed request: the envelope checked field by field
//! (a wrong type gets a clear error, answering the `requestId` when that much was readable,
//! never a dropped connection), then the event's data parsed into its own type. Nothing here does
//! I/O, which is what the property test and the fuzz target (`gateway/fuzz`) drive.

use chat_proto::client::{
    self, AuthData, ConversationRef, CreateData, DeleteData, EditData, JoinData, ReceiptData,
    ResumeData, SendData, SyncData,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::RequestError;

/// Longest event name echoed back in an error.
const MAX_ECHOED_EVENT_CHARS: usize = 64;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// The `requestId`, to answer.
    pub request_id: Option<String>,
    /// The event with its data.
    pub body: Body,
}

/// A request's event and its data.
#[derive(Debug)]
pub enum Body {
    /// `ping`.
    Ping,
    /// `auth`: a fresh token (and, as a first frame, what to resume).
    Auth(AuthData),
    /// `resume`, the first request after `resume=1`.
    Resume(ResumeData),
    /// `message:send`.
    Send(SendData),
    /// `message:edit`.
    Edit(EditData),
    /// `message:delete`.
    Delete(DeleteData),
    /// `messages:sync`.
    Sync(SyncData),
    /// `room:create`.
    Create(CreateData),
    /// `room:join`.
    Join(JoinData),
    /// `room:leave`.
    Leave(ConversationRef),
    /// `room:list`.
    List,
    /// `room:info`.
    Info(ConversationRef),
    /// `room:online`.
    Online(ConversationRef),
    /// `typing:start` (true) or `typing:stop`.
    Typing(ConversationRef, bool),
    /// `message:read` (true) or `message:delivered`.
    Receipt(ReceiptData, bool),
    /// `presence:update`.
    PresenceUpdate(StatusData),
    /// `presence:query`.
    PresenceQuery(UsersData),
    /// `participant:add` (true) or `participant:remove`.
    Participant(ParticipantData, bool),
    /// `room:ban`.
    Ban(BanData),
    /// `room:unban`.
    Unban(ParticipantData),
}

/// `room:ban` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BanData {
    /// The conversation.
    pub conversation_id: String,
    /// The user banned.
    pub user_id: String,
    /// How long; none: until unbanned.
    pub duration_secs: Option<u64>,
    /// Why, for the record.
    pub reason: Option<String>,
}

/// `participant:add` and `participant:remove` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantData {
    /// The conversation.
    pub conversation_id: String,
    /// The user added or removed.
    pub user_id: String,
}

/// `presence:update` data.
#[derive(Debug, Deserialize)]
pub struct StatusData {
    /// `online`, `away`, `busy` or `invisible`.
    pub status: String,
}

/// `presence:query` data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsersData {
    /// The users asked about.
    pub user_ids: Vec<String>,
}

impl Body {
    /// The event's name, as errors echo it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Auth(_) => "auth",
            Self::Resume(_) => "resume",
            Self::Send(_) => "message:send",
            Self::Edit(_) => "message:edit",
            Self::Delete(_) => "message:delete",
            Self::Sync(_) => "messages:sync",
            Self::Create(_) => "room:create",
            Self::Join(_) => "room:join",
            Self::Leave(_) => "room:leave",
            Self::List => "room:list",
            Self::Info(_) => "room:info",
            Self::Online(_) => "room:online",
            Self::Typing(_, true) => "typing:start",
            Self::Typing(_, false) => "typing:stop",
            Self::Receipt(_, true) => "message:read",
            Self::Receipt(_, false) => "message:delivered",
            Self::PresenceUpdate(_) => "presence:update",
            Self::PresenceQuery(_) => "presence:query",
            Self::Participant(_, true) => "participant:add",
            Self::Participant(_, false) => "participant:remove",
            Self::Ban(_) => "room:ban",
            Self::Unban(_) => "room:unban",
        }
    }

    /// The body of `event` with its raw `data`.
    fn parse(event: &str, data: &str) -> Result<Self, RequestError> {
        Ok(match event {
            "ping" => Self::Ping,
            "auth" => Self::Auth(parse(data)?),
            "resume" => Self::Resume(parse(data)?),
            "message:send" => Self::Send(parse(data)?),
            "message:edit" => Self::Edit(parse(data)?),
            "message:delete" => Self::Delete(parse(data)?),
            "messages:sync" => Self::Sync(parse(data)?),
            "room:create" => Self::Create(parse(data)?),
            "room:join" => Self::Join(parse(data)?),
            "room:leave" => Self::Leave(parse(data)?),
            "room:list" => Self::List,
            "room:info" => Self::Info(parse(data)?),
            "room:online" => Self::Online(parse(data)?),
            "typing:start" => Self::Typing(parse(data)?, true),
            "typing:stop" => Self::Typing(parse(data)?, false),
            "message:delivered" => Self::Receipt(parse(data)?, false),
            "message:read" => Self::Receipt(parse(data)?, true),
            "presence:update" => Self::PresenceUpdate(parse(data)?),
            "presence:query" => Self::PresenceQuery(parse(data)?),
            "participant:add" => Self::Participant(parse(data)?, true),
            "participant:remove" => Self::Participant(parse(data)?, false),
            "room:ban" => Self::Ban(parse(data)?),
            "room:unban" => Self::Unban(parse(data)?),
            _ => return Err(RequestError::protocol("unknown event")),
        })
    }
}

/// Whether `event` sends, edits or deletes a message (counted against the user's rate).
pub fn is_message(event: &str) -> bool {
    matches!(event, "message:send" | "message:edit" | "message:delete")
}

/// A frame refused before it became a request: the error, and what of the envelope to echo.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What the client is told.
    pub error: RequestError,
    /// The `requestId`, when it could be read.
    pub request_id: Option<String>,
    /// The event name (at most 64 characters), when it could be read.
    pub event: Option<String>,
}

impl Refusal {
    /// The `error` frame.
    pub fn to_frame(&self) -> String {
        self.error
            .to_frame(self.request_id.as_deref(), self.event.as_deref())
    }
}

/// Decodes a text frame of at most `max_bytes`.
pub fn decode(text: &str, max_bytes: usize) -> Result<Request, Refusal> {
    let refuse = |error, request_id: Option<&String>, event: Option<&str>| Refusal {
        error,
        request_id: request_id.cloned(),
        event: event.map(|e| e.chars().take(MAX_ECHOED_EVENT_CHARS).collect()),
    };
    if text.len() > max_bytes {
        let error = RequestError::protocol(format!("message larger than {max_bytes} bytes"));
        return Err(refuse(error, None, None));
    }
    let Ok(envelope) = serde_json::from_str::<client::ClientFrame<'_>>(text) else {
        let error = RequestError::protocol("not a JSON object envelope");
        return Err(refuse(error, None, None));
    };
    let request_id = match envelope
        .request_id
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        None => None,
        Some(Ok(id)) if id.chars().count() <= client::MAX_REQUEST_ID_CHARS => Some(id),
        Some(_) => {
            let error =
                RequestError::protocol("requestId must be a string of at most 64 characters");
            return Err(refuse(error, None, None));
        }
    };
    let Some(event) = envelope
        .event
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    else {
        let error = RequestError::protocol("event must be a string");
        return Err(refuse(error, request_id.as_ref(), None));
    };
    if let Some(version) = envelope.version
        && serde_json::from_str::<&str>(version.get()).ok() != Some(client::VERSION)
    {
        let error = RequestError::protocol("unsupported version; this server speaks version \"1\"");
        return Err(refuse(error, request_id.as_ref(), Some(&event)));
    }
    let data = envelope.data.map_or("{}", |raw| raw.get());
    match Body::parse(&event, data) {
        Ok(body) => Ok(Request { request_id, body }),
        Err(error) => Err(refuse(error, request_id.as_ref(), Some(&event))),
    }
}

fn parse<T: DeserializeOwned>(data: &str) -> Result<T, RequestError> {
    serde_json::from_str(data).map_err(|e| RequestError::invalid(format!("invalid data: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::client::ErrorCode;

    #[test]
    fn each_event_decodes_once_into_its_typed_data() {
        let text = r#"{"data":{"content":"hi","conversationId":"c"},"requestId":"r1","event":"message:send"}"#;
        let request = decode(text, 1024).unwrap();
        assert_eq!(request.request_id.as_deref(), Some("r1"));
        let Body::Send(data) = request.body else {
            panic!("a send: {request:?}");
        };
        assert_eq!(
            (data.conversation_id.as_str(), data.content.as_str()),
            ("c", "hi")
        );
        let typing = decode(
            r#"{"event":"typing:stop","data":{"conversationId":"c"}}"#,
            1024,
        );
        assert_eq!(typing.unwrap().body.name(), "typing:stop");
        assert!(
            decode(r#"{"event":"room:list"}"#, 1024)
                .unwrap()
                .body
                .name()
                == "room:list"
        );
    }

    #[test]
    fn bad_data_and_unknown_events_are_refused_with_the_request_echoed() {
        let bad = decode(
            r#"{"event":"message:send","requestId":"r2","data":{"content":1}}"#,
            1024,
        )
        .unwrap_err();
        assert_eq!(bad.error.code, ErrorCode::ValidationError);
        assert_eq!(bad.request_id.as_deref(), Some("r2"));
        assert_eq!(bad.event.as_deref(), Some("message:send"));
        let unknown = decode(&format!(r#"{{"event":"{}"}}"#, "x".repeat(100)), 1024).unwrap_err();
        assert_eq!(unknown.error.code, ErrorCode::ProtocolError);
        assert_eq!(
            unknown.event.unwrap().chars().count(),
            MAX_ECHOED_EVENT_CHARS
        );
        let old = decode(r#"{"event":"ping","version":"2"}"#, 1024).unwrap_err();
        assert!(old.error.message.contains("version"));
        let big = decode(&"x".repeat(2000), 1024).unwrap_err();
        assert!(big.error.message.contains("larger than 1024"));
    }
}
