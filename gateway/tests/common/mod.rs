//! A real cluster for tests (see `chat_gateway::testing`) and the clients of its gateways.

#![allow(dead_code, unreachable_pub)] // Each test file uses part of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use chat_gateway::testing::client::*;
pub use chat_gateway::testing::*;
use serde_json::{Value, json};

/// Clients of a test cluster.
#[allow(async_fn_in_trait)]
pub trait ClusterClients {
    /// A connected, authenticated client of `user` on gateway `gateway`.
    async fn client(&self, gateway: usize, user: &str) -> Client;
}

impl ClusterClients for Cluster {
    async fn client(&self, gateway: usize, user: &str) -> Client {
        Client::connect(&self.url(gateway), user).await
    }
}

/// What a reader saw of the numbered sequence.
#[derive(Default)]
pub struct Seen {
    pub numbers: Vec<u64>,
    pub last_seq: u64,
}

impl Seen {
    /// Takes the `message:new` pushes until none comes for `wait`.
    pub async fn read(&mut self, client: &mut Client, wait: Duration) {
        self.read_until(client, wait, Instant::now() + Duration::from_secs(60))
            .await;
    }

    /// Takes the `message:new` pushes until none comes for `wait`, or `deadline`.
    pub async fn read_until(&mut self, client: &mut Client, wait: Duration, deadline: Instant) {
        while Instant::now() < deadline
            && let Some(data) = client.expect_within("message:new", wait).await
        {
            let message = &data["message"];
            let number = message["content"]
                .as_str()
                .and_then(|c| c.strip_prefix("n-"));
            if let Some(number) = number.and_then(|n| n.parse().ok()) {
                self.numbers.push(number);
            }
            self.last_seq = self.last_seq.max(message["seq"].as_u64().unwrap_or(0));
        }
    }

    /// Prints and checks the reader's account against the acked numbers.
    pub fn check(&self, fault: &str, reader: &str, acked: &[u64]) {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for n in &self.numbers {
            *counts.entry(*n).or_default() += 1;
        }
        let missing = acked.iter().filter(|n| !counts.contains_key(n)).count();
        let duplicated: usize = counts.values().map(|c| c - 1).sum();
        println!(
            "{fault}: {reader}: acked {}, delivered {}, missing {missing}, duplicated {duplicated}",
            acked.len(),
            self.numbers.len()
        );
        assert_eq!((missing, duplicated), (0, 0), "{fault}: {reader}");
        assert!(
            self.numbers.windows(2).all(|w| w[0] < w[1]),
            "{fault}: {reader}: out of order"
        );
    }
}

/// Reconnects `user` to `url` with `auth` carrying the resume token and position.
pub async fn resume(
    url: &str,
    user: &str,
    connected: &Value,
    room: &str,
    seq: u64,
) -> (Client, Value) {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut client = Client::from_ws(ws);
    let data = json!({
        "token": token(user),
        "resume": {
            "resumeToken": connected["resumeToken"],
            "positions": { room: seq },
        },
    });
    let answer = client.request("auth", data).await;
    assert_eq!(answer["event"], "ack", "{answer}");
    (client, answer["data"].clone())
}

/// A `chat-gateway` process, killed when dropped.
pub struct GatewayProcess {
    child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
}

impl GatewayProcess {
    pub async fn start(nats_url: &str) -> Self {
        Self::start_with(nats_url, &[]).await
    }

    pub async fn start_with(nats_url: &str, extra: &[&str]) -> Self {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        };
        Self::start_at(nats_url, port(), port(), extra).await
    }

    /// On `ws` and `admin` (a restart on the same addresses), once ready.
    pub async fn start_at(
        nats_url: &str,
        ws: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-gateway"))
            .args([
                "--listen",
                &ws.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--nats-url", nats_url, "--jwt-secret", SECRET])
            .args(UNLIMITED)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chat-gateway starts");
        let deadline = Instant::now() + WAIT;
        loop {
            let listening = tokio::net::TcpStream::connect(admin).await.is_ok();
            if listening && get(admin, "/readyz").await.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway process is not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, ws, admin }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the gateway drains.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl GatewayProcess {
    /// Waits (at most `within`) for the process to exit, as it does at the end of a drain.
    pub async fn exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .child
                .try_wait()
                .expect("the child can be waited for")
                .is_some()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
