//! An in-memory bus and directory for the hub's unit tests, as a broker's in-memory engine: exact
//! subjects and one `*` token, a log that numbers events as the stream does, and a directory of
//! users' conversations. A test publishes (log and live), or only logs (a live event lost).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use chat_proto::subjects;
use chat_proto::v1::{self, ConversationEvent};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use prost::Message as _;
use tokio::sync::mpsc;

use super::bus::{Bus, Directory, Subscription};
use crate::history::ReadError;
use crate::worker::CallError;

/// Messages a subscription holds before more are dropped (as a slow consumer's are).
const BUFFER: usize = 1_024;

/// Subjects, a log of conversation events and users' conversations, in memory.
#[derive(Default)]
pub(super) struct MemoryBus {
    subscribers: Mutex<Vec<(String, mpsc::Sender<async_nats::Message>)>>,
    log: Mutex<Vec<ConversationEvent>>,
    conversations: Mutex<HashMap<String, Vec<v1::Conversation>>>,
}

impl MemoryBus {
    /// Appends `event` to the log, numbered after the last; the event as logged.
    pub(super) fn log(&self, mut event: ConversationEvent) -> ConversationEvent {
        let mut log = self.log.lock().expect("log lock poisoned");
        event.seq = log.len() as u64 + 1;
        log.push(event.clone());
        event
    }

    /// Publishes `event` live on its conversation's shard (as logged: with its `seq`).
    pub(super) fn deliver(&self, event: &ConversationEvent) {
        let subject = subjects::conversation_live(&event.conversation_id);
        self.send(&subject, Bytes::from(event.encode_to_vec()));
    }

    /// Logs `event`, then publishes it live; its `seq`.
    pub(super) fn publish(&self, event: ConversationEvent) -> u64 {
        let event = self.log(event);
        self.deliver(&event);
        event.seq
    }

    /// Publishes an event addressed to a user, to every node.
    pub(super) fn tell_user(&self, event: &v1::UserEvent) {
        let subject = subjects::user_live(&event.user_id);
        self.send(&subject, Bytes::from(event.encode_to_vec()));
    }

    /// The directory says that `user_id` is in `conversations`.
    pub(super) fn set_conversations(&self, user_id: &str, conversations: Vec<v1::Conversation>) {
        self.conversations
            .lock()
            .expect("directory lock poisoned")
            .insert(user_id.to_owned(), conversations);
    }

    fn send(&self, subject: &str, payload: Bytes) {
        let mut subscribers = self.subscribers.lock().expect("subscribers lock poisoned");
        subscribers.retain(|(_, tx)| !tx.is_closed());
        for (pattern, tx) in subscribers.iter() {
            if matches(pattern, subject) {
                let _ = tx.try_send(async_nats::Message {
                    subject: subject.into(),
                    reply: None,
                    length: payload.len(),
                    payload: payload.clone(),
                    headers: None,
                    status: None,
                    description: None,
                });
            }
        }
    }
}

/// Whether `subject` matches `pattern`, whose tokens may be `*`.
fn matches(pattern: &str, subject: &str) -> bool {
    let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

impl Bus for MemoryBus {
    fn subscribe(&self, subject: String) -> BoxFuture<'_, Option<Subscription>> {
        let (tx, mut rx) = mpsc::channel(BUFFER);
        self.subscribers
            .lock()
            .expect("subscribers lock poisoned")
            .push((subject, tx));
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Box::pin(async move { Some(stream.boxed()) })
    }

    fn events_after<'a>(
        &'a self,
        conversation_id: &'a str,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<(Vec<ConversationEvent>, bool), ReadError>> {
        let log = self.log.lock().expect("log lock poisoned");
        let mut events: Vec<ConversationEvent> = log
            .iter()
            .filter(|e| e.conversation_id == conversation_id && e.seq > after)
            .take(max + 1)
            .cloned()
            .collect();
        let complete = events.len() <= max;
        events.truncate(max);
        Box::pin(async move { Ok((events, complete)) })
    }
}

impl Directory for MemoryBus {
    fn conversations_of<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<v1::Conversation>, CallError>> {
        let conversations = self
            .conversations
            .lock()
            .expect("directory lock poisoned")
            .get(user_id)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move { Ok(conversations) })
    }
}
