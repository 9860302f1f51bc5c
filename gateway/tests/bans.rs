//! Bans, through the server API and by supervisors: a ban removes the user's sockets from the
//! conversation at once on every gateway, refuses `room:join` while it lasts, and ends by itself
//! after its duration; an unban lets the user join again.

mod common;

use std::time::{Duration, Instant};

use common::{API_KEY, Client, Cluster, ClusterClients, api_flags, create_public_room, http};
use serde_json::{Value, json};

/// The answer to `room:join` of `room`.
async fn join(client: &mut Client, room: &str) -> Value {
    client
        .request("room:join", json!({"conversationId": room}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_removes_at_once_refuses_joins_and_ends_by_itself() {
    let cluster = Cluster::start_with(&api_flags()).await;
    let api = cluster.gateways[0].api.unwrap();
    let mut alice = cluster.client(0, "alice").await;
    let mut bob_laptop = cluster.client(0, "bob").await;
    let mut bob_phone = cluster.client(1, "bob").await;
    let room = create_public_room(&mut alice).await;
    bob_laptop
        .ok("room:join", json!({"conversationId": room}))
        .await;
    alice.expect("participant:added").await;

    let path = format!("/api/v1/conversations/{room}/bans");
    let body = json!({"userId": "bob", "durationSecs": 2, "reason": "spam"});
    let banned_at = Instant::now();
    let (status, answer) = http(api, "POST", &path, Some(API_KEY), Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    for bob in [&mut bob_laptop, &mut bob_phone] {
        let removed = bob.expect("conversation:removed").await;
        assert_eq!(removed["conversationId"], room.as_str());
    }
    assert_eq!(alice.expect("participant:removed").await["userId"], "bob");
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "bob is out"}),
        )
        .await;
    bob_phone
        .expect_none("message:new", Duration::from_millis(300))
        .await;
    let refused = join(&mut bob_phone, &room).await;
    assert_eq!(refused["data"]["code"], "FORBIDDEN", "{refused}");
    assert_eq!(refused["data"]["message"], "banned from this conversation");

    // It ends by itself.
    let deadline = banned_at + Duration::from_secs(2) + common::WAIT;
    loop {
        let answer = join(&mut bob_phone, &room).await;
        if answer["event"] == "ack" {
            assert!(
                banned_at.elapsed() >= Duration::from_secs(2),
                "joined before the end"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the ban did not end: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(alice.expect("participant:added").await["userId"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_without_duration_lasts_until_unbanned() {
    let cluster = Cluster::start_with(&api_flags()).await;
    let api = cluster.gateways[1].api.unwrap();
    let mut alice = cluster.client(0, "alice").await;
    let mut carol = cluster.client(1, "carol").await;
    let room = create_public_room(&mut alice).await;
    // A user who never joined can be banned too.
    let path = format!("/api/v1/conversations/{room}/bans");
    let (status, _) = http(
        api,
        "POST",
        &path,
        Some(API_KEY),
        Some(&json!({"userId": "carol"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(join(&mut carol, &room).await["data"]["code"], "FORBIDDEN");
    let unban = format!("/api/v1/conversations/{room}/bans/carol");
    let (status, _) = http(api, "DELETE", &unban, Some(API_KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(join(&mut carol, &room).await["event"], "ack");

    for (body, code) in [
        (json!({"userId": "carol", "durationSecs": 0}), 400),
        (json!({"userId": ""}), 400),
        (json!({"userId": "carol", "reason": "x".repeat(256)}), 400),
    ] {
        let (status, answer) = http(api, "POST", &path, Some(API_KEY), Some(&body)).await;
        assert_eq!(status, code, "{body}: {answer}");
    }
    let missing = "/api/v1/conversations/no-such-room/bans";
    let (status, _) = http(
        api,
        "POST",
        missing,
        Some(API_KEY),
        Some(&json!({"userId": "carol"})),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_ban_in_their_conversations_and_others_cannot() {
    let cluster = Cluster::start().await;
    let mut sam = Client::connect_as(&cluster.url(0), "sam", "supervisor").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut alice = cluster.client(0, "alice").await;
    let room = create_public_room(&mut sam).await;
    for member in [&mut bob, &mut alice] {
        member
            .ok("room:join", json!({"conversationId": room}))
            .await;
    }
    let refused = bob
        .request(
            "room:ban",
            json!({"conversationId": room, "userId": "alice"}),
        )
        .await;
    assert_eq!(
        refused["data"]["message"],
        "the role employee lacks the permission ban"
    );
    sam.ok(
        "room:ban",
        json!({"conversationId": room, "userId": "bob", "durationSecs": 60}),
    )
    .await;
    assert_eq!(
        bob.expect("conversation:removed").await["conversationId"],
        room.as_str()
    );
    assert_eq!(join(&mut bob, &room).await["data"]["code"], "FORBIDDEN");
    sam.ok(
        "room:unban",
        json!({"conversationId": room, "userId": "bob"}),
    )
    .await;
    assert_eq!(join(&mut bob, &room).await["event"], "ack");
    // Not in a conversation the supervisor is not a member of.
    let other = create_public_room(&mut alice).await;
    let refused = sam
        .request(
            "room:ban",
            json!({"conversationId": other, "userId": "alice"}),
        )
        .await;
    assert_eq!(refused["data"]["code"], "FORBIDDEN", "{refused}");
}
