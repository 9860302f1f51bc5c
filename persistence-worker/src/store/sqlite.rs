//! The embedded store: SQLite in WAL mode, one connection, exactly one worker.
//!
//! The worker holds an exclusive lock on `<path>.lock` for as long as the store is open, so a
//! second worker on the same file is refused at once, with a message that says why (the consumer
//! refuses one on another file: see [`crate::consumer`]).
//!
//! Queries run on the store's own thread, which owns the connection, in the order they are
//! asked; never on the async workers. The schema is versioned with
//! `PRAGMA user_version`; [`MIGRATIONS`] are applied in order at open.

mod export;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chat_proto::v1::conversation_event::Kind;
use chat_proto::v1::{
    AuditEvent, AuditPage, AuditQuery, ChatMessage, Conversation, ConversationEvent,
};
use prost::Message as _;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

pub use export::Exported;

use super::{
    AUDIT_SCAN, LISTED_PARTICIPANTS, Membership, Page, Store, StoreError, StoredConversation,
    Window, audit_page, stored_body,
};

/// The schema, one entry a version: entry `i` takes the store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    private INTEGER NOT NULL,
    password_hash TEXT,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE members (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    active INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, active, conversation_id);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    body BLOB NOT NULL,
    content TEXT NOT NULL,
    edited_at_ms INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_seq INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE TABLE positions (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE read_markers (
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE bans (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);
"#,
];

/// Takes the exclusive lock of the store at `path` (a file beside it, so that SQLite's own locks
/// on the database are never touched).
fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(StoreError::database)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(format!(
            "the SQLite store {} is in use by another worker: it allows exactly one \
             (several workers need --store scylla)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => Err(StoreError::database(error)),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::database(error)
    }
}

/// Prepared statements a connection keeps.
const STATEMENT_CACHE: usize = 64;

/// Store calls that wait for the store's thread at most, beyond which callers wait their turn.
const QUEUED_CALLS: usize = 1_024;

/// A store call, run on the store's thread with its connection.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The SQLite store; a cheap `Clone` handle.
#[derive(Clone)]
pub struct SqliteStore {
    thread: Arc<StoreThread>,
}

/// The thread that owns the connection and runs the store's calls one after another (the one
/// connection serializes them anyway: a thread of its own spares each call a hop through the
/// blocking pool and a contended lock). It ends when the last handle is dropped: the drop
/// waits for the calls queued, closes the connection, then releases the store's lock.
struct StoreThread {
    jobs: Option<tokio::sync::mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Task("the store's thread has stopped (a store call panicked)".into())
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = lock(path)?;
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // Room for every statement the store prepares (about 30): with rusqlite's default of 16,
        // a connect's list and the audit records written meanwhile evict each other's, and each
        // is parsed and planned again.
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Plans that do not depend on bound values: otherwise SQLite prepares a statement with a
        // bound LIMIT (the conversation list, its participants, history pages) again at every
        // run, a parse and a plan each time.
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        migrate(&mut connection)?;
        let (jobs, mut queued) = tokio::sync::mpsc::channel::<Job>(QUEUED_CALLS);
        let handle = std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || {
                while let Some(job) = queued.blocking_recv() {
                    job(&mut connection);
                }
                drop(connection);
                drop(lock);
            })
            .map_err(StoreError::database)?;
        Ok(Self {
            thread: Arc::new(StoreThread {
                jobs: Some(jobs),
                handle: Some(handle),
            }),
        })
    }

    /// Runs `query` on the store's thread, after the calls asked before it.
    async fn with<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let jobs = self.thread.jobs.as_ref().ok_or_else(stopped)?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = answer.send(query(connection));
        });
        jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).expect("a handful of migrations");
    let found: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (version, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = connection.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(version + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        tracing::info!(version = version + 1, "store schema migrated");
    }
    Ok(())
}

