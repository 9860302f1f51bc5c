//! What the hub asks of the bus and of the worker, behind two small traits: on NATS in a running
//! node ([`NatsBus`], and the worker's client), in memory in the hub's unit tests (`memory`).
//!
//! The bus gives live subscriptions (the shards' and the node's user events) and the durable
//! log's events of one conversation (gap fills, a socket that joins, a resume); the directory
//! gives a user's conversations (the resync after a reconnection).

use chat_proto::v1::{self, ConversationEvent};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::history::{ReadError, StreamReader};
use crate::worker::{CallError, WorkerClient};

/// A live subscription: the messages published on its subject from its start on.
pub type Subscription = BoxStream<'static, async_nats::Message>;

/// What the hub asks of the bus.
pub trait Bus: Send + Sync + 'static {
    /// A subscription to `subject`, live at the server once it resolves; `None` when the bus
    /// refused it.
    fn subscribe(&self, subject: String) -> BoxFuture<'_, Option<Subscription>>;

    /// The conversation's events with `seq > after` from the durable log, in order, at most
    /// `max`; `false` when there were more.
    fn events_after<'a>(
        &'a self,
        conversation_id: &'a str,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<(Vec<ConversationEvent>, bool), ReadError>>;
}

/// What the hub asks of the worker.
pub trait Directory: Send + Sync + 'static {
    /// The user's conversations, as the store has them.
    fn conversations_of<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<v1::Conversation>, CallError>>;
}

/// The bus of a running node: core NATS for the live subscriptions, the stream for the log.
pub struct NatsBus {
    client: async_nats::Client,
    reader: StreamReader,
}

impl NatsBus {
    /// Subscribes through `client` and reads the log with `reader`.
    pub fn new(client: async_nats::Client, reader: StreamReader) -> Self {
        Self { client, reader }
    }
}

impl Bus for NatsBus {
    fn subscribe(&self, subject: String) -> BoxFuture<'_, Option<Subscription>> {
        Box::pin(async move {
            let subscriber = self.client.subscribe(subject).await.ok()?;
            // The server has the subscription once a flush returns.
            self.client.flush().await.ok()?;
            Some(subscriber.boxed())
        })
    }

    fn events_after<'a>(
        &'a self,
        conversation_id: &'a str,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<(Vec<ConversationEvent>, bool), ReadError>> {
        Box::pin(self.reader.events_after(conversation_id, after, max))
    }
}

impl Directory for WorkerClient {
    fn conversations_of<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<v1::Conversation>, CallError>> {
        Box::pin(WorkerClient::conversations_of(self, user_id))
    }
}
