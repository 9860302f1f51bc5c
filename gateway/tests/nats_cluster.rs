//! A NATS cluster of three, the stream replicated three times, and one server killed (SIGKILL)
//! under a steady sender: sends may get `UNAVAILABLE` for a moment (the sender retries them with
//! the same `clientMessageId`), nothing acked is lost, and every client keeps its socket.

mod common;

use std::time::{Duration, Instant};

use chat_proto::testing::{NatsServer, wait_for_jetstream};
use common::*;
use serde_json::json;

/// What the sender saw.
struct Sent {
    client: Client,
    acked: Vec<u64>,
    refused: usize,
    /// From the first refusal to the last.
    refused_for: Duration,
}

/// How long sends may be refused after the stream's leader is killed: nats-server's followers
/// wait 4 to 9 s for a lost leader before they campaign (`maxElectionTimeoutDefault` in its
/// `server/raft.go`), then elect one; a send waits up to the gateway's request timeout (2 s).
const RECOVERY_BOUND: Duration = Duration::from_secs(12);
/// Acks in a row, after the last refusal, that show the cluster serving again.
const RECOVERED: Duration = Duration::from_secs(1);

/// Sends `n-0`… every 10 ms for at least `period`, retrying a send refused as `UNAVAILABLE`
/// (same `clientMessageId`) until it is acked, and on until [`RECOVERED`] of acks followed the
/// last refusal (or [`RECOVERY_BOUND`] past `period`).
async fn send(mut client: Client, room: String, period: Duration) -> Sent {
    let (mut acked, mut refused) = (Vec::new(), 0);
    let mut refusals: Option<(Instant, Instant)> = None;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0;
    loop {
        let now = Instant::now();
        let quiet_since = refusals.map_or(started, |(_, last)| last);
        let done = now >= started + period && now >= quiet_since + RECOVERED;
        if done || now >= started + period + RECOVERY_BOUND {
            break;
        }
        tick.tick().await;
        let data = json!({
            "conversationId": room,
            "content": format!("n-{n}"),
            "clientMessageId": format!("n-{n}"),
        });
        let answer = client.request("message:send", data).await;
        if answer["event"] == "ack" {
            acked.push(n);
            n += 1;
        } else {
            assert_eq!(answer["data"]["code"], "UNAVAILABLE", "send {n}: {answer}");
            refused += 1;
            let now = Instant::now();
            refusals = Some((refusals.map_or(now, |(first, _)| first), now));
        }
    }
    let refused_for = refusals.map_or(Duration::ZERO, |(first, last)| last - first);
    Sent {
        client,
        acked,
        refused,
        refused_for,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_in_a_cluster_of_three_loses_nothing_acked() {
    let mut servers = NatsServer::cluster(3);
    let urls = servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    wait_for_jetstream(&servers[0].url(), Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut worker = start_worker(&urls, db_path(&dir), &["--stream-replicas", "3"]).await;
    let gateways = [
        start_gateway(&urls, &[]).await,
        start_gateway(&urls, &[]).await,
    ];
    let mut alice = Client::connect(&gateways[0].url(), "alice").await;
    let readers = ["bob", "carol"];
    let room = create_room(&mut alice, &readers).await;
    let mut clients = vec![
        Client::connect(&gateways[0].url(), "bob").await,
        Client::connect(&gateways[1].url(), "carol").await,
    ];

    // The stream's leader is the server to kill: the worst one to lose.
    let client = async_nats::connect(servers[0].url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(chat_proto::subjects::STREAM)
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    let cluster = info.cluster.as_ref().expect("a clustered stream");
    assert_eq!(
        cluster.replicas.len(),
        2,
        "the stream is replicated three times"
    );
    let leader = cluster.leader.clone().expect("a leader");

    let sending = tokio::spawn(send(alice, room.clone(), Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let doomed = servers
        .iter_mut()
        .find(|s| s.name() == Some(leader.as_str()))
        .expect("the leader is one of ours");
    doomed.kill(); // SIGKILL.

    let Sent {
        client: mut alice,
        acked,
        refused,
        refused_for,
    } = sending.await.unwrap();
    assert!(
        refused_for < RECOVERY_BOUND,
        "sends were refused for {refused_for:?}: the cluster did not recover"
    );
    for (reader, client) in readers.iter().zip(&mut clients) {
        let mut seen = Seen::default();
        seen.read(client, Duration::from_secs(3)).await;
        client.expect_none("error", Duration::ZERO).await;
        seen.check("kill -9 of the stream's leader", reader, &acked);
    }
    // Every socket is still open: each answers a ping.
    for client in clients.iter_mut().chain([&mut alice]) {
        client.ok("ping", json!({})).await;
    }
    println!(
        "kill -9 of the stream's leader ({leader}) in a cluster of 3: {} acked, {refused} sends \
         refused as UNAVAILABLE over {refused_for:?} and retried, every acked one delivered",
        acked.len(),
    );
    worker.stop().await;
}
