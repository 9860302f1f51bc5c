//! Reads that see every acknowledged event at once.
//!
//! The store answers up to its committed position; the stream answers beyond it (direct gets by
//! subject), so a message acked a millisecond ago is never missing, and when the worker is down
//! the stream alone answers within its retention. [`merge`] folds the stream's events (new
//! messages, edits, deletes) into the store's page.

use std::collections::BTreeMap;

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
pub use chat_proto::history::Window;
use chat_proto::v1::{self, ChatMessage, ConversationEvent, conversation_event::Kind};
use chat_proto::{bus, subjects};

use crate::error::RequestError;
use crate::worker::{CallError, WorkerClient};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream could not be read (NATS down, or too slow).
    #[error("the stream cannot be read")]
    Stream,
    /// No such message (or it is not there any more).
    #[error("no such message")]
    NotFound,
    /// The worker refused or failed.
    #[error(transparent)]
    Worker(#[from] CallError),
}

/// Most stream events one read goes through beyond the store's position.
const MAX_STREAM_EVENTS: usize = 10_000;

/// Reads a conversation's events from the stream.
#[derive(Clone)]
pub struct StreamReader {
    stream: Stream<()>,
}

impl StreamReader {
    /// Reads from `stream`.
    pub fn new(stream: Stream<()>) -> Self {
        Self { stream }
    }

    /// The conversation's events with `seq > after`, in order; `false` when there were more than
    /// one read takes.
    pub async fn events_after(
        &self,
        conversation_id: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<ConversationEvent>, bool), ReadError> {
        let subject = subjects::conversation_stream(conversation_id);
        let mut events = Vec::new();
        let mut next = after + 1;
        while events.len() < max {
            match self
                .stream
                .direct_get_next_for_subject(subject.clone(), Some(next))
                .await
            {
                Ok(message) => {
                    next = message.sequence + 1;
                    match bus::decode_event(&message.payload, Some(message.sequence)) {
                        Ok(event) => events.push(event),
                        Err(error) => {
                            tracing::warn!(seq = message.sequence, %error, "undecodable event")
                        }
                    }
                }
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => {
                    return Ok((events, true));
                }
                Err(error) => {
                    tracing::warn!(%error, "stream read failed");
                    return Err(ReadError::Stream);
                }
            }
        }
        Ok((events, false))
    }

    /// The message created at stream sequence `id`, as first sent (later edits not applied).
    pub async fn original(&self, id: u64) -> Result<Option<ChatMessage>, ReadError> {
        let message = match self.stream.direct_get(id).await {
            Ok(message) => message,
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(error) => {
                tracing::warn!(%error, "stream read failed");
                return Err(ReadError::Stream);
            }
        };
        let Ok(event) = bus::decode_event(&message.payload, Some(message.sequence)) else {
            return Ok(None);
        };
        Ok(created_message(event))
    }
}

fn created_message(event: ConversationEvent) -> Option<ChatMessage> {
    match event.kind {
        Some(Kind::MessageCreated(created)) => created.message,
        _ => None,
    }
}

/// A page of messages in id order, and whether the window holds more.
pub type Page = (Vec<ChatMessage>, bool);

/// A `messages:sync` page: the store's, completed from the stream.
pub async fn sync(
    worker: &WorkerClient,
    reader: &StreamReader,
    conversation_id: &str,
    window: Window,
    limit: u32,
) -> Result<Page, ReadError> {
    let (after_id, before_id) = window.ids();
    let request = v1::HistoryRequest {
        conversation_id: conversation_id.to_owned(),
        after_id,
        before_id,
        limit,
    };
    let (stored, has_more, committed) = match worker.history(request).await {
        Ok(reply) => (reply.messages, reply.has_more, reply.committed_seq),
        // The stream alone answers within its retention.
        Err(CallError::Unavailable) => (Vec::new(), false, 0),
        Err(error) => return Err(error.into()),
    };
    let (events, complete) = reader
        .events_after(conversation_id, committed, MAX_STREAM_EVENTS)
        .await?;
    Ok(merge(stored, has_more || !complete, events, window, limit))
}

/// A message as the store has it, or else as the stream's original (it was sent, and is not
/// stored yet or the worker is down), with the position up to which that is current.
pub async fn stored_or_original(
    worker: &WorkerClient,
    reader: &StreamReader,
    id: u64,
) -> Result<(ChatMessage, u64), ReadError> {
    match worker.message(id).await {
        Ok(v1::GetMessageReply {
            message: Some(message),
            committed_seq,
        }) => Ok((message, committed_seq)),
        Ok(reply) if id <= reply.committed_seq => Err(ReadError::NotFound),
        Ok(_) | Err(CallError::Unavailable) => {
            Ok((reader.original(id).await?.ok_or(ReadError::NotFound)?, id))
        }
        Err(error) => Err(error.into()),
    }
}

