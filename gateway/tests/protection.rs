//! Protection: limits on what one client may do, slow readers, and tokens that run out. The
//! offender gets the documented error or close code; everyone else is served as before.

mod common;

use std::time::Duration;

use common::{Client, Cluster, SECRET, create_room, upgrade_request};
use serde_json::json;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn token(user: &str, ttl: Duration) -> String {
    chat_gateway::auth::mint_hs256(SECRET.as_bytes(), user, ttl, None)
}

async fn connect_with_token(url: &str, token: &str) -> Client {
    let request = format!("{url}?token={token}")
        .into_client_request()
        .unwrap();
    Client::connect_with(request)
        .await
        .expect("the upgrade succeeds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_ends_its_session_with_4401_unless_refreshed() {
    let cluster = Cluster::start_with(&["--jwt-leeway", "0s"]).await;
    let url = cluster.url(0);
    let mut expiring = connect_with_token(&url, &token("alice", Duration::from_secs(2))).await;
    let mut refreshed = connect_with_token(&url, &token("bob", Duration::from_secs(2))).await;
    let answer = refreshed
        .request(
            "auth",
            json!({ "token": token("bob", Duration::from_secs(3600)) }),
        )
        .await;
    assert_eq!(answer["event"], "ack", "{answer}");

    let error = expiring
        .next_frame(Duration::from_secs(5))
        .await
        .expect("an error before the close");
    assert_eq!(error["data"]["code"], "UNAUTHORIZED", "{error}");
    assert_eq!(expiring.expect_close().await, Some(4401));

    // Past the first token's expiry, the refreshed session is served.
    let pong = refreshed.request("ping", json!({})).await;
    assert_eq!(pong["event"], "ack", "{pong}");
    let mut carol = Client::connect(&url, "carol").await;
    let room = create_room(&mut refreshed, &["carol"]).await;
    carol.expect("conversation:new").await;
    let sent = refreshed
        .request(
            "message:send",
            json!({ "conversationId": room, "content": "still here" }),
        )
        .await;
    assert_eq!(sent["event"], "ack", "{sent}");
}

/// A bad token from `address` (as a trusted proxy says): the first frame and the close code.
async fn bad_token_from(url: &str, address: &str) -> (serde_json::Value, Option<u16>) {
    let mut request = format!("{url}?token=not.a.token")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    common::refused(request).await
}

/// Connects `user` as coming from `address` (as a trusted proxy says).
async fn connect_from(url: &str, user: &str, address: &str) -> Result<Client, WsError> {
    let mut request = upgrade_request(url, user);
    request
        .headers_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    Client::connect_with(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_from_one_address_are_refused_past_five_but_a_valid_token_gets_in() {
    let cluster = Cluster::start_with(&[
        "--failed-auth-rate-per-ip",
        "1/5",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    let url = cluster.url(0);
    let attacker = "203.0.113.1";
    for _ in 0..5 {
        let (frame, close) = bad_token_from(&url, attacker).await;
        assert_eq!(frame["data"]["code"], "UNAUTHORIZED", "{frame}");
        assert_eq!(close, Some(4401));
    }
    let (frame, close) = bad_token_from(&url, attacker).await;
    assert_eq!(frame["data"]["code"], "RATE_LIMITED", "{frame}");
    assert!(
        frame["data"]["retryAfterMs"].as_u64().unwrap() > 0,
        "{frame}"
    );
    assert_eq!(close, Some(4429));

    // A valid token from the same address gets in; another address is not held to the first's
    // failures.
    let mut alice = connect_from(&url, "alice", attacker).await.unwrap();
    let pong = alice.request("ping", json!({})).await;
    assert_eq!(pong["event"], "ack");
    let (frame, close) = bad_token_from(&url, "203.0.113.2").await;
    assert_eq!(frame["data"]["code"], "UNAUTHORIZED", "{frame}");
    assert_eq!(close, Some(4401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_an_addresss_rate_get_429_and_others_connect() {
    let cluster = Cluster::start_with(&[
        "--connect-rate-per-ip",
        "60/2",
        "--trusted-proxies",
        "127.0.0.0/8",
    ])
    .await;
    let url = cluster.url(0);
    let _first = connect_from(&url, "alice", "198.51.100.7").await.unwrap();
    let _second = connect_from(&url, "bob", "198.51.100.7").await.unwrap();
    match connect_from(&url, "carol", "198.51.100.7").await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 429);
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
        }
        Err(error) => panic!("refused otherwise: {error}"),
        Ok(_) => panic!("a third connection within the burst of 2 was let in"),
    }
    // Another address behind the same proxy has its own rate.
    let mut dave = connect_from(&url, "dave", "198.51.100.8").await.unwrap();
    assert_eq!(dave.request("ping", json!({})).await["event"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_a_users_rate_get_rate_limited_and_guests_have_a_tighter_rate() {
    let cluster =
        Cluster::start_with(&["--message-rate", "60/3", "--guest-message-rate", "60/1"]).await;
    let url = cluster.url(0);
    let mut alice = Client::connect(&url, "alice").await;
    let mut bob = Client::connect(&url, "bob").await;
    let guest_token = chat_gateway::auth::mint_hs256(
        SECRET.as_bytes(),
        "gus",
        Duration::from_secs(600),
        Some("guest"),
    );
    let mut gus = connect_with_token(&url, &guest_token).await;
    let room = create_room(&mut alice, &["bob", "gus"]).await;
    bob.expect("conversation:new").await;
    gus.expect("conversation:new").await;
    let send = |text: &str| json!({ "conversationId": room, "content": text });

    let mut acked = Vec::new();
    for i in 0..3 {
        let answer = alice.request("message:send", send(&format!("a{i}"))).await;
        assert_eq!(answer["event"], "ack", "{answer}");
        acked.push(format!("a{i}"));
    }
    let limited = alice.request("message:send", send("a3")).await;
    assert_eq!(limited["data"]["code"], "RATE_LIMITED", "{limited}");
    assert_eq!(limited["data"]["recoverable"], true);
    let retry = limited["data"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=1_000).contains(&retry), "{retry}");

    // Others are not held back by alice's rate.
    assert_eq!(
        bob.request("message:send", send("b0")).await["event"],
        "ack"
    );
    acked.push("b0".into());
    // A guest has a burst of one.
    assert_eq!(
        gus.request("message:send", send("g0")).await["event"],
        "ack"
    );
    acked.push("g0".into());
    let guest_limited = gus.request("message:send", send("g1")).await;
    assert_eq!(
        guest_limited["data"]["code"], "RATE_LIMITED",
        "{guest_limited}"
    );

    tokio::time::sleep(Duration::from_millis(retry)).await;
    assert_eq!(
        alice.request("message:send", send("a3")).await["event"],
        "ack"
    );
    acked.push("a3".into());

    // Every acked message reached the room; none of the refused ones did.
    let page = bob
        .ok("messages:sync", json!({ "conversationId": room }))
        .await;
    let mut stored: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    acked.sort();
    assert_eq!(stored, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_reader_in_a_busy_room_is_closed_and_the_others_are_served_promptly() {
    let cluster =
        Cluster::start_with(&["--outbox-frames", "16", "--slow-consumer-grace", "1s"]).await;
    let readers: Vec<String> = (0..40).map(|i| format!("reader-{i}")).collect();
    let mut clients = Vec::new();
    for (i, user) in readers.iter().enumerate() {
        clients.push(Client::connect(&cluster.url(i % 2), user).await);
    }
    let mut stalled = Client::connect_small_buffer(&cluster.url(1), "stalled").await;
    let mut sender = Client::connect(&cluster.url(0), "sender").await;
    let mut members: Vec<&str> = readers.iter().map(String::as_str).collect();
    members.push("stalled");
    let room = create_room(&mut sender, &members).await;
    stalled.expect("conversation:new").await;

    // About 24 KiB a message: the stalled socket's TCP buffers fill after a few MB, then its
    // outbox, while everyone else keeps reading.
    let count = 200;
    let pad = "😀".repeat(4_980);
    let metadata = json!({ "pad": "y".repeat(4_000) });
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for mut client in clients {
        client.expect("conversation:new").await;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let event = client.expect("message:new").await;
                let content = event["message"]["content"].as_str().unwrap();
                let (seq, rest) = content.split_once(' ').unwrap();
                assert_eq!(seq.parse::<usize>().unwrap(), i, "in order, none missing");
                let sent_us: u128 = rest.split_once(' ').unwrap().0.parse().unwrap();
                latencies.push(started.elapsed().as_micros() - sent_us);
            }
            latencies
        }));
    }
    for i in 0..count {
        let sent_us = started.elapsed().as_micros();
        let content = format!("{i} {sent_us} {pad}");
        let data = json!({ "conversationId": room, "content": content, "metadata": metadata });
        sender.ok("message:send", data).await;
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("every reader got every message in order"));
    }
    latencies.sort_unstable();
    let p99 = latencies[latencies.len() * 99 / 100];
    // Delivery to the others takes milliseconds; a reader holding them up would cost seconds.
    assert!(
        p99 < 1_000_000,
        "p99 {p99} µs over {} deliveries",
        latencies.len()
    );
    assert_eq!(stalled.expect_close().await, Some(4503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_past_its_room_limit_is_refused_more_rooms_and_a_user_past_it_cannot_connect() {
    let cluster = Cluster::start_with(&["--max-rooms-per-socket", "2"]).await;
    let url = cluster.url(0);
    let mut alice = Client::connect(&url, "alice").await;
    let first = create_room(&mut alice, &["bob"]).await;
    create_room(&mut alice, &["carol"]).await;
    let refused = alice
        .request(
            "room:create",
            json!({ "title": "third", "participantIds": ["dave"] }),
        )
        .await;
    assert_eq!(refused["data"]["code"], "FORBIDDEN", "{refused}");
    assert!(
        refused["data"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2")
    );
    // The connection stays and its rooms work.
    let sent = alice
        .request(
            "message:send",
            json!({ "conversationId": first, "content": "hi" }),
        )
        .await;
    assert_eq!(sent["event"], "ack", "{sent}");

    // Bob is in one room; added to two more by others, his socket goes past the limit and is
    // closed with 4429; connecting again, he is refused the same way.
    let mut bob = Client::connect(&url, "bob").await;
    let mut erin = Client::connect(&url, "erin").await;
    create_room(&mut erin, &["bob"]).await;
    bob.expect("conversation:new").await;
    create_room(&mut erin, &["bob"]).await;
    assert_eq!(bob.expect_close().await, Some(4429));
    let (error, close) = common::refused(upgrade_request(&url, "bob")).await;
    assert_eq!(error["data"]["code"], "FORBIDDEN", "{error}");
    assert_eq!(close, Some(4429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_with_503_and_takes_connections_again_when_one_leaves() {
    let cluster = Cluster::start_with(&["--max-connections", "2"]).await;
    let url = cluster.url(0);
    let mut alice = Client::connect(&url, "alice").await;
    let bob = Client::connect(&url, "bob").await;
    match tokio_tungstenite::connect_async(upgrade_request(&url, "carol")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        Err(error) => panic!("refused otherwise: {error}"),
        Ok(_) => panic!("a third connection was let into a node of two"),
    }
    assert_eq!(alice.request("ping", json!({})).await["event"], "ack");
    drop(bob);
    let deadline = std::time::Instant::now() + common::WAIT;
    let mut carol = loop {
        if let Ok(carol) = Client::connect_with(upgrade_request(&url, "carol")).await {
            break carol;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(carol.request("ping", json!({})).await["event"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_and_odd_text_are_stored_and_echoed_exactly_as_sent() {
    let cluster = Cluster::start().await;
    let mut alice = Client::connect(&cluster.url(0), "alice").await;
    let mut bob = Client::connect(&cluster.url(1), "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;
    let content = "<script>alert(1)</script> &amp; \"quoted\" 'single' \\ \u{202e}rtl 😀 \u{0} end";
    let metadata = json!({ "html": "<img src=x onerror=alert(1)>", "nested": [{ "a": "<b>" }] });
    let data = json!({ "conversationId": room, "content": content, "metadata": metadata });
    alice.ok("message:send", data).await;
    let live = bob.expect("message:new").await;
    assert_eq!(live["message"]["content"], content);
    assert_eq!(live["message"]["metadata"], metadata);
    let page = bob
        .ok("messages:sync", json!({ "conversationId": room }))
        .await;
    assert_eq!(page["messages"][0]["content"], content);
    assert_eq!(page["messages"][0]["metadata"], metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_takes_tokens_signed_with_a_key_of_its_jwks_file() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let cluster = Cluster::start_with(&["--jwks-file", &format!("{keys}/jwks.json")]).await;
    let private = std::fs::read(format!("{keys}/es256-private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ec-2".into());
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let claims = json!({ "sub": "from-the-idp", "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let client = connect_with_token(&cluster.url(0), &token).await;
    assert_eq!(client.connected["userId"], "from-the-idp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_pending_limit_wait_their_turn_and_none_is_lost() {
    let cluster = Cluster::start_with(&["--max-pending-sends", "2"]).await;
    let mut alice = Client::connect(&cluster.url(0), "alice").await;
    let mut bob = Client::connect(&cluster.url(1), "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;
    // 200 sends written at once: the gateway reads on only as acks free its two places.
    let count = 200;
    for i in 0..count {
        let frame = json!({
            "event": "message:send",
            "requestId": format!("s{i}"),
            "data": { "conversationId": room, "content": format!("m{i}") },
        });
        alice.send_text(frame.to_string()).await;
    }
    for i in 0..count {
        let answer = alice.answer(&format!("s{i}")).await;
        assert_eq!(answer["event"], "ack", "{answer}");
    }
    for i in 0..count {
        let message = bob.expect("message:new").await;
        assert_eq!(
            message["message"]["content"],
            format!("m{i}"),
            "in order, none lost"
        );
    }
}
