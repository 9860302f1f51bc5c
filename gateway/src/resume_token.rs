//! Resume tokens: a token names the user and the old session, expires, and is signed with a key
//! of the gateways' own ([`ResumeKeys`]): it is not a client token and never authenticates on its
//! own. What a resume replays: [`crate::session::resume`].

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::RequestError;

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

/// How a refused resume token reaches the client.
impl From<ResumeError> for RequestError {
    fn from(error: ResumeError) -> Self {
        match error {
            ResumeError::Invalid => Self::invalid(error.to_string()),
            ResumeError::OtherUser => Self::forbidden(error.to_string()),
        }
    }
}
