//! Reads of messages: a page of a conversation's history, and one message, each with the
//! store's committed position (the reader takes the stream beyond it).

use chat_proto::client::SYNC_LIMIT;
use chat_proto::v1;
use prost::Message as _;

use super::{Failure, Handlers};
use crate::store::{Page, Store, Window};

impl<S: Store> Handlers<S> {
    pub(super) async fn history(&self, r: v1::HistoryRequest) -> Result<v1::HistoryReply, Failure> {
        let window = Window::new(r.after_id, r.before_id);
        let committed_seq = self.store.committed_seq().await?;
        let page = self
            .store
            .history(&r.conversation_id, window, r.limit.min(SYNC_LIMIT.1))
            .await?;
        let page = fit_page(page, window, self.max_reply_bytes);
        Ok(v1::HistoryReply {
            messages: page.messages,
            has_more: page.has_more,
            committed_seq,
        })
    }

    pub(super) async fn message(
        &self,
        r: v1::GetMessageRequest,
    ) -> Result<v1::GetMessageReply, Failure> {
        let committed_seq = self.store.committed_seq().await?;
        Ok(v1::GetMessageReply {
            message: self.store.message(r.message_id).await?,
            committed_seq,
        })
    }
}

/// Cuts a page to `budget` encoded bytes, keeping the messages nearest the window's anchor.
fn fit_page(mut page: Page, window: Window, budget: usize) -> Page {
    let mut size = 0;
    let fits = |m: &&v1::ChatMessage| {
        size += m.encoded_len() + 8;
        size <= budget
    };
    let keep = if window.anchored_at_oldest() {
        page.messages.iter().take_while(fits).count()
    } else {
        page.messages.iter().rev().take_while(fits).count()
    };
    page.has_more |= window.cut(&mut page.messages, keep);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u64) -> Page {
        Page {
            messages: (1..=n)
                .map(|id| v1::ChatMessage {
                    id,
                    content: "x".repeat(1000),
                    ..Default::default()
                })
                .collect(),
            has_more: false,
        }
    }

    #[test]
    fn a_page_over_budget_keeps_the_messages_nearest_its_anchor() {
        let after = fit_page(page(10), Window::After(0), 3_100);
        assert_eq!(
            after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(after.has_more);
        let newest = fit_page(page(10), Window::Newest, 3_100);
        assert_eq!(
            newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert!(!fit_page(page(2), Window::Newest, 3_100).has_more);
    }
}
