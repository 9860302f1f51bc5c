//! One client connection: the upgrade, authentication, the request loop, and the writer.
//!
//! The connection's task owns its state. The socket is split: a writer task owns the write half
//! and drains the socket's bounded outbox in batches (one flush per batch); the reader loop
//! handles one request at a time, except `message:send`, whose stream acknowledgements are
//! awaited in order while the next requests are read (a socket's sends are published in the order
//! it sent them, and acked in that order).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_proto::bus::{self, BusError, Stored};
use chat_proto::client::{
    self, AuthData, ConversationJson, ConversationRef, DeleteData, EditData, JoinData, MessageJson,
    SendData, SyncData, close,
};
use chat_proto::subjects;
use chat_proto::timestamp::{iso8601, now_ms};
use chat_proto::v1::{self, ConversationEvent, conversation_event::Kind};
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes, http};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Gateway;
use crate::auth::{AuthError, Identity};
use crate::error::RequestError;
use crate::history::{self, Window};
use crate::hub::{Eviction, SocketHandle};
use crate::outbox::{Outbound, Outbox, PushError};
use crate::presence;
use crate::request::{self, parse};
use crate::resume::{self, ResumeData};
use crate::router::Admission;
use crate::validation;

/// How long typing lasts without a refresh.
pub const TYPING_TTL: Duration = Duration::from_secs(5);
/// How long the upgrade may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames the writer sends before it flushes.
const WRITE_BATCH: usize = 64;
/// How long an evicted socket's writer keeps trying to deliver what it holds and the close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(3);
/// Largest fragment of a socket's first frame (see `write_frames`).
const FIRST_FRAGMENT: usize = 256;

type WsStream = WebSocketStream<TcpStream>;
/// A send awaiting the stream. Its outcome is boxed: it would otherwise widen the request
/// loop's state, held by every idle socket, by its 312 bytes.
type PendingSend = Pin<Box<dyn Future<Output = Box<SendOutcome>> + Send>>;

struct SendOutcome {
    request_id: Option<String>,
    event: ConversationEvent,
    result: Result<Stored, BusError>,
}

/// What the upgrade request carried.
struct Upgrade {
    /// The client's address (see `--trusted-proxies`).
    client: IpAddr,
    token: Option<String>,
    /// `resume=1`: the first request will be `resume`; pushes wait for it.
    resume: bool,
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
        let mut upgrade = Upgrade {
            client: peer.ip(),
            token: None,
            resume: false,
        };
        let shared = &gateway.shared;
        let full = permit.is_none();
        let callback = |request: &Request, response: Response| {
            check_upgrade(request, response, shared, full, &mut upgrade)
        };
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
        let (sink, frames) = ws.split();
        let config = &gateway.shared.settings.config;
        let outbox = Arc::new(Outbox::new(
            config.outbox_frames,
            config.slow_consumer_grace,
        ));
        let eviction = Arc::new(Eviction::default());
        let writer = tokio::spawn(write_loop(sink, Arc::clone(&outbox), Arc::clone(&eviction)));
        let socket = Socket {
            frames,
            outbox,
            eviction,
            writer,
        };
        run(gateway, socket, upgrade, shutdown).await;
    }
    .instrument(span)
    .await;
}

fn refuse(status: http::StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() = status;
    response
}

#[expect(
    clippy::result_large_err,
    reason = "the upgrade callback's error type is tungstenite's"
)]
fn check_upgrade(
    request: &Request,
    mut response: Response,
    shared: &crate::Shared,
    full: bool,
    upgrade: &mut Upgrade,
) -> Result<Response, ErrorResponse> {
    let settings = &shared.settings;
    if request.uri().path() != "/ws" {
        return Err(refuse(
            http::StatusCode::NOT_FOUND,
            "not found; connect to /ws",
        ));
    }
    if let Some(origin) = request.headers().get(http::header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| settings.origins.allows(o));
        if !allowed {
            return Err(refuse(http::StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    if full {
        return Err(refuse(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "this node is full; try another",
        ));
    }
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    upgrade.client = crate::config::client_address(
        upgrade.client,
        forwarded_for,
        &settings.config.trusted_proxies,
    );
    let rate = settings.config.connect_rate_per_ip;
    if let Err(wait) = shared.connect_rates.take(upgrade.client, rate) {
        let mut refused = refuse(
            http::StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address; retry later",
        );
        let seconds = wait.as_secs().max(1).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&seconds) {
            refused
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value);
        }
        return Err(refused);
    }
    upgrade.token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .or_else(|| {
            // Never logged: the query string holds the token.
            request.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
                    .map(str::to_owned)
            })
        });
    upgrade.resume = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "resume=1"));
    let offered = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if let Some(offered) = offered
        && offered.split(',').any(|p| p.trim() == client::SUBPROTOCOL)
    {
        response.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(client::SUBPROTOCOL),
        );
    }
    Ok(response)
}

type Frames = SplitStream<WsStream>;

/// An upgraded connection: its incoming frames, and its outbox with the writer that drains it.
struct Socket {
    frames: Frames,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
    writer: tokio::task::JoinHandle<()>,
}

