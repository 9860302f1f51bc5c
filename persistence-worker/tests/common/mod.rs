//! What the worker's tests share: a chat message event, the wait for the worker's start, and
//! reading the store through a running worker (as the gateways do).

#![allow(dead_code, unreachable_pub)] // Each test file uses part of it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_proto::subjects;
use chat_proto::v1::{
    ChatMessage, ConversationEvent, HistoryReply, HistoryRequest, MessageCreated,
    conversation_event::Kind,
};
use prost::Message as _;

/// A message of alice's in conversation `c1`.
pub fn message(content: String) -> ConversationEvent {
    ConversationEvent {
        seq: 0,
        conversation_id: "c1".into(),
        kind: Some(Kind::MessageCreated(MessageCreated {
            message: Some(ChatMessage {
                sender_id: "alice".into(),
                r#type: "chat".into(),
                content,
                ..Default::default()
            }),
        })),
    }
}

/// Waits until the worker is up: it created the stream and answers requests (it subscribes to
/// them last, after its streams and consumers).
pub async fn wait_for_worker(client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    let probe = HistoryRequest {
        conversation_id: "probe".into(),
        limit: 1,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answered = client
            .request(subjects::rpc::HISTORY, probe.encode_to_vec().into())
            .await
            .is_ok();
        if answered && js.get_stream(subjects::STREAM).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message a running worker has stored in conversation `c1`, in id order, and the store's
/// committed position, read page by page through the worker's history request.
pub async fn stored(client: &async_nats::Client) -> (Vec<ChatMessage>, u64) {
    let mut messages: Vec<ChatMessage> = Vec::new();
    let mut committed = None;
    loop {
        let request = HistoryRequest {
            conversation_id: "c1".into(),
            after_id: Some(messages.last().map_or(0, |m| m.id)),
            before_id: None,
            limit: 100,
        };
        let call = client.request(subjects::rpc::HISTORY, request.encode_to_vec().into());
        let reply = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the worker answers in time")
            .expect("the worker answers");
        let page = HistoryReply::decode(reply.payload).expect("a history reply");
        // The position read before the first page: every message up to it is on the pages.
        let committed = *committed.get_or_insert(page.committed_seq);
        if page.messages.is_empty() {
            return (messages, committed);
        }
        messages.extend(page.messages);
    }
}

/// Waits (at most `within`) until a running worker has stored at least `count` messages.
pub async fn wait_for_stored(
    client: &async_nats::Client,
    count: usize,
    within: Duration,
) -> (Vec<ChatMessage>, u64) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (messages, committed) = stored(client).await;
        if messages.len() >= count || tokio::time::Instant::now() > deadline {
            return (messages, committed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker process, killed (SIGKILL) when dropped.
pub struct WorkerProcess(Child);

impl WorkerProcess {
    /// Starts `chat-persistence-worker` on `nats_url` with `args`.
    pub fn start(nats_url: &str, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-persistence-worker"))
            .args(["--nats-url", nats_url, "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts");
        Self(child)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A writer at a steady 1,000 events a second of messages `n-<n>` for each `n` of `numbers`;
/// returns the numbers the stream acknowledged.
pub fn steady_writer(
    nats_url: String,
    numbers: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let client = async_nats::connect(nats_url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let mut acked = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for n in numbers {
            tick.tick().await;
            if chat_proto::bus::publish(&js, &client, message(format!("n-{n}")), None)
                .await
                .is_ok()
            {
                acked.push(n);
            }
        }
        acked
    })
}

/// `(missing, duplicated)`: acked numbers not among `contents`, and contents stored more than
/// once.
pub fn missing_and_duplicated(acked: &[usize], contents: &[String]) -> (usize, usize) {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for content in contents {
        *counts.entry(content).or_default() += 1;
    }
    let missing = acked
        .iter()
        .filter(|n| !counts.contains_key(format!("n-{n}").as_str()))
        .count();
    let duplicated = counts.values().map(|c| c - 1).sum();
    (missing, duplicated)
}
