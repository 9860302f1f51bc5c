//! `message:delivered` and `message:read`: told live to the conversation's members, not stored.

use chat_proto::bus;
use chat_proto::client::ReceiptData;
use chat_proto::v1::{self, ConversationEvent, conversation_event::Kind};
use serde_json::json;

use super::Reply;
use crate::error::RequestError;
use crate::session::Session;
use crate::validation;

impl Session {
    pub(super) async fn receipt(
        &mut self,
        data: ReceiptData,
        read: bool,
    ) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let receipt = v1::MessageReceipt {
            user_id: self.identity.user_id.to_string(),
            message_id: data.message_id,
            read,
        };
        let event = ConversationEvent::new(data.conversation_id, Kind::Receipt(receipt));
        bus::publish_live(&self.gateway.shared.client, &event).await?;
        Ok(Reply::Ack(json!({})))
    }
}
