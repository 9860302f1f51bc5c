//! Resume: a client that reconnects (to any gateway) with its resume token and its last seen
//! `seq` per conversation gets every event it missed, then the live stream, once each.
//!
//! The token ([`crate::resume_token`]) names the old session, which the new one replaces. While
//! the socket's rooms are joined its conversation events are held in its outbox; the missed events are read from the stream ([`replay`]), the answer goes out, then the outbox
//! releases the missed events before the held ones, dropping the held ones the replay or the
//! client already has.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_proto::client::Replayed;

use crate::error::RequestError;
use crate::hub::Hub;
use crate::socket::SocketId;
use crate::socket::outbox::Replay;
use crate::validation;

/// Most events one conversation replays; beyond, the client pages with `messages:sync`.
pub const MAX_REPLAY_EVENTS: usize = 1_000;
/// Most conversations one resume names.
pub const MAX_RESUMED_CONVERSATIONS: usize = 1_000;
/// How long a socket that connected with `resume=1` holds its pushes for its `resume` request.
pub const RESUME_WAIT: Duration = Duration::from_secs(5);

/// What a resume read: the replay for the socket's outbox, and the answer's `conversations`
/// (replayed count and completeness of each).
pub struct Recovery {
    /// What the outbox releases.
    pub replay: Replay,
    /// The `resume` answer's `conversations`.
    pub report: BTreeMap<String, Replayed>,
}

/// Reads what the socket missed in each conversation of `positions` it is in (the others are
/// left out: their events are not the user's any more).
pub async fn replay(
    hub: &Hub,
    socket_id: SocketId,
    positions: &BTreeMap<String, u64>,
) -> Result<Recovery, RequestError> {
    if positions.len() > MAX_RESUMED_CONVERSATIONS {
        return Err(RequestError::invalid(format!(
            "at most {MAX_RESUMED_CONVERSATIONS} positions"
        )));
    }
    let mut recovery = Recovery {
        replay: Replay::default(),
        report: BTreeMap::new(),
    };
    for (conversation_id, &after) in positions {
        validation::conversation_id(conversation_id)?;
        if !hub.is_joined(socket_id, conversation_id) {
            continue;
        }
        let (events, complete) = hub
            .events_after(conversation_id, after, MAX_REPLAY_EVENTS)
            .await?;
        let replayed = recovery.replay.add(conversation_id, after, &events);
        recovery
            .report
            .insert(conversation_id.clone(), Replayed { replayed, complete });
    }
    Ok(recovery)
}