async fn run(gateway: Gateway, socket: Socket, upgrade: Upgrade, shutdown: CancellationToken) {
    let Socket {
        mut frames,
        outbox,
        eviction,
        mut writer,
    } = socket;
    let opened = Box::pin(open(gateway, &mut frames, upgrade, outbox, eviction)).await;
    let Some(mut session) = opened else {
        end_writer(&mut writer).await;
        return;
    };
    let mut pending = FuturesOrdered::new();
    session.serve(&mut frames, &mut pending, shutdown).await;
    Box::pin(session.finish(pending)).await;
    end_writer(&mut writer).await;
}

/// Authenticates the socket, admits it, joins its rooms and answers `connected` (with the
/// replay of a resume): the session to serve, or `None` when the socket was refused (it has
/// been told why, and its close is queued).
async fn open(
    gateway: Gateway,
    frames: &mut Frames,
    upgrade: Upgrade,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
) -> Option<Session> {
    let shared = &gateway.shared;
    let resume_query = upgrade.resume;
    let (identity, request_id, resume) = match authenticate(&gateway, upgrade, frames).await {
        Ok(found) => found,
        Err((code, frame)) => {
            if let Some(frame) = frame {
                let _ = outbox.try_push(Outbound::Text(frame.into()));
            }
            let _ = outbox.try_push(Outbound::Close(code, close_reason(code)));
            outbox.close();
            return None;
        }
    };
    tracing::Span::current().record("user_id", &*identity.user_id);
    let socket = SocketHandle::new(
        shared.next_socket_id.fetch_add(1, Ordering::Relaxed),
        Arc::clone(&identity.user_id),
        Arc::clone(&outbox),
        Arc::clone(&eviction),
    );
    let token_expiry = token_expiry(&identity, shared.settings.config.jwt_leeway);
    let mut session = Session {
        gateway: gateway.clone(),
        socket,
        identity,
        session_id: uuid::Uuid::new_v4().simple().to_string(),
        outbox,
        eviction,
        typing: HashMap::new(),
        resume_wait: None,
        token_expiry,
    };
    shared.hub.register(&session.socket);
    let keys = shared.settings.resume.as_ref();
    // A resume in `auth` names the old session, which this one replaces (not counted twice).
    let resumed = match (keys, resume) {
        (Some(keys), Some(resume)) => Some(
            keys.verify(&resume.resume_token, &session.identity.user_id)
                .map(|old| (old, resume.positions)),
        ),
        _ => None,
    };
    let replaces = resumed
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|(old, _)| old.clone());
    if matches!(resumed, Some(Ok(_))) || (resume_query && keys.is_some()) {
        // Conversation events wait from before the rooms are joined until the replay is in.
        session.outbox.hold();
    }
    // Registered with the router before the rooms are fetched: an event addressed to the user
    // from now on finds this node through the router, and one before is in the rooms.
    if let Admission::Refused { limit } = session.admit(replaces).await {
        let message =
            format!("too many sessions: a user may have at most {limit} at once; close one first");
        let error = RequestError::forbidden(message);
        session.emit(error.to_frame(request_id.as_deref(), Some("auth")));
        session.close(close::OVER_LIMIT);
        session.finish(FuturesOrdered::new()).await;
        return None;
    }
    match session.connected().await {
        Ok(mut payload) => {
            let replayed = match resumed {
                Some(Ok((_, positions))) => Some(session.replay(&positions).await),
                Some(Err(error)) => {
                    payload["resume"] = json!({ "recovered": false, "error": error.message });
                    None
                }
                None => None,
            };
            if let Some((report, _)) = &replayed {
                payload["resume"] = report.clone();
            }
            session.emit(match request_id {
                Some(id) => client::ack(&id, payload),
                None => client::push("connected", payload),
            });
            if let Some((_, replay)) = replayed {
                session.release(replay);
            } else if session.outbox.is_held() {
                session.resume_wait = Some(Instant::now() + resume::RESUME_WAIT);
            }
            Some(session)
        }
        Err(error) => {
            // Without its rooms the socket would miss messages: the client reconnects (or, over
            // the room limit, is told so).
            session.emit(error.to_frame(request_id.as_deref(), Some("auth")));
            session.close(crate::hub::join_close_code(&error));
            session.finish(FuturesOrdered::new()).await;
            None
        }
    }
}

/// Waits for the writer to deliver what it holds, within the close linger; then ends it.
async fn end_writer(writer: &mut tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(CLOSE_LINGER + Duration::from_secs(1), &mut *writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::NORMAL => "bye",
        close::TOO_BIG => "message too big",
        close::RESTARTING => "server restarting; reconnect and resume",
        close::UNAUTHORIZED => "unauthorized",
        close::FORBIDDEN => "forbidden",
        close::AUTH_TIMEOUT => "no auth in time",
        close::OVER_LIMIT => "over a limit",
        close::TOO_SLOW => "too slow; reconnect and resume",
        _ => "internal error; reconnect",
    }
}

