//! The worker killed for real (SIGKILL) in the middle of its batches, then started again: the
//! store ends with every acked message exactly once.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_proto::bus;
use chat_proto::testing::NatsServer;

/// A worker process, killed (SIGKILL) when dropped.
struct Worker(Child);

impl Worker {
    fn start(nats: &NatsServer, db: &std::path::Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-persistence-worker"))
            .args(["--nats-url", &nats.url(), "--db-path", db.to_str().unwrap()])
            .args(["--batch-wait", "50ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts");
        Self(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_stores_every_acked_message_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let nats = NatsServer::start();
    let worker = Worker::start(&nats, &db);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    common::wait_for_stream(&js).await;

    // A writer at a steady 1,000 a second while the worker dies and comes back.
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for n in 0..1_500 {
            tick.tick().await;
            if bus::publish(&js, &client, common::message(format!("n-{n}")), None)
                .await
                .is_ok()
            {
                acked.push(n);
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(worker); // SIGKILL, with batches in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = Instant::now();
    let _worker = Worker::start(&nats, &db);
    let acked = writer.await.unwrap();

    let reader = async_nats::connect(nats.url()).await.unwrap();
    let (stored, _) = common::wait_for_stored(&reader, acked.len(), Duration::from_secs(20)).await;
    let contents: Vec<String> = stored.into_iter().map(|m| m.content).collect();
    println!(
        "kill -9 worker: caught up {:?} after the restart",
        restarted.elapsed()
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for content in &contents {
        *counts.entry(content.clone()).or_default() += 1;
    }
    let missing = acked
        .iter()
        .filter(|n| !counts.contains_key(&format!("n-{n}")))
        .count();
    let duplicated: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "kill -9 worker: acked {}, stored {}, missing {missing}, duplicated {duplicated}",
        acked.len(),
        contents.len()
    );
    assert_eq!((missing, duplicated), (0, 0));
}
