//! The hub in process, on the in-memory bus: fan-out to local members, nothing twice, the fill
//! after a loss, a socket made a member getting what came before its node joined, the resync
//! after a reconnection, and the replay of a resume.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_proto::v1::conversation_event::Kind;
use serde_json::Value;

use super::memory::MemoryBus;
use super::*;
use crate::socket::outbox::{Outbound, Outbox};
use crate::socket::{Eviction, SocketHandle};

/// How long a test waits for what should come.
const WAIT: Duration = Duration::from_secs(5);

struct Node {
    hub: Hub,
    bus: Arc<MemoryBus>,
    signals: mpsc::Sender<BusSignal>,
}

async fn node() -> Node {
    let bus = Arc::new(MemoryBus::default());
    let hub = Hub::new(
        Arc::clone(&bus) as Arc<dyn Bus>,
        Arc::clone(&bus) as Arc<dyn Directory>,
        Cache::new(1_000),
        None,
        CancellationToken::new(),
        100,
    );
    let (signals, rx) = mpsc::channel(8);
    hub.start("node-1", rx).await.expect("the hub starts");
    Node { hub, bus, signals }
}

impl Node {
    /// A registered socket of `user_id`.
    fn socket(&self, id: u64, user_id: &str) -> SocketHandle {
        let outbox = Arc::new(Outbox::new(64, Duration::from_secs(5)));
        let socket = SocketHandle::new(id, user_id.into(), outbox, Arc::new(Eviction::default()));
        self.hub.register(&socket);
        socket
    }
}

fn message(conversation_id: &str, content: &str) -> v1::ConversationEvent {
    v1::ConversationEvent::new(
        conversation_id.to_owned(),
        Kind::MessageCreated(v1::MessageCreated {
            message: Some(v1::ChatMessage {
                conversation_id: conversation_id.to_owned(),
                sender_id: "ann".into(),
                r#type: "chat".into(),
                content: content.into(),
                ..Default::default()
            }),
        }),
    )
}

