//! The worker against a real nats-server: it stores what the stream holds, refuses a stream
//! that would reuse the store's message ids, refuses to be a second worker on SQLite, and says
//! what to do when JetStream has too little storage for its streams.

mod common;

use std::time::Duration;

use chat_persistence_worker::store::StoreError;
use chat_persistence_worker::{Config, WorkerError};
use chat_proto::bus;
use chat_proto::testing::NatsServer;
use clap::Parser as _;
use tokio::sync::oneshot;

fn config(nats: &NatsServer, db: &std::path::Path) -> Config {
    config_with(nats, db, &[])
}

fn config_with(nats: &NatsServer, db: &std::path::Path, options: &[&str]) -> Config {
    let url = nats.url();
    let mut argv = vec![
        "worker",
        "--nats-url",
        &url,
        "--db-path",
        db.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(options);
    Config::try_parse_from(argv).unwrap()
}

async fn publish_messages(nats: &NatsServer, count: usize) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    common::wait_for_worker(&client).await;
    for i in 0..count {
        let event = common::message(format!("m{i}"));
        bus::publish(&js, &client, event, None).await.unwrap();
    }
}

/// The ids the worker has stored once there are `count`, and its committed position.
async fn wait_for_stored(nats: &NatsServer, count: usize) -> (Vec<u64>, u64) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (messages, committed) =
        common::wait_for_stored(&client, count, Duration::from_secs(10)).await;
    (messages.iter().map(|m| m.id).collect(), committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_stores_the_stream_and_refuses_one_that_went_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let mut nats = NatsServer::start();

    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(chat_persistence_worker::run(config(&nats, &db), async {
        let _ = stopped.await;
    }));
    publish_messages(&nats, 30).await;
    let (ids, committed) = wait_for_stored(&nats, 30).await;
    assert_eq!(ids, (1..=30).collect::<Vec<u64>>());
    assert_eq!(committed, 30);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    // Same server and store: a restart resumes where it was and stores nothing twice.
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(chat_persistence_worker::run(config(&nats, &db), async {
        let _ = stopped.await;
    }));
    publish_messages(&nats, 5).await;
    assert_eq!(
        wait_for_stored(&nats, 35).await,
        ((1..=35).collect::<Vec<u64>>(), 35)
    );
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    // A new, empty stream (its store directory wiped) would hand out ids 1, 2, … again.
    nats.kill();
    std::fs::remove_dir_all(nats.store_dir()).unwrap();
    nats.restart();
    let refused = chat_persistence_worker::run(config(&nats, &db), std::future::pending()).await;
    match refused {
        Err(WorkerError::StreamBehindStore { last, committed }) => {
            assert_eq!((last, committed), (0, 35));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The SQLite store allows one worker: a second one on the same file, or on another file but the
/// same stream, stops at start with a message that says why, and the first goes on storing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_sqlite_is_refused_and_the_first_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let nats = NatsServer::start();
    let (stop, stopped) = oneshot::channel::<()>();
    let first = tokio::spawn(chat_persistence_worker::run(config(&nats, &db), async {
        let _ = stopped.await;
    }));
    publish_messages(&nats, 10).await;
    assert_eq!(wait_for_stored(&nats, 10).await.0.len(), 10);

    let same_file = chat_persistence_worker::run(config(&nats, &db), std::future::pending());
    let error = match same_file.await {
        Err(WorkerError::Store(error @ StoreError::InUse(_))) => error.to_string(),
        other => panic!("expected the store in use, got {other:?}"),
    };
    assert!(error.contains("in use by another worker"), "{error}");
    println!("same file: {error}");

    let other_file = dir.path().join("other.db");
    let other = chat_persistence_worker::run(config(&nats, &other_file), std::future::pending());
    let error = match other.await {
        Err(error @ WorkerError::ConsumerInUse { .. }) => error.to_string(),
        other => panic!("expected the consumer in use, got {other:?}"),
    };
    assert!(error.contains("exactly one worker"), "{error}");
    println!("same stream, other file: {error}");

    publish_messages(&nats, 10).await;
    let (ids, committed) = wait_for_stored(&nats, 20).await;
    assert_eq!(
        ids,
        (1..=20).collect::<Vec<u64>>(),
        "the first worker goes on"
    );
    assert_eq!(committed, 20);
    stop.send(()).unwrap();
    first.await.unwrap().unwrap();
}

/// JetStream reserves each stream's byte limit against its `max_file_store` (by default 75% of
/// the disk that was free when it started): on a server with too little, the worker stops at
/// start and says which limit to change; with the limits lowered, it starts and stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_jetstream_storage_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let nats = NatsServer::start_with_file_store("4GB");

    let refused = start_refused(config(&nats, &db)).await;
    let error = match refused {
        Err(error @ WorkerError::Stream(_)) => error.to_string(),
        other => panic!("expected the stream refused, got {other:?}"),
    };
    for hint in ["CHAT", "max_file_store", "--stream-max-bytes"] {
        assert!(error.contains(hint), "{hint} missing from: {error}");
    }
    println!("default limits on 4 GB: {error}");

    // The main stream fits, but not the audit stream beside it.
    let options = ["--stream-max-bytes", "3500000000"];
    let refused = start_refused(config_with(&nats, &db, &options)).await;
    let error = match refused {
        Err(error @ WorkerError::Stream(_)) => error.to_string(),
        other => panic!("expected the audit stream refused, got {other:?}"),
    };
    assert!(error.contains("CHAT_AUDIT"), "{error}");
    assert!(error.contains("--audit-stream-max-bytes"), "{error}");

    let options = ["--stream-max-bytes", "2000000000"];
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(chat_persistence_worker::run(
        config_with(&nats, &db, &options),
        async {
            let _ = stopped.await;
        },
    ));
    publish_messages(&nats, 5).await;
    assert_eq!(wait_for_stored(&nats, 5).await, ((1..=5).collect(), 5));
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

/// How a worker that must not start ended (within 30 s).
async fn start_refused(config: Config) -> Result<(), WorkerError> {
    let run = chat_persistence_worker::run(config, std::future::pending());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker stops at start")
}
