//! The worker's configuration, from flags and environment variables. Parsing opens nothing;
//! [`Config::validate`] checks every option before the store is opened or NATS connected.

use std::path::PathBuf;
use std::time::Duration;

use chat_proto::options::{self, OptionError};
use clap::Parser;

/// Which store the worker writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite store: one machine, exactly one worker.
    Sqlite,
    /// The CQL store: ScyllaDB (or Apache Cassandra).
    Scylla,
}

/// A consistency level of the CQL store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CqlConsistency {
    One,
    LocalOne,
    Quorum,
    LocalQuorum,
    All,
}

impl From<CqlConsistency> for scylla::statement::Consistency {
    fn from(level: CqlConsistency) -> Self {
        match level {
            CqlConsistency::One => Self::One,
            CqlConsistency::LocalOne => Self::LocalOne,
            CqlConsistency::Quorum => Self::Quorum,
            CqlConsistency::LocalQuorum => Self::LocalQuorum,
            CqlConsistency::All => Self::All,
        }
    }
}

/// A command other than serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Apply the CQL store's schema migrations (creating the keyspace if needed), then exit.
    Migrate,
    /// Copy the SQLite store at FROM into the CQL store (`--store scylla`, migrated first), then
    /// exit: conversations, memberships, bans, messages with their edits and deletions, read
    /// markers, and the committed position. Stop the SQLite worker first; run it again to resume.
    ImportSqlite {
        /// The SQLite store to copy.
        from: PathBuf,
    },
}

/// Most replicas of a JetStream stream.
pub const MAX_REPLICAS: usize = 5;

/// The persistence worker: consumes the durable message stream from NATS JetStream, writes it to
/// the store in batches, and answers the reads that need the store over NATS request-reply.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-persistence-worker", version)]
pub struct Config {
    /// NATS server URL(s), comma-separated (`nats://host:port`).
    #[arg(long, env = "CHAT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "CHAT_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: std::net::SocketAddr,

    /// Path of the embedded SQLite store (created if missing), not empty. Exactly one worker
    /// may use it.
    #[arg(long, env = "CHAT_DB_PATH", default_value = "chat.db")]
    pub db_path: PathBuf,

    /// The store: `sqlite` (embedded, one worker, `--db-path`) or `scylla` (ScyllaDB or any
    /// CQL server: `--scylla-*`).
    #[arg(long, env = "CHAT_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,

