//! The server API with real sockets on two gateways: the seed guide's scenarios 6 (a message
//! posted by the backend reaches a member), 13 (a conversation created by the backend reaches the
//! invited user's live socket), 14 (a participant added) and 15 (a participant removed: nothing
//! of the conversation reaches them any more, on either gateway); moderation, disconnects, keys,
//! and the OpenAPI document.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ADMIN_KEY, API_KEY, Cluster, ClusterClients, Seen, api_flags, create_room, http};
use serde_json::{Value, json};

/// Long enough for an event that should not come.
const QUIET: Duration = Duration::from_millis(800);

async fn cluster() -> Cluster {
    Cluster::start_with(&api_flags()).await
}

fn api(cluster: &Cluster, gateway: usize) -> SocketAddr {
    cluster.gateways[gateway]
        .api
        .expect("the server API listens")
}

/// A request with the key, which must succeed with `status`; its answer.
async fn call(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let (got, answer) = http(api, method, path, Some(API_KEY), body.as_ref()).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_a_message_posted_by_the_backend_reaches_the_members() {
    let cluster = cluster().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;

    let path = format!("/api/v1/conversations/{room}/messages");
    let body = json!({"senderId": "reminder-bot", "content": "stand-up in 5", "type": "robot",
        "metadata": {"kind": "reminder"}, "clientMessageId": "reminder-1"});
    let posted = call(api(&cluster, 0), "POST", &path, Some(body.clone()), 201).await;
    let message = &posted["message"];
    assert_eq!(
        (&message["type"], &message["senderId"]),
        (&json!("robot"), &json!("reminder-bot"))
    );
    for member in [&mut alice, &mut bob] {
        let pushed = &member.expect("message:new").await["message"];
        assert_eq!(pushed["id"], message["id"]);
        assert_eq!(pushed["content"], "stand-up in 5");
        assert_eq!(pushed["metadata"], json!({"kind": "reminder"}));
    }
    // The same clientMessageId, through the other gateway: the same message.
    let again = call(api(&cluster, 1), "POST", &path, Some(body), 201).await;
    assert_eq!(again["message"]["id"], message["id"]);
    // A system message; clients may not send one.
    let system = json!({"senderId": "system", "content": "bob joined", "type": "system"});
    call(api(&cluster, 1), "POST", &path, Some(system), 201).await;
    for member in [&mut alice, &mut bob] {
        assert_eq!(
            member.expect("message:new").await["message"]["type"],
            "system"
        );
    }
    let refused = alice
        .fails(
            "message:send",
            json!({"conversationId": room, "content": "x", "type": "system"}),
        )
        .await;
    assert_eq!(refused, "VALIDATION_ERROR");
    // What is wrong is said, and nothing is posted.
    let (status, error) = http(
        api(&cluster, 0),
        "POST",
        &path,
        Some(API_KEY),
        Some(&json!({"senderId": "bot", "content": "x", "type": "shout"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], "VALIDATION_ERROR");
    assert!(
        error["message"].as_str().unwrap().contains("robot"),
        "{error}"
    );
    let missing = "/api/v1/conversations/no-such-room/messages";
    let (status, error) = http(
        api(&cluster, 0),
        "POST",
        missing,
        Some(API_KEY),
        Some(&json!({"senderId": "bot", "content": "x"})),
    )
    .await;
    assert_eq!((status, &error["code"]), (404, &json!("NOT_FOUND")));
    // Neither the repeat nor the refused posts made a message.
    for member in [&mut alice, &mut bob] {
        member.expect_none("message:new", QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_13_a_conversation_created_by_the_backend_reaches_the_invited_users_socket() {
    let cluster = cluster().await;
    let mut carol = cluster.client(1, "carol").await;
    let mut dave = cluster.client(0, "dave").await;
    let created = call(
        api(&cluster, 0),
        "POST",
        "/api/v1/conversations",
        Some(json!({"title": "Support #42", "participantIds": ["carol", "dave"], "createdBy": "erin"})),
        201,
    )
    .await;
    let conversation = &created["conversation"];
    let room = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(conversation["createdBy"], "erin");
    assert_eq!(conversation["numParticipants"], 3);
    for invited in [&mut carol, &mut dave] {
        let pushed = invited.expect("conversation:new").await;
        assert_eq!(pushed["conversation"]["id"], room.as_str());
    }
    // Carol's socket can send to it at once, and Dave's receives it.
    carol
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "hello"}),
        )
        .await;
    assert_eq!(
        dave.expect("message:new").await["message"]["content"],
        "hello"
    );

    let got = call(
        api(&cluster, 1),
        "GET",
        &format!("/api/v1/conversations/{room}"),
        None,
        200,
    )
    .await;
    assert_eq!(got["conversation"]["title"], "Support #42");
    let listed = call(
        api(&cluster, 1),
        "GET",
        "/api/v1/users/carol/conversations",
        None,
        200,
    )
    .await;
    assert_eq!(listed["conversations"][0]["id"], room.as_str());
    // Without createdBy, the participants alone.
    let bare = call(
        api(&cluster, 0),
        "POST",
        "/api/v1/conversations",
        Some(json!({"participantIds": ["carol"]})),
        201,
    )
    .await;
    assert_eq!(bare["conversation"]["numParticipants"], 1);
    assert_eq!(bare["conversation"]["createdBy"], "");
    let (status, error) = http(
        api(&cluster, 0),
        "POST",
        "/api/v1/conversations",
        Some(API_KEY),
        Some(&json!({"participantIds": []})),
    )
    .await;
    assert_eq!((status, &error["code"]), (400, &json!("VALIDATION_ERROR")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_14_a_participant_added_by_the_backend_joins_and_is_announced() {
    let cluster = cluster().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut carol = cluster.client(1, "carol").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;

    let path = format!("/api/v1/conversations/{room}/participants");
    let added = call(
        api(&cluster, 0),
        "POST",
        &path,
        Some(json!({"userId": "carol"})),
        200,
    )
    .await;
    assert_eq!(added["conversation"]["numParticipants"], 3);
    for member in [&mut alice, &mut bob] {
        let pushed = member.expect("participant:added").await;
        assert_eq!(
            (&pushed["conversationId"], &pushed["userId"]),
            (&json!(room), &json!("carol"))
        );
    }
    let joined = carol.expect("conversation:joined").await;
    assert_eq!(joined["conversation"]["id"], room.as_str());
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "welcome"}),
        )
        .await;
    assert_eq!(
        carol.expect("message:new").await["message"]["content"],
        "welcome"
    );
    // A private conversation: the backend adds whom it wants; adding twice changes nothing.
    call(
        api(&cluster, 1),
        "POST",
        &path,
        Some(json!({"userId": "carol"})),
        200,
    )
    .await;
    alice.expect_none("participant:added", QUIET).await;
    let (status, _) = http(
        api(&cluster, 0),
        "POST",
        "/api/v1/conversations/nope/participants",
        Some(API_KEY),
        Some(&json!({"userId": "carol"})),
    )
    .await;
    assert_eq!(status, 404);
}

/// Added while messages keep coming, a participant gets every message sent after the change (by
/// stream sequence, after the `participant:added` the members saw), in order, once, after
/// `conversation:joined`: on a gateway where the conversation had no member (carol) and on one
/// where it had (dave, beside the sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_added_during_a_stream_of_messages_gets_each_later_one_in_order() {
    const COUNT: u64 = 300;
    let cluster = cluster().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut carol = cluster.client(1, "carol").await;
    let mut dave = cluster.client(0, "dave").await;
    let room = create_room(&mut alice, &["bob"]).await;

    let writer_room = room.clone();
    let writer = tokio::spawn(async move {
        // Each acked number with its message's stream sequence.
        let mut acked = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for n in 0..COUNT {
            tick.tick().await;
            let data = json!({"conversationId": writer_room, "content": format!("n-{n}")});
            let answer = alice.request("message:send", data).await;
            if answer["event"] == "ack" {
                acked.push((n, answer["data"]["message"]["seq"].as_u64().unwrap()));
            }
        }
        (alice, acked)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let path = format!("/api/v1/conversations/{room}/participants");
    for user in ["carol", "dave"] {
        call(
            api(&cluster, 1),
            "POST",
            &path,
            Some(json!({"userId": user})),
            200,
        )
        .await;
    }
    let (mut alice, acked) = writer.await.unwrap();
    for (name, client) in [("carol", &mut carol), ("dave", &mut dave)] {
        let added = loop {
            let added = alice.expect("participant:added").await;
            if added["userId"] == name {
                break added["seq"].as_u64().unwrap();
            }
        };
        let due: Vec<u64> = acked
            .iter()
            .filter(|(_, seq)| *seq > added)
            .map(|(n, _)| *n)
            .collect();
        assert!(due.len() > 100, "most messages are sent after the adds");
        client.expect("conversation:joined").await;
        assert!(
            !client.kept("message:new"),
            "{name}: a message before conversation:joined"
        );
        let mut seen = Seen::default();
        seen.read(client, QUIET).await;
        // In order, once; and every message after the change is there.
        assert!(
            seen.numbers.windows(2).all(|w| w[0] < w[1]),
            "{name}: out of order or twice: {:?}",
            seen.numbers
        );
        let missing: Vec<u64> = due
            .iter()
            .copied()
            .filter(|n| !seen.numbers.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "{name}: lost after the change: {missing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_15_a_removed_participant_gets_nothing_more_on_either_gateway() {
    let cluster = cluster().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob_laptop = cluster.client(0, "bob").await;
    let mut bob_phone = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    for bob in [&mut bob_laptop, &mut bob_phone] {
        bob.expect("conversation:new").await;
    }

    let started = Instant::now();
    call(
        api(&cluster, 1),
        "DELETE",
        &format!("/api/v1/conversations/{room}/participants/bob"),
        None,
        200,
    )
    .await;
    for bob in [&mut bob_laptop, &mut bob_phone] {
        let removed = bob.expect("conversation:removed").await;
        assert_eq!(removed["conversationId"], room.as_str());
    }
    let took = started.elapsed();
    let pushed = alice.expect("participant:removed").await;
    assert_eq!(pushed["userId"], "bob");
    // Nothing more of the conversation: messages, typing, receipts, from sockets and the API.
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "after"}),
        )
        .await;
    alice
        .send_text(json!({"event": "typing:start", "data": {"conversationId": room}}).to_string())
        .await;
    call(
        api(&cluster, 0),
        "POST",
        &format!("/api/v1/conversations/{room}/messages"),
        Some(json!({"senderId": "bot", "content": "after"})),
        201,
    )
    .await;
    for bob in [&mut bob_laptop, &mut bob_phone] {
        for event in ["message:new", "typing:start"] {
            bob.expect_none(event, QUIET).await;
        }
    }
    let refused = bob_phone
        .fails(
            "message:send",
            json!({"conversationId": room, "content": "still here?"}),
        )
        .await;
    assert_eq!(refused, "FORBIDDEN");
    let (status, error) = http(
        api(&cluster, 0),
        "DELETE",
        &format!("/api/v1/conversations/{room}/participants/bob"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!((status, &error["code"]), (404, &json!("NOT_FOUND")));
    println!("removed on both gateways {took:?} after the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_deletes_any_message_and_disconnects_close_every_socket() {
    let cluster = cluster().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let sent = alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "spam"}),
        )
        .await;
    let id = sent["message"]["id"].as_u64().unwrap();
    bob.expect("message:new").await;
    let path = format!("/api/v1/conversations/{room}/messages/{id}");
    call(api(&cluster, 1), "DELETE", &path, None, 200).await;
    for member in [&mut alice, &mut bob] {
        assert_eq!(member.expect("message:deleted").await["messageId"], id);
    }
    let (status, _) = http(api(&cluster, 1), "DELETE", &path, Some(API_KEY), None).await;
    assert_eq!(status, 404, "a deleted message is gone");
    let (status, _) = http(
        api(&cluster, 1),
        "DELETE",
        &format!("/api/v1/conversations/{room}/messages/abc"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // A ban closes with 4403 on every gateway; anything else with 1000.
    let mut bob_again = cluster.client(0, "bob").await;
    call(
        api(&cluster, 0),
        "POST",
        "/api/v1/users/bob/disconnect",
        Some(json!({"reason": "banned"})),
        200,
    )
    .await;
    assert_eq!(bob.expect_close().await, Some(4403));
    assert_eq!(bob_again.expect_close().await, Some(4403));
    call(
        api(&cluster, 1),
        "POST",
        "/api/v1/users/alice/disconnect",
        None,
        200,
    )
    .await;
    assert_eq!(alice.expect_close().await, Some(1000));
}

/// The operations of the OpenAPI document: `(METHOD, path)`.
fn documented() -> BTreeSet<(String, String)> {
    let document: Value = serde_json::from_str(chat_gateway::api::OPENAPI).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_key_nothing_happens_and_the_document_is_true() {
    let cluster = cluster().await;
    let mut carol = cluster.client(0, "carol").await;
    let api = api(&cluster, 0);
    let body =
        json!({"participantIds": ["carol"], "userId": "carol", "senderId": "x", "content": "x"});
    for (method, path) in documented() {
        let path = path
            .replace("{id}", "some-room")
            .replace("{userId}", "carol")
            .replace("{messageId}", "1");
        if path.ends_with("openapi.json") {
            let (status, document) = http(api, &method, &path, None, None).await;
            assert_eq!(status, 200);
            assert_eq!(
                document,
                serde_json::from_str::<Value>(chat_gateway::api::OPENAPI).unwrap()
            );
            continue;
        }
        let path = if path.ends_with("presence") {
            format!("{path}?userIds=carol")
        } else {
            path
        };
        for key in [
            None,
            Some("test-api-key-0123456789abcdef012345678X"),
            Some(""),
        ] {
            let (status, error) = http(api, &method, &path, key, Some(&body)).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {error}");
            assert_eq!(error["code"], "UNAUTHORIZED");
        }
    }
    carol.expect_none("conversation:new", QUIET).await;
    let listed = call(api, "GET", "/api/v1/users/carol/conversations", None, 200).await;
    assert_eq!(listed["conversations"], json!([]), "nothing was created");
    let (status, error) = http(api, "GET", "/api/v1/nothing-here", Some(API_KEY), None).await;
    assert_eq!((status, &error["code"]), (404, &json!("NOT_FOUND")));
    let (status, _) = http(api, "PUT", "/api/v1/conversations", Some(API_KEY), None).await;
    assert_eq!(status, 405);
    let (status, error) = http(
        api,
        "POST",
        "/api/v1/conversations",
        Some(API_KEY),
        Some(&json!({"participantIds": "carol"})),
    )
    .await;
    assert_eq!((status, &error["code"]), (400, &json!("VALIDATION_ERROR")));
    // Presence needs a router: this cluster has none, and says so.
    let (status, error) = http(
        api,
        "GET",
        "/api/v1/presence?userIds=carol",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!((status, &error["code"]), (503, &json!("UNAVAILABLE")));
}

#[test]
fn every_route_served_is_documented_and_in_the_docs() {
    let source = include_str!("../src/api/mod.rs");
    let served: BTreeSet<String> = source
        .split('"')
        .filter(|piece| piece.starts_with("/api/v1/"))
        .map(str::to_owned)
        .collect();
    let documented: BTreeSet<String> = documented().into_iter().map(|(_, path)| path).collect();
    assert_eq!(
        served, documented,
        "the routes of api/mod.rs and openapi.json"
    );
    let docs = include_str!("../../docs/server-api.md");
    for (method, path) in self::documented() {
        assert!(
            docs.contains(&format!("`{method} {path}`")),
            "docs/server-api.md lacks `{method} {path}`"
        );
    }
}

/// The admin views, for admin keys only: a conversation's statistics, and health with reasons
/// (this cluster has no router: presence is degraded, and the nodes view has nothing to ask).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_read_conversation_statistics_and_health_with_reasons() {
    let mut cluster = cluster().await;
    let admin = api(&cluster, 1);
    let mut alice = cluster.client(0, "alice").await;
    let room = create_room(&mut alice, &["bob", "carol"]).await;
    for i in 0..3 {
        alice
            .ok(
                "message:send",
                json!({"conversationId": room, "content": format!("m{i}")}),
            )
            .await;
    }
    let stats_path = format!("/api/v1/admin/conversations/{room}/stats");
    let (status, answer) = http(admin, "GET", &stats_path, Some(API_KEY), None).await;
    assert_eq!(
        (status, &answer["code"]),
        (403, &json!("FORBIDDEN")),
        "{answer}"
    );
    let (status, stats) = http(admin, "GET", &stats_path, Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (
            &stats["members"],
            &stats["messagesLastMinute"],
            &stats["membersOnline"]
        ),
        (&json!(3), &json!(3), &Value::Null),
        "{stats}"
    );
    assert_eq!(stats["messagesLastMinuteAtLeast"], false);
    // Admin keys do what other keys do.
    call_as(
        admin,
        ADMIN_KEY,
        "GET",
        &format!("/api/v1/conversations/{room}"),
        200,
    )
    .await;

    let (status, health) = http(admin, "GET", "/api/v1/admin/health", Some(ADMIN_KEY), None).await;
    assert_eq!(
        (status, &health["status"]),
        (200, &json!("degraded")),
        "{health}"
    );
    let checks = &health["checks"];
    for ok in ["nats", "worker", "store", "lag"] {
        assert_eq!(checks[ok]["status"], "ok", "{ok}: {health}");
    }
    assert_eq!(checks["lag"]["events"], 0, "{health}");
    let reason = checks["router"]["reason"].as_str().unwrap();
    assert!(reason.contains("no router"), "{health}");
    let (status, nodes) = http(admin, "GET", "/api/v1/admin/nodes", Some(ADMIN_KEY), None).await;
    assert_eq!(
        (status, &nodes["code"]),
        (503, &json!("UNAVAILABLE")),
        "{nodes}"
    );

    // The worker gone: down, and why.
    cluster.stop_worker().await;
    let (status, health) = http(admin, "GET", "/api/v1/admin/health", Some(ADMIN_KEY), None).await;
    assert_eq!(
        (status, &health["status"]),
        (503, &json!("down")),
        "{health}"
    );
    let reason = health["checks"]["worker"]["reason"].as_str().unwrap();
    assert!(reason.contains("no worker answers"), "{health}");
    assert_eq!(health["checks"]["store"]["status"], "unknown");
}

/// A request with `key`, which must succeed with `status`; its answer.
async fn call_as(api: SocketAddr, key: &str, method: &str, path: &str, status: u16) -> Value {
    let (got, answer) = http(api, method, path, Some(key), None).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    answer
}
