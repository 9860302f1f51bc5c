//! The admin views, for admin keys only: the gateway nodes and their connections (from the
//! routers), a conversation's statistics, and the health of what the chat needs, with reasons.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chat_proto::client::ErrorCode;
use chat_proto::history::Window;
use chat_proto::timestamp::now_ms;
use serde_json::{Value, json};

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
pub(super) async fn nodes(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let shared = &api.gateway.shared;
    let router = shared.router()?;
    let stats = router.routers().cluster_stats().await.map_err(|error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("the routers do not answer: {error}"),
        )
    })?;
    let nodes: Vec<Value> = stats
        .nodes
        .iter()
        .map(|node| json!({ "nodeId": node.node_id, "connections": node.sessions }))
        .collect();
    let connections: u64 = stats.nodes.iter().map(|node| node.sessions).sum();
    Ok(Json(json!({
        "nodes": nodes,
        "connections": connections,
        "usersOnline": stats.users_online,
    })))
}

/// `GET /admin/conversations/{id}/stats`: members, members online, and messages in the last
/// minute (counted up to [`MAX_COUNTED`]; `messagesLastMinuteAtLeast` says the count stopped
/// there).
pub(super) async fn conversation_stats(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "conversationId": id,
        "members": conversation.num_participants,
        "membersOnline": online,
        "messagesLastMinute": counted,
        "messagesLastMinuteAtLeast": !complete,
    })))
}

/// `GET /admin/health`: NATS (this node's connection), the routers, a worker and its store, and
/// the store's lag behind the stream, each `ok` or with the reason it is not; `status` is `ok`,
/// or `degraded` (the chat works, with less: presence, or reads of old history), or `down`
/// (messages cannot be sent or stored). 200 unless `down` (503).
pub(super) async fn health(State(api): State<Api>) -> (StatusCode, Json<Value>) {
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
    let mut lag_json = lag.json();
    lag_json["events"] = json!(lag_events);
    let body = json!({
        "status": status,
        "node": shared.settings.node_id,
        "checks": {
            "nats": nats.json(),
            "router": router.json(),
            "worker": worker.json(),
            "store": store.json(),
            "lag": lag_json,
        },
    });
    (code, Json(body))
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
    fn json(&self) -> Value {
        match self {
            Self::Ok => json!({ "status": "ok" }),
            Self::Degraded(reason) => json!({ "status": "degraded", "reason": reason }),
            Self::Down(reason) => json!({ "status": "down", "reason": reason }),
            Self::Unknown => json!({ "status": "unknown" }),
        }
    }
}
