//! Presence: the routers' changes told to this node's users, and the queries that sockets
//! (`session::handlers::presence`) and the server API ask the routers.
//!
//! A router publishes the visible changes of its users, each with the user's conversations. The
//! node finds its local sockets in those conversations and tells each socket once per change
//! (`user:online`, `user:offline`, `presence:changed`), however many conversations it shares
//! with the user. Presence pushes are ephemeral: a full outbox drops them. Who is online when
//! users come to share a conversation: [`crate::hub::presence`].

use chat_proto::client::StatusesData;
use chat_proto::v1::{self, Status};
use futures_util::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::error::RequestError;
use crate::hub::Hub;
use crate::hub::presence::status_name;
use crate::validation;
use crate::worker::Detail;

/// Most users one `presence:query` may name.
pub const MAX_QUERIED_USERS: usize = 500;

/// What others see of each user named (at most [`MAX_QUERIED_USERS`]): `{userId: status}`.
pub(crate) async fn statuses(
    shared: &Shared,
    user_ids: Vec<String>,
) -> Result<StatusesData, RequestError> {
    let router = shared.router()?;
    if user_ids.len() > MAX_QUERIED_USERS {
        return Err(RequestError::invalid(format!(
            "at most {MAX_QUERIED_USERS} userIds"
        )));
    }
    for user_id in &user_ids {
        validation::user_id(user_id)?;
    }
    let statuses = router.routers().presence(user_ids, false).await?;
    let statuses = statuses
        .into_iter()
        .map(|(user_id, status)| (user_id, status_name(status)))
        .collect();
    Ok(StatusesData { statuses })
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
                    hub.tell(
                        &hub.sockets_in(&change.conversation_ids, &change.user_id),
                        &change,
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "undecodable presence changes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_may_set_every_status_but_offline() {
        assert_eq!(parse_status("invisible"), Some(Status::Invisible));
        assert_eq!(parse_status("away"), Some(Status::Away));
        assert_eq!(parse_status("offline"), None);
    }
}
