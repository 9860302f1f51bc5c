//! The worker's configuration, from flags and environment variables. Parsing opens nothing;
//! [`Config::validate`] checks every option before the store is opened or NATS connected.

use std::path::PathBuf;
use std::time::Duration;

use chat_proto::options::{self, OptionError};
use clap::Parser;

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

    /// Path of the embedded SQLite store (created if missing), not empty. Exactly one worker
    /// may use it.
    #[arg(long, env = "CHAT_DB_PATH", default_value = "chat.db")]
    pub db_path: PathBuf,

    /// Most events written in one transaction: 1 to 65535.
    #[arg(long, env = "CHAT_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,

    /// How long a batch waits for more events after its first one: 0 (a batch takes only the
    /// events already there) to 10y.
    #[arg(long, env = "CHAT_BATCH_WAIT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

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
}

impl Config {
    /// Checks every option; touches no file, socket or environment variable.
    pub fn validate(&self) -> Result<(), OptionError> {
        options::nats_servers(&self.nats_url)?;
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
        options::positive_duration(
            "stream-max-age",
            self.stream_max_age,
            "JetStream would read 0 as no age limit",
        )?;
        if self.stream_max_bytes <= 0 {
            return Err(OptionError::Zero {
                option: "stream-max-bytes",
                why: "JetStream would read 0 or less as no size limit",
            });
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
        }
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
        for option in ["--stream-max-age", "--dedup-window", "--router-timeout"] {
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
