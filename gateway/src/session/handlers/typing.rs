//! `typing:start` and `typing:stop`: told live to the conversation's members; a start lasts
//! [`TYPING_TTL`] unless refreshed, and a session that ends stops its typing.

use std::sync::Arc;
use std::time::Duration;

use chat_proto::bus;
use chat_proto::client::ConversationRef;
use chat_proto::v1::{self, ConversationEvent, conversation_event::Kind};
use tokio::time::Instant;

use super::Reply;
use crate::error::RequestError;
use crate::session::Session;
use crate::validation;

/// How long typing lasts without a refresh.
const TYPING_TTL: Duration = Duration::from_secs(5);

impl Session {
    pub(super) async fn typing(
        &mut self,
        data: ConversationRef,
        is_typing: bool,
    ) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let conversation_id: Arc<str> = data.conversation_id.into();
        if is_typing {
            self.typing
                .insert(Arc::clone(&conversation_id), Instant::now() + TYPING_TTL);
        } else {
            self.typing.remove(&conversation_id);
        }
        self.publish_typing(&conversation_id, is_typing).await;
        Ok(Reply::done())
    }

    /// Stops the typing that was not refreshed in time.
    pub(in crate::session) async fn expire_typing(&mut self) {
        let now = Instant::now();
        let expired: Vec<_> = self
            .typing
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(c, _)| Arc::clone(c))
            .collect();
        for conversation_id in expired {
            self.typing.remove(&conversation_id);
            self.publish_typing(&conversation_id, false).await;
        }
    }

    /// Stops all of the session's typing (it ends).
    pub(in crate::session) async fn stop_typing(&mut self) {
        let typing: Vec<_> = self.typing.drain().map(|(c, _)| c).collect();
        for conversation_id in typing {
            self.publish_typing(&conversation_id, false).await;
        }
    }

    async fn publish_typing(&self, conversation_id: &str, is_typing: bool) {
        let typing = v1::Typing {
            user_id: self.identity.user_id.to_string(),
            is_typing,
        };
        let event = ConversationEvent::new(conversation_id.to_owned(), Kind::Typing(typing));
        if let Err(error) = bus::publish_live(&self.gateway.shared.client, &event, None).await {
            tracing::debug!(%error, "typing not published");
        }
    }
}
