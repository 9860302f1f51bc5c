//! Field checks of client requests: types are checked by deserializing, lengths and shapes here.
//! Every failure is a `VALIDATION_ERROR` that names the field.

use chat_proto::client::{AttachmentData, CreateData, MAX_PARTICIPANTS, SendData};
use chat_proto::subjects::MAX_ID_CHARS;
use chat_proto::v1;
use serde_json::value::RawValue;

use crate::error::RequestError;

/// Whether `id` may be a user or conversation id: 1 to 128 characters, no control characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ID_CHARS && !id.chars().any(char::is_control)
}

/// Types a client may send.
pub const CLIENT_TYPES: &[&str] = &["chat", "file", "image", "graph"];
/// The message types the server API may post: a client's, and `system` and `robot`.
pub const SERVER_TYPES: &[&str] = &["chat", "file", "image", "graph", "system", "robot"];
/// Most characters of a label, a title, an external file id.
const MAX_LABEL_CHARS: usize = 255;
/// Most characters of a `clientMessageId`.
const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 64;
/// Most characters of a room password.
const MAX_PASSWORD_CHARS: usize = 128;

/// The configurable limits of message content.
#[derive(Debug, Clone, Copy)]
pub struct ContentLimits {
    /// Characters of `content`.
    pub max_content_chars: usize,
    /// Attachments.
    pub max_attachments: usize,
    /// Bytes of `metadata`.
    pub max_metadata_bytes: usize,
    /// Nesting of `metadata`.
    pub max_metadata_depth: usize,
}

fn chars_at_most(value: &str, max: usize) -> bool {
    // Counting stops early: a huge string costs no more than `max` steps.
    value.chars().nth(max).is_none()
}

/// Checks a conversation id.
pub fn conversation_id(id: &str) -> Result<(), RequestError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(RequestError::invalid(
            "conversationId must be 1 to 128 characters without control characters",
        ))
    }
}

/// Checks a user id named in a request.
pub fn user_id(id: &str) -> Result<(), RequestError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(RequestError::invalid(
            "userIds must be 1 to 128 characters without control characters",
        ))
    }
}

/// Checks message content.
pub fn content(content: &str, limits: &ContentLimits) -> Result<(), RequestError> {
    if chars_at_most(content, limits.max_content_chars) {
        Ok(())
    } else {
        Err(RequestError::invalid(format!(
            "content is longer than {} characters",
            limits.max_content_chars
        )))
    }
}

fn attachments(list: Vec<AttachmentData>, max: usize) -> Result<Vec<v1::Attachment>, RequestError> {
    if list.len() > max {
        return Err(RequestError::invalid(format!("at most {max} attachments")));
    }
    list.into_iter()
        .map(|a| {
            if a.external_file_id.is_empty() || !chars_at_most(&a.external_file_id, MAX_LABEL_CHARS)
            {
                return Err(RequestError::invalid(
                    "attachments[].externalFileId must be 1 to 255 characters",
                ));
            }
            if a.label
                .as_deref()
                .is_some_and(|l| !chars_at_most(l, MAX_LABEL_CHARS))
            {
                return Err(RequestError::invalid(
                    "attachments[].label is longer than 255 characters",
                ));
            }
            Ok(v1::Attachment {
                external_file_id: a.external_file_id,
                label: a.label,
            })
        })
        .collect()
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn metadata(raw: Option<Box<RawValue>>, limits: &ContentLimits) -> Result<String, RequestError> {
    let Some(raw) = raw else {
        return Ok(String::new());
    };
    if raw.get() == "null" {
        return Ok(String::new());
    }
    if raw.get().len() > limits.max_metadata_bytes {
        return Err(RequestError::invalid(format!(
            "metadata is larger than {} bytes",
            limits.max_metadata_bytes
        )));
    }
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|_| RequestError::invalid("metadata is not valid JSON"))?;
    if !value.is_object() {
        return Err(RequestError::invalid("metadata must be an object"));
    }
    if depth(&value) > limits.max_metadata_depth {
        return Err(RequestError::invalid(format!(
            "metadata is nested deeper than {} levels",
            limits.max_metadata_depth
        )));
    }
    Ok(raw.get().to_owned())
}

/// Checks a `message:send` and builds the message to publish (`id` and `created_at` unset).
pub fn new_message(
    data: SendData,
    sender_id: &str,
    limits: &ContentLimits,
    types: &[&str],
) -> Result<v1::ChatMessage, RequestError> {
    conversation_id(&data.conversation_id)?;
    content(&data.content, limits)?;
    let kind = data.kind.unwrap_or_else(|| "chat".to_owned());
    if !types.contains(&kind.as_str()) {
        return Err(RequestError::invalid(format!(
            "type must be one of {}",
            types.join(", ")
        )));
    }
    let attachments = attachments(data.attachments, limits.max_attachments)?;
    if data.content.is_empty() && attachments.is_empty() {
        return Err(RequestError::invalid(
            "a message needs content or attachments",
        ));
    }
    if let Some(id) = &data.client_message_id
        && (id.is_empty() || !chars_at_most(id, MAX_CLIENT_MESSAGE_ID_CHARS))
    {
        return Err(RequestError::invalid(
            "clientMessageId must be 1 to 64 characters",
        ));
    }
    Ok(v1::ChatMessage {
        id: 0,
        conversation_id: data.conversation_id,
        sender_id: sender_id.to_owned(),
        r#type: kind,
        content: data.content,
        attachments,
        reply_to: data.reply_to,
        metadata_json: metadata(data.metadata, limits)?,
        created_at_ms: 0,
        edited_at_ms: None,
        deleted: false,
        client_message_id: data.client_message_id,
    })
}

