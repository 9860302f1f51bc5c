//! The CQL store: ScyllaDB in production, Apache Cassandra in the tests (portable CQL only).
//!
//! Every write carries the stream sequence of its event as its write timestamp
//! (`USING TIMESTAMP`), so the newest event wins whatever order writes arrive in: an older edit
//! never overwrites a newer one, a replayed batch rewrites what is there, and several workers may
//! write at once. Nothing is ever deleted: a deleted message is a tombstone row (`deleted`), whose
//! content reads as empty even if an edit arrived after the delete. No lightweight transaction is
//! needed on the write path; the one LWT is in [`migrations`], so that two workers starting at
//! once apply each schema version once. Read markers use the same rule with the message id as
//! the timestamp: the highest marker wins, with no read before the write.
//!
//! Messages are partitioned by conversation and bucket, clustered by position. The bucket is the
//! message id (its stream sequence) divided by [`BUCKET_SPAN`]: a partition never holds more than
//! 65,536 messages (~20 MB at 300 bytes each), however busy the conversation; `message_buckets`
//! lists a conversation's buckets so that reading history skips the empty ones of a quiet
//! conversation.

pub mod migrations;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use chat_proto::v1::{
    AuditEvent, AuditPage, AuditQuery, ChatMessage, Conversation, ConversationEvent,
    conversation_event::Kind,
};
use prost::Message as _;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::{
    AUDIT_SCAN, Membership, Page, Store, StoreError, StoredConversation, Window, audit_page,
    stored_body,
};

/// Message ids per bucket (a power of two).
pub const BUCKET_SPAN: u64 = 1 << 16;
/// Statements of one call in flight at once.
const WRITE_CONCURRENCY: usize = 64;
/// Conversations a read-marker query names (`IN`), within one partition.
const READ_MARKERS_PER_QUERY: usize = 100;

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} is out of range")))
}

fn bucket(id: u64) -> i64 {
    (id / BUCKET_SPAN) as i64
}

/// Audit records a partition.
const AUDIT_BUCKET: i64 = 65_536;

/// The statements, prepared once.
struct Statements {
    insert_message: PreparedStatement,
    insert_bucket: PreparedStatement,
    insert_message_id: PreparedStatement,
    edit_message: PreparedStatement,
    delete_message: PreparedStatement,
    insert_conversation: PreparedStatement,
    set_member: PreparedStatement,
    set_user_conversation: PreparedStatement,
    set_position: PreparedStatement,
    position: PreparedStatement,
    mark_read: PreparedStatement,
    read_markers: PreparedStatement,
    conversation: PreparedStatement,
    member: PreparedStatement,
    members: PreparedStatement,
    member_count: PreparedStatement,
    user_conversations: PreparedStatement,
    buckets_down: PreparedStatement,
    buckets_up: PreparedStatement,
    messages_down: PreparedStatement,
    messages_up: PreparedStatement,
    message_conversation: PreparedStatement,
    message: PreparedStatement,
    set_ban: PreparedStatement,
    ban: PreparedStatement,
    insert_audit: PreparedStatement,
    set_audit_end: PreparedStatement,
    audit_end: PreparedStatement,
    audit: PreparedStatement,
}

/// The CQL store; a cheap `Clone` handle over one session.
#[derive(Clone)]
pub struct CqlStore {
    session: Arc<Session>,
    statements: Arc<Statements>,
}

const MESSAGE_COLUMNS: &str = "seq, body, content, edited_at_ms, deleted";
type MessageRow = (
    i64,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    Option<bool>,
);

