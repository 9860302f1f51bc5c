//! The session loop and its handlers driven without a socket: frames go in through a channel,
//! what the session sends is read from its outbox. NATS and the worker are real.

use std::net::{IpAddr, Ipv4Addr};

use chat_proto::testing::NatsServer;
use futures_util::stream::SplitSink;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::Node;
use crate::socket::outbox::Outbound;
use crate::testing::{self, WAIT};

/// NATS, a worker and a started node (no listener: sessions are driven directly).
struct Bench {
    node: Node,
    _worker: testing::Running,
    _dir: tempfile::TempDir,
    _nats: NatsServer,
}

async fn bench() -> Bench {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = testing::start_worker(&nats.url(), testing::db_path(&dir), &[]).await;
    let node = Node::start(testing::settings(&nats.url(), &[]))
        .await
        .expect("the node starts");
    Bench {
        node,
        _worker: worker,
        _dir: dir,
        _nats: nats,
    }
}

/// A session run on a channel of frames, its outbox read directly.
struct Driven {
    frames: Option<mpsc::Sender<Result<Message, tungstenite::Error>>>,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts a session of `user` (a token in the upgrade), or of nobody (`None`).
fn drive(bench: &Bench, user: Option<&str>) -> Driven {
    drive_with(bench, user, false)
}

/// [`drive`], with `resume=1` in the upgrade when `resume`.
fn drive_with(bench: &Bench, user: Option<&str>, resume: bool) -> Driven {
    let (frames, mut rx) = mpsc::channel(16);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let outbox = Arc::new(Outbox::new(64, Duration::from_secs(5)));
    let upgrade = upgrade::Upgrade {
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        token: user.map(testing::token),
        resume,
    };
    let shutdown = CancellationToken::new();
    let (gateway, queued, until) = (
        bench.node.gateway.clone(),
        Arc::clone(&outbox),
        shutdown.clone(),
    );
    // As `serve` runs a socket, the outbox read here instead of written to a socket.
    let task = tokio::spawn(async move {
        let mut stream = stream;
        let eviction = Arc::new(Eviction::default());
        if let Some(mut session) = open::open(gateway, &mut stream, upgrade, queued, eviction).await
        {
            let mut pending = FuturesOrdered::new();
            session.serve(&mut stream, &mut pending, until).await;
            session.end(pending).await;
        }
    });
    Driven {
        frames: Some(frames),
        outbox,
        shutdown,
        task,
    }
}

impl Driven {
    async fn send(&self, frame: Message) {
        let frames = self.frames.as_ref().expect("the client is still there");
        frames.send(Ok(frame)).await.expect("the session reads");
    }

    async fn request(&self, event: &str, id: &str, data: Value) {
        let frame = json!({ "event": event, "requestId": id, "data": data });
        self.send(Message::Text(frame.to_string().into())).await;
    }

    /// The next frame the session queued (pings skipped); a close is `{"close": code}`.
    async fn next(&self) -> Value {
        loop {
            let item = tokio::time::timeout(WAIT, self.outbox.next())
                .await
                .expect("the session answers in time")
                .expect("the outbox is open");
            match item {
                Outbound::Text(frame) | Outbound::Event { frame, .. } => {
                    return serde_json::from_str(&frame).expect("frames are JSON");
                }
                Outbound::Ping => continue,
                Outbound::Close(reason) => return json!({ "close": reason.code() }),
            }
        }
    }

