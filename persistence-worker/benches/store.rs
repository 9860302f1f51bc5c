//! Store write throughput and batch latency: what one worker's writes cost each store, batch by
//! batch as the consumer applies them (256 events a batch, each batch committing its position).
//! `cargo bench -p chat-persistence-worker --bench store` runs SQLite, and the CQL store too when
//! `CASSANDRA_URI` or `SCYLLA_URI` (host:port) names a server.

use std::time::{Duration, Instant};

use chat_persistence_worker::store::Store;
use chat_persistence_worker::store::cql::{CqlStore, migrations};
use chat_persistence_worker::store::sqlite::SqliteStore;
use chat_proto::v1::{ChatMessage, ConversationEvent, MessageCreated, conversation_event::Kind};
use hdrhistogram::Histogram;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;

/// Events a batch, as the consumer's default `--batch-size`.
const BATCH: u64 = 256;
/// Batches a run writes.
const BATCHES: u64 = 200;
/// Conversations the messages go to.
const CONVERSATIONS: u64 = 1_000;

fn message(seq: u64) -> ConversationEvent {
    let conversation_id = format!("conversation-{}", seq % CONVERSATIONS);
    let message = ChatMessage {
        id: seq,
        conversation_id: conversation_id.clone(),
        sender_id: format!("user-{}", seq % 5_000),
        r#type: "chat".into(),
        content:
            "a message of a typical length, about a hundred characters, to be stored and read back"
                .into(),
        created_at_ms: 1_700_000_000_000 + seq as i64,
        ..Default::default()
    };
    ConversationEvent {
        seq,
        conversation_id,
        kind: Some(Kind::MessageCreated(MessageCreated {
            message: Some(message),
        })),
    }
}

async fn run(name: &str, store: &impl Store) {
    let mut latency = Histogram::<u64>::new(3).expect("a histogram");
    let started = Instant::now();
    for batch in 0..BATCHES {
        let events = (1..=BATCH).map(|i| message(batch * BATCH + i)).collect();
        let through = (batch + 1) * BATCH;
        let at = Instant::now();
        store
            .apply(events, Some(through))
            .await
            .expect("the batch is written");
        latency
            .record(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX))
            .expect("in range");
    }
    let took = started.elapsed();
    let ms = |q: f64| Duration::from_micros(latency.value_at_quantile(q)).as_secs_f64() * 1e3;
    println!(
        "{name:<28} {:>7} messages in {:>6.2} s: {:>7.0}/s; batch of {BATCH}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        BATCH * BATCHES,
        took.as_secs_f64(),
        (BATCH * BATCHES) as f64 / took.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(1.0),
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = SqliteStore::open(&dir.path().join("bench.db")).expect("the store opens");
    run("sqlite", &sqlite).await;
    let server = std::env::var("SCYLLA_URI").or_else(|_| std::env::var("CASSANDRA_URI"));
    let Ok(uri) = server else {
        println!("cql: skipped (set CASSANDRA_URI or SCYLLA_URI to host:port)");
        return;
    };
    let session = SessionBuilder::new()
        .known_node(&uri)
        .build()
        .await
        .expect("the CQL server answers");
    let keyspace = format!("chat_bench_{}", std::process::id());
    let replication = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";
    migrations::apply(&session, &keyspace, replication)
        .await
        .expect("the migrations apply");
    let cql = CqlStore::new(session, Consistency::LocalQuorum)
        .await
        .expect("the statements prepare");
    run(&format!("cql ({uri})"), &cql).await;
}