fn apply_event(tx: &Transaction<'_>, event: &ConversationEvent) -> Result<(), StoreError> {
    let seq = i64::try_from(event.seq).map_err(|_| StoreError::Corrupt("seq over i64".into()))?;
    let conversation_id = event.conversation_id.as_str();
    let Some(kind) = &event.kind else {
        return Ok(());
    };
    match kind {
        Kind::MessageCreated(created) => {
            // `bus::decode_event` gave the message its id and conversation.
            let Some(message) = &created.message else {
                return Ok(());
            };
            tx.prepare_cached(
                "INSERT INTO messages (id, conversation_id, body, content, updated_seq)
                 VALUES (?1, ?2, ?3, ?4, ?1) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                seq,
                conversation_id,
                stored_body(message),
                message.content
            ])?;
        }
        Kind::MessageEdited(edit) => {
            tx.prepare_cached(
                "UPDATE messages SET content = ?1, edited_at_ms = ?2, updated_seq = ?3
                 WHERE id = ?4 AND conversation_id = ?5 AND updated_seq < ?3 AND deleted = 0",
            )?
            .execute(params![
                edit.content,
                edit.edited_at_ms,
                seq,
                to_i64(edit.message_id)?,
                conversation_id
            ])?;
        }
        Kind::MessageDeleted(delete) => {
            // Deletion is final: it applies whatever edits came before or after it.
            tx.prepare_cached(
                "UPDATE messages SET content = '', deleted = 1, updated_seq = MAX(updated_seq, ?1)
                 WHERE id = ?2 AND conversation_id = ?3 AND deleted = 0",
            )?
            .execute(params![seq, to_i64(delete.message_id)?, conversation_id])?;
        }
        Kind::ConversationCreated(created) => {
            let Some(c) = &created.conversation else {
                return Ok(());
            };
            tx.prepare_cached(
                "INSERT INTO conversations
                 (id, title, private, password_hash, created_by, created_at_ms, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                conversation_id,
                c.title,
                c.private,
                created.password_hash,
                c.created_by,
                c.created_at_ms,
                seq
            ])?;
            for user_id in &c.participant_ids {
                set_member(tx, conversation_id, user_id, true, seq)?;
            }
        }
        Kind::ParticipantAdded(p) => set_member(tx, conversation_id, &p.user_id, true, seq)?,
        Kind::ParticipantRemoved(p) => set_member(tx, conversation_id, &p.user_id, false, seq)?,
        Kind::ParticipantBanned(b) => {
            set_ban(tx, conversation_id, &b.user_id, Some(b.until_ms), seq)?;
        }
        Kind::ParticipantUnbanned(u) => set_ban(tx, conversation_id, &u.user_id, None, seq)?,
        Kind::Typing(_) | Kind::Receipt(_) => {}
    }
    Ok(())
}

fn set_member(
    tx: &Transaction<'_>,
    conversation_id: &str,
    user_id: &str,
    active: bool,
    seq: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO members (conversation_id, user_id, active, updated_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (conversation_id, user_id) DO UPDATE
         SET active = excluded.active, updated_seq = excluded.updated_seq
         WHERE members.updated_seq < excluded.updated_seq")?
                .execute(params![conversation_id, user_id, active, seq])?;
    Ok(())
}

/// A ban (`until_ms`, 0 for none) or its end (`None`); the later event wins.
fn set_ban(
    tx: &Transaction<'_>,
    conversation_id: &str,
    user_id: &str,
    until_ms: Option<i64>,
    seq: i64,
) -> Result<(), StoreError> {
    // An unban is kept as a row ending at 1 (long past), so that an older ban applied later
    // cannot bring it back.
    tx.prepare_cached(
        "INSERT INTO bans (conversation_id, user_id, until_ms, updated_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (conversation_id, user_id) DO UPDATE
         SET until_ms = excluded.until_ms, updated_seq = excluded.updated_seq
         WHERE bans.updated_seq < excluded.updated_seq",
    )?
    .execute(params![
        conversation_id,
        user_id,
        until_ms.unwrap_or(1),
        seq
    ])?;
    Ok(())
}

fn to_i64(id: u64) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::Corrupt(format!("id {id} over i64")))
}

