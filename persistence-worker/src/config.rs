//! The worker's configuration, from flags and environment variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The persistence worker: consumes the durable message stream from NATS JetStream, writes it to
/// the store in batches, and answers the reads that need the store over NATS request-reply.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-persistence-worker", version)]
pub struct Config {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "CHAT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Path of the embedded SQLite store (created if missing). Exactly one worker may use it.
    #[arg(long, env = "CHAT_DB_PATH", default_value = "chat.db")]
    pub db_path: PathBuf,

    /// Most events written in one transaction.
    #[arg(long, env = "CHAT_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,

    /// How long a batch waits for more events after its first one.
    #[arg(long, env = "CHAT_BATCH_WAIT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// How far back the stream keeps events: the resume horizon (older ones are in the store only).
    #[arg(long, env = "CHAT_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub stream_max_age: Duration,

    /// Most bytes the stream keeps before it drops its oldest events.
    #[arg(long, env = "CHAT_STREAM_MAX_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub stream_max_bytes: i64,

    /// The de-duplication window: a `clientMessageId` resent within it yields the same message.
    #[arg(long, env = "CHAT_DEDUP_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Replicas of the stream: 1 on one machine, 3 in a cluster.
    #[arg(long, env = "CHAT_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// Most requests answered at once.
    #[arg(long, env = "CHAT_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,

    /// Router gRPC URLs (`http://host:port`), comma-separated, in the gateways' order. Events
    /// addressed to one user (membership changes) then go only to the nodes that hold the user's
    /// sessions; without one, or while no router answers, they go to every node.
    #[arg(long, env = "CHAT_ROUTER_URLS", value_delimiter = ',')]
    pub router_urls: Vec<String>,

    /// How long a placement look-up may take before the event goes to every node instead.
    #[arg(long, env = "CHAT_ROUTER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub router_timeout: Duration,

    /// Write logs as JSON lines.
    #[arg(long, env = "CHAT_LOG_JSON")]
    pub log_json: bool,
}

impl Config {
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

    #[test]
    fn defaults_work_on_one_machine() {
        let config = Config::try_parse_from(["worker"]).unwrap();
        assert_eq!(config.dedup_window, Duration::from_secs(120));
        assert_eq!(config.stream_replicas, 1);
    }

    #[test]
    fn a_zero_batch_is_refused() {
        assert!(Config::try_parse_from(["worker", "--batch-size", "0"]).is_err());
        assert!(Config::try_parse_from(["worker", "--batch-wait", "soon"]).is_err());
    }
}
