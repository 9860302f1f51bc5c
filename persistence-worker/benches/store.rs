//! What storing costs, in two parts (`cargo bench -p chat-persistence-worker --bench store`):
//!
//! 1. **Store writes**: batches of 256 events as the consumer applies them, by one writer (one
//!    worker) or by two at once (two workers, each with its own session), with each batch's
//!    write latency.
//! 2. **Workers draining the stream**: a real nats-server holds 50,000 messages; one or two
//!    workers (in this process, each with its own NATS connection and store session) store them
//!    all, end to end: pull, decode, write, ack, commit.
//!
//! 3. **Room lists**: the conversations of a member of 50 rooms of 1,000 members each (what
//!    `room:list` and every connection ask), 50 times.
//!
//! SQLite always (one writer: it allows one worker); the CQL store too when `CASSANDRA_URI` or
//! `SCYLLA_URI` (host:port) names a server.

use std::time::{Duration, Instant};

use chat_persistence_worker::store::Store;
use chat_persistence_worker::store::sqlite::SqliteStore;
use chat_persistence_worker::testing::{fresh_store, store_in, worker_flags};
use chat_proto::testing::NatsServer;
use chat_proto::v1::{ChatMessage, ConversationEvent, MessageCreated, conversation_event::Kind};
use chat_proto::{bus, subjects};
use clap::Parser as _;
use hdrhistogram::Histogram;

/// Events a batch, as the consumer's default `--batch-size`.
const BATCH: u64 = 256;
/// Batches a store-write run writes.
const BATCHES: u64 = 200;
/// Conversations the messages go to.
const CONVERSATIONS: u64 = 1_000;
/// Messages the workers drain.
const DRAIN: u64 = 50_000;

/// Words that chat text is made of, for contents that compress like chat does.
const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "I",
    "you",
    "it",
    "is",
    "that",
    "for",
    "on",
    "we",
    "this",
    "in",
    "of",
    "have",
    "be",
    "can",
    "do",
    "not",
    "with",
    "are",
    "just",
    "was",
    "so",
    "what",
    "but",
    "at",
    "if",
    "me",
    "my",
    "will",
    "all",
    "get",
    "know",
    "think",
    "about",
    "there",
    "up",
    "one",
    "out",
    "time",
    "now",
    "like",
    "see",
    "go",
    "no",
    "yes",
    "ok",
    "thanks",
    "meeting",
    "today",
    "tomorrow",
    "deploy",
    "review",
    "build",
    "lunch",
    "call",
    "later",
    "sure",
    "sounds",
    "good",
    "release",
    "branch",
    "ticket",
    "fixed",
    "broken",
    "again",
    "why",
    "how",
    "when",
    "where",
    "who",
    "could",
    "would",
    "should",
    "please",
    "sorry",
    "great",
    "nice",
    "cool",
    "lol",
    "👍",
    "🎉",
    "customer",
    "issue",
    "server",
    "latency",
    "dashboard",
    "alert",
    "merged",
    "PR",
    "docs",
];

/// A chat line of 3 to 40 words, the same for the same `seq`.
fn text(seq: u64) -> String {
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = 3 + next() % 38;
    (0..words)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn message(seq: u64) -> ConversationEvent {
    let conversation_id = format!("conversation-{}", seq % CONVERSATIONS);
    let message = ChatMessage {
        id: seq,
        conversation_id: conversation_id.clone(),
        sender_id: format!("user-{}", seq % 5_000),
        r#type: "chat".into(),
        content: text(seq),
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

/// Writes `BATCHES` batches split over `stores` (one writer each, at once).
async fn store_writes<S: Store + Clone>(name: &str, stores: &[S]) {
    let writers = stores.len() as u64;
    let started = Instant::now();
    let runs = stores.iter().enumerate().map(|(w, store)| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("a histogram");
            for batch in (w as u64..BATCHES).step_by(writers as usize) {
                let events = (1..=BATCH).map(|i| message(batch * BATCH + i)).collect();
                // One writer commits its own position; shared writers record it apart.
                let through = (writers == 1).then_some((batch + 1) * BATCH);
                let at = Instant::now();
                store
                    .apply(events, through)
                    .await
                    .expect("the batch is written");
                latency
                    .record(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX))
                    .expect("in range");
            }
            latency
        })
    });
    let mut latency = Histogram::<u64>::new(3).expect("a histogram");
    for run in futures_util::future::join_all(runs).await {
        latency.add(run.expect("a writer")).expect("same bounds");
    }
    let took = started.elapsed();
    let ms = |q: f64| Duration::from_micros(latency.value_at_quantile(q)).as_secs_f64() * 1e3;
    println!(
        "writes  {name:<24} {:>7} messages in {:>6.2} s: {:>7.0}/s; batch of {BATCH}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        BATCH * BATCHES,
        took.as_secs_f64(),
        (BATCH * BATCHES) as f64 / took.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(1.0),
    );
}

