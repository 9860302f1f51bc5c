//! How conversation events travel: durably on the stream, then live on core NATS.
//!
//! A publisher first publishes the event to the conversation's stream subject and waits for
//! JetStream's acknowledgement; the stream sequence becomes the event's `seq`. Only then does it
//! publish the same event, `seq` filled in, on the conversation's live subject, so nothing is
//! announced that is not durable. Ephemeral events (typing, receipts) go live only.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use prost::Message as _;

use crate::subjects;
use crate::v1::{ConversationEvent, UserEvent, conversation_event::Kind};

/// Failures of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The stream did not take the event (NATS down, stream missing, timeout).
    #[error("publish to the stream failed: {0}")]
    Publish(String),
    /// A core publish could not be queued.
    #[error("live publish failed: {0}")]
    Live(String),
    /// A payload was not a valid event.
    #[error("undecodable event: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl ConversationEvent {
    /// An event of `conversation_id` not yet on the stream (its `seq` comes from the stream).
    pub fn new(conversation_id: String, kind: Kind) -> Self {
        Self {
            seq: 0,
            conversation_id,
            kind: Some(kind),
        }
    }
}

/// What the stream said of a durable publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The stream sequence: the event's `seq`.
    pub seq: u64,
    /// True when the de-duplication id was seen within the window: `seq` is the first one's.
    pub duplicate: bool,
}

/// Sends `event` to its conversation's stream subject (with `trace`'s headers: its trace context)
/// and returns the acknowledgement future without waiting for it. Publishes from one task leave
/// in the order they were made, so awaiting the futures later keeps a socket's sends in order.
pub async fn start_durable(
    js: &jetstream::Context,
    event: &ConversationEvent,
    dedup_id: Option<&str>,
    trace: Option<&HeaderMap>,
) -> Result<jetstream::context::PublishAckFuture, BusError> {
    let mut publish = PublishMessage::build().payload(Bytes::from(event.encode_to_vec()));
    if let Some(headers) = trace {
        publish = publish.headers(headers.clone());
    }
    if let Some(id) = dedup_id {
        publish = publish.message_id(id);
    }
    js.send_publish(
        subjects::conversation_stream(&event.conversation_id),
        publish,
    )
    .await
    .map_err(|e| BusError::Publish(e.to_string()))
}

/// Waits for a durable publish's acknowledgement.
pub async fn finish_durable(ack: jetstream::context::PublishAckFuture) -> Result<Stored, BusError> {
    let ack = ack.await.map_err(|e| BusError::Publish(e.to_string()))?;
    Ok(Stored {
        seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Publishes a batch of audit records; the audit stream captures it (no acknowledgement is
/// awaited: a batch costs its publisher one message to NATS).
pub async fn publish_audit(
    client: &async_nats::Client,
    batch: &crate::v1::AuditBatch,
) -> Result<(), BusError> {
    client
        .publish(subjects::AUDIT_BATCH, Bytes::from(batch.encode_to_vec()))
        .await
        .map_err(|e| BusError::Live(e.to_string()))
}

/// Publishes `event` (with its `seq`) on its conversation's live subject, with `trace`'s headers
/// (its trace context).
pub async fn publish_live(
    client: &async_nats::Client,
    event: &ConversationEvent,
    trace: Option<&HeaderMap>,
) -> Result<(), BusError> {
    let subject = subjects::conversation_live(&event.conversation_id);
    let payload = Bytes::from(event.encode_to_vec());
    match trace {
        Some(headers) => {
            client
                .publish_with_headers(subject, headers.clone(), payload)
                .await
        }
        None => client.publish(subject, payload).await,
    }
    .map_err(|e| BusError::Live(e.to_string()))
}

/// Publishes an event addressed to one user: to the nodes that hold the user's sessions when the
/// routers' placement says which (`Some`, possibly none), else to every node.
pub async fn publish_user(
    client: &async_nats::Client,
    event: &UserEvent,
    nodes: Option<&[String]>,
) -> Result<(), BusError> {
    let payload = Bytes::from(event.encode_to_vec());
    let publish = |subject: String| {
        let payload = payload.clone();
        async move {
            client
                .publish(subject, payload)
                .await
                .map_err(|e| BusError::Live(e.to_string()))
        }
    };
    match nodes {
        Some(nodes) => {
            for node in nodes {
                publish(subjects::node_users(node)).await?;
            }
            Ok(())
        }
        None => publish(subjects::user_live(&event.user_id)).await,
    }
}

/// Durable then live, for a publisher that has nothing else to do meanwhile. Returns the stored
/// event (its `seq` set); a duplicate is not announced again.
pub async fn publish(
    js: &jetstream::Context,
    client: &async_nats::Client,
    mut event: ConversationEvent,
    dedup_id: Option<&str>,
) -> Result<(ConversationEvent, Stored), BusError> {
    let stored = finish_durable(start_durable(js, &event, dedup_id, None).await?).await?;
    event.seq = stored.seq;
    if !stored.duplicate {
        publish_live(client, &event, None).await?;
    }
    Ok((event, stored))
}

/// Decodes a stream or live payload. `seq` is taken from the stream when given; a created
/// message gets its id (its `seq`) and conversation, which its publisher could not know.
pub fn decode_event(payload: &[u8], seq: Option<u64>) -> Result<ConversationEvent, BusError> {
    let mut event = ConversationEvent::decode(payload)?;
    if let Some(seq) = seq {
        event.seq = seq;
    }
    if let Some(Kind::MessageCreated(created)) = &mut event.kind
        && let Some(message) = &mut created.message
    {
        message.id = event.seq;
        message.conversation_id.clone_from(&event.conversation_id);
    }
    Ok(event)
}

/// Headers of a request-reply error.
pub fn error_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(subjects::rpc::ERROR_HEADER, "1");
    headers
}
