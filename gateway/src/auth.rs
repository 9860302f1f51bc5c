//! Client tokens: JWTs checked against the configured keys.
//!
//! Each key has exactly one algorithm (HS256 secret, RS256 or ES256 public key); a token picks
//! its key by `kid`, or uses the only key there is. The token's own `alg` must be the key's, so
//! neither `none` nor an HS/RS confusion can pass. `exp` is required; `nbf`, `iss` and `aud` are
//! checked when configured or present, with a leeway for clocks. The user id is
//! `externalUserId`, else `sub`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use chat_proto::subjects::MAX_ID_CHARS;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token anywhere.
    #[error("a token is required")]
    Missing,
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("the token is too large")]
    TooLarge,
    /// Expired.
    #[error("the token has expired")]
    Expired,
    /// `nbf` in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// No key matches the token's `kid` (or several keys and no `kid`).
    #[error("the token's key is unknown")]
    UnknownKey,
    /// Anything else: bad signature, algorithm, issuer, audience, shape.
    #[error("the token is invalid")]
    Invalid,
    /// No usable user id in the claims.
    #[error("the token names no valid user")]
    NoUser,
}

/// One verification key.
#[derive(Clone)]
pub struct KeySpec {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl KeySpec {
    /// An HS256 shared secret.
    pub fn hs256(kid: Option<String>, secret: &[u8]) -> Self {
        Self {
            kid,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// Parses `[KID=]ALG:PEM_PATH` and reads the PEM file.
    pub fn parse_public(spec: &str) -> Result<Self, String> {
        let (kid, rest) = match spec.split_once('=') {
            Some((kid, rest)) => (Some(kid.trim().to_owned()), rest),
            None => (None, spec),
        };
        let (algorithm, path) = rest
            .split_once(':')
            .ok_or_else(|| "expected [KID=]ALG:PEM_PATH".to_owned())?;
        let algorithm = match algorithm.trim() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(format!("algorithm {other:?}: expected RS256 or ES256")),
        };
        let pem = crate::config::read_pem(path.trim())?;
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        }
        .map_err(|e| format!("not a {algorithm:?} public key: {e}"))?;
        Ok(Self {
            kid,
            algorithm,
            key,
        })
    }
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub user_id: Arc<str>,
    /// The `role` claim.
    pub role: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(rename = "externalUserId")]
    external_user_id: Option<String>,
    role: Option<String>,
    exp: u64,
}

/// Checks tokens; a cheap `Clone`.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<[KeySpec]>,
    leeway: Duration,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are secrets: name their ids and algorithms only.
        let keys: Vec<_> = self.keys.iter().map(|k| (&k.kid, k.algorithm)).collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    /// A verifier over `keys`.
    pub fn new(
        keys: Vec<KeySpec>,
        leeway: Duration,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        Self {
            keys: keys.into(),
            leeway,
            issuer,
            audience,
        }
    }

    /// Verifies `token`.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid,
            })?
            .claims;
        let user_id = claims
            .external_user_id
            .filter(|id| !id.is_empty())
            .or(claims.sub)
            .filter(|id| valid_id(id))
            .ok_or(AuthError::NoUser)?;
        Ok(Identity {
            user_id: user_id.into(),
            role: claims.role,
            expires_at: claims.exp,
        })
    }
}

/// Whether `id` may be a user or conversation id: 1 to 128 characters, no control characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ID_CHARS && !id.chars().any(char::is_control)
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
}

/// Signs an HS256 token for `user_id`, valid for `ttl`: for development and tests only.
pub fn mint_hs256(secret: &[u8], user_id: &str, ttl: Duration, role: Option<&str>) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintClaims {
        sub: user_id,
        exp: now + ttl.as_secs(),
        iat: now,
        role,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing with a secret cannot fail")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn verifier() -> Verifier {
        Verifier::new(
            vec![KeySpec::hs256(None, SECRET)],
            Duration::from_secs(5),
            None,
            None,
        )
    }

    fn sign(claims: serde_json::Value, header: Header, secret: &[u8]) -> String {
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_valid_token_names_its_user_and_role() {
        let token = sign(
            json!({"sub": "s-1", "externalUserId": "ext-1", "role": "guest", "exp": now() + 60}),
            Header::new(Algorithm::HS256),
            SECRET,
        );
        let identity = verifier().verify(&token).unwrap();
        assert_eq!(&*identity.user_id, "ext-1");
        assert_eq!(identity.role.as_deref(), Some("guest"));
        let minted = mint_hs256(SECRET, "bob", Duration::from_secs(60), None);
        assert_eq!(&*verifier().verify(&minted).unwrap().user_id, "bob");
    }

    #[test]
    fn refusals_name_the_reason() {
        let v = verifier();
        let hs = Header::new(Algorithm::HS256);
        let expired = sign(json!({"sub": "a", "exp": now() - 60}), hs.clone(), SECRET);
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let early = sign(
            json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}),
            hs.clone(),
            SECRET,
        );
        assert_eq!(v.verify(&early), Err(AuthError::NotYetValid));
        let forged = sign(json!({"sub": "a", "exp": now() + 60}), hs.clone(), b"other");
        assert_eq!(v.verify(&forged), Err(AuthError::Invalid));
        let no_exp = sign(json!({"sub": "a"}), hs.clone(), SECRET);
        assert_eq!(v.verify(&no_exp), Err(AuthError::Invalid));
        let no_user = sign(json!({"exp": now() + 60}), hs.clone(), SECRET);
        assert_eq!(v.verify(&no_user), Err(AuthError::NoUser));
        let wrong_alg = sign(
            json!({"sub": "a", "exp": now() + 60}),
            Header::new(Algorithm::HS512),
            SECRET,
        );
        assert_eq!(v.verify(&wrong_alg), Err(AuthError::Invalid));
        assert_eq!(
            v.verify(&"x".repeat(MAX_TOKEN_BYTES + 1)),
            Err(AuthError::TooLarge)
        );
        assert_eq!(v.verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        // {"alg":"none"} with a valid payload and an empty signature.
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(verifier().verify(token).is_err());
    }

    #[test]
    fn keys_are_picked_by_kid() {
        let v = Verifier::new(
            vec![
                KeySpec::hs256(Some("k1".into()), b"one"),
                KeySpec::hs256(Some("k2".into()), b"two"),
            ],
            Duration::ZERO,
            Some("issuer".into()),
            Some("chat".into()),
        );
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let claims = json!({"sub": "a", "exp": now() + 60, "iss": "issuer", "aud": "chat"});
        assert!(
            v.verify(&sign(claims.clone(), header.clone(), b"two"))
                .is_ok()
        );
        assert_eq!(
            v.verify(&sign(claims.clone(), header.clone(), b"one")),
            Err(AuthError::Invalid)
        );
        let no_kid = sign(claims.clone(), Header::new(Algorithm::HS256), b"two");
        assert_eq!(v.verify(&no_kid), Err(AuthError::UnknownKey));
        let wrong_aud = json!({"sub": "a", "exp": now() + 60, "iss": "issuer", "aud": "other"});
        assert_eq!(
            v.verify(&sign(wrong_aud, header.clone(), b"two")),
            Err(AuthError::Invalid)
        );
        let wrong_iss = json!({"sub": "a", "exp": now() + 60, "iss": "evil", "aud": "chat"});
        assert_eq!(
            v.verify(&sign(wrong_iss, header, b"two")),
            Err(AuthError::Invalid)
        );
    }
}
