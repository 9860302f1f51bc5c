//! The gateway's configuration, from flags and environment variables. Parsing binds nothing;
//! [`Config::check`] checks every option (a pure function), and [`Config::validate`] turns the
//! checked options into the [`Settings`] the gateway runs on, loading the keys.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chat_proto::options::{self, OptionError};
use clap::{Args, Parser, Subcommand};

use crate::auth::{JwksFile, KeyError, KeySpec, Verifier};
use crate::limits::Rate;

/// The chat gateway: terminates client WebSockets on `/ws`, verifies JWTs and origins, and speaks
/// the client protocol v1 over NATS (JetStream for messages) and the persistence worker.
#[derive(Debug, Parser)]
#[command(name = "chat-gateway", version)]
pub struct Cli {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving options.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a development token signed with the HS256 secret (`--jwt-secret`).
    DevToken {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// How long the token is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A `role` claim.
        #[arg(long)]
        role: Option<String>,
    },
}

/// Serving options.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the WebSocket listener (`/ws`).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "CHAT_ADMIN_LISTEN", default_value = "127.0.0.1:9080")]
    pub admin_listen: SocketAddr,

    /// NATS server URL(s), comma-separated (`nats://host:port`).
    #[arg(long, env = "CHAT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// A name for this node in logs (defaults to a random one).
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,

    /// HS256 secret for client tokens.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Key id (`kid`) of the HS256 secret, when tokens name one.
    #[arg(long, env = "CHAT_JWT_SECRET_KID")]
    pub jwt_secret_kid: Option<String>,

    /// A public key for client tokens, `[KID=]ALG:PEM_PATH` with ALG `RS256` or `ES256`;
    /// repeatable (comma-separated in the environment).
    #[arg(
        long = "jwt-public-key",
        env = "CHAT_JWT_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub jwt_public_keys: Vec<String>,

    /// A JWKS document (`{"keys": [...]}`) of RS256 and ES256 public keys, each picked by its
    /// `kid`. Read again every `--jwks-refresh`, and at once when a token names a kid it lacks
    /// (at most every 10 s): rotate keys by writing the file (a mounted secret or ConfigMap).
    #[arg(long, env = "CHAT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// How old the keys of `--jwks-file` may get before it is read again. More than 0, at
    /// most 10y.
    #[arg(long, env = "CHAT_JWKS_REFRESH", default_value = "60s", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,

    /// Required `iss` claim.
    #[arg(long, env = "CHAT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "CHAT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp` and `nbf`: 0 (none) to 10y.
    #[arg(long, env = "CHAT_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Browser origins allowed to connect (comma-separated), `*` for any. Requests without an
    /// `Origin` header (not browsers) are always allowed; by default no browser origin is.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most connections this node holds; more are refused with HTTP 503. Default: the
    /// open-files limit (raised to its hard limit at start) less 1,024 for everything else.
    /// At least 1.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest message a client may send, after reassembly (larger: PROTOCOL_ERROR). At least
    /// 1, at most `--max-transport-bytes`.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Transport cap: a message over it closes the connection with 1009. 1 to 1 GiB
    /// (1073741824).
    #[arg(long, env = "CHAT_MAX_TRANSPORT_BYTES", default_value_t = 256 * 1024)]
    pub max_transport_bytes: usize,

    /// Frames queued for one socket before it counts as backed up: then typing and receipt
    /// pushes to it are dropped, and it has `--slow-consumer-grace` to catch up (its queue may
    /// grow to 4 times this meanwhile) before it is closed with 4503. 1 to 1000000.
    #[arg(long, env = "CHAT_OUTBOX_FRAMES", default_value_t = 256)]
    pub outbox_frames: usize,

    /// How long a socket may stay backed up (see `--outbox-frames`) before it is closed with
    /// 4503; it never slows the delivery to anyone else. 0 (closed as soon as it is backed up)
    /// to 10y.
    #[arg(long, env = "CHAT_SLOW_CONSUMER_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_consumer_grace: Duration,

    /// Most conversations one socket may be in. `room:create` and `room:join` beyond it get
    /// `FORBIDDEN`; a user in more cannot connect (close 4429), and a socket added to one more
    /// by someone else is closed with 4429. At least 1.
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_SOCKET", default_value_t = 10_000)]
    pub max_rooms_per_socket: usize,

    /// Most `message:send` requests of one socket awaiting the stream's acknowledgement; at
    /// least 1.
    #[arg(long, env = "CHAT_MAX_PENDING_SENDS", default_value_t = 32)]
    pub max_pending_sends: usize,

    /// Most characters of a message's `content`; at least 1.
    #[arg(long, env = "CHAT_MAX_CONTENT_CHARS", default_value_t = 5_000)]
    pub max_content_chars: usize,

    /// Most attachments of a message (0: none allowed).
    #[arg(long, env = "CHAT_MAX_ATTACHMENTS", default_value_t = 10)]
    pub max_attachments: usize,

    /// Most bytes of a message's `metadata` (as JSON; 0: no metadata allowed).
    #[arg(long, env = "CHAT_MAX_METADATA_BYTES", default_value_t = 4 * 1024)]
    pub max_metadata_bytes: usize,

    /// Deepest nesting of a message's `metadata`; at least 1 (the object itself).
    #[arg(long, env = "CHAT_MAX_METADATA_DEPTH", default_value_t = 8)]
    pub max_metadata_depth: usize,

    /// Messages a user may send, edit or delete, as `<per minute>/<burst>` (`0`: no limit).
    /// Held per node: a user with sessions on several nodes has this on each. Over it:
    /// `RATE_LIMITED` with `retryAfterMs`.
    #[arg(long, env = "CHAT_MESSAGE_RATE", default_value = "100/20", value_parser = Rate::parse)]
    pub message_rate: Rate,

    /// Like `--message-rate`, for users whose token has `"role": "guest"`.
    #[arg(long, env = "CHAT_GUEST_MESSAGE_RATE", default_value = "20/5", value_parser = Rate::parse)]
    pub guest_message_rate: Rate,

    /// Connections a client address may open, as `<per minute>/<burst>` (`0`: no limit); more
    /// are refused with HTTP 429 before the upgrade. Per node.
    #[arg(long, env = "CHAT_CONNECT_RATE_PER_IP", default_value = "600/100", value_parser = Rate::parse)]
    pub connect_rate_per_ip: Rate,

    /// Failed authentications a client address may make, as `<per minute>/<burst>`: the
    /// default lets 5 fail at once, then one a minute. Past it, a bad token gets
    /// `RATE_LIMITED` and close 4429; a valid token still gets in. Per node.
    #[arg(long, env = "CHAT_FAILED_AUTH_RATE_PER_IP", default_value = "1/5", value_parser = Rate::parse)]
    pub failed_auth_rate_per_ip: Rate,

    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` is believed:
    /// a connection from one of them is counted against the last address in that header that
    /// is not itself a trusted proxy. Others' `X-Forwarded-For` is ignored.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", value_delimiter = ',', value_parser = IpBlock::parse)]
    pub trusted_proxies: Vec<IpBlock>,

    /// How long a client has to send `auth` when it did not authenticate on upgrade. More than
    /// 0, at most 10y.
    #[arg(long, env = "CHAT_AUTH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// Interval of protocol pings. More than 0, shorter than `--idle-timeout`.
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A connection silent for this long (no frame, no pong) is closed. Longer than
    /// `--ping-interval`, at most 10y.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How long a request to the persistence worker may take. More than 0, at most 10y.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Router gRPC URLs (`http://host:port`, no TLS), comma-separated. The users are split over
    /// them by hash of user id in this order: give every gateway and worker the same list.
    /// Without one, presence is not tracked and the per-user session limit is not enforced.
    #[arg(long, env = "CHAT_ROUTER_URLS", value_delimiter = ',')]
    pub router_urls: Vec<String>,

    /// How long a call to a router may take. Past it the gateway goes on without the answer:
    /// a new session is admitted (the session limit fails open), a presence query fails with
    /// `UNAVAILABLE`. More than 0, at most 10y.
    #[arg(long, env = "CHAT_ROUTER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub router_timeout: Duration,

    /// Secret of the resume tokens, shared by every gateway (default: derived from
    /// `--jwt-secret`; without either, connections get no resume token).
    #[arg(long, env = "CHAT_RESUME_SECRET", hide_env_values = true)]
    pub resume_secret: Option<String>,

    /// How long a resume token is valid after its connection started: 1s to 10y.
    #[arg(long, env = "CHAT_RESUME_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub resume_ttl: Duration,

    /// How long membership and conversation look-ups are cached. More than 0, at most 10y.
    #[arg(long, env = "CHAT_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// On SIGTERM, how long clients have to move: each is told `server:draining` with a
    /// `reconnectAfterMs` spread over this time and keeps being served until it goes; the rest
    /// are closed with 1012 at its end. 0 (all closed at once) to 10y.
    #[arg(long, env = "CHAT_DRAIN_TIME", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_time: Duration,

    /// After the drain time, how long shutdown waits for connections to close: 0 (no wait) to
    /// 10y.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Address of the server API's listener (HTTP/JSON under `/api/v1`, for the application's
    /// backend, never for clients): off unless given; needs `--api-keys-file`.
    #[arg(long, env = "CHAT_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,

    /// The server API's keys, one a line, `[NAME:]KEY` (at least 32 characters; blank lines and
    /// `#` comments skipped); a request carries one as `Authorization: Bearer <KEY>`.
    #[arg(long, env = "CHAT_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// The server API's admin keys, in the same form: they may do all the others may, and read
    /// the admin views (`/api/v1/admin/…`: nodes, conversation statistics, health). Needs
    /// `--api-keys-file`.
    #[arg(long, env = "CHAT_API_ADMIN_KEYS_FILE")]
    pub api_admin_keys_file: Option<PathBuf>,

    /// A JSON file of roles and their permissions, `{"role": ["createConversations", ...]}`:
    /// it replaces the defaults of the roles it names and adds others (see docs/security.md,
    /// "Roles"). Permissions: createConversations, manageParticipants, sendAttachments,
    /// joinPublic, moderateMessages, ban.
    #[arg(long, env = "CHAT_PERMISSIONS_FILE")]
    pub permissions_file: Option<PathBuf>,

    /// Write logs as JSON lines.
    #[arg(long, env = "CHAT_LOG_JSON")]
    pub log_json: bool,

    /// Traces over OTLP.
    #[command(flatten)]
    pub trace: chat_proto::telemetry::TraceOptions,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No key to verify tokens with.
    #[error("no token key: give --jwt-secret, --jwt-public-key or --jwks-file")]
    NoKeys,
    /// A key was malformed or unreadable.
    #[error("bad key {spec}: {reason}")]
    BadKey {
        /// The option as given.
        spec: String,
        /// What is wrong.
        reason: KeyError,
    },
    /// An option's value out of its range, or options that contradict each other.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// The server API's keys file.
    #[error("--api-keys-file: {0}")]
    ApiKeys(#[from] crate::api_keys::KeysError),
    /// The permissions file.
    #[error("--permissions-file: {0}")]
    Permissions(#[from] crate::permissions::PermissionsError),
}

/// The origins that may connect.
#[derive(Debug, Clone)]
pub enum Origins {
    /// Any origin.
    Any,
    /// Exactly these (lower case, no trailing slash).
    Only(Vec<String>),
}

impl Origins {
    /// Whether a request with this `Origin` header may connect.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => {
                let origin = origin.trim_end_matches('/').to_ascii_lowercase();
                list.contains(&origin)
            }
        }
    }
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The raw options.
    pub config: Config,
    /// Token verification.
    pub verifier: Verifier,
    /// Allowed origins.
    pub origins: Origins,
    /// This node's name.
    pub node_id: String,
    /// The resume tokens' key, if resume is possible.
    pub resume: Option<crate::resume_token::ResumeKeys>,
    /// The server API's keys, when it listens.
    pub api_keys: Option<crate::api_keys::ApiKeys>,
    /// What each role may do.
    pub permissions: crate::permissions::Permissions,
}

