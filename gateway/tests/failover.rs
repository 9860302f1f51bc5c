//! Failover: resume after a lost connection or a killed gateway process, with a writer sending a
//! numbered sequence at a steady rate and readers checking it. Each test prints, per fault,
//! messages acked, delivered, missing and duplicated.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::task::JoinHandle;

/// Sends `n-0`, `n-1`, … every `every` until `count`; returns the acked numbers.
fn writer(mut client: Client, room: String, count: u64, every: Duration) -> JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut tick = tokio::time::interval(every);
        for n in 0..count {
            tick.tick().await;
            let data = json!({ "conversationId": room, "content": format!("n-{n}") });
            if client.request("message:send", data).await["event"] == "ack" {
                acked.push(n);
            }
        }
        acked
    })
}

#[tokio::test]
async fn a_resumed_connection_gets_every_missed_event_once_while_messages_keep_coming() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let mut bob = cluster.client(1, "bob").await;
    assert!(bob.connected["resumeToken"].is_string());

    let sending = writer(alice, room.clone(), 150, Duration::from_millis(5));
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_millis(150);
    seen.read_until(&mut bob, Duration::from_millis(100), deadline)
        .await;
    let connected = bob.connected.clone();
    drop(bob); // The train enters a tunnel.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut bob, answer) = resume(&cluster.url(0), "bob", &connected, &room, seen.last_seq).await;
    assert_eq!(answer["resume"]["recovered"], true, "{answer}");
    assert_eq!(answer["resume"]["conversations"][&room]["complete"], true);
    assert!(
        answer["resume"]["conversations"][&room]["replayed"]
            .as_u64()
            .unwrap()
            > 0
    );
    let acked = sending.await.unwrap();
    seen.read(&mut bob, Duration::from_secs(2)).await;
    seen.check("disconnect", "bob", &acked);

    // A token is the user's own, and never a client token.
    let stolen = resume(&cluster.url(0), "carol", &connected, &room, 0)
        .await
        .1;
    assert_eq!(stolen["resume"]["recovered"], false);
    let (ws, _) = tokio_tungstenite::connect_async(format!(
        "{}?token={}",
        cluster.url(0),
        connected["resumeToken"].as_str().unwrap()
    ))
    .await
    .unwrap();
    let mut impostor = Client::from_ws(ws);
    let refused = impostor.next_frame(WAIT).await.unwrap();
    assert_eq!(refused["data"]["code"], "UNAUTHORIZED", "{refused}");
}

#[tokio::test]
async fn resume_as_the_first_request_after_connecting_with_resume_1() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let bob = cluster.client(1, "bob").await;
    let connected = bob.connected.clone();
    drop(bob);
    for n in 0..5 {
        alice
            .ok(
                "message:send",
                json!({ "conversationId": room, "content": format!("n-{n}") }),
            )
            .await;
    }
    let url = format!("{}?resume=1", cluster.url(1));
    let mut bob = Client::connect(&url, "bob").await;
    // Live events wait for the resume: a message now comes after the replayed ones.
    alice
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "n-5" }),
        )
        .await;
    let positions = json!({ room.clone(): 0 });
    let data = bob
        .ok(
            "resume",
            json!({ "resumeToken": connected["resumeToken"], "positions": positions }),
        )
        .await;
    // 5, or 6 when the last one was stored before the replay read (then not sent twice).
    let replayed = data["conversations"][&room]["replayed"].as_u64().unwrap();
    assert!((5..=6).contains(&replayed), "{data}");
    let mut seen = Seen::default();
    seen.read(&mut bob, Duration::from_secs(1)).await;
    seen.check("resume=1", "bob", &[0, 1, 2, 3, 4, 5]);
    assert_eq!(
        bob.fails("resume", json!({ "resumeToken": connected["resumeToken"] }))
            .await,
        "PROTOCOL_ERROR"
    );
}

#[tokio::test]
async fn readers_of_a_killed_gateway_resume_on_another_with_every_acked_message_once() {
    let cluster = Cluster::start().await;
    let mut doomed = GatewayProcess::start(&cluster.nats.url()).await;
    let mut alice = cluster.client(0, "alice").await;
    let readers = ["bob", "carol", "dave"];
    let room = create_room(&mut alice, &readers).await;
    let mut clients = Vec::new();
    for reader in readers {
        clients.push(Client::connect(&doomed.url(), reader).await);
    }

    let sending = writer(alice, room.clone(), 300, Duration::from_millis(5));
    let mut seen: Vec<Seen> = readers.iter().map(|_| Seen::default()).collect();
    let deadline = Instant::now() + Duration::from_millis(300);
    for (client, seen) in clients.iter_mut().zip(&mut seen) {
        seen.read_until(client, Duration::from_millis(100), deadline)
            .await;
    }
    let killed = Instant::now();
    doomed.kill(); // SIGKILL, mid-stream.
    let mut resumed = Vec::new();
    for ((reader, client), seen) in readers.iter().zip(&mut clients).zip(&mut seen) {
        // What reached the socket before the kill counts.
        seen.read_until(client, Duration::from_millis(50), Instant::now())
            .await;
        let (client, answer) = resume(
            &cluster.url(1),
            reader,
            &client.connected,
            &room,
            seen.last_seq,
        )
        .await;
        assert_eq!(answer["resume"]["recovered"], true, "{answer}");
        resumed.push(client);
    }
    println!(
        "kill -9 gateway: readers resumed on another gateway {:?} after the kill",
        killed.elapsed()
    );
    let acked = sending.await.unwrap();
    for ((reader, client), seen) in readers.iter().zip(&mut resumed).zip(&mut seen) {
        seen.read(client, Duration::from_secs(2)).await;
        seen.check("kill -9 gateway", reader, &acked);
    }
}