impl CqlStore {
    /// A store over `session`, whose keyspace is set and migrated ([`migrations::apply`]);
    /// every statement at `consistency`.
    pub async fn new(session: Session, consistency: Consistency) -> Result<Self, StoreError> {
        let prepare = async |cql: &str| -> Result<PreparedStatement, StoreError> {
            let mut statement = session.prepare(cql).await.map_err(StoreError::database)?;
            statement.set_consistency(consistency);
            statement.set_is_idempotent(true);
            Ok(statement)
        };
        let message_window = |order: &str, op: &str| {
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND bucket = ? \
                 AND seq {op} ? ORDER BY seq {order} LIMIT ?"
            )
        };
        let statements = Statements {
            insert_message: prepare(
                "INSERT INTO messages (conversation_id, bucket, seq, body, content, deleted) \
                 VALUES (?, ?, ?, ?, ?, false) USING TIMESTAMP ?",
            )
            .await?,
            insert_bucket: prepare(
                "INSERT INTO message_buckets (conversation_id, bucket) VALUES (?, ?) \
                 USING TIMESTAMP ?",
            )
            .await?,
            insert_message_id: prepare(
                "INSERT INTO messages_by_id (seq, conversation_id) VALUES (?, ?) USING TIMESTAMP ?",
            )
            .await?,
            edit_message: prepare(
                "UPDATE messages USING TIMESTAMP ? SET content = ?, edited_at_ms = ? \
                 WHERE conversation_id = ? AND bucket = ? AND seq = ?",
            )
            .await?,
            delete_message: prepare(
                "UPDATE messages USING TIMESTAMP ? SET deleted = true, content = '' \
                 WHERE conversation_id = ? AND bucket = ? AND seq = ?",
            )
            .await?,
            insert_conversation: prepare(
                "INSERT INTO conversations (id, body, password_hash, seq) VALUES (?, ?, ?, ?) \
                 USING TIMESTAMP ?",
            )
            .await?,
            set_member: prepare(
                "INSERT INTO members_by_conversation (conversation_id, user_id, active) \
                 VALUES (?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            set_user_conversation: prepare(
                "INSERT INTO members_by_user (user_id, conversation_id, active) \
                 VALUES (?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            // The event's sequence is the write timestamp: the later of a ban and an unban
            // wins, whichever worker writes first. An unban ends the ban at 1 (long past).
            set_ban: prepare(
                "INSERT INTO bans (conversation_id, user_id, until_ms) VALUES (?, ?, ?) \
                 USING TIMESTAMP ?",
            )
            .await?,
            ban: prepare("SELECT until_ms FROM bans WHERE conversation_id = ? AND user_id = ?")
                .await?,
            insert_audit: prepare(
                "INSERT INTO audit (bucket, seq, body) VALUES (?, ?, ?) USING TTL ?",
            )
            .await?,
            // The newest audit record: its sequence is the timestamp, so the highest wins.
            set_audit_end: prepare(
                "INSERT INTO positions (name, seq) VALUES ('audit', ?) USING TIMESTAMP ?",
            )
            .await?,
            audit_end: prepare("SELECT seq FROM positions WHERE name = 'audit'").await?,
            audit: prepare(
                "SELECT seq, body FROM audit WHERE bucket = ? AND seq > ? ORDER BY seq LIMIT ?",
            )
            .await?,
            set_position: prepare(
                "INSERT INTO positions (name, seq) VALUES ('committed', ?) USING TIMESTAMP ?",
            )
            .await?,
            position: prepare("SELECT seq FROM positions WHERE name = 'committed'").await?,
            // The message id is the write timestamp: the highest marker wins.
            mark_read: prepare(
                "INSERT INTO read_markers (user_id, conversation_id, message_id) VALUES (?, ?, ?) \
                 USING TIMESTAMP ?",
            )
            .await?,
            read_markers: prepare(
                "SELECT conversation_id, message_id FROM read_markers \
                 WHERE user_id = ? AND conversation_id IN ?",
            )
            .await?,
            conversation: prepare(
                "SELECT body, password_hash, seq FROM conversations WHERE id = ?",
            )
            .await?,
            member: prepare(
                "SELECT active FROM members_by_conversation \
                 WHERE conversation_id = ? AND user_id = ?",
            )
            .await?,
            // Filtered and counted by the node, within one partition: a big room's rows never
            // cross the network to be counted.
            members: prepare(
                "SELECT user_id FROM members_by_conversation \
                 WHERE conversation_id = ? AND active = true LIMIT ? ALLOW FILTERING",
            )
            .await?,
            member_count: prepare(
                "SELECT COUNT(*) FROM members_by_conversation \
                 WHERE conversation_id = ? AND active = true ALLOW FILTERING",
            )
            .await?,
            user_conversations: prepare(
                "SELECT conversation_id, active FROM members_by_user WHERE user_id = ?",
            )
            .await?,
            buckets_down: prepare(
                "SELECT bucket FROM message_buckets WHERE conversation_id = ? AND bucket <= ? \
                 ORDER BY bucket DESC",
            )
            .await?,
            buckets_up: prepare(
                "SELECT bucket FROM message_buckets WHERE conversation_id = ? AND bucket >= ? \
                 ORDER BY bucket ASC",
            )
            .await?,
            messages_down: prepare(&message_window("DESC", "<")).await?,
            messages_up: prepare(&message_window("ASC", ">")).await?,
            message_conversation: prepare(
                "SELECT conversation_id FROM messages_by_id WHERE seq = ?",
            )
            .await?,
            message: prepare(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE conversation_id = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
        };
        Ok(Self {
            session: Arc::new(session),
            statements: Arc::new(statements),
        })
    }

    async fn write(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map(drop)
            .map_err(StoreError::database)
    }

    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(StoreError::database)?;
        let rows = result.into_rows_result().map_err(StoreError::database)?;
        rows.rows::<R>()
            .map_err(StoreError::database)?
            .collect::<Result<Vec<R>, _>>()
            .map_err(StoreError::database)
    }