/// Finds the socket's identity: from the upgrade, else from a first `auth` frame in time.
/// On failure: the close code and the error frame to send first.
async fn authenticate(
    gateway: &Gateway,
    upgrade: Upgrade,
    frames: &mut Frames,
) -> Result<Authenticated, (u16, Option<String>)> {
    let shared = &gateway.shared;
    let verifier = &shared.settings.verifier;
    let address = upgrade.client;
    // Each failure counts against the client's address; past its rate, a failure is answered
    // as over a limit (a valid token is never refused for this).
    let unauthorized = |error: AuthError, request_id: Option<&str>| {
        let rate = shared.settings.config.failed_auth_rate_per_ip;
        let (error, code) = match shared.failed_auths.take(address, rate) {
            Ok(()) => (
                RequestError::new(client::ErrorCode::Unauthorized, error.to_string()),
                close::UNAUTHORIZED,
            ),
            Err(wait) => (
                RequestError::rate_limited(
                    "too many failed authentications from this address; retry later",
                    wait,
                ),
                close::OVER_LIMIT,
            ),
        };
        (code, Some(error.to_frame(request_id, Some("auth"))))
    };
    if let Some(token) = upgrade.token {
        return verifier
            .verify(&token)
            .map(|identity| (identity, None, None))
            .map_err(|e| unauthorized(e, None));
    }
    let deadline = Instant::now() + gateway.shared.settings.config.auth_timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => {
                let error =
                    RequestError::new(client::ErrorCode::Unauthorized, "no token received in time");
                return Err((
                    close::AUTH_TIMEOUT,
                    Some(error.to_frame(None, Some("auth"))),
                ));
            }
            Ok(None | Some(Err(_))) => return Err((close::NORMAL, None)),
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => return Err(unauthorized(AuthError::Missing, None)),
        };
        let Ok(envelope) = serde_json::from_str::<client::ClientFrame<'_>>(&text) else {
            return Err(unauthorized(AuthError::Missing, None));
        };
        let request_id = envelope
            .request_id
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        let is_auth = envelope
            .event
            .is_some_and(|raw| serde_json::from_str::<&str>(raw.get()).ok() == Some("auth"));
        let data = envelope
            .data
            .and_then(|raw| serde_json::from_str::<AuthData>(raw.get()).ok());
        let (true, Some(data)) = (is_auth, data) else {
            return Err(unauthorized(AuthError::Missing, request_id.as_deref()));
        };
        return verifier
            .verify(&data.token)
            .map(|identity| (identity, request_id.clone(), data.resume))
            .map_err(|e| unauthorized(e, request_id.as_deref()));
    }
}

/// Who connected, the `auth` request's id, and what it resumes.
type Authenticated = (Identity, Option<String>, Option<ResumeData>);

/// What a handled request answers.
enum Reply {
    /// Ack with this data now.
    Ack(serde_json::Value),
    /// Ack a resume with this data, then release the replay.
    Resumed(serde_json::Value, Option<resume::Replay>),
    /// The answer comes when this send is acknowledged by the stream.
    Later(PendingSend),
}

struct Session {
    gateway: Gateway,
    socket: SocketHandle,
    identity: Identity,
    session_id: String,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
    typing: HashMap<Arc<str>, Instant>,
    /// Until then pushes wait for a `resume` request (a connection made with `resume=1`).
    resume_wait: Option<Instant>,
    /// When the token expires (with the clock leeway): the session ends then unless an `auth`
    /// brings a fresh token first.
    token_expiry: Instant,
}

impl Session {
    /// Queues a frame of this socket's own (an ack, an error); a socket that cannot take it is
    /// too slow and is evicted.
    fn emit(&self, frame: String) {
        if let Err(PushError::Full) = self.outbox.try_push(Outbound::Text(frame.into())) {
            self.eviction.evict(close::TOO_SLOW);
        }
    }

    fn close(&self, code: u16) {
        if self
            .outbox
            .try_push(Outbound::Close(code, close_reason(code)))
            .is_err()
        {
            self.eviction.evict(code);
        }
    }

    async fn connected(&self) -> Result<serde_json::Value, RequestError> {
        let shared = &self.gateway.shared;
        let rooms = shared
            .worker
            .conversations_of(&self.identity.user_id)
            .await?;
        let joins = rooms.iter().map(|c| shared.hub.join(&self.socket, &c.id));
        for joined in futures_util::future::join_all(joins).await {
            joined?;
        }
        shared.hub.tell_router_conversations(&self.identity.user_id);
        let rooms: Vec<_> = rooms.iter().map(ConversationJson::from).collect();
        let mut payload = json!({
            "userId": &*self.identity.user_id,
            "sessionId": self.session_id,
            "rooms": rooms,
            "timestamp": iso8601(now_ms()),
        });
        if let Some(keys) = &shared.settings.resume {
            payload["resumeToken"] = keys.mint(&self.identity.user_id, &self.session_id).into();
        }
        Ok(payload)
    }

    /// Registers the session with its router (the per-user session limit; `replaces` is the
    /// session it resumes); admitted without one.
    async fn admit(&self, replaces: Option<String>) -> Admission {
        let Some(router) = &self.gateway.shared.router else {
            return Admission::Admitted;
        };
        let user_id = &self.identity.user_id;
        router
            .open(user_id, &self.session_id, self.socket.id, replaces)
            .await
    }

