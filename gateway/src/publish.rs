//! Events into the stream and out to the members: what a socket's requests and the server API
//! both do. A new message is stored durably (JetStream, de-duplicated by its sender's
//! `clientMessageId`), then announced live with the sequence the stream gave it.

use std::time::Instant;

use async_nats::HeaderMap;
use chat_proto::bus::{self, Stored};
use chat_proto::subjects;
use chat_proto::v1::{self, ConversationEvent, conversation_event::Kind};
use tracing::Instrument as _;

use crate::Shared;
use crate::error::RequestError;
use crate::history;

/// The event that creates `message`.
pub(crate) fn created(message: v1::ChatMessage) -> ConversationEvent {
    let conversation_id = message.conversation_id.clone();
    let kind = Kind::MessageCreated(v1::MessageCreated {
        message: Some(message),
    });
    ConversationEvent::new(conversation_id, kind)
}

/// The stream's de-duplication id of a message with a `clientMessageId`: per sender and
/// conversation.
pub(crate) fn dedup_id(message: &v1::ChatMessage) -> Option<String> {
    message
        .client_message_id
        .as_deref()
        .map(|id| subjects::dedup_id(&message.sender_id, &message.conversation_id, id))
}

/// The span of a new message's way into the stream and out to the nodes, when traces are on:
/// its context goes with the event (NATS headers), so that the worker's write and every node's
/// fan-out are in the same trace.
pub(crate) fn publish_span(conversation_id: &str) -> tracing::Span {
    chat_proto::telemetry::traced(|| {
        tracing::info_span!("publish", conversation_id, trace_id = tracing::field::Empty)
    })
}

/// Once the stream has stored a new message: the message with its id (a duplicate: the first
/// one, as it was stored), announced live (with `trace`, its trace context). A duplicate is
/// announced again: the first announcement may have been lost with the first answer (members
/// drop what they have).
pub(crate) async fn announce_created(
    shared: &Shared,
    mut message: v1::ChatMessage,
    stored: Stored,
    trace: Option<&HeaderMap>,
) -> v1::ChatMessage {
    shared.hub.observe(stored.seq);
    message.id = stored.seq;
    if stored.duplicate
        && let Ok(Some(original)) = shared.reader.original(stored.seq).await
    {
        message = original;
    }
    let mut event = created(message.clone());
    event.seq = stored.seq;
    if let Err(error) = bus::publish_live(&shared.client, &event, trace).await {
        tracing::warn!(%error, "live publish failed; members fill from the stream");
    }
    message
}

/// Stores a new message and announces it, for a publisher with nothing else to do meanwhile.
pub(crate) async fn create_message(
    shared: &Shared,
    message: v1::ChatMessage,
) -> Result<v1::ChatMessage, RequestError> {
    let span = publish_span(&message.conversation_id);
    let trace = chat_proto::telemetry::headers(&span);
    async {
        let dedup = dedup_id(&message);
        let started = Instant::now();
        let event = created(message.clone());
        let ack = bus::start_durable(&shared.js, &event, dedup.as_deref(), trace.as_ref()).await?;
        let stored = bus::finish_durable(ack).await?;
        shared.metrics.message_stored(started.elapsed());
        Ok(announce_created(shared, message, stored, trace.as_ref()).await)
    }
    .instrument(span)
    .await
}

/// Stores an event durably and announces it.
pub(crate) async fn record(
    shared: &Shared,
    conversation_id: &str,
    kind: Kind,
) -> Result<Stored, RequestError> {
    let event = ConversationEvent::new(conversation_id.to_owned(), kind);
    let (_, stored) = bus::publish(&shared.js, &shared.client, event, None).await?;
    shared.hub.observe(stored.seq);
    Ok(stored)
}

/// The message `id` as it is now, if it is there (not deleted) and, when `conversation_id` is
/// given, in that conversation.
pub(crate) async fn existing_message(
    shared: &Shared,
    id: u64,
    conversation_id: Option<&str>,
) -> Result<v1::ChatMessage, RequestError> {
    let message = history::current_message(&shared.worker, &shared.reader, id).await?;
    if conversation_id.is_some_and(|c| c != message.conversation_id) || message.deleted {
        return Err(RequestError::not_found("no such message"));
    }
    Ok(message)
}
