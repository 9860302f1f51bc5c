//! Sockets that cannot keep up, and gateways that shut down.

mod common;

use common::{Client, Cluster, ClusterClients, WAIT, create_room};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_is_closed_with_4503_and_the_others_get_everything() {
    let cluster = Cluster::start_with(&["--outbox-frames", "16"]).await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut stalled = Client::connect_small_buffer(&cluster.url(1), "carol").await;
    let room = create_room(&mut alice, &["bob", "carol"]).await;
    stalled.expect("conversation:new").await;
    bob.expect("conversation:new").await;

    // Carol stops reading. Each message is about 24 KiB (5,000 four-byte characters and 4 KiB
    // of metadata), so the gateway's socket buffer fills after a few MB and then her outbox of
    // 16 frames: she is closed instead of holding anyone up.
    let content = "😀".repeat(4_990);
    let metadata = json!({ "pad": "y".repeat(4_000) });
    let count = 400;
    let sender = tokio::spawn(async move {
        for i in 0..count {
            let data = json!({"conversationId": room, "content": format!("{i} {content}"), "metadata": metadata});
            alice.ok("message:send", data).await;
        }
        alice
    });
    let mut received = 0;
    while received < count {
        let message = bob.expect("message:new").await;
        let text = message["message"]["content"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{received} ")),
            "in order, none missing"
        );
        received += 1;
    }
    sender.await.unwrap();
    let metrics = common::get(cluster.gateways[1].admin, "/metrics").await;
    assert!(
        metrics.contains("chat_gateway_slow_consumer_closes_total 1"),
        "{metrics}"
    );
    // When she reads again, she gets what was under way, then the close.
    assert_eq!(stalled.expect_close().await, Some(4503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_tells_its_clients_to_reconnect() {
    let mut cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;

    let stopping = tokio::spawn(async move {
        cluster.gateways[1].running.stop().await;
        cluster
    });
    let draining = bob.expect("server:draining").await;
    let after = draining["reconnectAfterMs"].as_u64().unwrap();
    assert!(after < 5_000);
    assert_eq!(bob.expect_close().await, Some(1012));
    let cluster = tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();

    // The other gateway serves on; bob reconnects there and finds the conversation.
    let mut bob = cluster.client(0, "bob").await;
    assert_eq!(bob.connected["rooms"][0]["id"], room);
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "still here?"}),
        )
        .await;
    assert_eq!(
        bob.expect("message:new").await["message"]["content"],
        "still here?"
    );
}
