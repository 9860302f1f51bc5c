//! `message:delivered` and `message:read`: told live to the conversation's members. A read of a
//! message of the conversation also moves the reader's read marker (stored by the worker, forward
//! only) before it is told, so a `message:read` acked is a marker that `room:list` and
//! `room:info` return on every device.

use chat_proto::bus;
use chat_proto::client::ReceiptData;
use chat_proto::v1::{self, ConversationEvent, conversation_event::Kind};

use super::Reply;
use crate::error::RequestError;
use crate::history;
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
        if read {
            // A marker only moves forward: one past the conversation's messages would hide
            // every later message from the reader's unread count.
            let shared = &self.gateway.shared;
            let (message, _) =
                history::stored_or_original(&shared.worker, &shared.reader, data.message_id)
                    .await?;
            if message.conversation_id != data.conversation_id {
                return Err(RequestError::not_found("no such message"));
            }
            shared
                .worker
                .mark_read(
                    &self.identity.user_id,
                    &data.conversation_id,
                    data.message_id,
                )
                .await?;
        }
        let receipt = v1::MessageReceipt {
            user_id: self.identity.user_id.to_string(),
            message_id: data.message_id,
            read,
        };
        let event = ConversationEvent::new(data.conversation_id, Kind::Receipt(receipt));
        bus::publish_live(&self.gateway.shared.client, &event, None).await?;
        Ok(Reply::done())
    }
}
