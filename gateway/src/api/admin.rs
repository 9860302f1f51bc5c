//! The admin views, for admin keys only: the gateway nodes and their connections (from the
//! routers), a conversation's statistics, and the health of what the chat needs, with reasons.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use chat_proto::client::ErrorCode;
use chat_proto::history::Window;
use chat_proto::timestamp::now_ms;
use serde::Serialize;

use super::{Api, ApiError};
use crate::worker::Detail;
use crate::{history, presence, validation};

/// Most messages counted for `messagesLastMinute` (ten pages of the newest).
const MAX_COUNTED: usize = 1_000;
/// Messages read a page.
const PAGE: u32 = 100;
/// The lag above which the store counts as behind.
const LAG_WARNING: i64 = 10_000;

/// `GET /admin/nodes`: every gateway node that a router knows, with its sessions (open,
/// authenticated sockets), and the users online.
pub(super) async fn nodes(State(api): State<Api>) -> Result<Json<NodesJson>, ApiError> {
    let shared = &api.gateway.shared;
    let router = shared.router()?;
    let stats = router.routers().cluster_stats().await.map_err(|error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("the routers do not answer: {error}"),
        )
    })?;
    let connections: u64 = stats.nodes.iter().map(|node| node.sessions).sum();
    let nodes = stats
        .nodes
        .into_iter()
        .map(|node| NodeJson {
            node_id: node.node_id,
            connections: node.sessions,
        })
        .collect();
    Ok(Json(NodesJson {
        nodes,
        connections,
        users_online: stats.users_online,
    }))
}

/// `{nodes: [{nodeId, connections}], connections, usersOnline}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NodesJson {
    nodes: Vec<NodeJson>,
    connections: u64,
    users_online: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson {
    node_id: String,
    connections: u64,
}

/// A conversation's statistics.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatsJson {
    conversation_id: String,
    members: u32,
    /// Unknown (null) without routers.
    members_online: Option<usize>,
    messages_last_minute: usize,
    messages_last_minute_at_least: bool,
}

/// `GET /admin/conversations/{id}/stats`: members, members online, and messages in the last
/// minute (counted up to [`MAX_COUNTED`]; `messagesLastMinuteAtLeast` says the count stopped
/// there).
pub(super) async fn conversation_stats(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<StatsJson>, ApiError> {
    validation::conversation_id(&id)?;
    let shared = &api.gateway.shared;
    let conversation = shared
        .worker
        .conversation(&id, Detail::ForReader(""))
        .await?;
    let online = match shared.router() {
        Ok(_) => Some(presence::online_members(shared, &id).await?.len()),
        Err(_) => None,
    };
    let since = now_ms() - 60_000;
    let mut counted = 0;
    let mut window = Window::Newest;
    let mut complete = false;
    while counted < MAX_COUNTED {
        let (page, more) = history::sync(&shared.worker, &shared.reader, &id, window, PAGE).await?;
        counted += page.iter().filter(|m| m.created_at_ms >= since).count();
        let Some(oldest) = page.first() else {
            complete = true;
            break;
        };
        if oldest.created_at_ms < since || !more {
            complete = true;
            break;
        }
        window = Window::Before(oldest.id);
    }
    Ok(Json(StatsJson {
        conversation_id: id,
        members: conversation.num_participants,
        members_online: online,
        messages_last_minute: counted,
        messages_last_minute_at_least: !complete,
    }))
}

/// `GET /admin/health`: NATS (this node's connection), the routers, a worker and its store, and
/// the store's lag behind the stream, each `ok` or with the reason it is not; `status` is `ok`,
/// or `degraded` (the chat works, with less: presence, or reads of old history), or `down`
/// (messages cannot be sent or stored). 200 unless `down` (503).
pub(super) async fn health(State(api): State<Api>) -> Response {
    let shared = &api.gateway.shared;
    let nats = match shared.client.connection_state() {
        async_nats::connection::State::Connected => Check::Ok,
        state => Check::Down(format!("this node's NATS connection is {state:?}")),
    };
    let router = match &shared.router {
        None => Check::Degraded("no router configured: presence is not tracked".to_owned()),
        Some(router) => {
            let unreachable = router.unreachable().len();
            let total = router.routers().len();
            if unreachable == 0 {
                Check::Ok
            } else {
                Check::Degraded(format!(
                    "{unreachable} of {total} routers unreachable: presence and the session \
                     limit are degraded"
                ))
            }
        }
    };
    let (worker, store, lag) = match shared.worker.health().await {
        Err(error) => {
            let why = format!("no worker answers ({error}): reads and membership changes fail");
            (Check::Down(why), Check::Unknown, None)
        }
        Ok(reply) => {
            let store = if reply.store_ok {
                Check::Ok
            } else {
                Check::Down(format!(
                    "the worker cannot reach its store: {}",
                    reply.store_error
                ))
            };
            let lag = if reply.lag_events > LAG_WARNING {
                Check::Degraded(format!(
                    "the store is {} events behind the stream",
                    reply.lag_events
                ))
            } else {
                Check::Ok
            };
            (Check::Ok, store, Some((lag, reply.lag_events)))
        }
    };
    let lag_events = lag.as_ref().map(|(_, events)| *events);
    let lag = lag.map_or(Check::Unknown, |(check, _)| check);
    let checks = [&nats, &router, &worker, &store, &lag];
    let status = if checks.iter().any(|c| matches!(c, Check::Down(_))) {
        "down"
    } else if checks.iter().all(|c| matches!(c, Check::Ok)) {
        "ok"
    } else {
        "degraded"
    };
    let code = if status == "down" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = HealthJson {
        status,
        node: &shared.settings.node_id,
        checks: ChecksJson {
            nats: nats.json(),
            router: router.json(),
            worker: worker.json(),
            store: store.json(),
            lag: LagJson {
                check: lag.json(),
                events: lag_events,
            },
        },
    };
    (code, Json(body)).into_response()
}

/// `{status, node, checks}`: the answer of [`health`].
#[derive(Serialize)]
struct HealthJson<'a> {
    status: &'static str,
    node: &'a str,
    checks: ChecksJson<'a>,
}

#[derive(Serialize)]
struct ChecksJson<'a> {
    nats: CheckJson<'a>,
    router: CheckJson<'a>,
    worker: CheckJson<'a>,
    store: CheckJson<'a>,
    lag: LagJson<'a>,
}

/// `{status, reason?}`.
#[derive(Serialize)]
struct CheckJson<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The lag's check with the lag itself (null when unknown).
#[derive(Serialize)]
struct LagJson<'a> {
    #[serde(flatten)]
    check: CheckJson<'a>,
    events: Option<i64>,
}

/// One check of [`health`].
enum Check {
    Ok,
    Degraded(String),
    Down(String),
    /// Could not be told (what answers for it is down).
    Unknown,
}

impl Check {
    fn json(&self) -> CheckJson<'_> {
        let (status, reason) = match self {
            Self::Ok => ("ok", None),
            Self::Degraded(reason) => ("degraded", Some(reason.as_str())),
            Self::Down(reason) => ("down", Some(reason.as_str())),
            Self::Unknown => ("unknown", None),
        };
        CheckJson { status, reason }
    }
}
