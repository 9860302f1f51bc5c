//! Shard subscriptions: one core NATS subscription per live shard with local rooms, owned by a
//! task that decodes each event once, serializes the push once and hands the same bytes to every
//! local member of the event's room.

use std::sync::Arc;
use std::time::Instant;

use chat_proto::client::{self};
use chat_proto::v1::{ConversationEvent, conversation_event::Kind};
use chat_proto::{bus, subjects};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::room::Room;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Subscription {
    Pending,
    Live,
    Failed,
}

/// A shard subscription of the node. It stays in the registry while the shard has local rooms,
/// even when subscribing failed (the rooms' joiners then leave).
pub(super) struct Shard {
    /// Local rooms in the shard; the subscription ends with the last.
    pub(super) num_rooms: usize,
    pub(super) cancel: CancellationToken,
    pub(super) state: watch::Receiver<Subscription>,
}

impl Hub {
    pub(super) fn spawn_shard(&self, shard: u16) -> Shard {
        let (state_tx, state) = watch::channel(Subscription::Pending);
        let cancel = self.inner.token.child_token();
        let hub = self.clone();
        let task_cancel = cancel.clone();
        self.inner
            .tracker
            .spawn(async move { hub.run_shard(shard, state_tx, task_cancel).await });
        Shard {
            num_rooms: 0,
            cancel,
            state,
        }
    }

    async fn run_shard(
        &self,
        shard: u16,
        state: watch::Sender<Subscription>,
        cancel: CancellationToken,
    ) {
        let subject = subjects::conversation_live_shard(shard);
        let subscribed = tokio::select! {
            () = cancel.cancelled() => return,
            subscribed = self.inner.bus.subscribe(subject) => subscribed,
        };
        let Some(mut subscriber) = subscribed else {
            // The joiners waiting on it leave; the shard goes with its last room, as always.
            let _ = state.send(Subscription::Failed);
            return;
        };
        let _ = state.send(Subscription::Live);
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let message = tokio::select! {
                biased;
                () = &mut cancelled => break,
                message = subscriber.next() => message,
            };
            let Some(message) = message else { break };
            let arrived = Instant::now();
            let event = match bus::decode_event(&message.payload, None) {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "undecodable live event");
                    continue;
                }
            };
            if subjects::live_shard(&event.conversation_id) != shard {
                tracing::warn!("an event on another shard's subject");
                continue;
            }
            match self.room(&event.conversation_id) {
                Some(room) => {
                    let span = fanout_span(&event.conversation_id, message.headers.as_ref());
                    let _fanout = span.enter();
                    self.dispatch(&room, event);
                    let took = arrived.elapsed().as_secs_f64();
                    self.inner.stats.fanout_duration.observe(took);
                }
                None => {
                    self.inner.stats.num_foreign_events.inc();
                }
            }
        }
        // Dropping the subscriber unsubscribes.
    }

    pub(super) fn room(&self, conversation_id: &str) -> Option<Arc<Room>> {
        let registry = self.inner.registry.lock().expect("registry lock poisoned");
        registry.rooms.get(conversation_id).cloned()
    }

    pub(super) fn dispatch(&self, room: &Room, event: ConversationEvent) {
        if event.seq > 0 {
            if !room
                .seen
                .lock()
                .expect("room lock poisoned")
                .insert(event.seq)
            {
                return;
            }
            self.observe(event.seq);
        }
        let skip_user = match &event.kind {
            Some(Kind::ParticipantAdded(p)) => {
                self.forget_membership(&p.user_id, &event.conversation_id);
                self.introduce_user(&event.conversation_id, &p.user_id);
                None
            }
            Some(Kind::ParticipantRemoved(p)) => {
                self.forget_membership(&p.user_id, &event.conversation_id);
                None
            }
            Some(Kind::Typing(t)) => Some(t.user_id.as_str()),
            _ => None,
        };
        let Some((frame, delivery)) = client::conversation_push(&event) else {
            return;
        };
        let position =
            (event.seq > 0).then(|| (subjects::fnv1a(&event.conversation_id), event.seq));
        room.deliver(
            &Utf8Bytes::from(frame),
            delivery,
            position,
            skip_user,
            &self.inner.stats.pushes,
        );
    }
}

/// The span of a live event's fan-out on this node, in the trace that its headers carry (none
/// when traces are off or the event is not in a kept trace).
fn fanout_span(conversation_id: &str, headers: Option<&async_nats::HeaderMap>) -> tracing::Span {
    if !chat_proto::telemetry::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("fanout", conversation_id);
    if chat_proto::telemetry::follow(&span, headers) {
        span
    } else {
        tracing::Span::none()
    }
}
