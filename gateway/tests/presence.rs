//! Presence as clients see it when they come to share a conversation, each with the partner on
//! the other gateway: two `chat-gateway` processes, a router and the worker (in this process,
//! started as their binaries start them), `nats-server`, and real sockets. Every shape of the
//! presence table of docs/protocol.md: a conversation made, a participant added by a client and
//! by the server API, a user who joins a public room; with the partner staying (both are told the
//! other is online) and with the partner leaving at once (the other is told it went offline).
//! Once with a worker that knows the routers, once with one that does not (started on its own, as
//! the README's table allows): presence must not depend on it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use common::*;
use serde_json::{Value, json};

/// The router's offline delay here: a user gone for this long is reported offline.
const OFFLINE_DELAY: &str = "1s";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// NATS, a router and the worker in this process, and two gateway processes with the server API.
struct Setup {
    _nats: chat_proto::testing::NatsServer,
    _dir: tempfile::TempDir,
    _router: Running,
    _worker: Running,
    gateways: Vec<GatewayProcess>,
    api: SocketAddr,
}

impl Setup {
    async fn start(worker_knows_routers: bool) -> Self {
        let nats = chat_proto::testing::NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let router_addr = free_addr();
        let router = start_router(&nats.url(), router_addr).await;
        let router_url = format!("http://{router_addr}");
        let worker_flags = if worker_knows_routers {
            vec!["--router-urls", router_url.as_str()]
        } else {
            Vec::new()
        };
        let worker = start_worker(&nats.url(), db_path(&dir), &worker_flags).await;
        let api = free_addr();
        let [_, _, keys_flag, keys, ..] = api_flags();
        let mut gateways = Vec::new();
        for i in 0..2 {
            let node_id = format!("gw-{i}");
            let api_listen = if i == 1 { api } else { free_addr() }.to_string();
            let flags = [
                "--router-urls",
                &router_url,
                "--node-id",
                &node_id,
                "--api-listen",
                &api_listen,
                keys_flag,
                keys,
            ];
            gateways.push(GatewayProcess::start_with(&nats.url(), &flags).await);
        }
        for gateway in &gateways {
            let deadline = std::time::Instant::now() + WAIT;
            while !get(gateway.admin, "/healthz")
                .await
                .contains("router: attached")
            {
                assert!(std::time::Instant::now() < deadline, "no router attached");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The router's grace after its start (its lease): presence changes wait it out.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        Self {
            _nats: nats,
            _dir: dir,
            _router: router,
            _worker: worker,
            gateways,
            api,
        }
    }

    async fn client(&self, gateway: usize, user: &str) -> Client {
        let client = Client::connect(&self.gateways[gateway].url(), user).await;
        // Online for longer than the presence window, so that leaving is a change.
        tokio::time::sleep(Duration::from_millis(300)).await;
        client
    }
}

/// A router on `addr`, with a lease of 1 s and the offline delay [`OFFLINE_DELAY`].
async fn start_router(nats_url: &str, addr: SocketAddr) -> Running {
    let config = chat_router::Config::try_parse_from([
        "chat-router",
        "--nats-url",
        nats_url,
        "--admin-listen",
        "127.0.0.1:0",
        "--lease",
        "1s",
        "--presence-window",
        "100ms",
        "--offline-delay",
        OFFLINE_DELAY,
    ])
    .expect("router flags parse");
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    Running::spawn(|shutdown| async move {
        chat_router::run(config, listener, shutdown)
            .await
            .expect("the router runs");
    })
}

/// The next `user:online` or `user:offline` push about `user` (others are kept).
async fn presence_of(client: &mut Client, event: &str, user: &str) -> Value {
    loop {
        let push = client
            .expect_within(event, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {event} for {user}"));
        if push["userId"] == user {
            return push;
        }
    }
}

/// How the partner (`newcomer`, on gateway 1) comes to share a conversation with `member` (on
/// gateway 0).
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `member` makes a conversation with the newcomer.
    Made,
    /// `member` adds the newcomer to a conversation (`participant:add`).
    AddedByClient,
    /// The server API adds the newcomer to `member`'s conversation.
    AddedByApi,
    /// The newcomer joins `member`'s public room.
    JoinedPublic,
}

const SHAPES: [Shape; 4] = [
    Shape::Made,
    Shape::AddedByClient,
    Shape::AddedByApi,
    Shape::JoinedPublic,
];

impl Shape {
    /// Brings the two together; returns once the change is acked.
    async fn bring(self, setup: &Setup, member: &mut Client, newcomer: &mut Client, id: &str) {
        match self {
            Shape::Made => {
                create_room(member, &[id]).await;
            }
            Shape::AddedByClient => {
                let room = create_room(member, &[]).await;
                member
                    .ok(
                        "participant:add",
                        json!({ "conversationId": room, "userId": id }),
                    )
                    .await;
            }
            Shape::AddedByApi => {
                let room = create_room(member, &[]).await;
                let path = format!("/api/v1/conversations/{room}/participants");
                let body = json!({ "userId": id });
                let (status, answer) =
                    http(setup.api, "POST", &path, Some(API_KEY), Some(&body)).await;
                assert_eq!(status, 200, "{answer}");
            }
            Shape::JoinedPublic => {
                let room = create_public_room(member).await;
                newcomer
                    .ok("room:join", json!({ "conversationId": room }))
                    .await;
            }
        }
    }
}

async fn each_shape_tells_both_sides(worker_knows_routers: bool) {
    let setup = Setup::start(worker_knows_routers).await;
    for (n, shape) in SHAPES.into_iter().enumerate() {
        // The partner stays: each is told the other is online, once.
        let (ann, bob) = (format!("ann-{n}"), format!("bob-{n}"));
        let mut member = setup.client(0, &ann).await;
        let mut newcomer = setup.client(1, &bob).await;
        shape.bring(&setup, &mut member, &mut newcomer, &bob).await;
        presence_of(&mut member, "user:online", &bob).await;
        presence_of(&mut newcomer, "user:online", &ann).await;
        member
            .expect_none("user:online", Duration::from_millis(500))
            .await;
        println!("{shape:?}: both told the other is online");

        // The partner leaves right after the change is acked: the member is told it went
        // offline, after the router's offline delay.
        let (ann, bob) = (format!("ann-left-{n}"), format!("bob-left-{n}"));
        let mut member = setup.client(0, &ann).await;
        let mut newcomer = setup.client(1, &bob).await;
        shape.bring(&setup, &mut member, &mut newcomer, &bob).await;
        drop(newcomer);
        presence_of(&mut member, "user:offline", &bob).await;
        println!("{shape:?}: the partner who left at once is reported offline");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_every_new_shared_conversation() {
    each_shape_tells_both_sides(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_new_conversations_when_the_worker_knows_no_router() {
    each_shape_tells_both_sides(false).await;
}