/// Checks a `room:create` and builds the request to the worker.
pub fn new_conversation(
    data: CreateData,
    creator_id: &str,
) -> Result<v1::CreateConversationRequest, RequestError> {
    let title = data.title.unwrap_or_default();
    if !chars_at_most(&title, MAX_LABEL_CHARS) {
        return Err(RequestError::invalid("title is longer than 255 characters"));
    }
    if data.participant_ids.len() >= MAX_PARTICIPANTS {
        return Err(RequestError::invalid(format!(
            "at most {} participants besides the creator",
            MAX_PARTICIPANTS - 1
        )));
    }
    if !data.participant_ids.iter().all(|id| valid_id(id)) {
        return Err(RequestError::invalid(
            "participantIds must be 1 to 128 characters without control characters",
        ));
    }
    password(data.password.as_deref())?;
    Ok(v1::CreateConversationRequest {
        creator_id: creator_id.to_owned(),
        title,
        participant_ids: data.participant_ids,
        private: data.private.unwrap_or(true),
        password: data.password.filter(|p| !p.is_empty()),
    })
}

/// The longest ban with an end: 10 years (longer: ban without `durationSecs`).
pub const MAX_BAN_SECS: u64 = 10 * 365 * 24 * 3600;

/// Checks a ban and builds the request to the worker: no `durationSecs` bans until unbanned.
pub fn ban(
    conversation_id: String,
    user_id: String,
    duration_secs: Option<u64>,
    reason: Option<String>,
    banned_by: &str,
) -> Result<v1::BanRequest, RequestError> {
    self::conversation_id(&conversation_id)?;
    self::user_id(&user_id)?;
    let duration_ms = match duration_secs {
        None => 0,
        Some(secs) if (1..=MAX_BAN_SECS).contains(&secs) => {
            i64::try_from(secs * 1000).unwrap_or(i64::MAX)
        }
        Some(_) => {
            return Err(RequestError::invalid(format!(
                "durationSecs must be 1 to {MAX_BAN_SECS} (none: until unbanned)"
            )));
        }
    };
    let reason = reason.unwrap_or_default();
    if !chars_at_most(&reason, MAX_LABEL_CHARS) {
        return Err(RequestError::invalid(
            "reason is longer than 255 characters",
        ));
    }
    Ok(v1::BanRequest {
        conversation_id,
        user_id,
        duration_ms,
        reason,
        banned_by: banned_by.to_owned(),
    })
}

/// Checks a room password.
pub fn password(password: Option<&str>) -> Result<(), RequestError> {
    if password.is_some_and(|p| !chars_at_most(p, MAX_PASSWORD_CHARS)) {
        return Err(RequestError::invalid(
            "password is longer than 128 characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ContentLimits = ContentLimits {
        max_content_chars: 5,
        max_attachments: 1,
        max_metadata_bytes: 64,
        max_metadata_depth: 2,
    };

    fn send(json: &str) -> Result<v1::ChatMessage, RequestError> {
        let data: SendData = serde_json::from_str(json).expect("the test data parses");
        new_message(data, "alice", &LIMITS, CLIENT_TYPES)
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert!(send(r#"{"conversationId":"c","content":"ééééé"}"#).is_ok());
        let error = send(r#"{"conversationId":"c","content":"éééééé"}"#).unwrap_err();
        assert!(error.message.contains("5 characters"));
    }

    #[test]
    fn each_limit_names_its_field() {
        let cases = [
            (r#"{"conversationId":"","content":"x"}"#, "conversationId"),
            (
                r#"{"conversationId":"c","content":"x","type":"system"}"#,
                "type",
            ),
            (
                r#"{"conversationId":"c","content":""}"#,
                "content or attachments",
            ),
            (
                r#"{"conversationId":"c","content":"x","attachments":[{"externalFileId":"a"},{"externalFileId":"b"}]}"#,
                "attachments",
            ),
            (
                r#"{"conversationId":"c","content":"x","metadata":[1]}"#,
                "object",
            ),
            (
                r#"{"conversationId":"c","content":"x","metadata":{"a":{"b":{"c":1}}}}"#,
                "deeper",
            ),
            (
                r#"{"conversationId":"c","content":"x","metadata":{"a":"0123456789012345678901234567890123456789012345678901234567890"}}"#,
                "larger",
            ),
            (
                r#"{"conversationId":"c","content":"x","clientMessageId":""}"#,
                "clientMessageId",
            ),
        ];
        for (json, needle) in cases {
            let error = send(json).unwrap_err();
            assert_eq!(error.code, chat_proto::client::ErrorCode::ValidationError);
            assert!(error.message.contains(needle), "{json}: {}", error.message);
        }
    }

    #[test]
    fn metadata_is_kept_as_sent() {
        let message =
            send(r#"{"conversationId":"c","content":"x","metadata":{"k":[1,"<b>"]}}"#).unwrap();
        assert_eq!(message.metadata_json, r#"{"k":[1,"<b>"]}"#);
    }
}
