//! Opening a session: authentication (a token from the upgrade, or a first `auth` frame in
//! time), admission by the router (the per-user session limit), the rooms joined, and the
//! `connected` answer, with the replay of a resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chat_proto::client::{self, ConversationJson, Recovered, ResumeData};
use chat_proto::timestamp::{iso8601, now_ms};
use chat_proto::v1;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument as _;

use super::resume;
use super::upgrade::Upgrade;
use super::{Frames, Session, token_expiry};
use crate::Gateway;
use crate::auth::{AuthError, Identity};
use crate::error::{CloseReason, RequestError};
use crate::request::{self, Body};
use crate::router::Admission;
use crate::socket::outbox::{Outbound, Outbox, Replay};
use crate::socket::{Eviction, SocketHandle};

/// Who connected, the `auth` request's id, and what they resume.
struct Authenticated {
    identity: Identity,
    request_id: Option<String>,
    resume: Option<ResumeData>,
}

/// Why a socket is refused before its session opens: the close, and the error frame to send
/// first (none to a client that is gone).
struct Refused {
    reason: CloseReason,
    frame: Option<String>,
}

/// What the session resumes.
enum Resume {
    /// Nothing.
    No,
    /// `resume=1`: the first request will be `resume`; pushes wait for it.
    Awaited,
    /// `auth.resume` with a valid token: it replaces `old_session` and replays after
    /// `positions`.
    Replay {
        old_session: String,
        positions: BTreeMap<String, u64>,
    },
    /// `auth.resume` with a token that does not verify: the client is told why, nothing is
    /// replayed.
    Refused(String),
}

/// Authenticates the socket, admits it, joins its rooms and answers `connected` (with the
/// replay of a resume): the session to serve, or `None` when the socket was refused (it has
/// been told why, and its close is queued).
pub(super) async fn open(
    gateway: Gateway,
    frames: &mut impl Frames,
    upgrade: Upgrade,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
) -> Option<Session> {
    let connect = chat_proto::telemetry::traced(|| {
        tracing::info_span!("connect", trace_id = tracing::field::Empty)
    });
    open_session(gateway, frames, upgrade, outbox, eviction)
        .instrument(connect)
        .await
}

/// [`open`], in its `connect` span.
async fn open_session(
    gateway: Gateway,
    frames: &mut impl Frames,
    upgrade: Upgrade,
    outbox: Arc<Outbox>,
    eviction: Arc<Eviction>,
) -> Option<Session> {
    let shared = &gateway.shared;
    let resume_query = upgrade.resume;
    let address = upgrade.client;
    let authenticated = match authenticate(&gateway, upgrade, frames).await {
        Ok(authenticated) => authenticated,
        Err(refused) => {
            shared.metrics.refuse_connection(refused.reason.label());
            if let Some(frame) = refused.frame {
                let _ = outbox.try_push(Outbound::Text(frame.into()));
            }
            let _ = outbox.try_push(Outbound::Close(refused.reason));
            outbox.close();
            return None;
        }
    };
    let Authenticated {
        identity,
        request_id,
        resume,
    } = authenticated;
    tracing::Span::current().record("user_id", &*identity.user_id);
    let socket = SocketHandle::new(
        shared.next_socket_id.fetch_add(1, Ordering::Relaxed),
        Arc::clone(&identity.user_id),
        outbox,
        eviction,
    );
    let resume = match (shared.settings.resume.as_ref(), resume) {
        (None, _) => Resume::No,
        (Some(keys), Some(data)) => match keys.verify(&data.resume_token, &identity.user_id) {
            Ok(old_session) => Resume::Replay {
                old_session,
                positions: data.positions,
            },
            Err(error) => Resume::Refused(error.to_string()),
        },
        (Some(_), None) if resume_query => Resume::Awaited,
        (Some(_), None) => Resume::No,
    };
    let mut session = Session {
        token_expiry: token_expiry(&identity, shared.settings.config.jwt_leeway),
        gateway: gateway.clone(),
        socket,
        identity,
        session_id: uuid::Uuid::new_v4().simple().to_string(),
        typing: HashMap::new(),
        resume_wait: None,
        address,
    };
    shared.hub.register(&session.socket);
    if matches!(resume, Resume::Replay { .. } | Resume::Awaited) {
        // Conversation events wait from before the rooms are joined until the replay is in.
        session.socket.outbox().hold();
    }
    // Registered with the router before the rooms are fetched: an event addressed to the user
    // from now on finds this node through the router, and one before is in the rooms.
    let replaces = match &resume {
        Resume::Replay { old_session, .. } => Some(old_session.clone()),
        _ => None,
    };
    if let Admission::Refused { limit } = session.admit(replaces).await {
        let message =
            format!("too many sessions: a user may have at most {limit} at once; close one first");
        let error = RequestError::forbidden(message);
        session.emit(error.to_frame(request_id.as_deref(), Some("auth")));
        shared.metrics.refuse_connection("session_limit");
        session.close(CloseReason::OverLimit);
        session.finish(FuturesOrdered::new()).await;
        return None;
    }
    let mut payload = match session.connected().await {
        Ok(payload) => payload,
        Err(error) => {
            // Without its rooms the socket would miss messages: the client reconnects (or, over
            // the room limit, is told so).
            session.emit(error.to_frame(request_id.as_deref(), Some("auth")));
            let reason = CloseReason::of_failed_join(&error);
            shared.metrics.refuse_connection(reason.label());
            session.close(reason);
            session.finish(FuturesOrdered::new()).await;
            return None;
        }
    };
    shared.metrics.connects.inc();
    tracing::debug!(user_id = %session.identity.user_id, "session opened");
    let replay = match resume {
        Resume::Replay { positions, .. } => {
            let (report, replay) = session.replay(&positions).await;
            payload.resume = Some(report);
            Some(replay)
        }
        Resume::Refused(message) => {
            payload.resume = Some(Recovered::refused(message));
            None
        }
        Resume::Awaited => {
            session.resume_wait = Some(Instant::now() + resume::RESUME_WAIT);
            None
        }
        Resume::No => None,
    };
    session.emit(match request_id {
        Some(id) => client::ack(&id, payload),
        None => client::push("connected", payload),
    });
    if let Some(replay) = replay {
        session.release(replay);
    }
    let mut record = session.audit("connect", &session.identity.user_id, "");
    record.address = address.to_string();
    session.record(record);
    Some(session)
}