    /// CQL contact points (`host:port`, comma-separated), with `--store scylla`.
    #[arg(
        long,
        env = "CHAT_SCYLLA_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:9042"
    )]
    pub scylla_nodes: Vec<String>,

    /// The keyspace of the CQL store.
    #[arg(long, env = "CHAT_SCYLLA_KEYSPACE", default_value = "chat")]
    pub scylla_keyspace: String,

    /// The keyspace's replication when the migrations create it (a CQL map).
    #[arg(
        long,
        env = "CHAT_SCYLLA_REPLICATION",
        default_value = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
    )]
    pub scylla_replication: String,

    /// The consistency of every read and write of the CQL store.
    #[arg(long, env = "CHAT_SCYLLA_CONSISTENCY", value_enum, default_value_t = CqlConsistency::LocalQuorum)]
    pub scylla_consistency: CqlConsistency,

    /// The CQL user, if the cluster requires authentication (with `--scylla-password`).
    #[arg(long, env = "CHAT_SCYLLA_USER")]
    pub scylla_user: Option<String>,

    /// The CQL user's password (never logged).
    #[arg(long, env = "CHAT_SCYLLA_PASSWORD", hide_env_values = true)]
    pub scylla_password: Option<String>,

    /// PEM file of the CA that signed the CQL nodes' certificates: connects to every node with
    /// TLS and verifies it against this CA (a node's certificate must name its IP address, as
    /// the driver connects by address). Without it, connections are not encrypted.
    #[arg(long, env = "CHAT_SCYLLA_TLS_CA")]
    pub scylla_tls_ca: Option<PathBuf>,

    /// Apply the CQL store's schema migrations at start (`chat-persistence-worker migrate` applies
    /// them and exits).
    #[arg(long, env = "CHAT_MIGRATE")]
    pub migrate: bool,

    /// What to do: serve (the default) or `migrate`.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Most events written in one transaction: 1 to 65535.
    #[arg(long, env = "CHAT_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,

    /// How long a batch waits for more events after its first one: 0 (a batch takes only the
    /// events already there) to 10y.
    #[arg(long, env = "CHAT_BATCH_WAIT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// How long the stream waits for a worker to acknowledge an event before it hands the event
    /// to another (a worker that died): 1s to 10y. The first worker to create the consumer sets
    /// it; the others join with that value.
    #[arg(long, env = "CHAT_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// How far back the stream keeps events: the resume horizon (older ones are in the store
    /// only). More than 0 (JetStream would read 0 as no limit), at most 10y.
    #[arg(long, env = "CHAT_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub stream_max_age: Duration,

    /// Most bytes the stream keeps before it drops its oldest events; more than 0 (JetStream
    /// would read 0 as no limit).
    #[arg(long, env = "CHAT_STREAM_MAX_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub stream_max_bytes: i64,

    /// The de-duplication window: a `clientMessageId` resent within it yields the same message.
    /// More than 0 (JetStream would read 0 as its default of 2m), at most `--stream-max-age`.
    #[arg(long, env = "CHAT_DEDUP_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Replicas of the stream: 1 on one machine, 3 in a cluster; 1 to 5.
    #[arg(long, env = "CHAT_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// How long the audit log (connects, joins, message and membership changes, bans: ids, not
    /// content) is kept, in its stream and in the store. More than 0, at most 10y.
    #[arg(long, env = "CHAT_AUDIT_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,

    /// Most bytes the audit stream keeps before it drops its oldest records; more than 0. It
    /// holds records only until a worker has stored them, so it is far smaller than the main
    /// stream: JetStream reserves both limits against its `max_file_store` at start.
    #[arg(long, env = "CHAT_AUDIT_STREAM_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub audit_stream_max_bytes: i64,

    /// Most requests answered at once; at least 1.
    #[arg(long, env = "CHAT_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,

    /// Router gRPC URLs (`http://host:port`, no TLS), comma-separated, in the gateways' order.
    /// Events addressed to one user (membership changes) then go only to the nodes that hold the
    /// user's sessions; without one, or while no router answers, they go to every node.
    #[arg(long, env = "CHAT_ROUTER_URLS", value_delimiter = ',')]
    pub router_urls: Vec<String>,

    /// How long a placement look-up may take before the event goes to every node instead. More
    /// than 0, at most 10y.
    #[arg(long, env = "CHAT_ROUTER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub router_timeout: Duration,

    /// Write logs as JSON lines.
    #[arg(long, env = "CHAT_LOG_JSON")]
    pub log_json: bool,

    /// Traces over OTLP.
    #[command(flatten)]
    pub trace: chat_proto::telemetry::TraceOptions,
}

impl Config {
    /// Checks every option; touches no file, socket or environment variable.
    pub fn validate(&self) -> Result<(), OptionError> {
        self.trace.validate()?;
        options::nats_servers(&self.nats_url)?;
        if self.store == StoreKind::Scylla {
            self.validate_cql()?;
        }
        if self.db_path.as_os_str().is_empty() {
            return Err(OptionError::OutOfRange {
                option: "db-path",
                reason: "must name a file: SQLite would open a temporary store, lost at exit"
                    .to_owned(),
            });
        }
        options::positive_count(
            "batch-size",
            u64::from(self.batch_size),
            "no event could be written",
        )?;
        options::duration("batch-wait", self.batch_wait)?;
        options::duration("ack-wait", self.ack_wait)?;
        if self.ack_wait < Duration::from_secs(1) {
            return Err(OptionError::OutOfRange {
                option: "ack-wait",
                reason: "must be at least 1s: a batch being written would be handed out again"
                    .to_owned(),
            });
        }
        options::positive_duration(
            "stream-max-age",
            self.stream_max_age,
            "JetStream would read 0 as no age limit",
        )?;
        options::positive_duration(
            "audit-retention",
            self.audit_retention,
            "JetStream would read 0 as no age limit",
        )?;
        for (option, bytes) in [
            ("stream-max-bytes", self.stream_max_bytes),
            ("audit-stream-max-bytes", self.audit_stream_max_bytes),
        ] {
            if bytes <= 0 {
                return Err(OptionError::Zero {
                    option,
                    why: "JetStream would read 0 or less as no size limit",
                });
            }
        }
        options::positive_duration(
            "dedup-window",
            self.dedup_window,
            "JetStream would read 0 as its default of 2m",
        )?;
        if self.dedup_window > self.stream_max_age {
            return Err(OptionError::Conflict {
                option: "dedup-window",
                relation: "at most",
                other: "stream-max-age",
                why: "JetStream refuses to de-duplicate over longer than it keeps events",
            });
        }
        options::positive_count(
            "stream-replicas",
            self.stream_replicas as u64,
            "the stream needs a copy",
        )?;
        options::count_at_most(
            "stream-replicas",
            self.stream_replicas as u64,
            MAX_REPLICAS as u64,
        )?;
        options::positive_count(
            "max-concurrent-requests",
            self.max_concurrent_requests as u64,
            "no request would ever be answered",
        )?;
        options::count_at_most(
            "max-concurrent-requests",
            self.max_concurrent_requests as u64,
            tokio::sync::Semaphore::MAX_PERMITS as u64,
        )?;
        options::router_urls(&self.router_urls)?;
        options::positive_duration(
            "router-timeout",
            self.router_timeout,
            "every placement look-up would fail",
        )?;
        Ok(())
    }

