//! One client connection, from the upgrade to the close.
//!
//! [`serve`] runs a connection's life in order: the upgrade ([`upgrade`]), opening the session
//! ([`open`]: authentication, admission, rooms, resume) on the whole socket, its opening frames
//! in one write, the request loop ([`request_loop`]: frames in, timers), and the wind-down
//! ([`Session::finish`]). The connection's task owns the session's state; the writer task
//! ([`crate::socket::writer`]), started once the session is open, owns the write half and
//! drains the socket's bounded outbox. Requests are decoded once ([`crate::request`]) and handled one at a
//! time by [`handlers`], one module per family, except `message:send`, whose stream
//! acknowledgements are awaited in order while the next requests are read (a socket's sends are
//! published in the order it sent them, and acked in that order).
//!
//! The request loop and the handlers are generic over the frames' stream, so they run without a
//! socket in the unit tests.

mod handlers;
mod open;
mod request_loop;
pub mod resume;
mod upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::timestamp::now_ms;
use futures_util::StreamExt;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Gateway;
use crate::audit;
use crate::auth::Identity;
use crate::error::CloseReason;
use crate::socket::outbox::Outbox;
use crate::socket::writer::{self, CLOSE_LINGER};
use crate::socket::{Eviction, SocketHandle};
use chat_proto::v1::AuditEvent;
use handlers::PendingSend;

/// How long the upgrade may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection's frames are: a WebSocket's incoming half, or any stream of the same items.
pub(crate) trait Frames:
    futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send
{
}

impl<T> Frames for T where
    T: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send
{
}

/// An authenticated connection's state, owned by its task.
pub(crate) struct Session {
    gateway: Gateway,
    socket: SocketHandle,
    identity: Identity,
    session_id: String,
    typing: HashMap<Arc<str>, Instant>,
    /// Until then pushes wait for a `resume` request (a connection made with `resume=1`).
    resume_wait: Option<Instant>,
    /// When the token expires (with the clock leeway): the session ends then unless an `auth`
    /// brings a fresh token first.
    token_expiry: Instant,
    /// The client's address (for the audit log).
    address: std::net::IpAddr,
}

