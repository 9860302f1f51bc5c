//! What the worker's tests share: a chat message event and the wait for the worker's stream.

#![allow(dead_code, unreachable_pub)] // Each test file uses part of it.

use std::time::Duration;

use chat_proto::subjects;
use chat_proto::v1::{ChatMessage, ConversationEvent, MessageCreated, conversation_event::Kind};

/// A message of alice's in conversation `c1`.
pub fn message(content: String) -> ConversationEvent {
    ConversationEvent {
        seq: 0,
        conversation_id: "c1".into(),
        kind: Some(Kind::MessageCreated(MessageCreated {
            message: Some(ChatMessage {
                sender_id: "alice".into(),
                r#type: "chat".into(),
                content,
                ..Default::default()
            }),
        })),
    }
}

/// Waits until the worker created the stream.
pub async fn wait_for_stream(js: &async_nats::jetstream::Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while js.get_stream(subjects::STREAM).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not create the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
