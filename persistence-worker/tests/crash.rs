//! The worker killed for real (SIGKILL) in the middle of its batches, then started again: the
//! store ends with every acked message exactly once.

mod common;

use std::time::{Duration, Instant};

use chat_proto::testing::NatsServer;
use common::WorkerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_stores_every_acked_message_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let args = ["--db-path", db.to_str().unwrap(), "--batch-wait", "50ms"];
    let nats = NatsServer::start();
    let worker = WorkerProcess::start(&nats.url(), &args);
    let client = async_nats::connect(nats.url()).await.unwrap();
    common::wait_for_worker(&client).await;

    // A writer at a steady 1,000 a second while the worker dies and comes back.
    let writer = common::steady_writer(nats.url(), 0..1_500);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(worker); // SIGKILL, with batches in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = Instant::now();
    let _worker = WorkerProcess::start(&nats.url(), &args);
    let acked = writer.await.unwrap();

    let (stored, _) = common::wait_for_stored(&client, acked.len(), Duration::from_secs(20)).await;
    let contents: Vec<String> = stored.into_iter().map(|m| m.content).collect();
    println!(
        "kill -9 worker: caught up {:?} after the restart",
        restarted.elapsed()
    );
    let (missing, duplicated) = common::missing_and_duplicated(&acked, &contents);
    println!(
        "kill -9 worker: acked {}, stored {}, missing {missing}, duplicated {duplicated}",
        acked.len(),
        contents.len()
    );
    assert_eq!((missing, duplicated), (0, 0));
}
