//! Presence: the routers' changes told to this node's users, and the queries that sockets
//! (`session::handlers::presence`) and the server API ask the routers.
//!
//! A router publishes the visible changes of its users, each with the user's conversations. The
//! node finds its local sockets in those conversations and tells each socket once per change
//! (`user:online`, `user:offline`, `presence:changed`), however many conversations it shares
//! with the user. Presence pushes are ephemeral: a full outbox drops them.

use chat_proto::client::{self, Delivery};
use chat_proto::timestamp::iso8601;
use chat_proto::v1::{self, Status};
use futures_util::StreamExt;
use prost::Message as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::error::RequestError;
use crate::hub::Hub;
use crate::validation;
use crate::worker::Detail;

/// Most users one `presence:query` may name.
pub const MAX_QUERIED_USERS: usize = 500;

/// What others see of each user named (at most [`MAX_QUERIED_USERS`]): `{userId: status}`.
pub(crate) async fn statuses(
    shared: &Shared,
    user_ids: Vec<String>,
) -> Result<serde_json::Map<String, serde_json::Value>, RequestError> {
    let router = shared.router()?;
    if user_ids.len() > MAX_QUERIED_USERS {
        return Err(RequestError::invalid(format!(
            "at most {MAX_QUERIED_USERS} userIds"
        )));
    }
    for user_id in &user_ids {
        validation::user_id(user_id)?;
    }
    let statuses = router.routers().presence(user_ids).await?;
    Ok(statuses
        .into_iter()
        .map(|(user_id, status)| (user_id, status_name(status).into()))
        .collect())
}

/// Which members of a conversation are visibly online, sorted: every member, not the first 100
/// a conversation carries.
pub(crate) async fn online_members(
    shared: &Shared,
    conversation_id: &str,
) -> Result<Vec<String>, RequestError> {
    let router = shared.router()?;
    let conversation = shared
        .worker
        .conversation(conversation_id, Detail::AllParticipants)
        .await?;
    let mut user_ids = router
        .routers()
        .online_members(conversation.participant_ids)
        .await?;
    user_ids.sort_unstable();
    Ok(user_ids)
}

/// The protocol's name of a status.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Offline => "offline",
        Status::Online => "online",
        Status::Away => "away",
        Status::Busy => "busy",
        Status::Invisible => "invisible",
    }
}

/// The status a client names in `presence:update`.
pub fn parse_status(name: &str) -> Option<Status> {
    match name {
        "online" => Some(Status::Online),
        "away" => Some(Status::Away),
        "busy" => Some(Status::Busy),
        "invisible" => Some(Status::Invisible),
        _ => None,
    }
}

/// Tells local users of the changes published on `subscription` until `token` is cancelled.
pub async fn relay(hub: Hub, mut subscription: async_nats::Subscriber, token: CancellationToken) {
    loop {
        let message = tokio::select! {
            () = token.cancelled() => return,
            message = subscription.next() => message,
        };
        let Some(message) = message else { return };
        match v1::PresenceChanges::decode(message.payload) {
            Ok(changes) => {
                for change in changes.changes {
                    tell(&hub, &change);
                }
            }
            Err(error) => tracing::warn!(%error, "undecodable presence changes"),
        }
    }
}

/// The pushes a change makes, in order.
fn pushes(change: &v1::PresenceChange) -> Vec<String> {
    let previous = Status::try_from(change.previous).unwrap_or(Status::Offline);
    let current = Status::try_from(change.current).unwrap_or(Status::Offline);
    let at = iso8601(change.timestamp_ms);
    let user_id = &change.user_id;
    let online = || client::push("user:online", json!({ "userId": user_id, "timestamp": at }));
    let changed = || {
        client::push(
            "presence:changed",
            json!({ "userId": user_id, "status": status_name(current) }),
        )
    };
    match (previous, current) {
        (Status::Offline, Status::Online) => vec![online()],
        (Status::Offline, _) => vec![online(), changed()],
        (_, Status::Offline) => vec![client::push(
            "user:offline",
            json!({ "userId": user_id, "timestamp": at }),
        )],
        _ => vec![changed()],
    }
}

fn tell(hub: &Hub, change: &v1::PresenceChange) {
    let sockets = hub.sockets_in(&change.conversation_ids, &change.user_id);
    if sockets.is_empty() {
        return;
    }
    let frames: Vec<Utf8Bytes> = pushes(change).into_iter().map(Utf8Bytes::from).collect();
    for socket in &sockets {
        for frame in &frames {
            socket.push(frame, Delivery::Ephemeral, &hub.stats().pushes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(previous: Status, current: Status) -> v1::PresenceChange {
        v1::PresenceChange {
            user_id: "ann".into(),
            previous: previous.into(),
            current: current.into(),
            conversation_ids: vec!["c".into()],
            timestamp_ms: 0,
        }
    }

    fn events(previous: Status, current: Status) -> Vec<String> {
        pushes(&change(previous, current))
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_str(p).unwrap();
                v["event"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn each_change_makes_the_protocols_events() {
        assert_eq!(events(Status::Offline, Status::Online), ["user:online"]);
        assert_eq!(
            events(Status::Offline, Status::Away),
            ["user:online", "presence:changed"]
        );
        assert_eq!(events(Status::Busy, Status::Offline), ["user:offline"]);
        assert_eq!(events(Status::Online, Status::Away), ["presence:changed"]);
        assert_eq!(parse_status("invisible"), Some(Status::Invisible));
        assert_eq!(parse_status("offline"), None);
    }
}