/// Finds the socket's identity: from the upgrade, else from a first `auth` frame in time.
async fn authenticate(
    gateway: &Gateway,
    upgrade: Upgrade,
    frames: &mut impl Frames,
) -> Result<Authenticated, Refused> {
    let shared = &gateway.shared;
    let verifier = &shared.settings.verifier;
    let address = upgrade.client;
    // Each failure counts against the client's address; past its rate, a failure is answered
    // as over a limit (a valid token is never refused for this).
    let unauthorized = |error: AuthError, request_id: Option<&str>| {
        let rate = shared.settings.config.failed_auth_rate_per_ip;
        let (error, reason) = match shared.failed_auths.take(address, rate) {
            Ok(()) => (RequestError::from(error), CloseReason::Unauthorized),
            Err(wait) => (
                RequestError::rate_limited(
                    "too many failed authentications from this address; retry later",
                    wait,
                ),
                CloseReason::OverLimit,
            ),
        };
        let frame = Some(error.to_frame(request_id, Some("auth")));
        Refused { reason, frame }
    };
    if let Some(token) = upgrade.token {
        return verifier
            .verify(&token)
            .map(|identity| Authenticated {
                identity,
                request_id: None,
                resume: None,
            })
            .map_err(|e| unauthorized(e, None));
    }
    let deadline = Instant::now() + shared.settings.config.auth_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => {
                let error = RequestError::unauthorized("no token received in time");
                let frame = Some(error.to_frame(None, Some("auth")));
                let reason = CloseReason::AuthTimeout;
                return Err(Refused { reason, frame });
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(_))) => return Err(unauthorized(AuthError::Missing, None)),
            Ok(None | Some(Err(_))) => {
                // Gone: nobody to tell.
                let reason = CloseReason::Normal;
                return Err(Refused {
                    reason,
                    frame: None,
                });
            }
        }
    };
    let max_bytes = shared.settings.config.max_message_bytes;
    match request::decode(&text, max_bytes) {
        Ok(request::Request {
            request_id,
            body: Body::Auth(data),
        }) => match verifier.verify(&data.token) {
            Ok(identity) => Ok(Authenticated {
                identity,
                request_id,
                resume: data.resume,
            }),
            Err(error) => Err(unauthorized(error, request_id.as_deref())),
        },
        Ok(request) => Err(unauthorized(
            AuthError::Missing,
            request.request_id.as_deref(),
        )),
        // Not a token guess: told what is wrong with the frame, not counted as a failure.
        Err(refusal) => Err(Refused {
            reason: CloseReason::Unauthorized,
            frame: Some(refusal.to_frame()),
        }),
    }
}

/// The `connected` answer's data: serialized straight into the frame (built as a JSON value,
/// its rooms were copied into a tree of maps first, the largest cost of a connect's answer).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Connected {
    user_id: String,
    session_id: String,
    #[serde(serialize_with = "rooms_json")]
    rooms: Vec<v1::Conversation>,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_token: Option<String>,
    /// What a resume recovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resume: Option<Recovered>,
}

/// The rooms as the protocol shows them.
fn rooms_json<S: serde::Serializer>(
    rooms: &[v1::Conversation],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(rooms.iter().map(ConversationJson::from))
}

impl Session {
    /// The `connected` payload, once the socket is in every room of its user.
    pub(super) async fn connected(&self) -> Result<Connected, RequestError> {
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
        let resume_token = shared
            .settings
            .resume
            .as_ref()
            .map(|keys| keys.mint(&self.identity.user_id, &self.session_id));
        Ok(Connected {
            user_id: self.identity.user_id.to_string(),
            session_id: self.session_id.clone(),
            rooms,
            timestamp: iso8601(now_ms()),
            resume_token,
            resume: None,
        })
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
    pub(super) async fn replay(
        &self,
        positions: &BTreeMap<String, u64>,
    ) -> (Recovered, Option<Replay>) {
        let shared = &self.gateway.shared;
        match resume::replay(&shared.hub, self.socket.id, positions).await {
            Ok(recovery) => {
                let report = Recovered {
                    recovered: true,
                    conversations: Some(recovery.report),
                    error: None,
                };
                (report, Some(recovery.replay))
            }
            Err(error) => (Recovered::refused(error.message), None),
        }
    }

    /// Ends the hold of conversation events, the replay first.
    pub(super) fn release(&self, replay: Option<Replay>) {
        self.socket.outbox().release(replay.unwrap_or_default());
    }
}
