//! Read receipts: `message:read` is told live to the conversation and moves the reader's read
//! marker, which `room:list` and `room:info` return on every device, survives a worker restart,
//! and never moves back.

mod common;

use common::{Client, Cluster, ClusterClients, create_room};
use serde_json::{Value, json};

/// The caller's read marker of `room`, as `room:list` and `room:info` both give it.
async fn marker(client: &mut Client, room: &str) -> Value {
    let list = client.ok("room:list", json!({})).await;
    let listed = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == room)
        .expect("the room is listed")
        .clone();
    let info = client
        .ok("room:info", json!({"conversationId": room}))
        .await;
    assert_eq!(
        listed["lastReadMessageId"], info["conversation"]["lastReadMessageId"],
        "room:list and room:info agree"
    );
    listed["lastReadMessageId"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_marker_is_kept_for_every_device_and_only_moves_forward() {
    let mut cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut bobs_phone = cluster.client(0, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let sent = alice
            .ok(
                "message:send",
                json!({"conversationId": room, "content": format!("m{n}")}),
            )
            .await;
        ids.push(sent["message"]["id"].as_u64().unwrap());
    }
    assert_eq!(marker(&mut bobs_phone, &room).await, Value::Null);

    bob.ok(
        "message:read",
        json!({"conversationId": room, "messageId": ids[1]}),
    )
    .await;
    let receipt = alice.expect("message:receipt").await;
    assert_eq!(
        (&receipt["userId"], &receipt["messageId"], &receipt["kind"]),
        (&json!("bob"), &json!(ids[1]), &json!("read"))
    );
    assert_eq!(
        marker(&mut bobs_phone, &room).await,
        ids[1],
        "on his other device"
    );
    assert_eq!(
        marker(&mut alice, &room).await,
        Value::Null,
        "alice read nothing"
    );

    // An older read (a late device) and a delivery leave it where it is.
    bob.ok(
        "message:read",
        json!({"conversationId": room, "messageId": ids[0]}),
    )
    .await;
    bob.ok(
        "message:delivered",
        json!({"conversationId": room, "messageId": ids[2]}),
    )
    .await;
    assert_eq!(marker(&mut bob, &room).await, ids[1]);
    // No message, one past the conversation's messages, or another conversation's message.
    let other = create_room(&mut alice, &["bob"]).await;
    let elsewhere = alice
        .ok(
            "message:send",
            json!({"conversationId": other, "content": "x"}),
        )
        .await["message"]["id"]
        .clone();
    for bad in [json!(0), json!(ids[2] + 1_000), json!(elsewhere)] {
        let refused = bob
            .fails(
                "message:read",
                json!({"conversationId": room, "messageId": bad}),
            )
            .await;
        assert_eq!(refused, "NOT_FOUND", "message {bad}");
    }
    assert_eq!(marker(&mut bob, &room).await, ids[1]);

    // Stored, not remembered: a new worker answers the same.
    cluster.stop_worker().await;
    cluster.restart_worker().await;
    let mut later = cluster.client(1, "bob").await;
    assert_eq!(marker(&mut later, &room).await, ids[1], "after a restart");
    bob.ok(
        "message:read",
        json!({"conversationId": room, "messageId": ids[2]}),
    )
    .await;
    assert_eq!(marker(&mut later, &room).await, ids[2]);
}