/// The largest `--max-transport-bytes`: 1 GiB.
pub const MAX_TRANSPORT_BYTES: usize = 1 << 30;
/// The largest `--outbox-frames` (a backed-up outbox may hold 4 times as many).
pub const MAX_OUTBOX_FRAMES: usize = 1_000_000;

impl Config {
    /// Checks every option but the keys; touches no file, socket or environment variable.
    pub fn check(&self) -> Result<(), OptionError> {
        self.trace.validate()?;
        options::nats_servers(&self.nats_url)?;
        options::router_urls(&self.router_urls)?;
        let distinct = [
            (
                "admin-listen",
                Some(self.admin_listen),
                "listen",
                self.listen,
            ),
            ("api-listen", self.api_listen, "listen", self.listen),
            (
                "api-listen",
                self.api_listen,
                "admin-listen",
                self.admin_listen,
            ),
        ];
        for (option, address, other, other_address) in distinct {
            if address == Some(other_address) && other_address.port() != 0 {
                return Err(OptionError::Conflict {
                    option,
                    relation: "another address than",
                    other,
                    why: "two listeners cannot bind the same address",
                });
            }
        }
        if self.api_listen.is_some() != self.api_keys_file.is_some() {
            return Err(OptionError::Conflict {
                option: "api-listen",
                relation: "given together with",
                other: "api-keys-file",
                why: "the server API takes requests only with a key",
            });
        }
        if self.api_admin_keys_file.is_some() && self.api_keys_file.is_none() {
            return Err(OptionError::Conflict {
                option: "api-admin-keys-file",
                relation: "needs",
                other: "api-keys-file",
                why: "admin keys are for the server API, which is off without keys",
            });
        }
        self.check_durations()?;
        self.check_counts()
    }

