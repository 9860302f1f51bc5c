//! End-to-end chat across two gateways, a worker and a real NATS, with real WebSocket clients.

mod common;

use std::time::Duration;

use common::{Client, Cluster, ClusterClients, create_room};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_other_gateway_and_every_device() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut alice_phone = cluster.client(1, "alice").await;
    let mut bob = cluster.client(1, "bob").await;

    let room = create_room(&mut alice, &["bob"]).await;
    for client in [&mut alice, &mut alice_phone, &mut bob] {
        let new = client.expect("conversation:new").await;
        assert_eq!(new["conversation"]["id"], room);
        assert_eq!(new["conversation"]["numParticipants"], 2);
    }

    let ack = alice
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "hello bob" }),
        )
        .await;
    let message = &ack["message"];
    assert_eq!(message["content"], "hello bob");
    assert_eq!(message["senderId"], "alice");
    assert_eq!(message["conversationId"], room);
    assert_eq!(message["id"], message["seq"]);
    assert!(message["id"].as_u64().unwrap() > 0);

    for client in [&mut bob, &mut alice_phone, &mut alice] {
        let pushed = client.expect("message:new").await;
        assert_eq!(pushed["message"]["id"], message["id"]);
        assert_eq!(pushed["message"]["content"], "hello bob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_and_never_sees_the_room() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut carol = cluster.client(1, "carol").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;

    let code = carol
        .fails(
            "message:send",
            json!({ "conversationId": room, "content": "let me in" }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(
        carol
            .fails("messages:sync", json!({ "conversationId": room }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        carol
            .fails("room:join", json!({ "conversationId": room }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        carol
            .fails("room:info", json!({ "conversationId": room }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        carol
            .fails("typing:start", json!({ "conversationId": room }))
            .await,
        "FORBIDDEN"
    );

    alice
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "secret" }),
        )
        .await;
    alice
        .ok("typing:start", json!({ "conversationId": room }))
        .await;
    bob.expect("message:new").await;
    carol.expect_none("message:new", QUIET).await;
    carol.expect_none("typing", Duration::from_millis(10)).await;
    carol
        .expect_none("conversation:new", Duration::from_millis(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sender_edits_and_deletes() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let sent = alice
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "frist" }),
        )
        .await;
    let id = sent["message"]["id"].as_u64().unwrap();
    bob.expect("message:new").await;

    assert_eq!(
        bob.fails(
            "message:edit",
            json!({ "messageId": id, "content": "mine now" })
        )
        .await,
        "FORBIDDEN"
    );
    assert_eq!(
        bob.fails("message:delete", json!({ "messageId": id }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        alice
            .fails(
                "message:edit",
                json!({ "messageId": id + 1000, "content": "x" })
            )
            .await,
        "NOT_FOUND"
    );

    let edited = alice
        .ok(
            "message:edit",
            json!({ "messageId": id, "content": "first", "conversationId": room }),
        )
        .await;
    assert_eq!(edited["message"]["content"], "first");
    let update = bob.expect("message:updated").await;
    assert_eq!(update["messageId"], id);
    assert_eq!(update["content"], "first");
    assert_eq!(update["isEdited"], true);
    assert!(update["seq"].as_u64().unwrap() > id);

    alice.ok("message:delete", json!({ "messageId": id })).await;
    let deleted = bob.expect("message:deleted").await;
    assert_eq!(deleted["messageId"], id);
    assert_eq!(deleted["conversationId"], room);

    let page = bob
        .ok("messages:sync", json!({ "conversationId": room }))
        .await;
    let tombstone = &page["messages"][0];
    assert_eq!(tombstone["id"], id);
    assert_eq!(tombstone["deleted"], true);
    assert!(tombstone.get("content").is_none());
    assert_eq!(
        alice
            .fails(
                "message:edit",
                json!({ "messageId": id, "content": "undead" })
            )
            .await,
        "NOT_FOUND"
    );
}

fn ids(page: &serde_json::Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pages_after_before_and_newest() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let mut sent = Vec::new();
    for i in 0..12 {
        let ack = alice
            .ok(
                "message:send",
                json!({ "conversationId": room, "content": format!("m{i}") }),
            )
            .await;
        sent.push(ack["message"]["id"].as_u64().unwrap());
        // Right after the ack, the message is readable, whatever the worker's lag.
        let newest = bob
            .ok(
                "messages:sync",
                json!({ "conversationId": room, "limit": 1 }),
            )
            .await;
        assert_eq!(ids(&newest), [sent[i]]);
    }
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "ids follow the send order"
    );

    let after = bob
        .ok(
            "messages:sync",
            json!({ "conversationId": room, "lastMessageId": sent[3] }),
        )
        .await;
    assert_eq!(ids(&after), sent[4..]);
    assert_eq!(after["hasMore"], false);

    let before = bob
        .ok(
            "messages:sync",
            json!({ "conversationId": room, "beforeMessageId": sent[7], "limit": 3 }),
        )
        .await;
    assert_eq!(ids(&before), sent[4..7]);
    assert_eq!(before["hasMore"], true);

    let newest = bob
        .ok(
            "messages:sync",
            json!({ "conversationId": room, "limit": 5 }),
        )
        .await;
    assert_eq!(ids(&newest), sent[7..]);
    assert_eq!(newest["messages"][4]["content"], "m11");

    assert_eq!(
        bob.fails(
            "messages:sync",
            json!({ "conversationId": room, "limit": 101 })
        )
        .await,
        "VALIDATION_ERROR"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_message_id_yields_one_message() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let send = json!({ "conversationId": room, "content": "once", "clientMessageId": "c-1" });
    let first = alice.ok("message:send", send.clone()).await;
    let again = alice.ok("message:send", send).await;
    assert_eq!(first["message"]["id"], again["message"]["id"]);
    assert_eq!(again["message"]["content"], "once");

    bob.expect("message:new").await;
    bob.expect_none("message:new", QUIET).await;
    let page = bob
        .ok("messages:sync", json!({ "conversationId": room }))
        .await;
    assert_eq!(ids(&page), [first["message"]["id"].as_u64().unwrap()]);

    // Another user's identical clientMessageId is another message.
    let bobs = bob
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "once", "clientMessageId": "c-1" }),
        )
        .await;
    assert_ne!(bobs["message"]["id"], first["message"]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_starts_stops_and_expires() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;

    alice
        .ok("typing:start", json!({ "conversationId": room }))
        .await;
    let typing = bob.expect("typing").await;
    assert_eq!(
        typing,
        json!({ "conversationId": room, "userId": "alice", "isTyping": true })
    );
    alice
        .ok("typing:stop", json!({ "conversationId": room }))
        .await;
    assert_eq!(bob.expect("typing").await["isTyping"], false);

    alice
        .ok("typing:start", json!({ "conversationId": room }))
        .await;
    assert_eq!(bob.expect("typing").await["isTyping"], true);
    let started = tokio::time::Instant::now();
    let expired = bob.expect("typing").await;
    assert_eq!(expired["isTyping"], false);
    let after = started.elapsed();
    assert!(
        after > Duration::from_secs(4),
        "expired after {after:?}, not 5 s"
    );
    // The typist is not told about their own typing.
    alice.expect_none("typing", Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_apply_to_every_socket_of_the_user() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut carol = cluster.client(0, "carol").await;
    let mut carol_phone = cluster.client(1, "carol").await;
    let public = alice
        .ok(
            "room:create",
            json!({ "title": "lobby", "participantIds": [], "private": false }),
        )
        .await["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let locked = alice
        .ok(
            "room:create",
            json!({ "participantIds": [], "private": false, "password": "hunter2" }),
        )
        .await["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let joined = carol
        .ok("room:join", json!({ "conversationId": public }))
        .await;
    assert_eq!(joined["conversation"]["numParticipants"], 2);
    for client in [&mut carol, &mut carol_phone] {
        assert_eq!(
            client.expect("conversation:joined").await["conversation"]["id"],
            public
        );
    }
    assert_eq!(alice.expect("participant:added").await["userId"], "carol");
    alice
        .ok(
            "message:send",
            json!({ "conversationId": public, "content": "welcome" }),
        )
        .await;
    for client in [&mut carol, &mut carol_phone] {
        assert_eq!(
            client.expect("message:new").await["message"]["content"],
            "welcome"
        );
    }

    carol
        .ok("room:leave", json!({ "conversationId": public }))
        .await;
    for client in [&mut carol, &mut carol_phone] {
        assert_eq!(
            client.expect("conversation:removed").await["conversationId"],
            public
        );
    }
    alice
        .ok(
            "message:send",
            json!({ "conversationId": public, "content": "bye" }),
        )
        .await;
    carol_phone.expect_none("message:new", QUIET).await;
    assert_eq!(
        carol
            .fails(
                "message:send",
                json!({ "conversationId": public, "content": "hi" })
            )
            .await,
        "FORBIDDEN"
    );
    // A former member may come back.
    carol
        .ok("room:join", json!({ "conversationId": public }))
        .await;

    assert_eq!(
        carol
            .fails("room:join", json!({ "conversationId": locked }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        carol
            .fails(
                "room:join",
                json!({ "conversationId": locked, "password": "nope" })
            )
            .await,
        "FORBIDDEN"
    );
    carol
        .ok(
            "room:join",
            json!({ "conversationId": locked, "password": "hunter2" }),
        )
        .await;
    assert_eq!(
        carol
            .fails("room:join", json!({ "conversationId": "no-such-room" }))
            .await,
        "NOT_FOUND"
    );

    let list = carol_phone.ok("room:list", json!({})).await;
    let mut listed: Vec<_> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected = vec![public.clone(), locked.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    // A new connection is joined to all of the user's conversations.
    let mut carol_laptop: Client = cluster.client(1, "carol").await;
    assert_eq!(carol_laptop.connected["rooms"].as_array().unwrap().len(), 2);
    alice
        .ok(
            "message:send",
            json!({ "conversationId": locked, "content": "psst" }),
        )
        .await;
    assert_eq!(
        carol_laptop.expect("message:new").await["message"]["content"],
        "psst"
    );
}
