//! Reads see every acked message at once with two persistence workers sharing the stream on the
//! CQL store (a real server: see `chat_persistence_worker::testing::cql_server`): the committed
//! position the store reports is the consumer's ack floor, below which every event is stored
//! whichever worker wrote it, and the gateway reads the rest from the stream.

mod common;

use chat_persistence_worker::testing::{cql_server, keyspace, worker_flags};
use chat_proto::testing::NatsServer;
use common::{Client, create_room, start_gateway, start_worker};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_right_after_an_ack_returns_the_message_with_two_workers() {
    let Some(uri) = cql_server("a_sync_right_after_an_ack_returns_the_message_with_two_workers")
    else {
        return;
    };
    let keyspace = keyspace("sync_after_ack");
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let flags = worker_flags(&uri, &keyspace);
    let cql: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(start_worker(&nats.url(), dir.path().join("unused.db"), &cql).await);
    }
    let gateways = [
        start_gateway(&nats.url(), &[]).await,
        start_gateway(&nats.url(), &[]).await,
    ];
    let mut alice = Client::connect(&gateways[0].url(), "alice").await;
    let mut bob = Client::connect(&gateways[1].url(), "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;

    let mut previous = 0;
    for n in 0..200 {
        let sent = alice
            .ok(
                "message:send",
                json!({"conversationId": room, "content": format!("m{n}")}),
            )
            .await;
        let id = sent["message"]["id"].as_u64().unwrap();
        // At once, from either side: the other gateway's reader, or the sender's own.
        let reader = if n % 2 == 0 { &mut bob } else { &mut alice };
        let page = reader
            .ok(
                "messages:sync",
                json!({"conversationId": room, "lastMessageId": previous}),
            )
            .await;
        let ids: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [id], "message {n}: a sync right after its ack");
        previous = id;
    }

    // Everything is in the store by now, and a full read pages through it in order.
    let page = bob
        .ok(
            "messages:sync",
            json!({"conversationId": room, "limit": 100}),
        )
        .await;
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (100..200).map(|n| format!("m{n}")).collect();
    assert_eq!(contents, expected);
    for worker in &mut workers {
        worker.stop().await;
    }
}
