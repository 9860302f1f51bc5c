//! Client tokens: JWTs checked against the configured keys.
//!
//! Each key has exactly one algorithm (HS256 secret, RS256 or ES256 public key); a token picks
//! its key by `kid`, or uses the only key there is. The token's own `alg` must be the key's, so
//! neither `none` nor an HS/RS confusion can pass. `exp` is required; `nbf`, `iss` and `aud` are
//! checked when configured or present, with a leeway for clocks. The user id is
//! `externalUserId`, else `sub`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::validation::valid_id;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a key could not be loaded (at start, or when a JWKS file is read again).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A public key option not of the form `[KID=]ALG:PEM_PATH`.
    #[error("expected [KID=]ALG:PEM_PATH")]
    Spec,
    /// An algorithm other than RS256 and ES256.
    #[error("algorithm {0:?}: expected RS256 or ES256")]
    Algorithm(String),
    /// A file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A PEM file that holds no key of its algorithm.
    #[error("not a {algorithm:?} public key: {source}")]
    NotAKey {
        algorithm: Algorithm,
        source: jsonwebtoken::errors::Error,
    },
    /// A JWKS file that is not a JWKS document.
    #[error("not a JWKS document: {0}")]
    NotJwks(serde_json::Error),
}

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

/// A refused token reaches the client as `UNAUTHORIZED`, with the reason.
impl From<AuthError> for crate::error::RequestError {
    fn from(error: AuthError) -> Self {
        Self::unauthorized(error.to_string())
    }
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
    pub fn parse_public(spec: &str) -> Result<Self, KeyError> {
        let (kid, rest) = match spec.split_once('=') {
            Some((kid, rest)) => (Some(kid.trim().to_owned()), rest),
            None => (None, spec),
        };
        let (algorithm, path) = rest.split_once(':').ok_or(KeyError::Spec)?;
        let algorithm = match algorithm.trim() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(KeyError::Algorithm(other.to_owned())),
        };
        let pem = read_pem(path.trim())?;
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        }
        .map_err(|source| KeyError::NotAKey { algorithm, source })?;
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

/// Keys of a JWKS document: RSA keys (RS256) and P-256 keys (ES256), each with its `kid`. Keys
/// of other kinds, and symmetric keys, which have no place in a public set, are skipped and
/// named in the second list.
pub fn keys_from_jwks(json: &str) -> Result<(Vec<KeySpec>, Vec<String>), KeyError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
    let set: JwkSet = serde_json::from_str(json).map_err(KeyError::NotJwks)?;
    let (mut keys, mut skipped) = (Vec::new(), Vec::new());
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => {
                skipped.push(kid);
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) if !kid.is_empty() => keys.push(KeySpec {
                kid: Some(kid),
                algorithm,
                key,
            }),
            _ => skipped.push(kid),
        }
    }
    Ok((keys, skipped))
}

/// Keys from a JWKS file, read again when they are older than `refresh`, and when a token names
/// a `kid` they lack (at most every `refresh` or 10 s, whichever is shorter): a key added to the
/// file is used at once, one removed stops being accepted within `refresh`.
pub struct JwksFile {
    path: PathBuf,
    refresh: Duration,
    /// The keys and when they were read.
    current: Mutex<(Arc<[KeySpec]>, Instant)>,
}

impl JwksFile {
    /// Reads the file once; it must hold a JWKS document.
    pub fn load(path: PathBuf, refresh: Duration) -> Result<Self, KeyError> {
        let keys = read_jwks(&path)?;
        Ok(Self {
            path,
            refresh,
            current: Mutex::new((keys, Instant::now())),
        })
    }

    /// The key named `kid`, reading the file again if it is due.
    fn find(&self, kid: &str) -> Option<KeySpec> {
        let mut current = self.current.lock().expect("jwks lock poisoned");
        let age = current.1.elapsed();
        let missing = !current.0.iter().any(|k| k.kid.as_deref() == Some(kid));
        if age >= self.refresh || (missing && age >= self.refresh.min(MISSING_KID_RELOAD)) {
            match read_jwks(&self.path) {
                Ok(keys) => current.0 = keys,
                // The keys in hand stay in force: a file half written or gone for a moment
                // must not lock everyone out.
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "JWKS not reloaded")
                }
            }
            current.1 = Instant::now();
        }
        current
            .0
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .cloned()
    }
}

/// Shortest wait between reloads for a `kid` the keys lack (a stream of made-up kids must not
/// make the server read the file for each).
const MISSING_KID_RELOAD: Duration = Duration::from_secs(10);

fn read_jwks(path: &Path) -> Result<Arc<[KeySpec]>, KeyError> {
    let json = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let (keys, skipped) = keys_from_jwks(&json)?;
    if !skipped.is_empty() {
        tracing::info!(
            ?skipped,
            "JWKS keys skipped: only RS256 and ES256 keys with a kid are used"
        );
    }
    Ok(keys.into())
}

/// Checks tokens; a cheap `Clone`.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<[KeySpec]>,
    jwks: Option<Arc<JwksFile>>,
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
            .field("jwks", &self.jwks.as_ref().map(|jwks| &jwks.path))
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
            jwks: None,
            leeway,
            issuer,
            audience,
        }
    }

    /// Also accepts the keys of `jwks`, picked by `kid`.
    pub fn with_jwks(mut self, jwks: JwksFile) -> Self {
        self.jwks = Some(Arc::new(jwks));
        self
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
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .cloned()
                .or_else(|| self.jwks.as_ref().and_then(|jwks| jwks.find(kid))),
            None if self.keys.len() == 1 && self.jwks.is_none() => self.keys.first().cloned(),
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

/// A PEM file's contents, for [`KeySpec::parse_public`].
fn read_pem(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
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