/// A message as it is now: the store's row (or, beyond the store, the stream's original), with
/// every edit and delete the stream holds beyond the store's position folded in.
pub async fn current_message(
    worker: &WorkerClient,
    reader: &StreamReader,
    id: u64,
) -> Result<ChatMessage, ReadError> {
    let (base, known_through) = stored_or_original(worker, reader, id).await?;
    let (events, _) = reader
        .events_after(
            &base.conversation_id,
            known_through.max(id),
            MAX_STREAM_EVENTS,
        )
        .await?;
    let (mut page, _) = merge(vec![base], false, events, Window::After(id - 1), 1);
    page.pop().ok_or(ReadError::NotFound)
}

/// Folds `events` (all after the store's position, in order) into the store's page and cuts
/// the result to the window.
pub fn merge(
    stored: Vec<ChatMessage>,
    stored_has_more: bool,
    events: Vec<ConversationEvent>,
    window: Window,
    limit: u32,
) -> Page {
    let mut messages: BTreeMap<u64, ChatMessage> = stored.into_iter().map(|m| (m.id, m)).collect();
    for event in events {
        match event.kind {
            Some(Kind::MessageEdited(edit)) => {
                if let Some(m) = messages.get_mut(&edit.message_id).filter(|m| !m.deleted) {
                    m.content = edit.content;
                    m.edited_at_ms = Some(edit.edited_at_ms);
                }
            }
            Some(Kind::MessageDeleted(delete)) => {
                if let Some(m) = messages.get_mut(&delete.message_id) {
                    m.deleted = true;
                    m.content.clear();
                    m.attachments.clear();
                    m.metadata_json.clear();
                }
            }
            Some(Kind::MessageCreated(_)) => {
                if let Some(m) = created_message(event) {
                    messages.insert(m.id, m);
                }
            }
            _ => {}
        }
    }
    let mut ids: Vec<u64> = messages
        .keys()
        .copied()
        .filter(|&id| window.contains(id))
        .collect();
    let has_more = window.cut(&mut ids, limit as usize) || stored_has_more;
    let page = ids
        .into_iter()
        .filter_map(|id| messages.remove(&id))
        .collect();
    (page, has_more)
}

/// How a failed read reaches the client.
impl From<ReadError> for RequestError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Stream => Self::unavailable(),
            ReadError::NotFound => Self::not_found("no such message"),
            ReadError::Worker(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chat_proto::v1::{MessageCreated, MessageDeleted, MessageEdited};

    use super::*;

    fn message(id: u64) -> ChatMessage {
        ChatMessage {
            id,
            conversation_id: "c".into(),
            content: format!("m{id}"),
            ..Default::default()
        }
    }

    fn event(seq: u64, kind: Kind) -> ConversationEvent {
        ConversationEvent {
            seq,
            conversation_id: "c".into(),
            kind: Some(kind),
        }
    }

    fn created(seq: u64) -> ConversationEvent {
        let m = message(seq);
        event(
            seq,
            Kind::MessageCreated(MessageCreated { message: Some(m) }),
        )
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.0.iter().map(|m| m.id).collect()
    }

    #[test]
    fn the_stream_completes_the_store() {
        let stored = vec![message(1), message(2)];
        let edit = event(
            5,
            Kind::MessageEdited(MessageEdited {
                message_id: 2,
                content: "edited".into(),
                edited_at_ms: 9,
                ..Default::default()
            }),
        );
        let delete = event(
            6,
            Kind::MessageDeleted(MessageDeleted {
                message_id: 1,
                ..Default::default()
            }),
        );
        let page = merge(
            stored,
            false,
            vec![created(4), edit, delete],
            Window::Newest,
            50,
        );
        assert_eq!(ids(&page), [1, 2, 4]);
        assert!(page.0[0].deleted && page.0[0].content.is_empty());
        assert_eq!(page.0[1].content, "edited");
        assert_eq!(page.0[2].content, "m4");
        assert!(!page.1);
    }

    #[test]
    fn windows_cut_at_the_limit_on_the_right_side() {
        let stored: Vec<_> = (1..=5).map(message).collect();
        let events = vec![created(8), created(9)];
        let after = merge(stored.clone(), false, events.clone(), Window::After(3), 3);
        assert_eq!(ids(&after), [4, 5, 8]);
        assert!(after.1);
        let newest = merge(stored.clone(), false, events.clone(), Window::Newest, 3);
        assert_eq!(ids(&newest), [5, 8, 9]);
        let before = merge(stored, false, events, Window::Before(8), 10);
        assert_eq!(ids(&before), [1, 2, 3, 4, 5]);
        assert!(!before.1);
    }
}