    /// Reads what the socket missed (its outbox holds its conversation events meanwhile): the
    /// answer to give, and the replay to release after it. A failed read releases nothing but
    /// the hold (the client syncs).
    async fn replay(
        &self,
        positions: &std::collections::BTreeMap<String, u64>,
    ) -> (serde_json::Value, Option<resume::Replay>) {
        let shared = &self.gateway.shared;
        match resume::replay(&shared.reader, &shared.hub, self.socket.id, positions).await {
            Ok(replay) => {
                let report = json!({ "recovered": true, "conversations": replay.report });
                (report, Some(replay))
            }
            Err(error) => {
                let report = json!({ "recovered": false, "error": error.message });
                (report, None)
            }
        }
    }

    /// Ends the hold of conversation events, the replay first.
    fn release(&self, replay: Option<resume::Replay>) {
        match replay {
            Some(replay) => self.outbox.release(replay.frames, replay.covered),
            None => self.outbox.release(Vec::new(), HashMap::new()),
        }
    }

    /// `resume`, the first request of a socket that connected with `resume=1`.
    async fn resume(&mut self, data: ResumeData) -> Result<Reply, RequestError> {
        let keys = self.gateway.shared.settings.resume.as_ref();
        let (Some(keys), Some(_)) = (keys, self.resume_wait.take()) else {
            return Err(RequestError::protocol(
                "resume must be the first request of a connection made with resume=1",
            ));
        };
        if let Err(error) = keys.verify(&data.resume_token, &self.identity.user_id) {
            self.release(None);
            return Err(error);
        }
        let (report, replay) = Box::pin(self.replay(&data.positions)).await;
        Ok(Reply::Resumed(report, replay))
    }