    fn check_durations(&self) -> Result<(), OptionError> {
        let positive = [
            (
                "jwks-refresh",
                self.jwks_refresh,
                "the key file would be read again for every token",
            ),
            (
                "auth-timeout",
                self.auth_timeout,
                "no client could authenticate",
            ),
            (
                "ping-interval",
                self.ping_interval,
                "pings would be sent without pause",
            ),
            (
                "idle-timeout",
                self.idle_timeout,
                "every connection would be idle",
            ),
            (
                "request-timeout",
                self.request_timeout,
                "every request to the worker and the stream would time out",
            ),
            (
                "router-timeout",
                self.router_timeout,
                "every router call would time out",
            ),
            (
                "cache-ttl",
                self.cache_ttl,
                "every message would look its conversation's members up in the worker",
            ),
        ];
        for (option, value, why) in positive {
            options::positive_duration(option, value, why)?;
        }
        let zero_allowed = [
            ("jwt-leeway", self.jwt_leeway),
            ("slow-consumer-grace", self.slow_consumer_grace),
            ("drain-time", self.drain_time),
            ("shutdown-grace", self.shutdown_grace),
            ("resume-ttl", self.resume_ttl),
        ];
        for (option, value) in zero_allowed {
            options::duration(option, value)?;
        }
        if self.resume_ttl < Duration::from_secs(1) {
            return Err(OptionError::OutOfRange {
                option: "resume-ttl",
                reason: "must be at least 1s: resume tokens expire in whole seconds".to_owned(),
            });
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(OptionError::Conflict {
                option: "idle-timeout",
                relation: "longer than",
                other: "ping-interval",
                why: "a client that answers every ping would be closed as idle",
            });
        }
        Ok(())
    }