fn read_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, String, Option<i64>, bool)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_message(
    (body, content, edited_at_ms, deleted): (Vec<u8>, String, Option<i64>, bool),
) -> Result<ChatMessage, StoreError> {
    let mut message =
        ChatMessage::decode(body.as_slice()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    message.content = content;
    message.edited_at_ms = edited_at_ms;
    message.deleted = deleted;
    if deleted {
        message.attachments.clear();
        message.metadata_json.clear();
    }
    Ok(message)
}

const MESSAGE_COLUMNS: &str = "body, content, edited_at_ms, deleted";

fn load_conversation(
    connection: &Connection,
    conversation_id: &str,
    max_participants: u32,
) -> Result<Option<StoredConversation>, StoreError> {
    // Cached statements: a socket's connect loads each of its conversations.
    let row = connection
        .prepare_cached(
            "SELECT title, private, password_hash, created_by, created_at_ms
             FROM conversations WHERE id = ?1",
        )?
        .query_row(params![conversation_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((title, private, password_hash, created_by, created_at_ms)) = row else {
        return Ok(None);
    };
    let num_participants: u32 = connection
        .prepare_cached("SELECT COUNT(*) FROM members WHERE conversation_id = ?1 AND active = 1")?
        .query_row(params![conversation_id], |row| row.get(0))?;
    let mut statement = connection.prepare_cached(
        "SELECT user_id FROM members WHERE conversation_id = ?1 AND active = 1
         ORDER BY user_id LIMIT ?2",
    )?;
    let participant_ids = statement
        .query_map(params![conversation_id, max_participants], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Some(StoredConversation {
        conversation: Conversation {
            id: conversation_id.to_owned(),
            title,
            private,
            created_by,
            created_at_ms,
            participant_ids,
            num_participants,
            last_read_message_id: None,
        },
        password_hash,
    }))
}

impl Store for SqliteStore {
    const SHARED: bool = false;

    async fn committed_seq(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let seq: Option<i64> = c
                .query_row(
                    "SELECT seq FROM positions WHERE name = 'committed'",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(seq.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
        })
        .await
    }

    async fn apply(
        &self,
        events: Vec<ConversationEvent>,
        commit_through: Option<u64>,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            for event in &events {
                apply_event(&tx, event)?;
            }
            if let Some(seq) = commit_through {
                tx.prepare_cached(
                    "INSERT INTO positions (name, seq) VALUES ('committed', ?1)
                     ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                )?
                .execute(params![to_i64(seq)?])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn mark_read(
        &self,
        user_id: &str,
        conversation_id: &str,
        message_id: u64,
    ) -> Result<(), StoreError> {
        let (user_id, conversation_id) = (user_id.to_owned(), conversation_id.to_owned());
        let message_id = to_i64(message_id)?;
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO read_markers (user_id, conversation_id, message_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, conversation_id)
                 DO UPDATE SET message_id = MAX(message_id, excluded.message_id)",
            )?
            .execute(params![user_id, conversation_id, message_id])?;
            Ok(())
        })
        .await
    }

    async fn read_markers(
        &self,
        user_id: &str,
        conversation_ids: &[String],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let (user_id, conversation_ids) = (user_id.to_owned(), conversation_ids.to_vec());
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT message_id FROM read_markers WHERE user_id = ?1 AND conversation_id = ?2",
            )?;
            let mut markers = HashMap::new();
            for conversation_id in conversation_ids {
                let marker: Option<i64> = statement
                    .query_row(params![user_id, conversation_id], |row| row.get(0))
                    .optional()?;
                if let Some(marker) = marker {
                    markers.insert(conversation_id, u64::try_from(marker).unwrap_or(0));
                }
            }
            Ok(markers)
        })
        .await
    }

    async fn append_audit(
        &self,
        events: Vec<AuditEvent>,
        _keep: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO audit (seq, at_ms, body) VALUES (?1, ?2, ?3)",
                )?;
                for event in &events {
                    insert.execute(params![
                        to_i64(event.seq)?,
                        event.at_ms,
                        event.encode_to_vec()
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn audit(&self, query: AuditQuery, first_seq: u64) -> Result<AuditPage, StoreError> {
        self.with(move |c| {
            let after = to_i64(query.after.max(first_seq.saturating_sub(1)))?;
            let mut statement = c.prepare_cached(
                "SELECT seq, body FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = statement
                .query_map(params![after, AUDIT_SCAN as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<Vec<(i64, Vec<u8>)>, _>>()?;
            let exhausted = rows.len() < AUDIT_SCAN;
            audit_page(rows, &query, exhausted)
        })
        .await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let pruned = c.execute("DELETE FROM audit WHERE at_ms < ?1", params![before_ms])?;
            Ok(pruned as u64)
        })
        .await
    }

    async fn ban(&self, user_id: &str, conversation_id: &str) -> Result<Option<i64>, StoreError> {
        let (user_id, conversation_id) = (user_id.to_owned(), conversation_id.to_owned());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT until_ms FROM bans WHERE conversation_id = ?1 AND user_id = ?2",
                params![conversation_id, user_id],
                |row| row.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn membership(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Membership, StoreError> {
        let (user_id, conversation_id) = (user_id.to_owned(), conversation_id.to_owned());
        self.with(move |c| {
            let active: Option<bool> = c
                .prepare_cached(
                    "SELECT active FROM members WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .query_row(params![conversation_id, user_id], |row| row.get(0))
                .optional()?;
            Ok(match active {
                Some(true) => Membership::Active,
                Some(false) => Membership::Left,
                None => {
                    let exists = c
                        .query_row(
                            "SELECT 1 FROM conversations WHERE id = ?1",
                            params![conversation_id],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                    if exists {
                        Membership::Never
                    } else {
                        Membership::NoConversation
                    }
                }
            })
        })
        .await
    }

    async fn conversation(
        &self,
        conversation_id: &str,
        max_participants: u32,
    ) -> Result<Option<StoredConversation>, StoreError> {
        let conversation_id = conversation_id.to_owned();
        self.with(move |c| load_conversation(c, &conversation_id, max_participants))
            .await
    }

    async fn conversations_of(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<Conversation>, StoreError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            // One read transaction for all the queries: one lock of the file, not one each.
            let c = c.transaction()?;
            let listed = {
                let mut statement = c.prepare_cached(
                    "SELECT m.conversation_id, r.message_id FROM members m
                     JOIN conversations v ON v.id = m.conversation_id
                     LEFT JOIN read_markers r
                       ON r.user_id = m.user_id AND r.conversation_id = m.conversation_id
                     WHERE m.user_id = ?1 AND m.active = 1 ORDER BY v.seq DESC LIMIT ?2",
                )?;
                statement
                    .query_map(params![user_id, limit], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            };
            let mut conversations = Vec::with_capacity(listed.len());
            for (id, marker) in listed {
                if let Some(stored) = load_conversation(&c, &id, LISTED_PARTICIPANTS)? {
                    let mut conversation = stored.conversation;
                    conversation.last_read_message_id =
                        marker.map(|m| u64::try_from(m).unwrap_or(0));
                    conversations.push(conversation);
                }
            }
            Ok(conversations)
        })
        .await
    }

    async fn history(
        &self,
        conversation_id: &str,
        window: Window,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let conversation_id = conversation_id.to_owned();
        self.with(move |c| {
            let take = i64::from(limit) + 1;
            let (sql, bound) = match window {
                Window::Newest => ("id < ?2 ORDER BY id DESC", i64::MAX),
                Window::Before(id) => ("id < ?2 ORDER BY id DESC", to_i64(id)?),
                Window::After(id) => ("id > ?2 ORDER BY id ASC", to_i64(id)?),
            };
            let mut statement = c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND {sql} LIMIT ?3"
            ))?;
            let rows = statement
                .query_map(params![conversation_id, bound, take], read_message)?
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = rows.len() > limit as usize;
            let mut messages = rows
                .into_iter()
                .take(limit as usize)
                .map(to_message)
                .collect::<Result<Vec<_>, _>>()?;
            if !matches!(window, Window::After(_)) {
                messages.reverse();
            }
            Ok(Page { messages, has_more })
        })
        .await
    }

    async fn message(&self, id: u64) -> Result<Option<ChatMessage>, StoreError> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"),
                params![to_i64(id)?],
                read_message,
            )
            .optional()?
            .map(to_message)
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chat_proto::v1::MessageCreated;

    use super::*;

    #[tokio::test]
    async fn the_sqlite_store_conforms() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("chat.db")).expect("the store opens");
        super::super::conformance::check_all(&store).await;
    }

    #[tokio::test]
    async fn reopening_keeps_the_data_and_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let message = ChatMessage {
            id: 1,
            conversation_id: "c1".into(),
            content: "x".into(),
            ..Default::default()
        };
        let created = ConversationEvent {
            seq: 1,
            conversation_id: "c1".into(),
            kind: Some(Kind::MessageCreated(MessageCreated {
                message: Some(message),
            })),
        };
        SqliteStore::open(&path)
            .unwrap()
            .apply(vec![created], Some(1))
            .await
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.committed_seq().await.unwrap(), 1);
        assert!(store.message(1).await.unwrap().is_some());
    }
}
