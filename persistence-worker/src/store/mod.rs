//! The storage interface and its implementations.
//!
//! Callers (the consumer and the request handlers) see only [`Store`]; the embedded SQLite
//! store ([`sqlite::SqliteStore`]) is the default, and a ScyllaDB store fits the same trait
//! (partitioned by conversation and time bucket) without changing them.
//!
//! Every write is idempotent and conditional on the stream position: a message is inserted if
//! absent, an edit applies only if newer than the row and not deleted, a membership change only if
//! newer than the membership row. Redelivery and replays therefore change nothing.

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod cql;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;

use chat_proto::v1::{
    AuditEvent, AuditPage, AuditQuery, ChatMessage, Conversation, ConversationEvent,
};
use prost::Message as _;

/// Failures of a store, whatever its database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no, or could not be reached.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Another process holds the store.
    #[error("{0}")]
    InUse(String),
    /// TLS to the database cannot be set up (a CA file that cannot be read or holds no
    /// certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// The store's schema is newer than this binary knows.
    #[error("store schema version {found} is newer than this worker's {known}")]
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// The schema could not be brought up to date.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The blocking task running the query failed.
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// A database's own error.
    pub fn database(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Database(Box::new(error))
    }
}

pub use chat_proto::history::Window;

/// A message as its row's body holds it: everything but the content, which has a column of its
/// own (edits and deletes change it), so the text is stored once.
pub(crate) fn stored_body(message: &ChatMessage) -> Vec<u8> {
    use prost::Message as _;
    ChatMessage {
        content: String::new(),
        ..message.clone()
    }
    .encode_to_vec()
}

/// Participant ids a conversation carries in events and answers (large rooms are cut).
pub const LISTED_PARTICIPANTS: u32 = 100;
/// Participant ids read for an answer that needs them all (`room:online`).
pub const MAX_READ_PARTICIPANTS: u32 = 10_000;

/// A page of history, in id order.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The messages, in id order.
    pub messages: Vec<ChatMessage>,
    /// Whether the window holds more than the page.
    pub has_more: bool,
}

/// A conversation with its (secret) password hash.
#[derive(Debug, Clone)]
pub struct StoredConversation {
    /// The conversation, its participant list cut to the store's limit.
    pub conversation: Conversation,
    /// The salted hash of its password, if one was set.
    pub password_hash: Option<String>,
}

/// A user's membership of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// No such conversation.
    NoConversation,
    /// Never a member.
    Never,
    /// A member once, gone since.
    Left,
    /// A member now.
    Active,
}

/// Sets `user_id`'s read marker on each of `conversations`, from one [`Store::read_markers`]
/// call.
pub(crate) async fn add_read_markers<S: Store>(
    store: &S,
    user_id: &str,
    conversations: &mut [Conversation],
) -> Result<(), StoreError> {
    let ids: Vec<String> = conversations.iter().map(|c| c.id.clone()).collect();
    let markers = store.read_markers(user_id, &ids).await?;
    for conversation in conversations {
        conversation.last_read_message_id = markers.get(&conversation.id).copied();
    }
    Ok(())
}

/// Most audit records one query looks at: a filter that matches few of them returns a short
/// page (or none) with `next` to go on from, rather than scanning the whole log.
pub const AUDIT_SCAN: usize = 10_000;

/// Audit records as scanned (`(seq, body)` in sequence order) filtered into a page of at most
/// `query.limit`. `exhausted`: the scan reached the end of the log.
pub(crate) fn audit_page(
    rows: Vec<(i64, Vec<u8>)>,
    query: &AuditQuery,
    exhausted: bool,
) -> Result<AuditPage, StoreError> {
    let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
    let mut events = Vec::new();
    let mut last = 0;
    for (seq, body) in rows {
        let mut event = AuditEvent::decode(body.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))?;
        event.seq = u64::try_from(seq).unwrap_or(0);
        last = event.seq;
        let conversation =
            query.conversation_id.is_empty() || event.conversation_id == query.conversation_id;
        let user = query.user_id.is_empty()
            || event.user_id == query.user_id
            || event.actor == query.user_id;
        if conversation && user {
            events.push(event);
            if events.len() == limit {
                return Ok(AuditPage { events, next: last });
            }
        }
    }
    Ok(AuditPage {
        events,
        next: if exhausted { 0 } else { last },
    })
}

/// The storage interface of the worker.
pub trait Store: Send + Sync + 'static {
    /// Whether several workers may write the store at once (see [`crate::consumer`]).
    const SHARED: bool;

    /// The highest stream sequence the consumer has committed.
    fn committed_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Applies events (each with its `seq`) in one transaction. With `commit_through`, the
    /// committed position advances to it in the same transaction.
    fn apply(
        &self,
        events: Vec<ConversationEvent>,
        commit_through: Option<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One user's membership of one conversation.
    fn membership(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> impl Future<Output = Result<Membership, StoreError>> + Send;

    /// A conversation, with at most `max_participants` of its participant ids (in id order;
    /// `num_participants` counts them all).
    fn conversation(
        &self,
        conversation_id: &str,
        max_participants: u32,
    ) -> impl Future<Output = Result<Option<StoredConversation>, StoreError>> + Send;

    /// The conversations a user is a member of, newest first, at most `limit`, each with the
    /// user's read marker (the list a socket gets at every connect: one call).
    fn conversations_of(
        &self,
        user_id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Conversation>, StoreError>> + Send;

    /// A page of a conversation's messages.
    fn history(
        &self,
        conversation_id: &str,
        window: Window,
        limit: u32,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Records that `user_id` has read `conversation_id` up to `message_id`; a marker only moves
    /// forward, whatever order the calls arrive in.
    fn mark_read(
        &self,
        user_id: &str,
        conversation_id: &str,
        message_id: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `user_id`'s read markers in `conversation_ids`, by conversation (none where nothing is
    /// read).
    fn read_markers(
        &self,
        user_id: &str,
        conversation_ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, u64>, StoreError>> + Send;

    /// When `user_id`'s ban from `conversation_id` ends, if banned: `Some(0)` for a ban
    /// without an end. An ended ban may still be returned: the caller compares with the time.
    fn ban(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Keeps audit records (each with its audit `seq`; a record stored twice is stored once),
    /// for `keep` (the CQL store expires them itself; see [`Store::prune_audit`]).
    fn append_audit(
        &self,
        events: Vec<AuditEvent>,
        keep: std::time::Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A page of audit records after `query.after` ([`audit_page`]); `first_seq` is the first
    /// record the audit stream still holds (none older is kept either).
    fn audit(
        &self,
        query: AuditQuery,
        first_seq: u64,
    ) -> impl Future<Output = Result<AuditPage, StoreError>> + Send;

    /// Drops audit records older than `before_ms`; how many (the CQL store's expire by
    /// themselves: 0).
    fn prune_audit(&self, before_ms: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// One message by id, as it is now (edited, or a tombstone).
    fn message(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<ChatMessage>, StoreError>> + Send;
}