    /// The stream settings this configuration asks for.
    pub fn stream(&self) -> crate::stream::StreamSettings {
        crate::stream::StreamSettings {
            max_age: self.stream_max_age,
            max_bytes: self.stream_max_bytes,
            dedup_window: self.dedup_window,
            replicas: self.stream_replicas,
            audit_retention: self.audit_retention,
            audit_max_bytes: self.audit_stream_max_bytes,
        }
    }
}

impl Config {
    /// Checks the CQL store's options.
    fn validate_cql(&self) -> Result<(), OptionError> {
        let bad_node = |node: &str| {
            let (host, port) = node.rsplit_once(':')?;
            (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).then_some(())
        };
        if self.scylla_nodes.is_empty() {
            return Err(OptionError::Zero {
                option: "scylla-nodes",
                why: "the store would have no node to reach",
            });
        }
        if let Some(node) = self.scylla_nodes.iter().find(|n| bad_node(n).is_none()) {
            return Err(OptionError::OutOfRange {
                option: "scylla-nodes",
                reason: format!("{node:?} is not host:port"),
            });
        }
        let keyspace = &self.scylla_keyspace;
        let valid = !keyspace.is_empty()
            && keyspace.len() <= 48
            && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            && keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(OptionError::OutOfRange {
                option: "scylla-keyspace",
                reason: "must be a letter then up to 47 letters, digits or _".to_owned(),
            });
        }
        if self.scylla_user.is_some() != self.scylla_password.is_some() {
            return Err(OptionError::Conflict {
                option: "scylla-user",
                relation: "given with",
                other: "scylla-password",
                why: "a user needs a password, and a password a user",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(args: &[&str]) -> Result<(), OptionError> {
        let argv = std::iter::once("chat-persistence-worker").chain(args.iter().copied());
        Config::try_parse_from(argv)
            .expect("the flags parse")
            .validate()
    }

    fn refused_option(args: &[&str]) -> &'static str {
        validate(args)
            .expect_err("the options are refused")
            .option()
    }

    #[test]
    fn the_cql_store_needs_nodes_a_keyspace_and_whole_credentials() {
        let cql = |more: &[&str]| {
            let mut args = vec!["--store", "scylla"];
            args.extend_from_slice(more);
            validate(&args)
        };
        assert_eq!(cql(&[]), Ok(()));
        assert_eq!(cql(&["--scylla-nodes", "db-1:9042,db-2:9042"]), Ok(()));
        let refused = |more: &[&str]| cql(more).expect_err("refused").option();
        assert_eq!(refused(&["--scylla-nodes", "db-1"]), "scylla-nodes");
        assert_eq!(refused(&["--scylla-nodes", "db-1:0"]), "scylla-nodes");
        assert_eq!(
            refused(&["--scylla-keyspace", "chat; DROP"]),
            "scylla-keyspace"
        );
        assert_eq!(refused(&["--scylla-keyspace", "1chat"]), "scylla-keyspace");
        assert_eq!(refused(&["--scylla-user", "chat"]), "scylla-user");
        let no_ca = ["worker", "--store", "scylla", "--scylla-tls-ca", ""];
        assert!(Config::try_parse_from(no_ca).is_err(), "an empty CA path");
        // SQLite does not look at them.
        assert_eq!(validate(&["--scylla-nodes", "nonsense"]), Ok(()));
    }

    #[test]
    fn defaults_work_on_one_machine() {
        let config = Config::try_parse_from(["worker"]).unwrap();
        assert_eq!(config.dedup_window, Duration::from_secs(120));
        assert_eq!(config.stream_replicas, 1);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_zero_batch_is_refused() {
        assert!(Config::try_parse_from(["worker", "--batch-size", "0"]).is_err());
        assert!(Config::try_parse_from(["worker", "--batch-wait", "soon"]).is_err());
        assert_eq!(validate(&["--batch-wait", "0s"]), Ok(()));
    }

    #[test]
    fn zero_concurrent_requests_are_refused() {
        let error = validate(&["--max-concurrent-requests", "0"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--max-concurrent-requests must be more than zero: no request would ever be answered"
        );
        let too_many = (tokio::sync::Semaphore::MAX_PERMITS + 1).to_string();
        assert_eq!(
            refused_option(&["--max-concurrent-requests", &too_many]),
            "max-concurrent-requests"
        );
    }

    #[test]
    fn zero_durations_are_refused() {
        for option in [
            "--stream-max-age",
            "--dedup-window",
            "--router-timeout",
            "--audit-retention",
        ] {
            let error = validate(&[option, "0s"]).unwrap_err();
            assert!(
                matches!(error, OptionError::Zero { .. }),
                "{option}: {error}"
            );
            assert_eq!(format!("--{}", error.option()), option);
        }
        assert_eq!(refused_option(&["--batch-wait", "11y"]), "batch-wait");
    }

    #[test]
    fn stream_limits_are_refused_outside_what_jetstream_takes() {
        assert_eq!(
            refused_option(&["--stream-max-bytes", "0"]),
            "stream-max-bytes"
        );
        assert_eq!(
            refused_option(&["--stream-max-bytes=-1"]),
            "stream-max-bytes"
        );
        assert_eq!(
            refused_option(&["--audit-stream-max-bytes", "0"]),
            "audit-stream-max-bytes"
        );
        assert_eq!(
            refused_option(&["--stream-replicas", "0"]),
            "stream-replicas"
        );
        assert_eq!(
            refused_option(&["--stream-replicas", "6"]),
            "stream-replicas"
        );
        assert_eq!(validate(&["--stream-replicas", "3"]), Ok(()));
    }

    #[test]
    fn a_dedup_window_longer_than_the_stream_is_refused() {
        let error = validate(&["--stream-max-age", "1m", "--dedup-window", "2m"]).unwrap_err();
        assert!(matches!(
            error,
            OptionError::Conflict {
                option: "dedup-window",
                ..
            }
        ));
        assert_eq!(
            validate(&["--stream-max-age", "2m", "--dedup-window", "2m"]),
            Ok(())
        );
    }

    #[test]
    fn malformed_urls_are_refused() {
        assert_eq!(
            refused_option(&["--router-urls", "not a url"]),
            "router-urls"
        );
        assert_eq!(
            refused_option(&["--router-urls", "127.0.0.1:7070"]),
            "router-urls"
        );
        assert_eq!(
            refused_option(&["--router-urls", "http://a:7070,https://b:7070"]),
            "router-urls"
        );
        assert_eq!(
            validate(&["--router-urls", "http://a:7070,http://b:7070"]),
            Ok(())
        );
        assert_eq!(refused_option(&["--nats-url", "not a url"]), "nats-url");
    }

    #[test]
    fn an_empty_store_path_is_refused() {
        assert!(Config::try_parse_from(["worker", "--db-path", ""]).is_err());
        let mut config = Config::try_parse_from(["worker"]).unwrap();
        config.db_path = PathBuf::new();
        assert_eq!(config.validate().unwrap_err().option(), "db-path");
    }
}
