//! A rolling restart behind a real load balancer, as production deploys: HAProxy (configured by
//! `deploy/haproxy-config.sh`, as the local cluster is) in front of two gateway processes; each
//! in turn gets SIGTERM, drains, exits and comes back on its address, ready, while a sender sends
//! steadily and readers read, all through HAProxy. No client sees an error, and every reader gets
//! every acked message once, in order.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::sync::watch;

/// HAProxy in front of `gateways`, killed when dropped.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(gateways: &[&GatewayProcess]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = chat_proto::testing::free_port();
        let mut args = vec![port.to_string()];
        args.extend(
            gateways
                .iter()
                .map(|g| format!("{}:{}", g.ws.port(), g.admin.port())),
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy-config.sh");
        let config = Command::new(script)
            .args(&args)
            .output()
            .expect("the configuration script runs");
        assert!(config.status.success(), "{config:?}");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config.stdout).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts (the test command installs it)");
        let haproxy = Self {
            child,
            port,
            _dir: dir,
        };
        // Until it has seen a gateway ready: it answers 503 while it has none.
        let deadline = Instant::now() + WAIT;
        while !haproxy.routes().await {
            assert!(Instant::now() < deadline, "haproxy does not route");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        haproxy
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    async fn routes(&self) -> bool {
        let address = format!("127.0.0.1:{}", self.port).parse().unwrap();
        tokio::net::TcpStream::connect(address).await.is_ok()
            && !get(address, "/ws").await.starts_with("HTTP/1.1 503")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `n-0`, `n-1`, … every 10 ms through `url` until `stop`, moving when told to drain;
/// every send must be acked. Returns the acked numbers and the moves.
async fn send(url: String, room: String, stop: watch::Receiver<bool>) -> (Vec<u64>, usize) {
    let mut client = Client::connect(&url, "alice").await;
    let (mut acked, mut moves) = (Vec::new(), 0);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0.. {
        if *stop.borrow() {
            break;
        }
        tick.tick().await;
        if let Some(notice) = client
            .expect_within("server:draining", Duration::ZERO)
            .await
        {
            let after = notice["reconnectAfterMs"].as_u64().unwrap();
            tokio::time::sleep(Duration::from_millis(after)).await;
            client = Client::connect(&url, "alice").await;
            moves += 1;
        }
        let data = json!({
            "conversationId": room,
            "content": format!("n-{n}"),
            "clientMessageId": format!("n-{n}"),
        });
        let answer = client.request("message:send", data).await;
        assert_eq!(answer["event"], "ack", "send {n}: {answer}");
        acked.push(n);
    }
    (acked, moves)
}

/// Reads through `url` until `stop`, resuming through it when told to drain; then reads until
/// quiet. Returns what it saw and its moves.
async fn follow(
    url: String,
    user: &'static str,
    room: String,
    mut stop: watch::Receiver<bool>,
) -> (Seen, usize) {
    let mut client = Client::connect(&url, user).await;
    let (mut seen, mut moves) = (Seen::default(), 0);
    while !*stop.borrow() {
        seen.read_until(
            &mut client,
            Duration::from_millis(20),
            Instant::now() + Duration::from_millis(100),
        )
        .await;
        if let Some(notice) = client
            .expect_within("server:draining", Duration::ZERO)
            .await
        {
            let leave = Instant::now()
                + Duration::from_millis(notice["reconnectAfterMs"].as_u64().unwrap());
            seen.read_until(&mut client, Duration::from_millis(20), leave)
                .await;
            tokio::time::sleep_until(leave.into()).await;
            client.expect_none("error", Duration::ZERO).await;
            let connected = client.connected.clone();
            let (moved, answer) = resume(&url, user, &connected, &room, seen.last_seq).await;
            assert_eq!(answer["resume"]["recovered"], true, "{user}: {answer}");
            client = moved;
            // The resumed session's token, for the next move.
            client.connected = answer;
            moves += 1;
        }
        let _ = tokio::time::timeout(Duration::ZERO, stop.changed()).await;
    }
    seen.read(&mut client, Duration::from_secs(2)).await;
    client.expect_none("error", Duration::ZERO).await;
    (seen, moves)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_loses_nothing_and_shows_no_error() {
    let cluster = Cluster::start().await;
    let nats = cluster.nats.url();
    let flags = ["--drain-time", "2s", "--trusted-proxies", "127.0.0.1"];
    let mut gateways = [
        GatewayProcess::start_with(&nats, &flags).await,
        GatewayProcess::start_with(&nats, &flags).await,
    ];
    let haproxy = Haproxy::start(&[&gateways[0], &gateways[1]]).await;
    let url = haproxy.url();
    let readers = ["bob", "carol", "dave"];
    let mut alice = Client::connect(&url, "alice").await;
    let room = create_room(&mut alice, &readers).await;
    drop(alice);

    let (stop, stopped) = watch::channel(false);
    let following: Vec<_> = readers
        .iter()
        .map(|reader| {
            let (url, room, stopped) = (url.clone(), room.clone(), stopped.clone());
            tokio::spawn(follow(url, reader, room, stopped))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sending = tokio::spawn(send(url.clone(), room.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    for gateway in &mut gateways {
        let (ws, admin) = (gateway.ws, gateway.admin);
        gateway.terminate();
        assert!(
            gateway.exited(WAIT).await,
            "the gateway did not finish its drain"
        );
        *gateway = GatewayProcess::start_at(&nats, ws, admin, &flags).await;
        // HAProxy takes it back after two good checks, a second apart.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    println!("rolling restart of two gateways: {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).unwrap();

    let (acked, sender_moves) = sending.await.unwrap();
    assert!(sender_moves >= 1, "the sender never had to move");
    for (reader, following) in readers.iter().zip(following) {
        let (seen, moves) = following.await.unwrap();
        println!("rolling restart: {reader} moved {moves} times");
        seen.check("rolling restart behind HAProxy", reader, &acked);
    }
    println!(
        "rolling restart: {} messages acked, the sender moved {sender_moves} times",
        acked.len()
    );
}