/// Serves one accepted TCP connection to its end. `permit` is `None` when the node is full.
#[expect(
    clippy::result_large_err,
    reason = "the upgrade callback's error type is tungstenite's"
)]
pub async fn serve(
    gateway: Gateway,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let span = tracing::debug_span!("connection", %peer, user_id = tracing::field::Empty);
    async move {
        let _permit = permit.as_ref();
        let mut upgrade = upgrade::Upgrade {
            client: peer.ip(),
            token: None,
            resume: false,
        };
        let shared = &gateway.shared;
        let full = permit.is_none();
        let callback =
            |request: &_, response| upgrade::check(request, response, shared, full, &mut upgrade);
        let accept = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(gateway.shared.ws_config),
        );
        // Boxed, like every step but the request loop: the task of an idle socket holds only
        // the loop's state, not the largest step's.
        let ws = match Box::pin(tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => {
                tracing::debug!(%error, "upgrade refused or failed");
                return;
            }
            Err(_) => {
                tracing::debug!("upgrade timed out");
                return;
            }
        };
        let config = &gateway.shared.settings.config;
        let outbox = Arc::new(Outbox::new(
            config.outbox_frames,
            config.slow_consumer_grace,
        ));
        let eviction = Arc::new(Eviction::default());
        // Boxed, with the whole socket: only its halves stay in an idle socket's task.
        let opening = open_whole(gateway, ws, upgrade, &outbox, &eviction);
        let Some((session, (sink, frames))) = Box::pin(opening).await else {
            return;
        };
        let writer = writer::write_loop(sink, Arc::clone(&outbox), Arc::clone(&eviction));
        let mut writer = tokio::spawn(writer);
        // Served here, not in a function of its own: a session moved into another future
        // would take its room twice in every idle socket's task.
        if let Some(mut session) = session {
            let (mut frames, mut pending) = (frames, FuturesOrdered::new());
            session.serve(&mut frames, &mut pending, shutdown).await;
            Box::pin(session.end(pending)).await;
        }
        // The writer delivers what it holds within the close linger; then it is ended.
        if tokio::time::timeout(CLOSE_LINGER + Duration::from_secs(1), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    .instrument(span)
    .await;
}

/// A socket split between its reader and its writer.
type Halves = (
    SplitSink<WebSocketStream<TcpStream>, Message>,
    SplitStream<WebSocketStream<TcpStream>>,
);

/// Opens the session on the whole socket, writes its opening frames in one write on it
/// ([`writer::write_opening`]), then splits it: the session (`None` when refused: the outbox
/// holds why) and the halves; nothing when the opening could not be written (the session is
/// ended and the socket dropped, perhaps mid-frame).
async fn open_whole(
    gateway: Gateway,
    mut ws: WebSocketStream<TcpStream>,
    upgrade: upgrade::Upgrade,
    outbox: &Arc<Outbox>,
    eviction: &Arc<Eviction>,
) -> Option<(Option<Session>, Halves)> {
    let opened = open::open(
        gateway,
        &mut ws,
        upgrade,
        Arc::clone(outbox),
        Arc::clone(eviction),
    );
    let session = match Box::pin(opened).await {
        Some(session) => {
            let written = writer::write_opening(&mut ws, outbox);
            match tokio::time::timeout(CLOSE_LINGER, written).await {
                Ok(Ok(())) => Some(session),
                failed => {
                    tracing::debug!(?failed, "the opening frames were not written");
                    Box::pin(session.end(FuturesOrdered::new())).await;
                    return None;
                }
            }
        }
        None => None,
    };
    Some((session, ws.split()))
}

impl Session {
    /// Queues a frame of this socket's own (an ack, an error).
    fn emit(&self, frame: String) {
        self.socket.emit(frame);
    }

    fn close(&self, reason: CloseReason) {
        self.socket.close(reason);
    }

    /// An audit record of `kind` by this user, about `user_id` in `conversation_id`.
    /// This session's user as the actor of an operation.
    fn actor(&self) -> crate::operations::Actor<'_> {
        crate::operations::Actor(&self.identity.user_id)
    }

    fn audit(&self, kind: &str, user_id: &str, conversation_id: &str) -> AuditEvent {
        audit::event(kind, &self.identity.user_id, user_id, conversation_id)
    }

    /// Records an audit event.
    fn record(&self, event: AuditEvent) {
        self.gateway.shared.audit.record(event);
    }

    /// Ends a session that was open: winds it down ([`Session::finish`]) and records the
    /// disconnect in the audit log.
    async fn end(self, pending: FuturesOrdered<PendingSend>) {
        let shared = Arc::clone(&self.gateway.shared);
        let mut record = self.audit("disconnect", &self.identity.user_id, "");
        record.address = self.address.to_string();
        // Why the node evicted it (an API disconnect, a slow socket…); none otherwise.
        record.detail = self
            .socket
            .eviction()
            .reason()
            .map(|reason| reason.code().to_string())
            .unwrap_or_default();
        self.finish(pending).await;
        shared.audit.record(record);
    }

    /// Winds the session down: answers the sends under way (they may already be durable), stops
    /// its typing, and leaves the router, the hub and the writer.
    async fn finish(mut self, mut pending: FuturesOrdered<PendingSend>) {
        while let Some(outcome) = pending.next().await {
            self.finish_send(outcome).await;
        }
        self.stop_typing().await;
        if let Some(router) = &self.gateway.shared.router {
            router.close(&self.identity.user_id, &self.session_id);
        }
        self.gateway.shared.hub.unregister(&self.socket);
        self.socket.outbox().close();
    }
}

/// When `identity`'s token expires, with the clock leeway that verification allows.
fn token_expiry(identity: &Identity, leeway: Duration) -> Instant {
    let expires_ms = identity.expires_at.saturating_mul(1000);
    let now = u64::try_from(now_ms()).unwrap_or(0);
    Instant::now() + Duration::from_millis(expires_ms.saturating_sub(now)) + leeway
}

#[cfg(test)]
mod tests;