    /// The writes of one event.
    async fn apply_event(&self, event: &ConversationEvent) -> Result<(), StoreError> {
        let s = &self.statements;
        let seq = to_i64(event.seq)?;
        let conversation_id = event.conversation_id.as_str();
        match &event.kind {
            Some(Kind::MessageCreated(created)) => {
                let Some(message) = &created.message else {
                    return Ok(());
                };
                let bucket = bucket(event.seq);
                let row = (
                    conversation_id,
                    bucket,
                    seq,
                    stored_body(message),
                    message.content.as_str(),
                    seq,
                );
                self.write(&s.insert_message, row).await?;
                self.write(&s.insert_bucket, (conversation_id, bucket, seq))
                    .await?;
                self.write(&s.insert_message_id, (seq, conversation_id, seq))
                    .await
            }
            Some(Kind::MessageEdited(edit)) => {
                let id = to_i64(edit.message_id)?;
                let row = (
                    seq,
                    edit.content.as_str(),
                    edit.edited_at_ms,
                    conversation_id,
                    bucket(edit.message_id),
                    id,
                );
                self.write(&s.edit_message, row).await
            }
            Some(Kind::MessageDeleted(delete)) => {
                let id = to_i64(delete.message_id)?;
                let row = (seq, conversation_id, bucket(delete.message_id), id);
                self.write(&s.delete_message, row).await
            }
            Some(Kind::ConversationCreated(created)) => {
                let Some(conversation) = &created.conversation else {
                    return Ok(());
                };
                let participants = conversation.participant_ids.clone();
                let body = Conversation {
                    participant_ids: Vec::new(),
                    num_participants: 0,
                    ..conversation.clone()
                }
                .encode_to_vec();
                let hash = created.password_hash.as_deref();
                let row = (conversation_id, body, hash, seq, seq);
                self.write(&s.insert_conversation, row).await?;
                for user_id in &participants {
                    self.set_member(conversation_id, user_id, true, seq).await?;
                }
                Ok(())
            }
            Some(Kind::ParticipantAdded(added)) => {
                self.set_member(conversation_id, &added.user_id, true, seq)
                    .await
            }
            Some(Kind::ParticipantRemoved(removed)) => {
                self.set_member(conversation_id, &removed.user_id, false, seq)
                    .await
            }
            Some(Kind::ParticipantBanned(banned)) => {
                let row = (conversation_id, &banned.user_id, banned.until_ms, seq);
                self.write(&s.set_ban, row).await
            }
            Some(Kind::ParticipantUnbanned(unbanned)) => {
                let row = (conversation_id, &unbanned.user_id, 1_i64, seq);
                self.write(&s.set_ban, row).await
            }
            // Typing and receipts are live only.
            Some(Kind::Typing(_) | Kind::Receipt(_)) | None => Ok(()),
        }
    }

