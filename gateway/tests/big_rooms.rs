//! Rooms larger than the participant list a `conversation` carries (100 ids): every member's live
//! sockets, on every node, join and receive the room's messages.

mod common;

use common::{Client, Cluster, ClusterClients, WAIT};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// Members of the big room, spread over both gateways.
const MEMBERS: usize = 1_000;
/// Connections made at once while the members connect.
const CONNECTING: usize = 50;

fn member(i: usize) -> String {
    format!("member-{i:04}")
}

/// Connects members `range` alternately to gateway 0 and 1, `CONNECTING` at a time.
async fn connect(cluster: &Cluster, range: std::ops::Range<usize>) -> Vec<Client> {
    futures_util::stream::iter(range)
        .map(|i| {
            let url = cluster.url(i % 2);
            async move { Client::connect(&url, &member(i)).await }
        })
        .buffered(CONNECTING)
        .collect()
        .await
}

/// The next push named `event` on every client, concurrently; the clients come back in order.
async fn expect_all(clients: Vec<Client>, event: &'static str) -> (Vec<Client>, Vec<Value>) {
    let waits = clients.into_iter().map(|mut client| async move {
        let data = client.expect_within(event, WAIT).await;
        (client, data)
    });
    let (clients, data): (Vec<_>, Vec<_>) = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .unzip();
    let missing: Vec<usize> = data
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_none())
        .map(|(i, _)| i)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} sockets got no {event} (first: {:?})",
        missing.len(),
        clients.len(),
        &missing[..missing.len().min(10)]
    );
    (clients, data.into_iter().flatten().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_room_of_a_thousand_gets_its_messages_on_both_nodes() {
    let cluster = Cluster::start().await;
    let members = connect(&cluster, 0..MEMBERS).await;
    let (mut owner, others) = {
        let mut members = members;
        let owner = members.remove(0);
        (owner, members)
    };
    let participants: Vec<String> = (1..MEMBERS).map(member).collect();
    let created = owner
        .ok(
            "room:create",
            json!({ "title": "all hands", "participantIds": participants, "private": false }),
        )
        .await;
    let room = created["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["conversation"]["numParticipants"], MEMBERS);

    let (mut others, news) = expect_all(others, "conversation:new").await;
    assert!(news.iter().all(|n| n["conversation"]["id"] == room));

    let sent = owner
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "hello, everyone" }),
        )
        .await;
    let id = sent["message"]["id"].clone();
    assert_eq!(owner.expect("message:new").await["message"]["id"], id);
    let (others_back, pushed) = expect_all(others, "message:new").await;
    others = others_back;
    assert!(pushed.iter().all(|p| p["message"]["id"] == id));

    // Someone who joins later, with a socket on each node: both join, both receive.
    let mut late_0 = cluster.client(0, "latecomer").await;
    let late_1 = cluster.client(1, "latecomer").await;
    late_0
        .ok("room:join", json!({ "conversationId": room }))
        .await;
    let (late, _) = expect_all(vec![late_1], "conversation:joined").await;
    let sent = others[MEMBERS - 2]
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "welcome" }),
        )
        .await;
    let mut everyone = others;
    everyone.push(owner);
    everyone.push(late_0);
    everyone.extend(late);
    let (_, pushed) = expect_all(everyone, "message:new").await;
    assert!(
        pushed
            .iter()
            .all(|p| p["message"]["id"] == sent["message"]["id"])
    );
}
