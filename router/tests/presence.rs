//! The router with everything real: a `chat-router` process, `nats-server`, the worker, gateways
//! (in this process, or as `chat-gateway` processes where one is killed) and WebSocket clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_gateway::testing::client::{Client, create_room, get, http, upgrade_request};
use chat_gateway::testing::{self, Gateway, Running, SECRET, WAIT};
use chat_proto::testing::NatsServer;
use serde_json::{Value, json};

/// The routers' lease in these tests: a dead node's users go offline within it.
const LEASE: Duration = Duration::from_secs(2);
/// A wait long enough for a presence change that should not come.
const QUIET: Duration = Duration::from_millis(1_500);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process killed when dropped.
struct Process(Child);

impl Process {
    /// SIGKILL, then reaped.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `chat-router` process on a fixed port (a restarted one takes the same).
struct Router {
    addr: SocketAddr,
    nats_url: String,
    limit: u32,
    process: Option<Process>,
    started: Instant,
}

impl Router {
    async fn start(nats_url: &str, limit: u32) -> Self {
        let mut router = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            nats_url: nats_url.to_owned(),
            limit,
            process: None,
            started: Instant::now(),
        };
        router.restart().await;
        router
    }

    async fn restart(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-router"))
            .args([
                "--listen",
                &self.addr.to_string(),
                "--nats-url",
                &self.nats_url,
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--lease", &format!("{}ms", LEASE.as_millis())])
            .args(["--presence-window", "100ms", "--offline-delay", "500ms"])
            .args(["--max-sessions-per-user", &self.limit.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chat-router starts");
        self.process = Some(Process(child));
        self.started = Instant::now();
        wait_listening(self.addr).await;
    }

    /// Waits out the grace after the start (a lease), during which presence changes are held
    /// while the gateways re-register.
    async fn grace(&self) {
        tokio::time::sleep(
            (self.started + LEASE + Duration::from_millis(300))
                .saturating_duration_since(Instant::now()),
        )
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// NATS, the worker, a router and in-process gateways attached to it.
struct Setup {
    nats: NatsServer,
    _dir: tempfile::TempDir,
    _worker: Running,
    routers: Vec<Router>,
    gateways: Vec<Gateway>,
}

impl Setup {
    async fn start(gateways: usize, limit: u32) -> Self {
        Self::start_with(gateways, limit, 1, &[]).await
    }

    /// With `routers` routers sharing the users, and more `flags` for the gateways.
    async fn start_with(gateways: usize, limit: u32, routers: usize, flags: &[&str]) -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut started = Vec::new();
        for _ in 0..routers {
            started.push(Router::start(&nats.url(), limit).await);
        }
        let router_url = started
            .iter()
            .map(Router::url)
            .collect::<Vec<_>>()
            .join(",");
        let worker_flags = ["--router-urls", router_url.as_str()];
        let worker =
            testing::start_worker(&nats.url(), testing::db_path(&dir), &worker_flags).await;
        let mut setup = Self {
            nats,
            _dir: dir,
            _worker: worker,
            routers: started,
            gateways: Vec::new(),
        };
        for i in 0..gateways {
            let node_id = format!("gw-{i}");
            let mut all = vec!["--router-urls", router_url.as_str(), "--node-id", &node_id];
            all.extend_from_slice(flags);
            let gateway = testing::start_gateway(&setup.nats.url(), &all).await;
            setup.gateways.push(gateway);
        }
        for gateway in &setup.gateways {
            wait_attached(gateway.admin).await;
        }
        for router in &setup.routers {
            router.grace().await;
        }
        setup
    }

    async fn client(&self, gateway: usize, user: &str) -> Client {
        Client::connect(&self.gateways[gateway].url(), user).await
    }
}

async fn wait_attached(admin: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while !get(admin, "/healthz").await.contains("router: attached") {
        assert!(
            Instant::now() < deadline,
            "the gateway did not attach to the router"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `userId` of a presence push.
fn user_of(push: &Value) -> &str {
    push["userId"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_user_on_two_nodes_is_online_once_and_offline_once() {
    let setup = Setup::start(2, 5).await;
    let mut bob = setup.client(0, "bob").await;
    // Two shared conversations: still one event each way.
    create_room(&mut bob, &["alice"]).await;
    create_room(&mut bob, &["alice"]).await;

    let phone = setup.client(1, "alice").await;
    assert_eq!(user_of(&bob.expect("user:online").await), "alice");
    let laptop = setup.client(0, "alice").await;
    bob.expect_none("user:online", QUIET).await;

    drop(phone);
    bob.expect_none("user:offline", QUIET).await;
    drop(laptop);
    let offline = bob.expect("user:offline").await;
    assert_eq!(user_of(&offline), "alice");
    assert!(offline["timestamp"].is_string());
    bob.expect_none("user:offline", QUIET).await;
}

#[tokio::test]
async fn invisible_users_are_reported_offline() {
    let setup = Setup::start(2, 5).await;
    let mut bob = setup.client(0, "bob").await;
    let room = create_room(&mut bob, &["alice"]).await;
    let mut alice = setup.client(1, "alice").await;
    bob.expect("user:online").await;

    alice
        .ok("presence:update", json!({ "status": "away" }))
        .await;
    let changed = bob.expect("presence:changed").await;
    assert_eq!(
        (user_of(&changed), changed["status"].as_str()),
        ("alice", Some("away"))
    );

    alice
        .ok("presence:update", json!({ "status": "invisible" }))
        .await;
    assert_eq!(user_of(&bob.expect("user:offline").await), "alice");
    let statuses = bob
        .ok(
            "presence:query",
            json!({ "userIds": ["alice", "bob", "nobody"] }),
        )
        .await;
    assert_eq!(
        statuses["statuses"],
        json!({ "alice": "offline", "bob": "online", "nobody": "offline" })
    );
    let online = bob
        .ok("room:online", json!({ "conversationId": room }))
        .await;
    assert_eq!(online["userIds"], json!(["bob"]));
    // Alice herself is still connected and served.
    alice
        .ok(
            "message:send",
            json!({ "conversationId": room, "content": "psst" }),
        )
        .await;

    alice
        .ok("presence:update", json!({ "status": "online" }))
        .await;
    assert_eq!(user_of(&bob.expect("user:online").await), "alice");
    let online = bob
        .ok("room:online", json!({ "conversationId": room }))
        .await;
    assert_eq!(online["userIds"], json!(["alice", "bob"]));
    assert_eq!(
        alice
            .fails("presence:update", json!({ "status": "asleep" }))
            .await,
        "VALIDATION_ERROR"
    );
}

/// Connects `user` and reads the first frame (`connected`, or the error of a refusal).
async fn first_frame(url: &str, user: &str) -> (Client, Value) {
    let request = upgrade_request(url, user);
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut client = Client::from_ws(ws);
    let first = client.next_frame(WAIT).await.expect("an answer");
    (client, first)
}

#[tokio::test]
async fn the_session_limit_holds_across_nodes() {
    let setup = Setup::start(2, 3).await;
    let _a = setup.client(0, "carol").await;
    let b = setup.client(1, "carol").await;
    let _c = setup.client(0, "carol").await;

    let (mut refused, error) = first_frame(&setup.gateways[1].url(), "carol").await;
    assert_eq!(error["event"], "error", "{error}");
    assert_eq!(error["data"]["code"], "FORBIDDEN");
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );
    assert_eq!(refused.expect_close().await, Some(4429));
    // Other users are not affected.
    setup.client(1, "dave").await;

    drop(b);
    // The close reaches the router shortly after the socket ends; then a new one fits.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_client, first) = first_frame(&setup.gateways[1].url(), "carol").await;
        if first["event"] == "connected" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed session still counts: {first}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of `chat-gateway`, built next to `chat-router`.
fn gateway_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_chat-router")).with_file_name("chat-gateway");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "chat-gateway", "--bin", "chat-gateway"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "chat-gateway builds");
    }
    path
}

#[tokio::test]
async fn a_killed_gateway_makes_its_users_offline_within_the_lease() {
    let setup = Setup::start(1, 5).await;
    let (ws, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let mut doomed = Process(
        Command::new(gateway_binary())
            .args([
                "--listen",
                &ws.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--nats-url", &setup.nats.url(), "--jwt-secret", SECRET])
            .args(testing::UNLIMITED)
            .args([
                "--router-urls",
                &setup.routers[0].url(),
                "--node-id",
                "doomed",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("chat-gateway starts"),
    );
    wait_listening(ws).await;
    wait_attached(admin).await;

    let mut bob = setup.client(0, "bob").await;
    create_room(&mut bob, &["alice"]).await;
    let _alice = Client::connect(&format!("ws://{ws}/ws"), "alice").await;
    bob.expect("user:online").await;

    doomed.kill();
    let killed = Instant::now();
    let offline = bob
        .expect_within("user:offline", LEASE * 3)
        .await
        .expect("alice goes offline after her node dies");
    let took = killed.elapsed();
    println!("offline {took:?} after SIGKILL (lease {LEASE:?})");
    assert_eq!(user_of(&offline), "alice");
    assert!(
        took >= LEASE / 2,
        "offline before the lease could lapse: {took:?}"
    );
    let statuses = bob
        .ok("presence:query", json!({ "userIds": ["alice"] }))
        .await;
    assert_eq!(statuses["statuses"]["alice"], "offline");
}

#[tokio::test]
async fn a_router_restart_loses_no_session_and_sends_no_false_offline() {
    let mut setup = Setup::start(2, 5).await;
    let mut bob = setup.client(0, "bob").await;
    let room = create_room(&mut bob, &["alice"]).await;
    let mut alice = setup.client(1, "alice").await;
    bob.expect("user:online").await;

    setup.routers[0].kill();
    // Chat goes on without the router; health says it is missing.
    let deadline = Instant::now() + WAIT;
    while !get(setup.gateways[0].admin, "/healthz")
        .await
        .contains("unreachable")
    {
        assert!(
            Instant::now() < deadline,
            "health does not report the router's absence"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A numbered sequence while the router is away: all of it arrives, once, in order.
    let mut acked = Vec::new();
    for n in 0..50 {
        let data = json!({ "conversationId": room, "content": format!("n-{n}") });
        if alice.request("message:send", data).await["event"] == "ack" {
            acked.push(n);
        }
    }
    let mut delivered = Vec::new();
    while let Some(push) = bob.expect_within("message:new", QUIET).await {
        let content = push["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        delivered.extend(
            content
                .strip_prefix("n-")
                .and_then(|n| n.parse::<u64>().ok()),
        );
    }
    let missing = acked.iter().filter(|n| !delivered.contains(n)).count();
    let duplicated = delivered.len()
        - delivered
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
    println!(
        "kill -9 router: acked {}, delivered {}, missing {missing}, duplicated {duplicated}",
        acked.len(),
        delivered.len()
    );
    assert_eq!((missing, duplicated), (0, 0));
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(
        alice
            .fails("presence:query", json!({ "userIds": ["bob"] }))
            .await,
        "UNAVAILABLE"
    );
    // A session opened meanwhile is admitted (the limit fails open) and registered later.
    let mut erin = setup.client(0, "erin").await;

    setup.routers[0].restart().await;
    for gateway in &setup.gateways {
        wait_attached(gateway.admin).await;
    }
    bob.expect_none("user:offline", LEASE + QUIET).await;
    let statuses = erin
        .ok(
            "presence:query",
            json!({ "userIds": ["alice", "bob", "erin"] }),
        )
        .await;
    assert_eq!(
        statuses["statuses"],
        json!({ "alice": "online", "bob": "online", "erin": "online" })
    );

    // After the grace, presence changes flow again.
    drop(alice);
    assert_eq!(user_of(&bob.expect("user:offline").await), "alice");
}

#[tokio::test]
async fn presence_follows_conversations_joined_while_connected() {
    let setup = Setup::start(2, 5).await;
    let mut alice = setup.client(1, "alice").await;
    let mut bob = setup.client(0, "bob").await;
    alice.expect_none("user:online", QUIET).await;
    create_room(&mut bob, &["alice"]).await;
    alice.expect("conversation:new").await;
    // Bob's audience now includes Alice, although he connected before the room existed.
    drop(bob);
    assert_eq!(user_of(&alice.expect("user:offline").await), "bob");
}

#[tokio::test]
async fn a_partner_who_leaves_as_the_room_is_made_is_reported_offline() {
    let setup = Setup::start(2, 5).await;
    for attempt in 0..5 {
        let (alice_name, bob_name) = (format!("alice-{attempt}"), format!("bob-{attempt}"));
        let mut alice = setup.client(0, &alice_name).await;
        let bob = setup.client(1, &bob_name).await;
        // Online for longer than the presence window, so that his leaving is a change.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Alice asks for the room and Bob is gone a moment later: his close may reach the
        // router before the room does, or before his gateway hears that he is in it.
        let create = json!({
            "event": "room:create",
            "requestId": "create",
            "data": { "participantIds": [bob_name] },
        });
        alice.send_text(create.to_string()).await;
        drop(bob);
        let ack = alice.answer("create").await;
        assert_eq!(ack["event"], "ack", "{ack}");
        let offline = alice.expect("user:offline").await;
        assert_eq!(user_of(&offline), bob_name, "attempt {attempt}");
    }
}

#[tokio::test]
async fn room_online_names_every_member_of_a_big_room() {
    let setup = Setup::start(2, 5).await;
    let mut members = Vec::new();
    for i in 0..150 {
        members.push(setup.client(i % 2, &format!("member-{i:03}")).await);
    }
    let others: Vec<String> = (1..150).map(|i| format!("member-{i:03}")).collect();
    let room = create_room(
        &mut members[0],
        &others.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let online = members[0]
        .ok("room:online", json!({ "conversationId": room }))
        .await;
    let online = online["userIds"].as_array().unwrap();
    assert_eq!(online.len(), 150, "a room of 150, all connected");
}

#[tokio::test]
async fn events_for_one_user_go_only_to_the_nodes_that_hold_them() {
    use futures_util::StreamExt as _;
    let setup = Setup::start(2, 5).await;
    let nats = async_nats::connect(setup.nats.url()).await.unwrap();
    let mut to_nodes = nats.subscribe("chat.node.*.users").await.unwrap();
    let mut to_all = nats
        .subscribe(chat_proto::subjects::ALL_USERS_LIVE)
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut alice = setup.client(1, "alice").await;
    let mut bob = setup.client(1, "bob").await;

    create_room(&mut bob, &["alice"]).await;
    alice.expect("conversation:new").await;
    // One event for each member, both on gw-1; none to every node.
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, to_nodes.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            message.subject.as_str(),
            chat_proto::subjects::node_users("gw-1")
        );
    }
    let broadcast = tokio::time::timeout(QUIET, to_all.next()).await;
    assert!(broadcast.is_err(), "an event went to every node");
}

#[tokio::test]
async fn two_routers_share_the_users() {
    let setup = Setup::start_with(2, 2, 2, &[]).await;
    let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    let mut observer = setup.client(0, "observer").await;
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    create_room(&mut observer, &names).await;
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients.push(setup.client(i % 2, user).await);
        assert_eq!(user_of(&observer.expect("user:online").await), user);
    }
    // Each router owns some of them, and the limit holds for every user whatever its owner.
    let urls: Vec<String> = setup.routers.iter().map(Router::url).collect();
    let routers = chat_proto::routing::Routers::new(&urls, WAIT).unwrap();
    let owners: std::collections::HashSet<usize> = users.iter().map(|u| routers.owner(u)).collect();
    assert_eq!(owners.len(), 2, "both routers own some of the users");
    for (i, user) in users.iter().enumerate() {
        clients.push(setup.client((i + 1) % 2, user).await);
        let (_refused, error) = first_frame(&setup.gateways[i % 2].url(), user).await;
        assert_eq!(error["data"]["code"], "FORBIDDEN", "{user}: {error}");
    }
    let stats = routers.cluster_stats().await.unwrap();
    assert_eq!(stats.users_online, 7);
    assert_eq!(stats.nodes.iter().map(|n| n.sessions).sum::<u64>(), 13);
    let statuses = observer
        .ok("presence:query", json!({ "userIds": names }))
        .await;
    for user in &users {
        assert_eq!(statuses["statuses"][user], "online");
    }
}

#[tokio::test]
async fn a_client_that_stops_answering_is_cleaned_up_everywhere_within_the_timeout() {
    let flags = ["--ping-interval", "200ms", "--idle-timeout", "1s"];
    let setup = Setup::start_with(2, 5, 1, &flags).await;
    let mut bob = setup.client(0, "bob").await;
    let room = create_room(&mut bob, &["alice"]).await;
    let mut alice = setup.client(1, "alice").await;
    bob.expect("user:online").await;
    alice
        .ok("typing:start", json!({ "conversationId": room }))
        .await;
    assert_eq!(bob.expect("typing").await["isTyping"], true);

    // Alice's phone goes silent: no frame, no pong (a client answers pings only as it reads).
    let silent = Instant::now();
    let typing = bob
        .expect_within("typing", WAIT)
        .await
        .expect("typing ends");
    assert_eq!(
        (user_of(&typing), typing["isTyping"].as_bool()),
        ("alice", Some(false))
    );
    let offline = bob
        .expect_within("user:offline", WAIT)
        .await
        .expect("alice goes offline");
    assert_eq!(user_of(&offline), "alice");
    let took = silent.elapsed();
    println!("silent client: typing ended and offline {took:?} after it went silent");
    // The idle timeout (1 s), then the router's offline delay (0.5 s) and window.
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let metrics = get(setup.gateways[1].admin, "/metrics").await;
    assert!(metrics.contains("chat_gateway_connections 0"), "{metrics}");
    assert!(metrics.contains("chat_gateway_rooms 0"), "{metrics}");
    drop(alice);
}

#[tokio::test]
async fn the_server_api_answers_presence_from_the_routers() {
    let setup = Setup::start_with(2, 5, 1, &testing::api_flags()).await;
    let api = setup.gateways[1].api.expect("the server API listens");
    let mut alice = setup.client(0, "alice").await;
    let _bob = setup.client(1, "bob").await;
    let mut carol = setup.client(0, "carol").await;
    let room = create_room(&mut alice, &["bob", "carol", "dave"]).await;
    carol
        .ok("presence:update", json!({"status": "invisible"}))
        .await;
    alice.ok("presence:update", json!({"status": "away"})).await;

    let query = "/api/v1/presence?userIds=alice,bob,carol,dave";
    let deadline = Instant::now() + WAIT;
    let expected = json!({"alice": "away", "bob": "online", "carol": "offline", "dave": "offline"});
    loop {
        let (status, answer) = http(api, "GET", query, Some(testing::API_KEY), None).await;
        assert_eq!(status, 200, "{answer}");
        if answer["statuses"] == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence through the API: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let online = format!("/api/v1/conversations/{room}/online");
    let (status, answer) = http(api, "GET", &online, Some(testing::API_KEY), None).await;
    assert_eq!(
        (status, &answer["userIds"]),
        (200, &json!(["alice", "bob"]))
    );
    let (status, answer) = http(
        api,
        "GET",
        "/api/v1/conversations/none/online",
        Some(testing::API_KEY),
        None,
    )
    .await;
    assert_eq!((status, &answer["code"]), (404, &json!("NOT_FOUND")));
}

#[tokio::test]
async fn the_admin_view_lists_every_node_with_its_connections() {
    let setup = Setup::start_with(2, 5, 1, &testing::api_flags()).await;
    let api = setup.gateways[0].api.expect("the server API listens");
    let _alice = setup.client(0, "alice").await;
    let _bob = setup.client(1, "bob").await;
    let _carol = setup.client(1, "carol").await;
    let (status, answer) = http(
        api,
        "GET",
        "/api/v1/admin/nodes",
        Some(testing::API_KEY),
        None,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = http(
            api,
            "GET",
            "/api/v1/admin/nodes",
            Some(testing::ADMIN_KEY),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let mut nodes: Vec<(String, u64)> = answer["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["nodeId"].as_str().unwrap().to_owned(),
                    n["connections"].as_u64().unwrap(),
                )
            })
            .collect();
        nodes.sort();
        let expected = vec![("gw-0".to_owned(), 1), ("gw-1".to_owned(), 2)];
        if nodes == expected && answer["connections"] == 3 && answer["usersOnline"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "nodes: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, health) = http(
        api,
        "GET",
        "/api/v1/admin/health",
        Some(testing::ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
}
