//! The SQLite store read out, page by page, as the events that rebuild it in another store (for
//! `chat-persistence-worker import-sqlite`: [`crate::import`]). Each event carries the position
//! the row was last changed at, so the other store ends with the same rows, and a second import
//! changes nothing.

use chat_proto::v1::conversation_event::Kind;
use chat_proto::v1::{
    Conversation, ConversationCreated, ConversationEvent, MessageCreated, MessageDeleted,
    MessageEdited, ParticipantAdded, ParticipantBanned, ParticipantRemoved,
};
use rusqlite::params;

use super::{MESSAGE_COLUMNS, SqliteStore, to_i64, to_message};
use crate::store::StoreError;

/// A page of events, and where the next page starts (`None`: that was the last).
pub struct Exported<C> {
    /// The events, in key order.
    pub events: Vec<ConversationEvent>,
    /// The rows they come from.
    pub rows: usize,
    /// The key after which the next page starts.
    pub next: Option<C>,
}

impl<C> Exported<C> {
    /// A page of `rows` rows (as many as asked: more may follow after `last`).
    fn new(events: Vec<ConversationEvent>, rows: usize, limit: u32, last: Option<C>) -> Self {
        let full = rows == usize::try_from(limit).unwrap_or(usize::MAX);
        Self {
            events,
            rows,
            next: last.filter(|_| full),
        }
    }
}

fn event(conversation_id: String, seq: i64, kind: Kind) -> ConversationEvent {
    ConversationEvent {
        seq: u64::try_from(seq).unwrap_or(0),
        conversation_id,
        kind: Some(kind),
    }
}

impl SqliteStore {
    /// Up to `limit` conversations with ids after `after`, each as its creation (without
    /// participants: memberships come from [`Self::export_members`]).
    pub async fn export_conversations(
        &self,
        after: String,
        limit: u32,
    ) -> Result<Exported<String>, StoreError> {
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT id, title, private, password_hash, created_by, created_at_ms, seq
                 FROM conversations WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], |row| {
                let conversation = Conversation {
                    id: row.get(0)?,
                    title: row.get(1)?,
                    private: row.get(2)?,
                    created_by: row.get(4)?,
                    created_at_ms: row.get(5)?,
                    ..Default::default()
                };
                let created = ConversationCreated {
                    password_hash: row.get(3)?,
                    conversation: Some(conversation),
                };
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(6)?, created))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (id, seq, created) = row?;
                events.push(event(id, seq, Kind::ConversationCreated(created)));
            }
            let last = events.last().map(|e| e.conversation_id.clone());
            let rows = events.len();
            Ok(Exported::new(events, rows, limit, last))
        })
        .await
    }

    /// Up to `limit` memberships after `(conversation, user)`, each as the join or leave that
    /// set it last.
    pub async fn export_members(
        &self,
        after: (String, String),
        limit: u32,
    ) -> Result<Exported<(String, String)>, StoreError> {
        let sql = "SELECT conversation_id, user_id, active, updated_seq FROM members
                   WHERE (conversation_id, user_id) > (?1, ?2)
                   ORDER BY conversation_id, user_id LIMIT ?3";
        self.export_by_member(sql, after, limit, |user_id, active: bool| {
            if active {
                Kind::ParticipantAdded(ParticipantAdded { user_id, at_ms: 0 })
            } else {
                Kind::ParticipantRemoved(ParticipantRemoved { user_id, at_ms: 0 })
            }
        })
        .await
    }

    /// Up to `limit` bans after `(conversation, user)`, each as the ban that set it last (an
    /// ended ban keeps its end, long past).
    pub async fn export_bans(
        &self,
        after: (String, String),
        limit: u32,
    ) -> Result<Exported<(String, String)>, StoreError> {
        let sql = "SELECT conversation_id, user_id, until_ms, updated_seq FROM bans
                   WHERE (conversation_id, user_id) > (?1, ?2)
                   ORDER BY conversation_id, user_id LIMIT ?3";
        self.export_by_member(sql, after, limit, |user_id, until_ms: i64| {
            Kind::ParticipantBanned(ParticipantBanned {
                user_id,
                until_ms,
                ..ParticipantBanned::default()
            })
        })
        .await
    }

    /// Rows of a table keyed by `(conversation, user)` (`sql` selects the conversation, the
    /// user, a value and the position, after `?1, ?2`, at most `?3`), each as the event `kind`
    /// makes of its user and value, at the row's position.
    async fn export_by_member<T: rusqlite::types::FromSql + Send + 'static>(
        &self,
        sql: &'static str,
        after: (String, String),
        limit: u32,
        kind: fn(String, T) -> Kind,
    ) -> Result<Exported<(String, String)>, StoreError> {
        self.with(move |c| {
            let mut statement = c.prepare_cached(sql)?;
            let rows = statement.query_map(params![after.0, after.1, limit], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, T>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })?;
            let mut events = Vec::new();
            let mut next = None;
            for row in rows {
                let (conversation_id, user_id, value, seq) = row?;
                next = Some((conversation_id.clone(), user_id.clone()));
                events.push(event(conversation_id, seq, kind(user_id, value)));
            }
            let rows = events.len();
            Ok(Exported::new(events, rows, limit, next))
        })
        .await
    }

    /// Up to `limit` messages with ids after `after`: each its creation, then its last edit or
    /// its deletion, at the position that made it.
    pub async fn export_messages(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Exported<u64>, StoreError> {
        let after = to_i64(after)?;
        self.with(move |c| {
            let mut statement = c.prepare_cached(&format!(
                "SELECT id, conversation_id, updated_seq, {MESSAGE_COLUMNS} FROM messages
                 WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let mut rows = statement.query(params![after, limit])?;
            let (mut events, mut count, mut next) = (Vec::new(), 0, None);
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let conversation_id: String = row.get(1)?;
                let updated_seq: i64 = row.get(2)?;
                let message = to_message(read_message_at(row)?)?;
                let message_id = message.id;
                let (edited_at_ms, deleted) = (message.edited_at_ms, message.deleted);
                let content = message.content.clone();
                events.push(event(
                    conversation_id.clone(),
                    id,
                    Kind::MessageCreated(MessageCreated {
                        message: Some(message),
                    }),
                ));
                if deleted {
                    let delete = MessageDeleted {
                        message_id,
                        ..Default::default()
                    };
                    events.push(event(
                        conversation_id,
                        updated_seq,
                        Kind::MessageDeleted(delete),
                    ));
                } else if let Some(edited_at_ms) = edited_at_ms {
                    let edit = MessageEdited {
                        message_id,
                        content,
                        edited_at_ms,
                        ..Default::default()
                    };
                    events.push(event(
                        conversation_id,
                        updated_seq,
                        Kind::MessageEdited(edit),
                    ));
                }
                count += 1;
                next = u64::try_from(id).ok();
            }
            Ok(Exported::new(events, count, limit, next))
        })
        .await
    }

    /// Up to `limit` read markers after `(user, conversation)`: `(user, conversation, message)`.
    pub async fn export_read_markers(
        &self,
        after: (String, String),
        limit: u32,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT user_id, conversation_id, message_id FROM read_markers
                 WHERE (user_id, conversation_id) > (?1, ?2)
                 ORDER BY user_id, conversation_id LIMIT ?3",
            )?;
            let rows = statement.query_map(params![after.0, after.1, limit], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

/// The message columns of a row whose first three columns are id, conversation and position.
fn read_message_at(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(Vec<u8>, String, Option<i64>, bool)> {
    Ok((row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?))
}
