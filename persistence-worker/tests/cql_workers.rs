//! Several worker processes share the stream on the CQL store (a real server: see
//! `chat_persistence_worker::testing::cql_server`): one killed (SIGKILL) mid-batch leaves its
//! events to the other, and events sent while every worker is down are stored once one returns.
//! Every acked message ends in the store exactly once, the committed position reaches the
//! stream's end, and no read ever finds a message missing below the committed position (the
//! gateways read the store up to it and the stream after it).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chat_persistence_worker::store::conformance::every_message;
use chat_persistence_worker::store::cql::CqlStore;
use chat_persistence_worker::store::{Store as _, Window};
use chat_persistence_worker::testing::{cql_server, fresh_store, worker_flags};
use chat_proto::subjects;
use chat_proto::testing::NatsServer;
use common::WorkerProcess;

/// The store of a test, and the arguments of its workers.
struct Fixture {
    store: CqlStore,
    args: Vec<String>,
}

impl Fixture {
    async fn new(uri: &str, test: &str) -> Self {
        let (store, keyspace) = fresh_store(uri, test).await;
        let mut args = worker_flags(uri, &keyspace);
        args.extend(["--batch-wait", "50ms", "--ack-wait", "2s"].map(str::to_owned));
        Self { store, args }
    }

    fn worker(&self, nats: &NatsServer) -> WorkerProcess {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        WorkerProcess::start(&nats.url(), &args)
    }

    /// Every stored message's content in id order, once there are `count` and the committed
    /// position is `last` (or the wait is over), and the committed position.
    async fn stored(&self, count: usize, last: u64) -> (Vec<String>, u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let committed = self.store.committed_seq().await.unwrap();
            let contents: Vec<String> = every_message(&self.store, "c1")
                .await
                .into_iter()
                .map(|m| m.content)
                .collect();
            let done = contents.len() >= count && committed >= last;
            if done || Instant::now() > deadline {
                return (contents, committed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads the committed position, then the 200 messages up to it, counting its `reads`, until the
/// first gap (`(committed, missing id)`) or aborted. Every event of the test is a message of
/// `c1`, so every id up to the position must be there.
async fn watch_for_gaps(store: CqlStore, reads: Arc<AtomicUsize>) -> (u64, u64) {
    loop {
        let committed = store.committed_seq().await.unwrap();
        if committed > 200 {
            let page = store
                .history("c1", Window::Before(committed + 1), 200)
                .await
                .unwrap();
            reads.fetch_add(1, Ordering::Relaxed);
            let expected = committed - 199..=committed;
            let ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
            if let Some(missing) = expected.clone().find(|id| !ids.contains(id)) {
                return (committed, missing);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `pullers` workers are pulling from the shared consumer.
async fn wait_for_pullers(js: &jetstream::Context, pullers: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(stream) = js.get_stream(subjects::STREAM).await
            && let Ok(info) = stream.consumer_info(subjects::WORKER_CONSUMER).await
            && info.num_waiting >= pullers
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pullers} workers did not start pulling"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn last_sequence(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(subjects::STREAM).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_leaves_its_events_to_the_other() {
    let Some(uri) = cql_server("a_worker_killed_mid_batch_leaves_its_events_to_the_other") else {
        return;
    };
    let fixture = Fixture::new(&uri, "killed").await;
    let nats = NatsServer::start();
    let doomed = fixture.worker(&nats);
    let _survivor = fixture.worker(&nats);
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    wait_for_pullers(&js, 2).await;

    // A writer at a steady 1,000 a second; one worker dies under it.
    let writer = common::steady_writer(nats.url(), 0..2_000);
    let reads = Arc::new(AtomicUsize::new(0));
    let gaps = tokio::spawn(watch_for_gaps(fixture.store.clone(), reads.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(doomed); // SIGKILL, with a batch in flight.
    let killed = Instant::now();
    // The server counts the events it delivered again while they are unacked: watch it.
    let most_redelivered = Arc::new(AtomicUsize::new(0));
    let watch = tokio::spawn({
        let (js, most) = (js.clone(), most_redelivered.clone());
        async move {
            let stream = js.get_stream(subjects::STREAM).await.unwrap();
            loop {
                if let Ok(info) = stream.consumer_info(subjects::WORKER_CONSUMER).await {
                    most.fetch_max(info.num_redelivered, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let acked = writer.await.unwrap();

    let last = last_sequence(&js).await;
    let (contents, committed) = fixture.stored(acked.len(), last).await;
    let stored_after = killed.elapsed();
    watch.abort();
    let gap = if gaps.is_finished() {
        Some(gaps.await.unwrap())
    } else {
        gaps.abort();
        None
    };
    let reads = reads.load(Ordering::Relaxed);
    let redelivered = most_redelivered.load(Ordering::Relaxed);
    let (missing, duplicated) = common::missing_and_duplicated(&acked, &contents);
    println!(
        "kill -9 one of two CQL workers: acked {}, stored {}, missing {missing}, duplicated \
         {duplicated}, redelivered {redelivered}, all stored {:?} after the kill; {reads} reads \
         below the committed position, gaps {gap:?}",
        acked.len(),
        contents.len(),
        stored_after
    );
    assert_eq!(
        gap, None,
        "(committed, missing id) of a read below the position"
    );
    assert!(redelivered > 0, "the killed worker had events in flight");
    assert_eq!((missing, duplicated), (0, 0));
    assert_eq!(contents.len(), acked.len());
    assert_eq!(
        committed, last,
        "the committed position reaches the stream's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_while_every_worker_is_down_are_stored_when_one_returns() {
    let Some(uri) =
        cql_server("events_sent_while_every_worker_is_down_are_stored_when_one_returns")
    else {
        return;
    };
    let fixture = Fixture::new(&uri, "all_down").await;
    let nats = NatsServer::start();
    let workers = [fixture.worker(&nats), fixture.worker(&nats)];
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    wait_for_pullers(&js, 2).await;
    let before = common::steady_writer(nats.url(), 0..100).await.unwrap();
    assert_eq!(fixture.stored(100, 100).await.0.len(), 100);

    drop(workers); // Both SIGKILLed.
    let during = common::steady_writer(nats.url(), 100..400).await.unwrap();
    let (contents, committed) = fixture.stored(0, 0).await;
    assert_eq!(
        contents.len(),
        100,
        "nobody stores while the workers are down"
    );
    assert_eq!(committed, 100);

    let returned = Instant::now();
    let _worker = fixture.worker(&nats);
    let acked: Vec<usize> = before.into_iter().chain(during).collect();
    let last = last_sequence(&js).await;
    let (contents, committed) = fixture.stored(acked.len(), last).await;
    let (missing, duplicated) = common::missing_and_duplicated(&acked, &contents);
    println!(
        "every CQL worker down: acked {}, stored {}, missing {missing}, duplicated {duplicated}, \
         caught up {:?} after one returned",
        acked.len(),
        contents.len(),
        returned.elapsed()
    );
    assert_eq!((missing, duplicated), (0, 0));
    assert_eq!(committed, last);
}