    /// The request loop. Sends awaiting the stream wait in `pending`, in order; while it is
    /// full, no more frames are read.
    async fn serve(
        &mut self,
        frames: &mut Frames,
        pending: &mut FuturesOrdered<PendingSend>,
        shutdown: CancellationToken,
    ) {
        let config = &self.gateway.shared.settings.config;
        let max_pending = config.max_pending_sends;
        let ping_interval = config.ping_interval;
        let mut next_ping = Instant::now() + ping_interval;
        let mut last_heard = Instant::now();
        let mut drain_deadline = None;
        let drain_time = config.drain_time;
        let idle_timeout = config.idle_timeout;
        // Built once: a future made anew on every turn of the loop costs a registration each time.
        let eviction = Arc::clone(&self.eviction);
        let evicted = eviction.evicted();
        let shutting_down = shutdown.cancelled();
        // One timer for the ping, the typing expiry, the resume wait, the drain and the token's
        // expiry, reset only when the earliest of them changes: a timer per purpose would sit in
        // every idle socket's task.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(evicted, shutting_down, timer);
        loop {
            let typing_due = self.typing.values().min().copied();
            let due = [typing_due, self.resume_wait, drain_deadline]
                .into_iter()
                .flatten()
                .fold(next_ping.min(self.token_expiry), Instant::min);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                _ = &mut evicted => return,
                () = &mut shutting_down, if drain_deadline.is_none() => {
                    // Served on while the client moves; closed at the end of the drain.
                    let spread = rand_below(u64::try_from(drain_time.as_millis()).unwrap_or(u64::MAX).max(1));
                    self.emit(client::push("server:draining", json!({ "reconnectAfterMs": spread })));
                    drain_deadline = Some(Instant::now() + drain_time);
                }
                Some(outcome) = pending.next(), if !pending.is_empty() => {
                    Box::pin(self.finish_send(outcome)).await;
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if drain_deadline.is_some_and(|d| d <= now) {
                        self.close(close::RESTARTING);
                        return;
                    }
                    if self.token_expiry <= now {
                        let error = RequestError::new(
                            client::ErrorCode::Unauthorized,
                            "token expired; send a fresh one with auth before the old one expires",
                        );
                        self.emit(error.to_frame(None, None));
                        self.close(close::UNAUTHORIZED);
                        return;
                    }
                    if self.resume_wait.is_some_and(|d| d <= now) {
                        // No `resume` in time: the socket goes on without a replay.
                        self.resume_wait = None;
                        self.release(None);
                    }
                    if typing_due.is_some_and(|d| d <= now) {
                        Box::pin(self.expire_typing()).await;
                    }
                    if next_ping <= now {
                        if last_heard.elapsed() > idle_timeout {
                            tracing::debug!("no sign of life; closing");
                            return;
                        }
                        let _ = self.outbox.try_push(Outbound::Ping);
                        next_ping = now + ping_interval;
                    }
                }
                frame = frames.next(), if pending.len() < max_pending => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: the largest handler's state would otherwise sit in every
                            // idle socket's task.
                            if let Some(send) = Box::pin(self.on_text(&text)).await {
                                pending.push_back(send);
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.emit(RequestError::protocol("binary frames are not supported; send JSON text").to_frame(None, None));
                        }
                        Some(Ok(Message::Close(_))) | None => return,
                        Some(Ok(_)) => {} // Pings are answered by tungstenite; pongs are signs of life.
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            self.close(close::TOO_BIG);
                            return;
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "read failed");
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn finish(mut self, mut pending: FuturesOrdered<PendingSend>) {
        // Answer the sends under way: they may already be durable.
        while let Some(outcome) = pending.next().await {
            self.finish_send(outcome).await;
        }
        let typing: Vec<_> = self.typing.drain().map(|(c, _)| c).collect();
        for conversation_id in typing {
            self.publish_typing(&conversation_id, false).await;
        }
        if let Some(router) = &self.gateway.shared.router {
            router.close(&self.identity.user_id, &self.session_id);
        }
        self.gateway.shared.hub.unregister(&self.socket);
        self.outbox.close();
    }

    /// Handles one text frame; a send comes back to wait for the stream.
    async fn on_text(&mut self, text: &str) -> Option<PendingSend> {
        let max_bytes = self.gateway.shared.settings.config.max_message_bytes;
        let request = match request::decode(text, max_bytes) {
            Ok(request) => request,
            Err(refusal) => {
                self.emit(refusal.to_frame());
                return None;
            }
        };
        let request_id = request.request_id.as_deref();
        let (event, data) = (request.event.as_str(), request.data);
        let echoed = request.echoed_event();
        match self.dispatch(event, data, request_id).await {
            Ok(Reply::Ack(data)) => {
                if let Some(id) = request_id {
                    self.emit(client::ack(id, data));
                }
                None
            }
            Ok(Reply::Resumed(data, replay)) => {
                if let Some(id) = request_id {
                    self.emit(client::ack(id, data));
                }
                self.release(replay);
                None
            }
            Ok(Reply::Later(send)) => Some(send),
            Err(error) => {
                self.emit(error.to_frame(request_id, Some(&echoed)));
                None
            }
        }
    }

    async fn dispatch(
        &mut self,
        event: &str,
        data: &str,
        request_id: Option<&str>,
    ) -> Result<Reply, RequestError> {
        if event != "resume" && self.resume_wait.take().is_some() {
            // The first request is not `resume`: nothing to wait for.
            self.release(None);
        }
        if matches!(event, "message:send" | "message:edit" | "message:delete") {
            self.take_message_token()?;
        }
        match event {
            "ping" => Ok(Reply::Ack(
                json!({ "event": "pong", "timestamp": now_ms() }),
            )),
            "auth" => self.reauthenticate(parse(data)?).await,
            "message:send" => self.send(parse(data)?, request_id).await,
            "message:edit" => self.edit(parse(data)?).await,
            "message:delete" => self.delete(parse(data)?).await,
            "messages:sync" => self.sync(parse(data)?).await,
            "room:create" => self.create(parse(data)?).await,
            "room:join" => self.join(parse(data)?).await,
            "room:leave" => self.leave(parse(data)?).await,
            "room:list" => {
                let rooms = self
                    .gateway
                    .shared
                    .worker
                    .conversations_of(&self.identity.user_id)
                    .await?;
                let rooms: Vec<_> = rooms.iter().map(ConversationJson::from).collect();
                Ok(Reply::Ack(json!({ "conversations": rooms })))
            }
            "room:info" => self.info(parse(data)?).await,
            "typing:start" => self.typing(parse(data)?, true).await,
            "typing:stop" => self.typing(parse(data)?, false).await,
            "message:delivered" => self.receipt(parse(data)?, false).await,
            "message:read" => self.receipt(parse(data)?, true).await,
            "presence:update" => presence::update(
                self.gateway.shared.router.as_ref(),
                &self.identity.user_id,
                &parse(data)?,
            )
            .map(Reply::Ack),
            "presence:query" => presence::query(self.gateway.shared.router.as_ref(), parse(data)?)
                .await
                .map(Reply::Ack),
            "room:online" => self.online(parse(data)?).await,
            "resume" => self.resume(parse(data)?).await,
            _ => Err(RequestError::protocol("unknown event")),
        }
    }

    async fn reauthenticate(&mut self, data: AuthData) -> Result<Reply, RequestError> {
        let identity = self
            .gateway
            .shared
            .settings
            .verifier
            .verify(&data.token)
            .map_err(|e| RequestError::new(client::ErrorCode::Unauthorized, e.to_string()))?;
        if identity.user_id != self.identity.user_id {
            return Err(RequestError::forbidden(
                "a connection cannot change its user",
            ));
        }
        let leeway = self.gateway.shared.settings.config.jwt_leeway;
        self.token_expiry = token_expiry(&identity, leeway);
        self.identity = identity;
        Ok(Reply::Ack(self.connected().await?))
    }

    /// Counts a message sent, edited or deleted against the user's rate on this node.
    fn take_message_token(&self) -> Result<(), RequestError> {
        let shared = &self.gateway.shared;
        let config = &shared.settings.config;
        let rate = match self.identity.role.as_deref() {
            Some("guest") => config.guest_message_rate,
            _ => config.message_rate,
        };
        shared
            .message_rates
            .take(Arc::clone(&self.identity.user_id), rate)
            .map_err(|wait| RequestError::rate_limited("too many messages; slow down", wait))
    }

    /// Checks that the user is a member: from the socket's own rooms, the cache, or the worker.
    async fn require_member(&self, conversation_id: &str) -> Result<(), RequestError> {
        let shared = &self.gateway.shared;
        if shared.hub.is_joined(self.socket.id, conversation_id) {
            return Ok(());
        }
        let key = (
            Arc::clone(&self.identity.user_id),
            Arc::<str>::from(conversation_id),
        );
        let member = match shared.membership.get(&key) {
            Some(member) => member,
            None => {
                let reply = shared
                    .worker
                    .membership(&self.identity.user_id, conversation_id)
                    .await?;
                if !reply.exists {
                    return Err(RequestError::not_found("no such conversation"));
                }
                shared.membership.insert(key, reply.member);
                reply.member
            }
        };
        if member {
            Ok(())
        } else {
            Err(RequestError::forbidden("not a member of this conversation"))
        }
    }

    async fn send(
        &mut self,
        data: SendData,
        request_id: Option<&str>,
    ) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        let mut message = validation::new_message(data, &self.identity.user_id, &shared.limits)?;
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            // Fails fast instead of waiting out the timeout: the client retries, with the same
            // `clientMessageId`, which never makes a second message.
            return Err(RequestError::unavailable());
        }
        self.require_member(&message.conversation_id).await?;
        message.created_at_ms = now_ms();
        let dedup_id = message
            .client_message_id
            .as_deref()
            .map(|id| subjects::dedup_id(&self.identity.user_id, &message.conversation_id, id));
        let event = ConversationEvent {
            seq: 0,
            conversation_id: message.conversation_id.clone(),
            kind: Some(Kind::MessageCreated(v1::MessageCreated {
                message: Some(message),
            })),
        };
        let shared = &self.gateway.shared;
        let ack = bus::start_durable(&shared.js, &event, dedup_id.as_deref()).await?;
        let request_id = request_id.map(str::to_owned);
        Ok(Reply::Later(Box::pin(async move {
            Box::new(SendOutcome {
                request_id,
                result: bus::finish_durable(ack).await,
                event,
            })
        })))
    }

    async fn finish_send(&mut self, outcome: Box<SendOutcome>) {
        let SendOutcome {
            request_id,
            mut event,
            result,
        } = *outcome;
        let shared = &self.gateway.shared;
        let stored = match result {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "send not acknowledged by the stream");
                self.emit(
                    RequestError::unavailable()
                        .to_frame(request_id.as_deref(), Some("message:send")),
                );
                return;
            }
        };
        event.seq = stored.seq;
        shared.hub.observe(stored.seq);
        // A duplicate is the first send's message, as it was stored. It is announced again: the
        // first announcement may have been lost with the first ack (members drop what they have).
        let original = if stored.duplicate {
            shared.reader.original(stored.seq).await.ok().flatten()
        } else {
            None
        };
        let again = original.as_ref().map(|message| ConversationEvent {
            seq: stored.seq,
            conversation_id: event.conversation_id.clone(),
            kind: Some(Kind::MessageCreated(v1::MessageCreated {
                message: Some(message.clone()),
            })),
        });
        if let Err(error) =
            bus::publish_live(&shared.client, again.as_ref().unwrap_or(&event)).await
        {
            tracing::warn!(%error, "live publish failed; members fill from the stream");
        }
        let Some(Kind::MessageCreated(v1::MessageCreated {
            message: Some(message),
        })) = &mut event.kind
        else {
            unreachable!("only sends are pending");
        };
        message.id = stored.seq;
        let message = original.as_ref().unwrap_or(message);
        if let Some(id) = request_id {
            self.emit(client::ack(
                &id,
                client::MessageData {
                    message: MessageJson::from(message),
                },
            ));
        }
    }

    async fn own_message(
        &self,
        id: u64,
        conversation_id: Option<&str>,
    ) -> Result<v1::ChatMessage, RequestError> {
        if let Some(conversation_id) = conversation_id {
            validation::conversation_id(conversation_id)?;
        }
        let shared = &self.gateway.shared;
        let message = history::current_message(&shared.worker, &shared.reader, id).await?;
        if conversation_id.is_some_and(|c| c != message.conversation_id) || message.deleted {
            return Err(RequestError::not_found("no such message"));
        }
        if *message.sender_id != *self.identity.user_id {
            return Err(RequestError::forbidden(
                "only the sender may change a message",
            ));
        }
        self.require_member(&message.conversation_id).await?;
        Ok(message)
    }

    async fn record(&self, conversation_id: &str, kind: Kind) -> Result<Stored, RequestError> {
        let shared = &self.gateway.shared;
        let event = ConversationEvent {
            seq: 0,
            conversation_id: conversation_id.to_owned(),
            kind: Some(kind),
        };
        let (_, stored) = bus::publish(&shared.js, &shared.client, event, None).await?;
        shared.hub.observe(stored.seq);
        Ok(stored)
    }

    async fn edit(&mut self, data: EditData) -> Result<Reply, RequestError> {
        validation::content(&data.content, &self.gateway.shared.limits)?;
        let mut message = self
            .own_message(data.message_id, data.conversation_id.as_deref())
            .await?;
        let edited_at_ms = now_ms();
        let edit = v1::MessageEdited {
            message_id: message.id,
            editor_id: self.identity.user_id.to_string(),
            content: data.content.clone(),
            edited_at_ms,
        };
        self.record(&message.conversation_id, Kind::MessageEdited(edit))
            .await?;
        message.content = data.content;
        message.edited_at_ms = Some(edited_at_ms);
        Ok(Reply::Ack(
            json!({ "message": MessageJson::from(&message) }),
        ))
    }

    async fn delete(&mut self, data: DeleteData) -> Result<Reply, RequestError> {
        let message = self
            .own_message(data.message_id, data.conversation_id.as_deref())
            .await?;
        let delete = v1::MessageDeleted {
            message_id: message.id,
            deleter_id: self.identity.user_id.to_string(),
            deleted_at_ms: now_ms(),
        };
        self.record(&message.conversation_id, Kind::MessageDeleted(delete))
            .await?;
        Ok(Reply::Ack(json!({})))
    }

    async fn sync(&mut self, data: SyncData) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        let (default, max) = client::SYNC_LIMIT;
        let limit = data.limit.unwrap_or(default);
        if limit == 0 || limit > max {
            return Err(RequestError::invalid(format!("limit must be 1 to {max}")));
        }
        self.require_member(&data.conversation_id).await?;
        let window = Window::new(data.last_message_id, data.before_message_id);
        let shared = &self.gateway.shared;
        let (messages, has_more) = history::sync(
            &shared.worker,
            &shared.reader,
            &data.conversation_id,
            window,
            limit,
        )
        .await?;
        let messages: Vec<_> = messages.iter().map(MessageJson::from).collect();
        Ok(Reply::Ack(
            json!({ "messages": messages, "hasMore": has_more }),
        ))
    }

    /// Joins this user's local sockets to a conversation before the ack, so that nothing
    /// published after the ack is missed; the user event that follows tells them.
    async fn join_local(&self, conversation: &v1::Conversation) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        shared
            .hub
            .join_user(&self.identity.user_id, &conversation.id)
            .await;
        Ok(Reply::Ack(
            json!({ "conversation": ConversationJson::from(conversation) }),
        ))
    }

    async fn create(&mut self, data: client::CreateData) -> Result<Reply, RequestError> {
        let request = validation::new_conversation(data, &self.identity.user_id)?;
        self.gateway
            .shared
            .hub
            .check_room_limit(self.socket.id, None)?;
        let conversation = self.gateway.shared.worker.create(request).await?;
        self.join_local(&conversation).await
    }

    async fn join(&mut self, data: JoinData) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        validation::password(data.password.as_deref())?;
        let hub = &self.gateway.shared.hub;
        hub.check_room_limit(self.socket.id, Some(&data.conversation_id))?;
        let request = v1::JoinConversationRequest {
            user_id: self.identity.user_id.to_string(),
            conversation_id: data.conversation_id,
            password: data.password,
        };
        let conversation = self.gateway.shared.worker.join(request).await?;
        self.join_local(&conversation).await
    }

    async fn leave(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        let shared = &self.gateway.shared;
        let request = v1::LeaveConversationRequest {
            user_id: self.identity.user_id.to_string(),
            conversation_id: data.conversation_id.clone(),
        };
        shared.worker.leave(request).await?;
        shared
            .hub
            .leave_user(&self.identity.user_id, &data.conversation_id);
        Ok(Reply::Ack(json!({})))
    }

    async fn info(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        let conversation = self
            .gateway
            .shared
            .worker
            .conversation(&data.conversation_id)
            .await?;
        if conversation.private {
            self.require_member(&conversation.id).await?;
        }
        Ok(Reply::Ack(
            json!({ "conversation": ConversationJson::from(&conversation) }),
        ))
    }

    async fn online(&mut self, data: ConversationRef) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let conversation = self
            .gateway
            .shared
            .worker
            .conversation(&data.conversation_id)
            .await?;
        presence::online(
            self.gateway.shared.router.as_ref(),
            conversation.participant_ids,
        )
        .await
        .map(Reply::Ack)
    }

    async fn typing(
        &mut self,
        data: ConversationRef,
        is_typing: bool,
    ) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let conversation_id: Arc<str> = data.conversation_id.into();
        if is_typing {
            self.typing
                .insert(Arc::clone(&conversation_id), Instant::now() + TYPING_TTL);
        } else {
            self.typing.remove(&conversation_id);
        }
        self.publish_typing(&conversation_id, is_typing).await;
        Ok(Reply::Ack(json!({})))
    }

    async fn expire_typing(&mut self) {
        let now = Instant::now();
        let expired: Vec<_> = self
            .typing
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(c, _)| Arc::clone(c))
            .collect();
        for conversation_id in expired {
            self.typing.remove(&conversation_id);
            self.publish_typing(&conversation_id, false).await;
        }
    }

    async fn publish_typing(&self, conversation_id: &str, is_typing: bool) {
        let event = ConversationEvent {
            seq: 0,
            conversation_id: conversation_id.to_owned(),
            kind: Some(Kind::Typing(v1::Typing {
                user_id: self.identity.user_id.to_string(),
                is_typing,
            })),
        };
        if let Err(error) = bus::publish_live(&self.gateway.shared.client, &event).await {
            tracing::debug!(%error, "typing not published");
        }
    }

    async fn receipt(
        &mut self,
        data: client::ReceiptData,
        read: bool,
    ) -> Result<Reply, RequestError> {
        validation::conversation_id(&data.conversation_id)?;
        self.require_member(&data.conversation_id).await?;
        let event = ConversationEvent {
            seq: 0,
            conversation_id: data.conversation_id,
            kind: Some(Kind::Receipt(v1::MessageReceipt {
                user_id: self.identity.user_id.to_string(),
                message_id: data.message_id,
                read,
            })),
        };
        bus::publish_live(&self.gateway.shared.client, &event).await?;
        Ok(Reply::Ack(json!({})))
    }
}

