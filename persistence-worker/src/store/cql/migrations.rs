//! Versioned CQL migrations, applied by `chat-persistence-worker migrate` (and at start with
//! `--migrate`). Each version is claimed with a lightweight transaction, the one LWT of the
//! store: two workers starting at once never run the same schema change side by side (Cassandra
//! and ScyllaDB handle concurrent changes of one table badly); the loser waits until the winner
//! marks the version applied. Every statement is idempotent (`IF NOT EXISTS`), so a version whose
//! worker died half way is applied again by the next one once its claim has lapsed.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::value::{CqlValue, Row};

use crate::store::StoreError;

/// The schema, version by version; a version once released never changes.
pub const MIGRATIONS: &[(i32, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS messages (
            conversation_id text, bucket bigint, seq bigint,
            body blob, content text, edited_at_ms bigint, deleted boolean,
            PRIMARY KEY ((conversation_id, bucket), seq)
        ) WITH CLUSTERING ORDER BY (seq ASC)",
            "CREATE TABLE IF NOT EXISTS message_buckets (
            conversation_id text, bucket bigint,
            PRIMARY KEY (conversation_id, bucket)
        ) WITH CLUSTERING ORDER BY (bucket DESC)",
            "CREATE TABLE IF NOT EXISTS messages_by_id (seq bigint PRIMARY KEY, conversation_id text)",
            "CREATE TABLE IF NOT EXISTS conversations (
            id text PRIMARY KEY, body blob, password_hash text, seq bigint
        )",
            "CREATE TABLE IF NOT EXISTS members_by_conversation (
            conversation_id text, user_id text, active boolean,
            PRIMARY KEY (conversation_id, user_id)
        )",
            "CREATE TABLE IF NOT EXISTS members_by_user (
            user_id text, conversation_id text, active boolean,
            PRIMARY KEY (user_id, conversation_id)
        )",
            "CREATE TABLE IF NOT EXISTS positions (name text PRIMARY KEY, seq bigint)",
        ],
    ),
    (
        2,
        &["CREATE TABLE IF NOT EXISTS read_markers (
            user_id text, conversation_id text, message_id bigint,
            PRIMARY KEY (user_id, conversation_id)
        )"],
    ),
    (
        // The small tables read on every connection and overwritten in place (memberships, read
        // markers): leveled compaction keeps a partition in few SSTables. The message tables keep
        // size-tiered compaction (the default): they are appended to and seldom read.
        3,
        &[
            "ALTER TABLE conversations WITH compaction = {'class': 'LeveledCompactionStrategy'}",
            "ALTER TABLE members_by_conversation \
             WITH compaction = {'class': 'LeveledCompactionStrategy'}",
            "ALTER TABLE members_by_user \
             WITH compaction = {'class': 'LeveledCompactionStrategy'}",
            "ALTER TABLE read_markers WITH compaction = {'class': 'LeveledCompactionStrategy'}",
        ],
    ),
    (
        4,
        &["CREATE TABLE IF NOT EXISTS bans (
            conversation_id text, user_id text, until_ms bigint,
            PRIMARY KEY (conversation_id, user_id)
        ) WITH compaction = {'class': 'LeveledCompactionStrategy'}"],
    ),
    (
        // The audit log: partitions of 65,536 records by audit sequence, each record with the
        // retention as its TTL, in time windows that expire whole.
        5,
        &["CREATE TABLE IF NOT EXISTS audit (
            bucket bigint, seq bigint, body blob,
            PRIMARY KEY ((bucket), seq)
        ) WITH CLUSTERING ORDER BY (seq ASC)
          AND compaction = {'class': 'TimeWindowCompactionStrategy',
                            'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}"],
    ),
];

/// How long a claim on a version holds before another worker may apply it again.
const CLAIM_LEASE: Duration = Duration::from_secs(120);
/// How often a worker waiting for another's migration looks again.
const POLL: Duration = Duration::from_millis(500);

/// Creates `keyspace` with `replication` (a CQL map, e.g.
/// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`) if it is missing, uses it,
/// and applies every version not applied yet.
pub async fn apply(session: &Session, keyspace: &str, replication: &str) -> Result<(), StoreError> {
    let create =
        format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}");
    session
        .query_unpaged(create, ())
        .await
        .map_err(StoreError::database)?;
    session
        .await_schema_agreement()
        .await
        .map_err(StoreError::database)?;
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(StoreError::database)?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version int PRIMARY KEY, state text, claimed_at_ms bigint
            )",
            (),
        )
        .await
        .map_err(StoreError::database)?;
    session
        .await_schema_agreement()
        .await
        .map_err(StoreError::database)?;
    for (version, statements) in MIGRATIONS {
        if !claim(session, *version).await? {
            continue;
        }
        tracing::info!(version, keyspace, "applying a schema version");
        for statement in *statements {
            session
                .query_unpaged(*statement, ())
                .await
                .map_err(StoreError::database)?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(StoreError::database)?;
        session
            .query_unpaged(
                "UPDATE schema_migrations SET state = 'applied' WHERE version = ?",
                (version,),
            )
            .await
            .map_err(StoreError::database)?;
    }
    Ok(())
}

/// Claims `version` for this worker: true when it is this worker's to apply, false once it is
/// applied (by anyone); waits while another worker's claim holds.
async fn claim(session: &Session, version: i32) -> Result<bool, StoreError> {
    let deadline = tokio::time::Instant::now() + CLAIM_LEASE + POLL;
    loop {
        let now = chat_proto::timestamp::now_ms();
        let claimed = lwt_applied(
            session,
            "INSERT INTO schema_migrations (version, state, claimed_at_ms) \
             VALUES (?, 'applying', ?) IF NOT EXISTS",
            (version, now),
        )
        .await?;
        if claimed {
            return Ok(true);
        }
        let rows = session
            .query_unpaged(
                "SELECT state, claimed_at_ms FROM schema_migrations WHERE version = ?",
                (version,),
            )
            .await
            .map_err(StoreError::database)?
            .into_rows_result()
            .map_err(StoreError::database)?;
        let (state, claimed_at): (Option<String>, Option<i64>) =
            rows.first_row().map_err(StoreError::database)?;
        if state.as_deref() == Some("applied") {
            return Ok(false);
        }
        let lease_ms = i64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(i64::MAX);
        if let Some(claimed_at) = claimed_at
            && now - claimed_at > lease_ms
        {
            // The claimer died half way: take the version over.
            let taken = lwt_applied(
                session,
                "UPDATE schema_migrations SET claimed_at_ms = ? WHERE version = ? \
                 IF claimed_at_ms = ?",
                (now, version, claimed_at),
            )
            .await?;
            if taken {
                return Ok(true);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StoreError::Migration(format!(
                "schema version {version} is being applied by another worker and did not finish"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs a lightweight transaction and says whether it applied. Apache Cassandra answers only
/// `[applied]` when it did, ScyllaDB the row as well: the first column is read, by position.
async fn lwt_applied(
    session: &Session,
    cql: &str,
    values: impl scylla::serialize::row::SerializeRow,
) -> Result<bool, StoreError> {
    let rows = session
        .query_unpaged(cql, values)
        .await
        .map_err(StoreError::database)?
        .into_rows_result()
        .map_err(StoreError::database)?;
    let row: Row = rows.first_row().map_err(StoreError::database)?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::Corrupt(format!(
            "a lightweight transaction answered {other:?} for [applied]"
        ))),
    }
}