    fn check_counts(&self) -> Result<(), OptionError> {
        let count = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        if let Some(max_connections) = self.max_connections {
            options::positive_count(
                "max-connections",
                count(max_connections),
                "every connection would be refused",
            )?;
            options::count_at_most(
                "max-connections",
                count(max_connections),
                count(tokio::sync::Semaphore::MAX_PERMITS),
            )?;
        }
        let positive = [
            (
                "max-message-bytes",
                self.max_message_bytes,
                "every message would be refused",
            ),
            (
                "max-transport-bytes",
                self.max_transport_bytes,
                "every frame would close its connection",
            ),
            (
                "outbox-frames",
                self.outbox_frames,
                "every socket would be backed up",
            ),
            (
                "max-rooms-per-socket",
                self.max_rooms_per_socket,
                "no socket could be in a conversation",
            ),
            (
                "max-pending-sends",
                self.max_pending_sends,
                "no socket could send a message",
            ),
            (
                "max-content-chars",
                self.max_content_chars,
                "no message could have text",
            ),
            (
                "max-metadata-depth",
                self.max_metadata_depth,
                "any metadata object is 1 deep (give --max-metadata-bytes 0 to refuse metadata)",
            ),
        ];
        for (option, value, why) in positive {
            options::positive_count(option, count(value), why)?;
        }
        options::count_at_most(
            "max-transport-bytes",
            count(self.max_transport_bytes),
            count(MAX_TRANSPORT_BYTES),
        )?;
        options::count_at_most(
            "outbox-frames",
            count(self.outbox_frames),
            count(MAX_OUTBOX_FRAMES),
        )?;
        if self.max_message_bytes > self.max_transport_bytes {
            return Err(OptionError::Conflict {
                option: "max-message-bytes",
                relation: "at most",
                other: "max-transport-bytes",
                why: "a message that large would close its connection before it was refused",
            });
        }
        Ok(())
    }