/// When `identity`'s token expires, with the clock leeway that verification allows.
fn token_expiry(identity: &Identity, leeway: Duration) -> Instant {
    let expires_ms = identity.expires_at.saturating_mul(1000);
    let now = u64::try_from(now_ms()).unwrap_or(0);
    Instant::now() + Duration::from_millis(expires_ms.saturating_sub(now)) + leeway
}

/// A number in `0..bound`, spread enough for reconnection jitter.
fn rand_below(bound: u64) -> u64 {
    u64::from(uuid::Uuid::new_v4().as_u128() as u32) % bound.max(1)
}

/// Sends a text frame in fragments of at most [`FIRST_FRAGMENT`] bytes, each flushed on its own
/// (a client's WebSocket library joins them).
async fn send_fragmented(
    sink: &mut SplitSink<WsStream, Message>,
    text: Utf8Bytes,
) -> Result<(), tungstenite::Error> {
    let bytes = bytes::Bytes::from(text);
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + FIRST_FRAGMENT).min(bytes.len());
        let opcode = if at == 0 { Data::Text } else { Data::Continue };
        let fragment = Frame::message(
            bytes.slice(at..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        sink.send(Message::Frame(fragment)).await?;
        at = end;
    }
    Ok(())
}

/// How a socket's writer ends.
enum WriterEnd {
    /// Evicted with this close code (the peer may not be reading).
    Evicted(u16),
    /// The outbox was closed and drained.
    Drained,
    /// The session closes with this code.
    Close(u16),
    /// The peer is gone.
    Failed,
}

