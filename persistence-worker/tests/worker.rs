//! The worker against a real nats-server: it stores what the stream holds, and refuses a stream
//! that would reuse the store's message ids.

mod common;

use std::time::Duration;

use chat_persistence_worker::store::sqlite::SqliteStore;
use chat_persistence_worker::store::{Store, Window};
use chat_persistence_worker::{Config, WorkerError};
use chat_proto::bus;
use chat_proto::testing::NatsServer;
use clap::Parser as _;
use tokio::sync::oneshot;

fn config(nats: &NatsServer, db: &std::path::Path) -> Config {
    Config::try_parse_from([
        "worker",
        "--nats-url",
        &nats.url(),
        "--db-path",
        db.to_str().unwrap(),
    ])
    .unwrap()
}

async fn publish_messages(nats: &NatsServer, count: usize) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    common::wait_for_stream(&js).await;
    for i in 0..count {
        let event = common::message(format!("m{i}"));
        bus::publish(&js, &client, event, None).await.unwrap();
    }
}

async fn wait_for_stored(store: &SqliteStore, count: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = store.history("c1", Window::After(0), 100).await.unwrap();
        if page.messages.len() >= count || tokio::time::Instant::now() > deadline {
            return page.messages.iter().map(|m| m.id).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let store = SqliteStore::open(&db).unwrap();
    let ids = wait_for_stored(&store, 30).await;
    assert_eq!(ids, (1..=30).collect::<Vec<u64>>());
    assert_eq!(store.committed_seq().await.unwrap(), 30);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    // Same server and store: a restart resumes where it was and stores nothing twice.
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(chat_persistence_worker::run(config(&nats, &db), async {
        let _ = stopped.await;
    }));
    publish_messages(&nats, 5).await;
    assert_eq!(
        wait_for_stored(&store, 35).await,
        (1..=35).collect::<Vec<u64>>()
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