    async fn set_member(
        &self,
        conversation_id: &str,
        user_id: &str,
        active: bool,
        seq: i64,
    ) -> Result<(), StoreError> {
        let s = &self.statements;
        self.write(&s.set_member, (conversation_id, user_id, active, seq))
            .await?;
        self.write(
            &s.set_user_conversation,
            (user_id, conversation_id, active, seq),
        )
        .await
    }

    /// A conversation with at most `max_participants` ids, and its stream position.
    async fn load(
        &self,
        conversation_id: &str,
        max_participants: u32,
    ) -> Result<Option<(StoredConversation, i64)>, StoreError> {
        let s = &self.statements;
        let rows: Vec<(Vec<u8>, Option<String>, i64)> =
            self.rows(&s.conversation, (conversation_id,)).await?;
        let Some((body, password_hash, seq)) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut conversation = Conversation::decode(body.as_slice())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let limit = i32::try_from(max_participants).unwrap_or(i32::MAX);
        let (members, count) = futures_util::try_join!(
            self.rows::<(String,)>(&s.members, (conversation_id, limit)),
            self.rows::<(i64,)>(&s.member_count, (conversation_id,)),
        )?;
        conversation.participant_ids = members.into_iter().map(|(user_id,)| user_id).collect();
        conversation.num_participants = count
            .first()
            .map_or(0, |(n,)| u32::try_from(*n).unwrap_or(u32::MAX));
        let stored = StoredConversation {
            conversation,
            password_hash,
        };
        Ok(Some((stored, seq)))
    }

    /// Messages of `buckets` (in reading order) beyond `from`, at most `take`.
    async fn read_buckets(
        &self,
        conversation_id: &str,
        buckets: Vec<i64>,
        from: i64,
        take: usize,
        ascending: bool,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let s = &self.statements;
        let statement = if ascending {
            &s.messages_up
        } else {
            &s.messages_down
        };
        let mut messages = Vec::new();
        for bucket in buckets {
            // Rows come in reading order, so the last one read bounds the next query; a bucket
            // is read on until it has no more rows (a row without its creation, an edit written
            // first, is no message but still counts against the query's limit).
            let mut from = from;
            loop {
                let left = take - messages.len();
                let limit = i32::try_from(left).unwrap_or(i32::MAX);
                let rows: Vec<MessageRow> = self
                    .rows(statement, (conversation_id, bucket, from, limit))
                    .await?;
                let exhausted = rows.len() < left;
                if let Some((seq, ..)) = rows.last() {
                    from = *seq;
                }
                messages.extend(rows.into_iter().filter_map(to_message));
                if exhausted || messages.len() >= take {
                    break;
                }
            }
            if messages.len() >= take {
                break;
            }
        }
        Ok(messages)
    }
}

/// A message as it is now; `None` for a row that has only an edit or a delete (its creation not
/// written yet).
fn to_message((_, body, content, edited_at_ms, deleted): MessageRow) -> Option<ChatMessage> {
    let mut message = ChatMessage::decode(body?.as_slice()).ok()?;
    message.deleted = deleted.unwrap_or(false);
    message.content = if message.deleted {
        String::new()
    } else {
        content.unwrap_or_default()
    };
    message.edited_at_ms = edited_at_ms;
    Some(message)
}

