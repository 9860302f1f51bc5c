//! The router's configuration, from flags and environment variables. Parsing binds nothing;
//! [`Config::validate`] checks every option before anything is bound or connected.

use std::net::SocketAddr;
use std::time::Duration;

use chat_proto::options::{self, OptionError};
use clap::Parser;

/// The shortest lease: gateways heartbeat every third of it, at most every 10 ms.
pub const MIN_LEASE: Duration = Duration::from_millis(30);

/// The routing broker: session placement, presence and the per-user session limit, over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-router", version)]
pub struct Config {
    /// Address of the gRPC service.
    #[arg(long, env = "CHAT_ROUTER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// NATS server URL(s), comma-separated (`nats://host:port`): presence changes are published
    /// there.
    #[arg(long, env = "CHAT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "CHAT_ADMIN_LISTEN", default_value = "127.0.0.1:9070")]
    pub admin_listen: SocketAddr,

    /// How long a gateway node keeps its sessions without a sign of life (it sends heartbeats
    /// three times as often). A crashed node's users go offline within it. After a router start,
    /// presence changes wait this long while the nodes re-register. 30ms to 10y.
    #[arg(long, env = "CHAT_ROUTER_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// Most sessions one user may have across the cluster; the next connect is closed with 4429.
    /// At least 1.
    #[arg(long, env = "CHAT_MAX_SESSIONS_PER_USER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_user: u32,

    /// Presence changes are gathered this long before they are published: a user who leaves
    /// and comes back within it (a reconnection) causes none. More than 0, at most 10y.
    #[arg(long, env = "CHAT_PRESENCE_WINDOW", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub presence_window: Duration,

    /// How long a user must have been gone (no session, or invisible) before others hear they
    /// went offline: a reconnection, or a drained gateway's clients moving to another one
    /// (spread over up to 5 s), causes no offline-online flicker. 0 (at once) to 10y.
    #[arg(long, env = "CHAT_OFFLINE_DELAY", default_value = "6s", value_parser = humantime::parse_duration)]
    pub offline_delay: Duration,

    /// Write logs as JSON lines.
    #[arg(long, env = "CHAT_LOG_JSON")]
    pub log_json: bool,

    /// Traces over OTLP.
    #[command(flatten)]
    pub trace: chat_proto::telemetry::TraceOptions,
}

impl Config {
    /// Checks every option; touches no socket, file or environment variable.
    pub fn validate(&self) -> Result<(), OptionError> {
        self.trace.validate()?;
        options::nats_servers(&self.nats_url)?;
        options::positive_duration(
            "lease",
            self.lease,
            "every node would lose its sessions at once",
        )?;
        if self.lease < MIN_LEASE {
            return Err(OptionError::OutOfRange {
                option: "lease",
                reason: "must be at least 30ms: gateways heartbeat every third of it, at most \
                         every 10ms"
                    .to_owned(),
            });
        }
        options::positive_count(
            "max-sessions-per-user",
            u64::from(self.max_sessions_per_user),
            "nobody could connect",
        )?;
        options::positive_duration(
            "presence-window",
            self.presence_window,
            "presence changes are published once per window",
        )?;
        options::duration("offline-delay", self.offline_delay)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(args: &[&str]) -> Result<(), OptionError> {
        let argv = std::iter::once("chat-router").chain(args.iter().copied());
        Config::try_parse_from(argv)
            .expect("the flags parse")
            .validate()
    }

    #[test]
    fn the_defaults_pass() {
        assert_eq!(validate(&[]), Ok(()));
    }

    #[test]
    fn a_zero_window_or_lease_is_refused() {
        let error = validate(&["--presence-window", "0s"]).unwrap_err();
        assert!(matches!(
            error,
            OptionError::Zero {
                option: "presence-window",
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "--presence-window must be more than zero: presence changes are published once per \
             window"
        );
        let error = validate(&["--lease", "0s"]).unwrap_err();
        assert!(matches!(
            error,
            OptionError::Zero {
                option: "lease",
                ..
            }
        ));
    }

    #[test]
    fn a_lease_shorter_than_three_heartbeats_is_refused() {
        let error = validate(&["--lease", "20ms"]).unwrap_err();
        assert!(matches!(
            error,
            OptionError::OutOfRange {
                option: "lease",
                ..
            }
        ));
        assert_eq!(validate(&["--lease", "30ms"]), Ok(()));
    }

    #[test]
    fn a_zero_offline_delay_means_at_once() {
        assert_eq!(validate(&["--offline-delay", "0s"]), Ok(()));
    }

    #[test]
    fn durations_past_ten_years_are_refused() {
        let error = validate(&["--offline-delay", "11y"]).unwrap_err();
        assert_eq!(error.to_string(), "--offline-delay must be at most 10y");
    }

    #[test]
    fn a_malformed_nats_url_is_refused() {
        for url in ["not a url", "http://127.0.0.1:4222", "nats://a:4222,"] {
            let error = validate(&["--nats-url", url]).unwrap_err();
            assert!(
                matches!(
                    error,
                    OptionError::BadUrl {
                        option: "nats-url",
                        ..
                    }
                ),
                "{url}"
            );
        }
        assert_eq!(
            validate(&["--nats-url", "nats://a:4222,nats://b:4222"]),
            Ok(())
        );
    }

    #[test]
    fn zero_sessions_per_user_does_not_even_parse() {
        let argv = ["chat-router", "--max-sessions-per-user", "0"];
        assert!(Config::try_parse_from(argv).is_err());
    }
}