    /// The answer to request `id`; other frames are skipped.
    async fn answer(&self, id: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["requestId"] == id {
                return frame;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_answers_each_frame_and_ends_when_the_client_leaves() {
    let bench = bench().await;
    let mut session = drive(&bench, Some("ann"));
    let connected = session.next().await;
    assert_eq!(connected["event"], "connected", "{connected}");
    assert_eq!(connected["data"]["userId"], "ann");

    session.request("ping", "p", json!({})).await;
    let pong = session.next().await;
    assert_eq!(pong["event"], "ack", "{pong}");
    assert_eq!(pong["data"]["event"], "pong");

    session.request("room:dance", "u", json!({})).await;
    let unknown = session.next().await;
    assert_eq!(unknown["data"]["code"], "PROTOCOL_ERROR", "{unknown}");
    assert_eq!(unknown["requestId"], "u");
    assert_eq!(unknown["data"]["originalEvent"], "room:dance");

    session
        .request("message:send", "v", json!({ "content": 3 }))
        .await;
    let invalid = session.next().await;
    assert_eq!(invalid["data"]["code"], "VALIDATION_ERROR", "{invalid}");
    assert_eq!(invalid["data"]["originalEvent"], "message:send");

    session.send(Message::Binary(vec![1, 2].into())).await;
    let binary = session.next().await;
    assert_eq!(binary["data"]["code"], "PROTOCOL_ERROR", "{binary}");

    // The client goes: the session ends and closes its outbox.
    session.frames = None;
    tokio::time::timeout(WAIT, session.task)
        .await
        .expect("the session ends when its frames end")
        .unwrap();
    assert!(session.outbox.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_answer_as_the_protocol_says() {
    let bench = bench().await;
    let session = drive(&bench, Some("ann"));
    assert_eq!(session.next().await["event"], "connected");

    session
        .request("room:create", "c", json!({ "participantIds": ["bob"] }))
        .await;
    let created = session.answer("c").await;
    let room = created["data"]["conversation"]["id"].as_str().unwrap();
    assert_eq!(
        created["data"]["conversation"]["participantIds"],
        json!(["ann", "bob"])
    );

    session
        .request(
            "message:send",
            "s",
            json!({ "conversationId": room, "content": "hi" }),
        )
        .await;
    let sent = session.answer("s").await;
    assert_eq!(sent["event"], "ack", "{sent}");
    assert_eq!(sent["data"]["message"]["content"], "hi");
    assert!(sent["data"]["message"]["id"].as_u64().unwrap() > 0);

    let refusals = [
        (
            "typing:start",
            json!({ "conversationId": "nowhere" }),
            "NOT_FOUND",
        ),
        (
            "presence:update",
            json!({ "status": "away" }),
            "UNAVAILABLE",
        ),
        ("resume", json!({ "resumeToken": "x" }), "PROTOCOL_ERROR"),
        (
            "auth",
            json!({ "token": testing::token("bob") }),
            "FORBIDDEN",
        ),
        (
            "messages:sync",
            json!({ "conversationId": room, "limit": 0 }),
            "VALIDATION_ERROR",
        ),
    ];
    for (event, data, code) in refusals {
        session.request(event, "r", data).await;
        let answer = session.answer("r").await;
        assert_eq!(answer["data"]["code"], code, "{event}: {answer}");
        assert_eq!(answer["data"]["originalEvent"], event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refused_for_its_data_may_be_sent_again() {
    let bench = bench().await;
    let first = drive(&bench, Some("ann"));
    let connected = first.next().await;
    let token = connected["data"]["resumeToken"]
        .as_str()
        .unwrap()
        .to_owned();
    // A connection made with resume=1 waits for its `resume`; a malformed one keeps it waiting.
    let session = drive_with(&bench, Some("ann"), true);
    assert_eq!(session.next().await["event"], "connected");
    session
        .request(
            "resume",
            "r1",
            json!({ "resumeToken": token, "positions": "all" }),
        )
        .await;
    assert_eq!(
        session.answer("r1").await["data"]["code"],
        "VALIDATION_ERROR"
    );
    let positions = json!({ "resumeToken": token, "positions": {} });
    session.request("resume", "r2", positions).await;
    let resumed = session.answer("r2").await;
    assert_eq!(resumed["event"], "ack", "{resumed}");
    assert_eq!(resumed["data"]["recovered"], true, "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_token_is_told_then_closed() {
    let bench = bench().await;
    let session = drive(&bench, None);
    // The test gateways wait 1 s for `auth`.
    let told = session.next().await;
    assert_eq!(told["data"]["code"], "UNAUTHORIZED", "{told}");
    assert_eq!(told["data"]["message"], "no token received in time");
    assert_eq!(session.next().await["close"], 4408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_the_client_then_closes_with_1012() {
    let bench = bench().await;
    let session = drive(&bench, Some("ann"));
    assert_eq!(session.next().await["event"], "connected");
    session.shutdown.cancel();
    let draining = session.next().await;
    assert_eq!(draining["event"], "server:draining", "{draining}");
    // The test gateways drain for 1 s.
    assert!(draining["data"]["reconnectAfterMs"].as_u64().unwrap() < 1_000);
    assert_eq!(session.next().await["close"], 1012);
}

/// The size of the future `make` would return, without calling it.
fn future_size<F: FnOnce() -> Fut, Fut: Future>(_: F) -> usize {
    std::mem::size_of::<Fut>()
}

/// Every idle socket holds its connection task and its writer task: their futures' sizes are
/// most of its memory (docs/BENCHMARKS.md, idle memory), so they must not grow unnoticed.
#[test]
#[allow(unreachable_code, clippy::diverging_sub_expression)]
fn an_idle_sockets_tasks_stay_small() {
    let connection = future_size(|| {
        let _gateway: Gateway = unreachable!("only the type matters");
        let stream: TcpStream = unreachable!("only the type matters");
        serve(
            _gateway,
            stream,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            None,
            CancellationToken::new(),
        )
    });
    let writer = future_size(|| {
        let _sink: SplitSink<WebSocketStream<TcpStream>, Message> =
            unreachable!("only the type matters");
        let outbox: Arc<Outbox> = unreachable!("only the type matters");
        writer::write_loop(_sink, outbox, Arc::new(Eviction::default()))
    });
    // Measured before the session was split into modules (42de98a, debug build): 1,680 and 512.
    assert!(
        connection <= 1_680,
        "the connection task grew to {connection} bytes"
    );
    assert!(writer <= 512, "the writer task grew to {writer} bytes");
}
