//! `chat-persistence-worker import-sqlite`: copies an embedded SQLite store into the CQL store
//! (moving from one machine to a cluster). Every row is written as the event that last changed
//! it, at its own stream position, so the copy ends with the same rows, an import run again (after
//! a failure, or to catch up) changes nothing, and the stream's later events apply on top of it
//! in order. The committed position is copied last: workers on the new store go on from there.

use crate::store::sqlite::{Exported, SqliteStore};
use crate::store::{Store, StoreError};

/// Rows read and written a batch.
const PAGE: u32 = 1_000;

/// What an import copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Conversations.
    pub conversations: u64,
    /// Memberships (current and past).
    pub memberships: u64,
    /// Messages (with their edits and deletions).
    pub messages: u64,
    /// Read markers.
    pub read_markers: u64,
    /// Bans (current and ended).
    pub bans: u64,
    /// The committed stream position.
    pub committed: u64,
}

/// Copies everything `from` holds into `to`.
pub async fn sqlite_into(from: &SqliteStore, to: &impl Store) -> Result<Copied, StoreError> {
    let mut copied = Copied {
        committed: from.committed_seq().await?,
        ..Copied::default()
    };
    let mut after = Some(String::new());
    while let Some(key) = after.take() {
        let page = from.export_conversations(key, PAGE).await?;
        copied.conversations += write(to, &mut after, page).await?;
    }
    let mut after = Some((String::new(), String::new()));
    while let Some(key) = after.take() {
        let page = from.export_members(key, PAGE).await?;
        copied.memberships += write(to, &mut after, page).await?;
    }
    let mut after = Some((String::new(), String::new()));
    while let Some(key) = after.take() {
        let page = from.export_bans(key, PAGE).await?;
        copied.bans += write(to, &mut after, page).await?;
    }
    let mut after = Some(0);
    while let Some(key) = after.take() {
        let page = from.export_messages(key, PAGE).await?;
        copied.messages += write(to, &mut after, page).await?;
    }
    let mut after = (String::new(), String::new());
    loop {
        let markers = from.export_read_markers(after.clone(), PAGE).await?;
        for (user_id, conversation_id, message_id) in &markers {
            to.mark_read(user_id, conversation_id, *message_id).await?;
        }
        copied.read_markers += markers.len() as u64;
        match markers.last() {
            Some((user, conversation, _)) if markers.len() == PAGE as usize => {
                after = (user.clone(), conversation.clone());
            }
            _ => break,
        }
    }
    to.apply(Vec::new(), Some(copied.committed)).await?;
    Ok(copied)
}

/// Writes a page's events, sets where the next page starts, and returns how many rows it held.
async fn write<C>(
    to: &impl Store,
    after: &mut Option<C>,
    page: Exported<C>,
) -> Result<u64, StoreError> {
    to.apply(page.events, None).await?;
    *after = page.next;
    Ok(page.rows as u64)
}