impl Store for CqlStore {
    const SHARED: bool = true;

    async fn committed_seq(&self) -> Result<u64, StoreError> {
        let rows: Vec<(i64,)> = self.rows(&self.statements.position, ()).await?;
        Ok(rows
            .first()
            .map_or(0, |(seq,)| u64::try_from(*seq).unwrap_or(0)))
    }

    async fn apply(
        &self,
        events: Vec<ConversationEvent>,
        commit_through: Option<u64>,
    ) -> Result<(), StoreError> {
        // Order does not matter (each write carries its event's position), so the writes go at
        // once; the position moves only once all of them are in.
        for chunk in events.chunks(WRITE_CONCURRENCY) {
            let writes: Vec<_> = chunk.iter().map(|event| self.apply_event(event)).collect();
            futures_util::future::try_join_all(writes).await?;
        }
        if let Some(through) = commit_through {
            let through = to_i64(through)?;
            self.write(&self.statements.set_position, (through, through))
                .await?;
        }
        Ok(())
    }

    async fn mark_read(
        &self,
        user_id: &str,
        conversation_id: &str,
        message_id: u64,
    ) -> Result<(), StoreError> {
        let id = to_i64(message_id)?;
        self.write(
            &self.statements.mark_read,
            (user_id, conversation_id, id, id),
        )
        .await
    }

    async fn read_markers(
        &self,
        user_id: &str,
        conversation_ids: &[String],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut markers = HashMap::new();
        for chunk in conversation_ids.chunks(READ_MARKERS_PER_QUERY) {
            let rows: Vec<(String, i64)> = self
                .rows(&self.statements.read_markers, (user_id, chunk))
                .await?;
            markers.extend(
                rows.into_iter()
                    .map(|(id, marker)| (id, u64::try_from(marker).unwrap_or(0))),
            );
        }
        Ok(markers)
    }

    async fn append_audit(
        &self,
        events: Vec<AuditEvent>,
        keep: std::time::Duration,
    ) -> Result<(), StoreError> {
        let s = &self.statements;
        let ttl = i32::try_from(keep.as_secs()).unwrap_or(i32::MAX).max(1);
        let mut end = 0;
        for event in &events {
            let seq = to_i64(event.seq)?;
            let row = (seq / AUDIT_BUCKET, seq, event.encode_to_vec(), ttl);
            self.write(&s.insert_audit, row).await?;
            end = end.max(seq);
        }
        if end > 0 {
            self.write(&s.set_audit_end, (end, end)).await?;
        }
        Ok(())
    }

    async fn audit(&self, query: AuditQuery, first_seq: u64) -> Result<AuditPage, StoreError> {
        let s = &self.statements;
        let ends: Vec<(i64,)> = self.rows(&s.audit_end, ()).await?;
        let Some(&(end,)) = ends.first() else {
            return Ok(AuditPage::default());
        };
        // Nothing before the stream's first record is kept: start there.
        let mut after = to_i64(query.after)?.max(to_i64(first_seq)? - 1);
        let mut rows: Vec<(i64, Vec<u8>)> = Vec::new();
        while after < end && rows.len() < AUDIT_SCAN {
            let room = i32::try_from(AUDIT_SCAN - rows.len()).unwrap_or(i32::MAX);
            let bucket = (after + 1) / AUDIT_BUCKET;
            let page: Vec<(i64, Vec<u8>)> = self.rows(&s.audit, (bucket, after, room)).await?;
            after = match page.last() {
                // This bucket may hold more.
                Some((seq, _)) if page.len() == usize::try_from(room).unwrap_or(0) => *seq,
                // Done with it: the next one.
                _ => (bucket + 1) * AUDIT_BUCKET - 1,
            };
            rows.extend(page);
        }
        let exhausted = after >= end;
        audit_page(rows, &query, exhausted)
    }

