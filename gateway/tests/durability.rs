//! Acked means durable: messages acked while the worker is down reach the store once it is
//! back, and reads see them meanwhile; a gateway that loses NATS fills what its sockets missed.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_gateway::worker::WorkerClient;
use chat_proto::v1::HistoryRequest;
use common::{Cluster, ClusterClients, create_room, start_gateway};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acked_while_the_worker_is_down_are_stored_once_it_returns() {
    let mut cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "before"}),
        )
        .await;

    cluster.stop_worker().await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let send = json!({"conversationId": room, "content": format!("m{i}"), "clientMessageId": format!("c{i}")});
        let ack = alice.ok("message:send", send.clone()).await;
        acked.insert(ack["message"]["id"].as_u64().unwrap());
        if i % 5 == 0 {
            // A retry within the window is the same message, worker or not.
            let again = alice.ok("message:send", send).await;
            assert_eq!(again["message"]["id"], ack["message"]["id"]);
        }
    }
    // Ownership checks see the stream beyond the store: a deleted message stays deleted.
    let doomed = *acked.first().unwrap();
    alice
        .ok("message:delete", json!({"messageId": doomed}))
        .await;
    let code = alice
        .fails(
            "message:edit",
            json!({"messageId": doomed, "content": "undead"}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    assert_eq!(
        bob.fails("message:delete", json!({"messageId": doomed + 1}))
            .await,
        "FORBIDDEN"
    );
    // Live delivery and reads go on without the worker (reads from the stream alone).
    for _ in 0..20 {
        bob.expect("message:new").await;
    }
    let page = bob
        .ok(
            "messages:sync",
            json!({"conversationId": room, "limit": 100}),
        )
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 21);
    let tombstone = messages.iter().find(|m| m["id"] == doomed).unwrap();
    assert_eq!(tombstone["deleted"], true);

    cluster.restart_worker().await;
    // What the store holds, through the worker (reads from the gateway would merge the stream).
    let worker = WorkerClient::new(
        async_nats::connect(cluster.nats.url()).await.unwrap(),
        common::WAIT,
    );
    let request = HistoryRequest {
        conversation_id: room.clone(),
        after_id: Some(0),
        before_id: None,
        limit: 100,
    };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let stored = loop {
        // The restarted worker may not answer yet: no responders.
        let messages = match worker.history(request.clone()).await {
            Ok(page) => page.messages,
            Err(_) => Vec::new(),
        };
        if messages.len() >= 21 || tokio::time::Instant::now() > deadline {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: Vec<u64> = stored.iter().map(|m| m.id).collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        21,
        "every acked message is stored, none twice: {ids:?}"
    );
    assert_eq!(unique.len(), 21);
    assert!(acked.is_subset(&unique));
    println!(
        "worker outage: acked 20, stored {}, duplicates 0",
        ids.len() - 1
    );
}

/// A TCP proxy that can cut every connection through it and refuse new ones for a while.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (accept_open, accept_cut) = (Arc::clone(&open), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !accept_open.load(Ordering::SeqCst) {
                    continue; // Dropped: refused.
                }
                let target = target.clone();
                let mut cuts = accept_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { port, open, cut }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_lost_nats_fills_what_its_sockets_missed() {
    let mut cluster = Cluster::start().await;
    let target = cluster.nats.url().trim_start_matches("nats://").to_owned();
    let proxy = Proxy::start(target).await;
    // Replace gateway 1 with one that reaches NATS through the proxy.
    cluster.gateways[1].running.stop().await;
    cluster.gateways[1] = start_gateway(&format!("nats://127.0.0.1:{}", proxy.port), &[]).await;

    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;
    let first = alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "m0"}),
        )
        .await;
    assert_eq!(
        bob.expect("message:new").await["message"]["id"],
        first["message"]["id"]
    );

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut missed = Vec::new();
    for i in 1..=5 {
        let ack = alice
            .ok(
                "message:send",
                json!({"conversationId": room, "content": format!("m{i}")}),
            )
            .await;
        missed.push(ack["message"]["id"].as_u64().unwrap());
    }
    proxy.restore();

    // Bob's socket stays open; his gateway reconnects and delivers what was published meanwhile.
    let mut delivered = Vec::new();
    for _ in 0..5 {
        let pushed = bob.expect("message:new").await;
        delivered.push(pushed["message"]["id"].as_u64().unwrap());
    }
    delivered.sort_unstable();
    assert_eq!(delivered, missed);
    bob.expect_none("message:new", Duration::from_millis(500))
        .await;
    let after = alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "m6"}),
        )
        .await;
    assert_eq!(
        bob.expect("message:new").await["message"]["id"],
        after["message"]["id"]
    );
}
