//! Resume: a client that reconnects (to any gateway) with its resume token and its last seen
//! `seq` per conversation gets every event it missed, then the live stream, once each.
//!
//! The token names the user and the old session, expires, and is signed with a key of the
//! gateways' own ([`ResumeKeys`]): it is not a client token and never authenticates on its own.
//! While the socket's rooms are joined its conversation events are held in its outbox; the
//! missed events are read from the stream ([`replay`]), the answer goes out, then the outbox
//! releases the missed events before the held ones, dropping the held ones the replay or the
//! client already has.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub use chat_proto::client::ResumeData;
use chat_proto::client::{self, Delivery};
use chat_proto::subjects;
use chat_proto::v1::ConversationEvent;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::RequestError;
use crate::history::StreamReader;
use crate::hub::Hub;
use crate::socket::SocketId;
use crate::validation;

/// Most events one conversation replays; beyond, the client pages with `messages:sync`.
pub const MAX_REPLAY_EVENTS: usize = 1_000;
/// Most conversations one resume names.
pub const MAX_RESUMED_CONVERSATIONS: usize = 1_000;
/// How long a socket that connected with `resume=1` holds its pushes for its `resume` request.
pub const RESUME_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    exp: u64,
    typ: String,
}

const TOKEN_TYPE: &str = "resume";

/// Why a resume token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    /// Not signed by the gateways, malformed, or expired.
    #[error("resumeToken is not valid or has expired")]
    Invalid,
    /// Another user's token.
    #[error("resumeToken is another user's")]
    OtherUser,
}

/// The gateways' key for resume tokens.
#[derive(Clone)]
pub struct ResumeKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for ResumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeKeys")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl ResumeKeys {
    /// Keys from `secret`, or derived from the client tokens' HS256 secret (a different key: a
    /// resume token is never a valid client token); none without either.
    pub fn new(secret: Option<&str>, jwt_secret: Option<&str>, ttl: Duration) -> Option<Self> {
        let key: Vec<u8> = match (secret, jwt_secret) {
            (Some(secret), _) => secret.as_bytes().to_vec(),
            (None, Some(jwt_secret)) => Sha256::new()
                .chain_update(b"chat resume tokens v1\0")
                .chain_update(jwt_secret.as_bytes())
                .finalize()
                .to_vec(),
            (None, None) => return None,
        };
        Some(Self {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            ttl,
        })
    }

    /// A token naming `session_id` of `user_id`.
    pub fn mint(&self, user_id: &str, session_id: &str) -> String {
        let claims = Claims {
            sub: user_id.to_owned(),
            sid: session_id.to_owned(),
            exp: jsonwebtoken::get_current_timestamp() + self.ttl.as_secs(),
            typ: TOKEN_TYPE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with a secret cannot fail")
    }

    /// The old session a token names, if it is valid, unexpired and `user_id`'s.
    pub fn verify(&self, token: &str, user_id: &str) -> Result<String, ResumeError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| ResumeError::Invalid)?
            .claims;
        if claims.typ != TOKEN_TYPE || claims.sub != user_id {
            return Err(ResumeError::OtherUser);
        }
        Ok(claims.sid)
    }
}

/// What a replay read.
#[derive(Default)]
pub struct Replay {
    /// The missed events' frames, conversation by conversation, in order.
    pub frames: Vec<Utf8Bytes>,
    /// Per conversation hash, the position the client has once it got `frames`.
    pub covered: HashMap<u64, u64>,
    /// The `resume` answer's `conversations`: replayed count and completeness.
    pub report: serde_json::Map<String, serde_json::Value>,
}

impl Replay {
    /// Adds `events`, the conversation's events after `after` in order; returns how many frames
    /// they gave.
    pub fn add(
        &mut self,
        conversation_id: &str,
        after: u64,
        events: &[ConversationEvent],
    ) -> usize {
        let mut upto = after;
        let mut replayed = 0;
        for event in events {
            upto = upto.max(event.seq);
            if let Some((frame, Delivery::Durable)) = client::conversation_push(event) {
                self.frames.push(Utf8Bytes::from(frame));
                replayed += 1;
            }
        }
        self.covered.insert(subjects::fnv1a(conversation_id), upto);
        replayed
    }
}

/// Reads what the socket missed in each conversation of `positions` it is in (the others are
/// left out: their events are not the user's any more).
pub async fn replay(
    reader: &StreamReader,
    hub: &Hub,
    socket_id: SocketId,
    positions: &BTreeMap<String, u64>,
) -> Result<Replay, RequestError> {
    if positions.len() > MAX_RESUMED_CONVERSATIONS {
        return Err(RequestError::invalid(format!(
            "at most {MAX_RESUMED_CONVERSATIONS} positions"
        )));
    }
    let mut replay = Replay::default();
    for (conversation_id, &after) in positions {
        validation::conversation_id(conversation_id)?;
        if !hub.is_joined(socket_id, conversation_id) {
            continue;
        }
        let (events, complete) = reader
            .events_after(conversation_id, after, MAX_REPLAY_EVENTS)
            .await?;
        let replayed = replay.add(conversation_id, after, &events);
        replay.report.insert(
            conversation_id.clone(),
            json!({ "replayed": replayed, "complete": complete }),
        );
    }
    Ok(replay)
}
