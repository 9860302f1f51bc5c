//! Protection: limits on what one client may do, slow readers, and tokens that run out. The
//! offender gets the documented error or close code; everyone else is served as before.

mod common;

use std::time::Duration;

use common::{Client, Cluster, SECRET, create_room};
use serde_json::json;

fn token(user: &str, ttl: Duration) -> String {
    chat_gateway::auth::mint_hs256(SECRET.as_bytes(), user, ttl, None)
}

async fn connect_with(url: &str, token: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
        .await
        .expect("the upgrade succeeds");
    let mut client = Client::from_ws(ws);
    client.connected = client.expect("connected").await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_ends_its_session_with_4401_unless_refreshed() {
    let cluster = Cluster::start_with(&["--jwt-leeway", "0s"]).await;
    let url = cluster.url(0);
    let mut expiring = connect_with(&url, &token("alice", Duration::from_secs(2))).await;
    let mut refreshed = connect_with(&url, &token("bob", Duration::from_secs(2))).await;
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