    async fn prune_audit(&self, _before_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn ban(&self, user_id: &str, conversation_id: &str) -> Result<Option<i64>, StoreError> {
        let rows: Vec<(i64,)> = self
            .rows(&self.statements.ban, (conversation_id, user_id))
            .await?;
        Ok(rows.first().map(|(until,)| *until))
    }

    async fn membership(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Membership, StoreError> {
        let s = &self.statements;
        let member: Vec<(bool,)> = self.rows(&s.member, (conversation_id, user_id)).await?;
        if let Some((active,)) = member.first() {
            return Ok(if *active {
                Membership::Active
            } else {
                Membership::Left
            });
        }
        let exists: Vec<(Vec<u8>, Option<String>, i64)> =
            self.rows(&s.conversation, (conversation_id,)).await?;
        Ok(if exists.is_empty() {
            Membership::NoConversation
        } else {
            Membership::Never
        })
    }

    async fn conversation(
        &self,
        conversation_id: &str,
        max_participants: u32,
    ) -> Result<Option<StoredConversation>, StoreError> {
        Ok(self
            .load(conversation_id, max_participants)
            .await?
            .map(|(stored, _)| stored))
    }

    async fn conversations_of(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<Conversation>, StoreError> {
        let rows: Vec<(String, bool)> = self
            .rows(&self.statements.user_conversations, (user_id,))
            .await?;
        let ids: Vec<String> = rows
            .into_iter()
            .filter_map(|(id, active)| active.then_some(id))
            .collect();
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(WRITE_CONCURRENCY) {
            let loads: Vec<_> = chunk
                .iter()
                .map(|id| self.load(id, super::LISTED_PARTICIPANTS))
                .collect();
            found.extend(
                futures_util::future::try_join_all(loads)
                    .await?
                    .into_iter()
                    .flatten(),
            );
        }
        // Newest first, as the SQLite store answers.
        found.sort_by_key(|(_, seq)| std::cmp::Reverse(*seq));
        let mut conversations: Vec<Conversation> = found
            .into_iter()
            .take(limit as usize)
            .map(|(stored, _)| stored.conversation)
            .collect();
        super::add_read_markers(self, user_id, &mut conversations).await?;
        Ok(conversations)
    }

    async fn history(
        &self,
        conversation_id: &str,
        window: Window,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let s = &self.statements;
        let take = limit as usize + 1;
        let (from, ascending) = match window {
            Window::Newest => (i64::MAX, false),
            Window::Before(id) => (to_i64(id)?, false),
            Window::After(id) => (to_i64(id)?, true),
        };
        let buckets: Vec<(i64,)> = if ascending {
            let first = bucket(u64::try_from(from).unwrap_or(0));
            self.rows(&s.buckets_up, (conversation_id, first)).await?
        } else {
            let last = if from == i64::MAX {
                i64::MAX
            } else {
                bucket(u64::try_from(from).unwrap_or(0))
            };
            self.rows(&s.buckets_down, (conversation_id, last)).await?
        };
        let buckets = buckets.into_iter().map(|(b,)| b).collect();
        let mut messages = self
            .read_buckets(conversation_id, buckets, from, take, ascending)
            .await?;
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        if !ascending {
            messages.reverse();
        }
        Ok(Page { messages, has_more })
    }

    async fn message(&self, id: u64) -> Result<Option<ChatMessage>, StoreError> {
        let s = &self.statements;
        let seq = to_i64(id)?;
        let found: Vec<(String,)> = self.rows(&s.message_conversation, (seq,)).await?;
        let Some((conversation_id,)) = found.into_iter().next() else {
            return Ok(None);
        };
        let rows: Vec<MessageRow> = self
            .rows(&s.message, (conversation_id, bucket(id), seq))
            .await?;
        Ok(rows.into_iter().next().and_then(to_message))
    }
}