/// Fills a fresh nats-server's stream with `DRAIN` messages, then times `workers` workers
/// started with `flags` until the consumer's ack floor (every message stored and acked) reaches
/// the stream's end.
async fn drain(name: &str, workers: usize, flags: &[String]) {
    let nats = NatsServer::start();
    let config = || {
        let nats_url = nats.url();
        let args = [
            "worker",
            "--nats-url",
            &nats_url,
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .into_iter()
        .chain(flags.iter().map(String::as_str));
        chat_persistence_worker::Config::try_parse_from(args).expect("worker flags parse")
    };
    let client = chat_persistence_worker::connect(&nats.url(), Default::default())
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let stream = chat_persistence_worker::stream::ensure(&js, &config().stream())
        .await
        .expect("the stream");
    let events: Vec<_> = (1..=DRAIN).map(message).collect();
    for chunk in events.chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            acks.push(
                bus::start_durable(&js, event, None, None)
                    .await
                    .expect("published"),
            );
        }
        for ack in acks {
            bus::finish_durable(ack)
                .await
                .expect("stored in the stream");
        }
    }

    let mut stream = stream;
    let stream_bytes = stream.info().await.expect("the stream's state").state.bytes;
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let running: Vec<_> = (0..workers)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(chat_persistence_worker::run(config(), async move {
                stop.cancelled().await;
            }))
        })
        .collect();
    loop {
        let floor = stream
            .consumer_info(subjects::WORKER_CONSUMER)
            .await
            .map_or(0, |info| info.ack_floor.stream_sequence);
        if floor >= DRAIN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    stop.cancel();
    for worker in running {
        worker.await.expect("a worker").expect("the worker ran");
    }
    println!(
        "drain   {name:<24} {DRAIN:>7} messages in {:>6.2} s: {:>7.0}/s (stream → store, acked); \
         stream {:.0} bytes/message",
        took.as_secs_f64(),
        DRAIN as f64 / took.as_secs_f64(),
        stream_bytes as f64 / DRAIN as f64,
    );
}

/// Times `room:list` of a member of 50 rooms of 1,000 members.
async fn room_lists(name: &str, store: &impl Store) {
    use chat_proto::v1::{Conversation, ConversationCreated};
    let members: Vec<String> = (0..1_000).map(|n| format!("member-{n:04}")).collect();
    let rooms = (0..50).map(|r| {
        let conversation = Conversation {
            id: format!("big-{r}"),
            title: format!("room {r}"),
            created_by: members[0].clone(),
            participant_ids: members.clone(),
            ..Default::default()
        };
        ConversationEvent {
            seq: 10_000_000 + r,
            conversation_id: format!("big-{r}"),
            kind: Some(Kind::ConversationCreated(ConversationCreated {
                conversation: Some(conversation),
                password_hash: None,
            })),
        }
    });
    store
        .apply(rooms.collect(), None)
        .await
        .expect("the rooms are written");
    let mut latency = Histogram::<u64>::new(3).expect("a histogram");
    for _ in 0..50 {
        let at = Instant::now();
        let listed = store
            .conversations_of(&members[500], 500)
            .await
            .expect("the rooms are read");
        assert_eq!(listed.len(), 50);
        assert!(listed.iter().all(|c| c.num_participants == 1_000));
        latency
            .record(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX))
            .expect("in range");
    }
    let ms = |q: f64| Duration::from_micros(latency.value_at_quantile(q)).as_secs_f64() * 1e3;
    println!(
        "lists   {name:<24} 50 rooms of 1,000: p50 {:.1} ms, p99 {:.1} ms",
        ms(0.5),
        ms(0.99)
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = SqliteStore::open(&dir.path().join("bench.db")).expect("the store opens");
    room_lists("sqlite", &sqlite).await;
    store_writes("sqlite", &[sqlite]).await;
    let drained = dir.path().join("drain.db");
    let flags = ["--db-path", drained.to_str().expect("UTF-8")].map(str::to_owned);
    drain("sqlite, 1 worker", 1, &flags).await;

    let server = std::env::var("SCYLLA_URI").or_else(|_| std::env::var("CASSANDRA_URI"));
    let Ok(uri) = server else {
        println!("cql: skipped (set CASSANDRA_URI or SCYLLA_URI to host:port)");
        return;
    };
    room_lists("cql", &fresh_store(&uri, "bench_lists").await.0).await;
    for writers in [1, 2] {
        let (first, keyspace) = fresh_store(&uri, "bench_writes").await;
        let mut stores = vec![first];
        for _ in 1..writers {
            // Each writer a session of its own, on the same keyspace.
            stores.push(store_in(&uri, &keyspace).await);
        }
        store_writes(&format!("cql, {writers} writer(s)"), &stores).await;
    }
    for workers in [1, 2] {
        let (_, keyspace) = fresh_store(&uri, "bench_drain").await;
        let flags = worker_flags(&uri, &keyspace);
        drain(&format!("cql, {workers} worker(s)"), workers, &flags).await;
        println!("        (keyspace {keyspace}: its size on disk, once flushed, over {DRAIN})");
    }
}