    /// Checks the options ([`Config::check`]) and loads the keys; no socket is touched.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.check()?;
        let mut keys = Vec::new();
        if let Some(secret) = &self.jwt_secret {
            keys.push(KeySpec::hs256(
                self.jwt_secret_kid.clone(),
                secret.as_bytes(),
            ));
        }
        for spec in &self.jwt_public_keys {
            keys.push(
                KeySpec::parse_public(spec).map_err(|reason| ConfigError::BadKey {
                    spec: spec.clone(),
                    reason,
                })?,
            );
        }
        let jwks = match &self.jwks_file {
            Some(path) => Some(JwksFile::load(path.clone(), self.jwks_refresh).map_err(
                |reason| ConfigError::BadKey {
                    spec: path.display().to_string(),
                    reason,
                },
            )?),
            None => None,
        };
        if keys.is_empty() && jwks.is_none() {
            return Err(ConfigError::NoKeys);
        }
        let origins = if self.allowed_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::Only(
                self.allowed_origins
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect(),
            )
        };
        let mut verifier = Verifier::new(
            keys,
            self.jwt_leeway,
            self.jwt_issuer.clone(),
            self.jwt_audience.clone(),
        );
        if let Some(jwks) = jwks {
            verifier = verifier.with_jwks(jwks);
        }
        let node_id = self
            .node_id
            .clone()
            .unwrap_or_else(|| format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let api_keys = match &self.api_keys_file {
            Some(path) => {
                let mut keys = crate::api_keys::ApiKeys::load(path, false)?;
                if let Some(admin) = &self.api_admin_keys_file {
                    keys.extend(crate::api_keys::ApiKeys::load(admin, true)?);
                }
                Some(keys)
            }
            None => None,
        };
        let permissions = match &self.permissions_file {
            Some(path) => crate::permissions::Permissions::load(path)?,
            None => crate::permissions::Permissions::default(),
        };
        let resume = crate::resume_token::ResumeKeys::new(
            self.resume_secret.as_deref(),
            self.jwt_secret.as_deref(),
            self.resume_ttl,
        );
        Ok(Settings {
            config: self,
            verifier,
            origins,
            node_id,
            resume,
            api_keys,
            permissions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["chat-gateway"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect("the flags parse")
            .config
            .validate()
    }

    #[test]
    fn a_key_is_required() {
        assert!(matches!(parse(&[]), Err(ConfigError::NoKeys)));
        assert!(parse(&["--jwt-secret", "s3cret"]).is_ok());
    }

    #[test]
    fn a_missing_public_key_file_is_named() {
        let error = parse(&["--jwt-public-key", "k1=RS256:/nonexistent.pem"]).unwrap_err();
        assert!(error.to_string().contains("/nonexistent.pem"), "{error}");
        let error = parse(&["--jwt-public-key", "HS512:/x"]).unwrap_err();
        assert!(error.to_string().contains("RS256 or ES256"), "{error}");
    }

    #[test]
    fn origins_are_an_allowlist_unless_any() {
        let settings = parse(&[
            "--jwt-secret",
            "s",
            "--allowed-origins",
            "https://App.example/",
        ])
        .unwrap();
        assert!(settings.origins.allows("https://app.example"));
        assert!(!settings.origins.allows("https://evil.example"));
        let none = parse(&["--jwt-secret", "s"]).unwrap();
        assert!(!none.origins.allows("https://app.example"));
        let any = parse(&["--jwt-secret", "s", "--allowed-origins", "*"]).unwrap();
        assert!(any.origins.allows("https://whatever.example"));
    }

    #[test]
    fn the_message_limit_fits_the_transport_cap() {
        let error = refused(&["--max-message-bytes", "300000"]);
        assert!(matches!(
            error,
            OptionError::Conflict {
                option: "max-message-bytes",
                other: "max-transport-bytes",
                ..
            }
        ));
    }

    /// What [`Config::check`] says of the flags `args` (after the defaults).
    fn check(args: &[&str]) -> Result<(), OptionError> {
        let argv = std::iter::once("chat-gateway").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .expect("the flags parse")
            .config
            .check()
    }

    fn refused(args: &[&str]) -> OptionError {
        check(args).expect_err("the options are refused")
    }

    #[test]
    fn the_defaults_pass() {
        assert_eq!(check(&[]), Ok(()));
        assert!(parse(&["--jwt-secret", "s"]).is_ok());
    }

    #[test]
    fn zero_durations_are_refused_where_zero_makes_no_sense() {
        for option in [
            "--jwks-refresh",
            "--auth-timeout",
            "--ping-interval",
            "--idle-timeout",
            "--request-timeout",
            "--router-timeout",
            "--cache-ttl",
        ] {
            let error = refused(&[option, "0s"]);
            assert!(
                matches!(error, OptionError::Zero { .. }),
                "{option}: {error}"
            );
            assert_eq!(format!("--{}", error.option()), option);
        }
        assert_eq!(
            refused(&["--request-timeout", "0s"]).to_string(),
            "--request-timeout must be more than zero: every request to the worker and the \
             stream would time out"
        );
        assert_eq!(refused(&["--resume-ttl", "500ms"]).option(), "resume-ttl");
    }

    #[test]
    fn zero_durations_are_allowed_where_help_says_what_zero_does() {
        for option in [
            "--jwt-leeway",
            "--slow-consumer-grace",
            "--drain-time",
            "--shutdown-grace",
        ] {
            assert_eq!(check(&[option, "0s"]), Ok(()), "{option}");
        }
    }

    #[test]
    fn durations_past_ten_years_are_refused() {
        let error = refused(&["--drain-time", "11y"]);
        assert_eq!(error.to_string(), "--drain-time must be at most 10y");
    }

    #[test]
    fn the_idle_timeout_outlasts_the_ping_interval() {
        let error = refused(&["--ping-interval", "75s"]);
        assert!(matches!(
            error,
            OptionError::Conflict {
                option: "idle-timeout",
                other: "ping-interval",
                ..
            }
        ));
        assert_eq!(
            check(&["--ping-interval", "200ms", "--idle-timeout", "1s"]),
            Ok(())
        );
    }

    #[test]
    fn zero_counts_are_refused_where_zero_makes_no_sense() {
        for option in [
            "--max-connections",
            "--max-message-bytes",
            "--outbox-frames",
            "--max-rooms-per-socket",
            "--max-pending-sends",
            "--max-content-chars",
            "--max-metadata-depth",
        ] {
            let error = refused(&[option, "0"]);
            assert!(
                matches!(error, OptionError::Zero { .. }),
                "{option}: {error}"
            );
            assert_eq!(format!("--{}", error.option()), option);
        }
        // Zero transport bytes is caught with the message limit above it.
        assert!(check(&["--max-transport-bytes", "0"]).is_err());
        for option in ["--max-attachments", "--max-metadata-bytes"] {
            assert_eq!(check(&[option, "0"]), Ok(()), "{option}");
        }
        assert_eq!(check(&["--message-rate", "0"]), Ok(()));
    }

    #[test]
    fn counts_that_would_overflow_are_refused() {
        let error = refused(&["--max-transport-bytes", "2000000000"]);
        assert_eq!(error.option(), "max-transport-bytes");
        assert_eq!(
            refused(&["--outbox-frames", "1000001"]).option(),
            "outbox-frames"
        );
        let too_many = (tokio::sync::Semaphore::MAX_PERMITS + 1).to_string();
        assert_eq!(
            refused(&["--max-connections", &too_many]).option(),
            "max-connections"
        );
    }

    #[test]
    fn malformed_urls_are_refused() {
        for urls in [
            "not a url",
            "127.0.0.1:7070",
            "http://a:7070,localhost:7071",
            "https://a:7070",
            "http://a",
        ] {
            let error = refused(&["--router-urls", urls]);
            assert!(
                matches!(
                    error,
                    OptionError::BadUrl {
                        option: "router-urls",
                        ..
                    }
                ),
                "{urls}: {error}"
            );
        }
        assert_eq!(
            check(&["--router-urls", "http://a:7070,http://b:7070"]),
            Ok(())
        );
        let error = refused(&["--nats-url", "not a url"]);
        assert!(matches!(
            error,
            OptionError::BadUrl {
                option: "nats-url",
                ..
            }
        ));
        assert_eq!(
            check(&["--nats-url", "nats://a:4222,nats://b:4222"]),
            Ok(())
        );
    }

    #[test]
    fn the_two_listeners_need_two_addresses() {
        let error = refused(&[
            "--listen",
            "127.0.0.1:9000",
            "--admin-listen",
            "127.0.0.1:9000",
        ]);
        assert_eq!(error.option(), "admin-listen");
        let any = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        assert_eq!(check(&any), Ok(()));
    }
}

/// An address block: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    address: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("expected an IP address or CIDR block, got {text:?}");
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| bad())?,
            None => bits,
        };
        if prefix > bits {
            return Err(bad());
        }
        Ok(Self { address, prefix })
    }

    /// Whether `address` is in the block.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let (block, candidate, bits) = match (self.address, address) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(a.to_bits()), u128::from(b.to_bits()), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || block >> shift == candidate >> shift
    }
}

/// The client's address: `peer`, or where a trusted proxy says the request came from.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpBlock]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(forwarded_for) = forwarded_for else {
        return peer;
    };
    // Right to left: each hop appends the address it saw; the first one not ours is the client.
    let mut client = peer;
    for hop in forwarded_for.rsplit(',') {
        let Ok(hop) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod address_tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain() {
        let block = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped IPv6");
        assert!(IpBlock::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(IpBlock::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(
            IpBlock::parse("192.0.2.7")
                .unwrap()
                .contains(ip("192.0.2.7"))
        );
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::/129"] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [IpBlock::parse("10.0.0.0/8").unwrap()];
        let peer = ip("10.0.0.5");
        let client = |header| client_address(peer, header, &trusted);
        assert_eq!(client(Some("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(
            client(Some("198.51.100.1, 203.0.113.9, 10.0.0.7")),
            ip("203.0.113.9")
        );
        assert_eq!(client(Some("garbage")), peer);
        assert_eq!(client(None), peer);
        let stranger = ip("203.0.113.50");
        assert_eq!(
            client_address(stranger, Some("1.2.3.4"), &trusted),
            stranger
        );
    }
}