#[tokio::test]
async fn readers_of_a_draining_gateway_move_without_an_error_or_a_lost_message() {
    let cluster = Cluster::start().await;
    let draining = GatewayProcess::start_with(&cluster.nats.url(), &["--drain-time", "2s"]).await;
    let mut alice = cluster.client(0, "alice").await;
    let readers = ["bob", "carol", "dave"];
    let room = create_room(&mut alice, &readers).await;
    let mut clients = Vec::new();
    for reader in readers {
        clients.push(Client::connect(&draining.url(), reader).await);
    }

    let sending = writer(alice, room.clone(), 400, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    draining.terminate();
    let mut moves = Vec::new();
    for (reader, mut client) in readers.into_iter().zip(clients) {
        let (room, url) = (room.clone(), cluster.url(1));
        moves.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            // Served on until told to move; then it moves when told.
            let notice = client.expect("server:draining").await;
            let told = Instant::now();
            let after = notice["reconnectAfterMs"].as_u64().unwrap();
            assert!(after < 2_000, "{notice}");
            let leave = told + Duration::from_millis(after);
            seen.read_until(&mut client, Duration::from_millis(20), leave)
                .await;
            tokio::time::sleep_until(leave.into()).await;
            client.expect_none("error", Duration::ZERO).await;
            let (moved, answer) =
                resume(&url, reader, &client.connected, &room, seen.last_seq).await;
            assert_eq!(answer["resume"]["recovered"], true, "{answer}");
            drop(client);
            (reader, seen, moved, started.elapsed())
        }));
    }
    let acked = sending.await.unwrap();
    for moving in moves {
        let (reader, mut seen, mut moved, took) = moving.await.unwrap();
        println!("SIGTERM gateway: {reader} moved {took:?} after the signal");
        seen.read(&mut moved, Duration::from_secs(2)).await;
        moved.expect_none("error", Duration::ZERO).await;
        seen.check("SIGTERM gateway (drain)", reader, &acked);
    }
}

/// Waits until gateway `admin` says ready (`true`) or not.
async fn wait_ready(admin: SocketAddr, ready: bool) {
    let deadline = Instant::now() + WAIT;
    while get(admin, "/readyz").await.starts_with("HTTP/1.1 200") != ready {
        assert!(
            Instant::now() < deadline,
            "readiness did not become {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_nats_restart_fails_sends_fast_and_loses_no_acked_message() {
    let mut cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let room = create_room(&mut alice, &["bob"]).await;
    let mut bob = cluster.client(1, "bob").await;
    let send = |n: u64| json!({ "conversationId": room, "content": format!("n-{n}"), "clientMessageId": format!("m-{n}") });
    let mut acked = Vec::new();
    for n in 0..20 {
        alice.ok("message:send", send(n)).await;
        acked.push(n);
    }

    cluster.nats.kill();
    let stopped = Instant::now();
    wait_ready(cluster.gateways[0].admin, false).await;
    let mut failed = 0;
    for n in 20..25 {
        let asked = Instant::now();
        let answer = alice.request("message:send", send(n)).await;
        assert_eq!(answer["data"]["code"], "UNAVAILABLE", "{answer}");
        assert_eq!(answer["data"]["recoverable"], true);
        // Not the 2 s the stream's ack may take: the gateway knows NATS is away.
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        failed += 1;
    }

    cluster.nats.restart();
    for gateway in &cluster.gateways {
        wait_ready(gateway.admin, true).await;
    }
    println!(
        "nats restart: gateways ready again {:?} after the kill",
        stopped.elapsed()
    );
    // The failed sends retried with their ids, then more; each makes one message.
    for n in 20..40 {
        let mut answer = alice.request("message:send", send(n)).await;
        let deadline = Instant::now() + WAIT;
        while answer["event"] != "ack" && Instant::now() < deadline {
            // The worker's stream consumer may still be reconnecting.
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = alice.request("message:send", send(n)).await;
        }
        assert_eq!(answer["event"], "ack", "{answer}");
        acked.push(n);
    }
    let retried = alice.ok("message:send", send(20)).await;
    assert_eq!(retried["message"]["content"], "n-20");

    // Bob never reconnected: his gateway subscribed again by itself.
    let mut seen = Seen::default();
    seen.read(&mut bob, Duration::from_secs(1)).await;
    println!("nats restart: sends failed during the outage: {failed}");
    seen.check("nats restart", "bob", &acked);
    let synced = bob
        .ok(
            "messages:sync",
            json!({ "conversationId": room, "limit": 100 }),
        )
        .await;
    let stored: Vec<&str> = synced["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(stored.len(), 40, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_while_nats_is_down_still_exits_in_time() {
    let mut cluster = Cluster::start().await;
    let flags = ["--drain-time", "1s", "--shutdown-grace", "1s"];
    let mut gateway = GatewayProcess::start_with(&cluster.nats.url(), &flags).await;
    let _alice = Client::connect(&gateway.url(), "alice").await;
    cluster.nats.kill();
    gateway.terminate();
    let stopping = Instant::now();
    // The drain (1 s), the grace (1 s) and the last flush's bound (2 s), with room to spare: a
    // flush that waits for NATS to come back would hang here.
    assert!(
        gateway.exited(Duration::from_secs(10)).await,
        "the gateway still runs {:?} after SIGTERM",
        stopping.elapsed()
    );
    println!("stopped with NATS down in {:?}", stopping.elapsed());
}
