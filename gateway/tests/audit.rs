//! The audit log, end to end: what sockets and the server API do on two gateways is recorded
//! (ids, never content) by the worker, and `GET /api/v1/audit` pages and filters it; records
//! past the retention are dropped.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{API_KEY, Cluster, ClusterClients, WAIT, api_flags, create_room, http};
use serde_json::{Value, json};

/// The audit records of `query`, once at least `count` are there.
async fn records(api: SocketAddr, query: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = http(
            api,
            "GET",
            &format!("/api/v1/audit?{query}"),
            Some(API_KEY),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        if events.len() >= count {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {count} records expected, got {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sockets_and_the_api_do_is_recorded_by_id_never_by_content() {
    let cluster = Cluster::start_with(&api_flags()).await;
    let api = cluster.gateways[0].api.unwrap();
    let mut alice = cluster.client(0, "alice").await;
    let bob = cluster.client(1, "bob").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let sent = alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "the secret plan"}),
        )
        .await;
    let id = sent["message"]["id"].as_u64().unwrap();
    alice
        .ok(
            "message:edit",
            json!({"messageId": id, "content": "the other plan"}),
        )
        .await;
    let path = format!("/api/v1/conversations/{room}/messages/{id}");
    let (status, _) = http(api, "DELETE", &path, Some(API_KEY), None).await;
    assert_eq!(status, 200);
    let bans = format!("/api/v1/conversations/{room}/bans");
    let ban = json!({"userId": "bob", "durationSecs": 60, "reason": "spam"});
    let (status, _) = http(api, "POST", &bans, Some(API_KEY), Some(&ban)).await;
    assert_eq!(status, 200);
    drop(bob);

    let in_room = records(api, &format!("conversationId={room}"), 5).await;
    assert_eq!(
        kinds(&in_room),
        [
            "conversation.create",
            "message.create",
            "message.edit",
            "message.delete",
            "ban"
        ]
    );
    assert_eq!(in_room[1]["messageId"], id);
    assert_eq!(in_room[1]["actor"], "alice");
    assert_eq!(
        in_room[3]["actor"], "api:backend",
        "the API acts by its key's name"
    );
    assert_eq!(in_room[4]["userId"], "bob");
    assert_eq!(in_room[4]["detail"], "60 s; spam");
    let everything = records(api, "limit=1000", 8).await;
    let text = Value::Array(everything.clone()).to_string();
    assert!(
        !text.contains("plan"),
        "no content in the audit log: {text}"
    );

    // Bob: his connect (with the gateway and address), the ban, his disconnect. They were
    // recorded on two gateways, each sending its records in batches: the log may have them up
    // to a batch's wait out of time order, and `at` gives it.
    let mut bobs = records(api, "userId=bob", 3).await;
    bobs.sort_by_key(|record| record["at"].as_str().map(str::to_owned));
    assert_eq!(kinds(&bobs), ["connect", "ban", "disconnect"]);
    assert_eq!(bobs[0]["address"], "127.0.0.1");
    assert!(
        bobs[0]["node"]
            .as_str()
            .is_some_and(|n| n.starts_with("gw-")),
        "{}",
        bobs[0]
    );
    // Pages: `next` goes on where a page stopped (no record skipped or repeated; seqs jump from
    // one batch to the next), and is null at the end.
    let (_, all) = http(api, "GET", "/api/v1/audit?limit=1000", Some(API_KEY), None).await;
    let (_, first) = http(api, "GET", "/api/v1/audit?limit=2", Some(API_KEY), None).await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let next = first["next"].as_u64().unwrap();
    let (_, second) = http(
        api,
        "GET",
        &format!("/api/v1/audit?after={next}&limit=1000"),
        Some(API_KEY),
        None,
    )
    .await;
    let seqs = |page: &Value| -> Vec<u64> {
        let events = page["events"].as_array().unwrap();
        events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    let paged: Vec<u64> = [seqs(&first), seqs(&second)].concat();
    assert_eq!(paged, seqs(&all));
    assert_eq!(second["next"], Value::Null);
    let (status, error) = http(api, "GET", "/api/v1/audit?limit=0", Some(API_KEY), None).await;
    assert_eq!((status, &error["code"]), (400, &json!("VALIDATION_ERROR")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_the_retention_are_dropped() {
    let mut cluster = Cluster::start_with(&api_flags()).await;
    let api = cluster.gateways[0].api.unwrap();
    cluster.client(0, "alice").await;
    records(api, "userId=alice", 1).await;
    // A worker with a retention of one second drops them as it starts (and every ten minutes).
    cluster.stop_worker().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    cluster
        .restart_worker_with(&["--audit-retention", "1s"])
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, page) = http(
            api,
            "GET",
            "/api/v1/audit?userId=alice",
            Some(API_KEY),
            None,
        )
        .await;
        if page["events"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway that shuts down sends the records it still holds: its sockets' disconnects are in
/// the log (read through the other gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_keeps_its_last_records() {
    let mut cluster = Cluster::start_with(&api_flags()).await;
    let api = cluster.gateways[0].api.unwrap();
    let mut carol = cluster.client(1, "carol").await;
    cluster.gateways[1].running.stop().await;
    assert!(carol.expect_close().await.is_some());
    let carols = records(api, "userId=carol", 2).await;
    assert_eq!(kinds(&carols), ["connect", "disconnect"]);
}