/// The frames `socket` is given within `wait`, as JSON.
async fn frames(socket: &SocketHandle, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut frames = Vec::new();
    while tokio::time::Instant::now() < deadline {
        match socket.outbox().try_pop() {
            Some(Outbound::Text(frame) | Outbound::Event { frame, .. }) => {
                frames.push(serde_json::from_str(&frame).expect("frames are JSON"));
            }
            Some(_) => {}
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    frames
}

/// The contents of the `message:new` frames among `frames`, in order.
fn contents(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .filter(|f| f["event"] == "message:new")
        .map(|f| f["data"]["message"]["content"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn an_event_reaches_every_local_member_once() {
    let node = node().await;
    let (ann, bob, other) = (
        node.socket(1, "ann"),
        node.socket(2, "bob"),
        node.socket(3, "cat"),
    );
    node.hub.join(&ann, "room").await.unwrap();
    node.hub.join(&bob, "room").await.unwrap();
    node.hub.join(&other, "elsewhere").await.unwrap();
    let event = node.bus.log(message("room", "hello"));
    node.bus.deliver(&event);
    // Delivered twice on the bus (a fill and the live event, say): given once.
    node.bus.deliver(&event);
    for socket in [&ann, &bob] {
        assert_eq!(
            contents(&frames(socket, Duration::from_millis(200)).await),
            ["hello"]
        );
    }
    assert!(frames(&other, Duration::from_millis(50)).await.is_empty());
}

#[tokio::test]
async fn after_a_loss_each_room_fills_what_it_missed_in_order() {
    let node = node().await;
    let ann = node.socket(1, "ann");
    node.hub.join(&ann, "room").await.unwrap();
    node.bus.publish(message("room", "one"));
    assert_eq!(
        contents(&frames(&ann, Duration::from_millis(200)).await),
        ["one"]
    );
    // Two events the node never heard live, then the client library's slow-consumer signal.
    node.bus.log(message("room", "two"));
    node.bus.log(message("room", "three"));
    node.signals.send(BusSignal::SlowConsumer).await.unwrap();
    let filled = frames(&ann, Duration::from_millis(500)).await;
    assert_eq!(contents(&filled), ["two", "three"]);
    assert_eq!(node.hub.stats().num_filled.get(), 2);
    // A live copy of a filled event arriving late is not given again.
    let (mut third, _) = node.bus.events_after("room", 2, 1).await.unwrap();
    node.bus.deliver(&third.remove(0));
    assert!(contents(&frames(&ann, Duration::from_millis(100)).await).is_empty());
}

#[tokio::test]
async fn a_member_made_after_a_message_gets_it_before_later_ones() {
    let node = node().await;
    let ann = node.socket(1, "ann");
    // The event that made Ann a member, then a message sent to the room before her node had
    // joined it (the node had no member there: it heard neither).
    let added = Kind::ParticipantAdded(v1::ParticipantAdded {
        user_id: "ann".into(),
        at_ms: 0,
    });
    let member_since = node
        .bus
        .publish(v1::ConversationEvent::new("room".into(), added));
    node.bus.publish(message("room", "sent right after"));
    let conversation = v1::Conversation {
        id: "room".into(),
        participant_ids: vec!["ann".into(), "bob".into()],
        ..Default::default()
    };
    let joined = v1::ConversationJoined {
        conversation: Some(conversation),
        created: false,
        seq: member_since,
    };
    node.bus.tell_user(&v1::UserEvent {
        user_id: "ann".into(),
        kind: Some(v1::user_event::Kind::Joined(joined)),
    });
    let later = tokio::time::timeout(WAIT, async {
        while !node.hub.is_joined(ann.id, "room") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(later.is_ok(), "the user event joins the socket");
    node.bus.publish(message("room", "live"));
    let given = frames(&ann, Duration::from_millis(300)).await;
    assert_eq!(given[0]["event"], "conversation:joined");
    assert_eq!(contents(&given), ["sent right after", "live"]);
}

#[tokio::test]
async fn after_a_reconnection_a_users_rooms_follow_the_directory() {
    let node = node().await;
    let ann = node.socket(1, "ann");
    node.hub.join(&ann, "left-meanwhile").await.unwrap();
    let added = v1::Conversation {
        id: "added-meanwhile".into(),
        ..Default::default()
    };
    node.bus.set_conversations("ann", vec![added]);
    node.signals.send(BusSignal::Disconnected).await.unwrap();
    node.signals.send(BusSignal::Connected).await.unwrap();
    let given = frames(&ann, Duration::from_millis(300)).await;
    let events: Vec<&str> = given.iter().filter_map(|f| f["event"].as_str()).collect();
    assert!(events.contains(&"conversation:removed"), "{events:?}");
    assert!(events.contains(&"conversation:joined"), "{events:?}");
    let rooms: Vec<String> = node
        .hub
        .rooms_of(ann.id)
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(rooms, ["added-meanwhile"]);
}

#[tokio::test]
async fn a_resume_replays_what_the_socket_missed_and_says_how_much() {
    let node = node().await;
    let ann = node.socket(1, "ann");
    node.hub.join(&ann, "room").await.unwrap();
    let seen = node.bus.log(message("room", "seen")).seq;
    node.bus.log(message("room", "missed 1"));
    node.bus.log(message("room", "missed 2"));
    node.bus.log(message("other", "not ann's"));
    let positions = BTreeMap::from([("room".to_owned(), seen), ("other".to_owned(), 0)]);
    let recovery = crate::session::resume::replay(&node.hub, ann.id, &positions)
        .await
        .expect("the replay reads");
    let replayed: Vec<Value> = recovery
        .replay
        .frames
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(contents(&replayed), ["missed 1", "missed 2"]);
    // Only the conversations the socket is in.
    assert_eq!(recovery.report.len(), 1);
    assert_eq!(recovery.report["room"].replayed, 2);
    assert!(recovery.report["room"].complete);
}
