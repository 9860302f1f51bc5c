//! The protocol's refusals: bad tokens, origins, sizes, malformed frames. Each leaves the
//! connection (where the protocol says so) and the server healthy.

mod common;

use std::time::Duration;

use common::{Client, Cluster, ClusterClients, SECRET, create_room};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn signed(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Connects with `?token=` and returns the first frame and the close code.
async fn refused_token(url: &str, token: &str) -> (serde_json::Value, Option<u16>) {
    common::refused(
        format!("{url}?token={token}")
            .into_client_request()
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_unauthorized_then_4401() {
    let cluster = Cluster::start().await;
    let url = cluster.url(0);
    let cases = [
        (
            "expired",
            signed(json!({"sub": "a", "exp": now() - 3600}), SECRET),
            "expired",
        ),
        (
            "not yet valid",
            signed(
                json!({"sub": "a", "exp": now() + 3600, "nbf": now() + 1800}),
                SECRET,
            ),
            "not valid yet",
        ),
        (
            "wrongly signed",
            signed(json!({"sub": "a", "exp": now() + 3600}), "not-the-secret"),
            "invalid",
        ),
        ("garbage", "not.a.jwt".to_owned(), "invalid"),
    ];
    for (name, token, needle) in cases {
        let (frame, close) = refused_token(&url, &token).await;
        assert_eq!(frame["event"], "error", "{name}");
        assert_eq!(frame["data"]["code"], "UNAUTHORIZED", "{name}");
        assert!(
            frame["data"]["message"].as_str().unwrap().contains(needle),
            "{name}: {frame}"
        );
        assert_eq!(close, Some(4401), "{name}");
    }

    // A first frame that is not `auth`.
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut client = Client::from_ws(ws);
    client
        .send_text(json!({"event": "ping", "requestId": "p"}).to_string())
        .await;
    let frame = client.next_frame(common::WAIT).await.unwrap();
    assert_eq!(frame["data"]["code"], "UNAUTHORIZED");
    assert_eq!(frame["requestId"], "p");
    assert_eq!(client.expect_close().await, Some(4401));

    // No `auth` in time (1 s in these tests): told why, then closed with 4408.
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut client = Client::from_ws(ws);
    let frame = client.next_frame(common::WAIT).await.unwrap();
    assert_eq!(frame["event"], "error", "{frame}");
    assert_eq!(frame["data"]["code"], "UNAUTHORIZED", "{frame}");
    assert_eq!(
        frame["data"]["message"], "no token received in time",
        "{frame}"
    );
    assert_eq!(frame["data"]["originalEvent"], "auth", "{frame}");
    assert_eq!(client.expect_close().await, Some(4408));

    // `auth` as the first frame works, and answers with `connected` as its ack.
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut client = Client::from_ws(ws);
    let auth =
        json!({"event": "auth", "requestId": "a1", "data": {"token": common::token("dave")}});
    client.send_text(auth.to_string()).await;
    let ack = client.answer("a1").await;
    assert_eq!(ack["event"], "ack");
    assert_eq!(ack["data"]["userId"], "dave");
    assert!(ack["data"]["sessionId"].as_str().is_some());
    // A fresh token for the same user is accepted; another user's is not.
    let again = client
        .request("auth", json!({"token": common::token("dave")}))
        .await;
    assert_eq!(again["event"], "ack");
    assert_eq!(
        client
            .fails("auth", json!({"token": common::token("eve")}))
            .await,
        "FORBIDDEN"
    );

    // The server is healthy after all that.
    let mut fine = cluster.client(0, "fine").await;
    let pong = fine.ok("ping", json!({})).await;
    assert_eq!(pong["event"], "pong");
    assert!(pong["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_origins_and_wrong_paths_are_refused_before_the_upgrade() {
    let cluster = Cluster::start().await;
    let mut request = cluster.url(0).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let mut request = cluster.url(0).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat.v1.json".parse().unwrap());
    let (_, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("an allowed origin connects");
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1.json");
    let wrong_path = format!("ws://{}/other", cluster.gateways[0].ws);
    match tokio_tungstenite::connect_async(wrong_path).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected HTTP 404, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_connection_stays() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let room = create_room(&mut alice, &[]).await;

    let too_long = "x".repeat(5_001);
    let code = alice
        .fails(
            "message:send",
            json!({"conversationId": room, "content": too_long}),
        )
        .await;
    assert_eq!(code, "VALIDATION_ERROR");
    let attachments: Vec<_> = (0..11)
        .map(|i| json!({"externalFileId": format!("f{i}")}))
        .collect();
    let code = alice
        .fails(
            "message:send",
            json!({"conversationId": room, "content": "x", "attachments": attachments}),
        )
        .await;
    assert_eq!(code, "VALIDATION_ERROR");
    let code = alice
        .fails(
            "message:send",
            json!({"conversationId": room, "content": "x", "type": "system"}),
        )
        .await;
    assert_eq!(code, "VALIDATION_ERROR");
    assert_eq!(
        alice
            .fails("message:send", json!({"conversationId": room}))
            .await,
        "VALIDATION_ERROR"
    );
    let answer = alice.request("no:such:event", json!({})).await;
    assert_eq!(answer["data"]["code"], "PROTOCOL_ERROR");
    assert_eq!(answer["data"]["originalEvent"], "no:such:event");
    assert_eq!(answer["data"]["recoverable"], false);
    let versioned = json!({"event": "ping", "requestId": "v", "version": "2"});
    alice.send_text(versioned.to_string()).await;
    assert_eq!(alice.answer("v").await["data"]["code"], "PROTOCOL_ERROR");

    // Not JSON, and over 64 KiB: an error without a requestId.
    alice.send_text("{not json").await;
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "PROTOCOL_ERROR");
    let big = json!({"event": "message:send", "requestId": "big", "data": {"conversationId": room, "content": "x".repeat(70_000)}});
    alice.send_text(big.to_string()).await;
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "PROTOCOL_ERROR");
    assert!(error["message"].as_str().unwrap().contains("larger than"));

    // Still connected and working.
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "still here"}),
        )
        .await;

    // Over the transport cap: closed with 1009.
    let huge = "x".repeat(300 * 1024);
    alice.send_text(huge).await;
    assert_eq!(alice.expect_close().await, Some(1009));

    // Others are unaffected.
    let mut bob = cluster.client(1, "bob").await;
    bob.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_full_of_subject_wildcards_reach_nobody_elses_events() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut wild = Vec::new();
    for user in ["*", ">", "alice.>", "a.b.*", "bob.*"] {
        wild.push(cluster.client(1, user).await);
    }
    let room = create_room(&mut alice, &["bob"]).await;
    alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "private"}),
        )
        .await;
    alice
        .ok("typing:start", json!({"conversationId": room}))
        .await;
    bob.expect("message:new").await;
    alice.expect("message:new").await; // Her own, as every sender gets.
    for client in &mut wild {
        client
            .expect_none("conversation:new", Duration::from_millis(300))
            .await;
        client
            .expect_none("message:new", Duration::from_millis(10))
            .await;
        client
            .expect_none("typing", Duration::from_millis(10))
            .await;
    }
    // Wildcards as conversation ids name no conversation.
    for conversation_id in ["*", ">", "chat.>", "a b"] {
        let code = wild[0]
            .fails(
                "message:send",
                json!({"conversationId": conversation_id, "content": "x"}),
            )
            .await;
        assert_eq!(code, "NOT_FOUND", "{conversation_id}");
    }
    // A wildcard user's own room works like any other.
    let star_room = create_room(&mut wild[0], &["alice.>"]).await;
    assert_eq!(
        wild[2].expect("conversation:new").await["conversation"]["id"],
        star_room
    );
    wild[0]
        .ok(
            "message:send",
            json!({"conversationId": star_room, "content": "hi"}),
        )
        .await;
    assert_eq!(
        wild[2].expect("message:new").await["message"]["senderId"],
        "*"
    );
    alice
        .expect_none("message:new", Duration::from_millis(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_on_the_admin_port() {
    let cluster = Cluster::start().await;
    let admin = cluster.gateways[0].admin;
    let get = |path: &'static str| common::get(admin, path);
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    // Ready once NATS is connected (it connects in the background at start).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let ready = get("/readyz").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(ready.contains("not ready: nats"), "{ready}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _alice = cluster.client(0, "alice").await;
    let metrics = get("/metrics").await;
    assert!(metrics.contains("chat_gateway_connections 1"), "{metrics}");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
}