async fn write_loop(
    mut sink: SplitSink<WsStream, Message>,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
) {
    let end = write_frames(&mut sink, &outbox, &eviction).await;
    // Boxed, like each batch: the state of a step taken once or briefly would otherwise sit in
    // every idle socket's writer.
    Box::pin(async move {
        let close = |code: u16| {
            Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static(close_reason(code)),
            }))
        };
        let _ = match end {
            // Stuck writing to a peer that does not read, perhaps: what was half written is
            // flushed before the close frame, if the peer reads again soon.
            WriterEnd::Evicted(code) => {
                tokio::time::timeout(CLOSE_LINGER, sink.send(close(code))).await
            }
            WriterEnd::Close(code) => {
                tokio::time::timeout(Duration::from_secs(1), sink.send(close(code))).await
            }
            WriterEnd::Drained => tokio::time::timeout(Duration::from_secs(1), sink.close()).await,
            WriterEnd::Failed => return,
        };
    })
    .await;
}

/// Writes what the outbox holds, in batches with one flush each, until the writer ends.
async fn write_frames(
    sink: &mut SplitSink<WsStream, Message>,
    outbox: &Outbox,
    eviction: &Eviction,
) -> WriterEnd {
    // Built once: a future made anew on every turn of the loop costs a registration each time.
    let evicted = eviction.evicted();
    tokio::pin!(evicted);
    // The first frame (`connected`, the largest an idle socket gets, about 1.2 KiB with four
    // rooms) goes out alone and in fragments: tungstenite keeps its write buffer at the largest
    // size it ever reached, and an idle socket then keeps only a fragment's size.
    let mut batch = 1;
    loop {
        let first = tokio::select! {
            biased;
            code = &mut evicted => return WriterEnd::Evicted(code),
            first = outbox.next() => first,
        };
        let Some(first) = first else {
            return WriterEnd::Drained;
        };
        let limit = std::mem::replace(&mut batch, WRITE_BATCH);
        let write = Box::pin(async {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(item) = next.take() {
                match item {
                    Outbound::Text(text) if limit == 1 && text.len() > FIRST_FRAGMENT => {
                        send_fragmented(sink, text).await?;
                    }
                    Outbound::Text(text) | Outbound::Event { frame: text, .. } => {
                        sink.feed(Message::Text(text)).await?
                    }
                    Outbound::Ping => sink.feed(Message::Ping(bytes::Bytes::new())).await?,
                    Outbound::Close(code, _) => {
                        sink.flush().await?;
                        return Ok(Some(code));
                    }
                }
                written += 1;
                if written < limit {
                    next = outbox.try_pop();
                }
            }
            sink.flush().await.map(|()| None)
        });
        let written = tokio::select! {
            biased;
            code = &mut evicted => return WriterEnd::Evicted(code),
            written = write => written,
        };
        match written {
            Ok(None) => {}
            Ok(Some(code)) => return WriterEnd::Close(code),
            Err(error) => {
                tracing::debug!(%error, "write failed");
                return WriterEnd::Failed;
            }
        }
    }
}
