//! The checks every binary's `validate` is built from: durations, counts, NATS and router URLs.
//!
//! A refusal names the option and says why; `main` prints it as `error: …` and exits 64
//! (EX_USAGE) before it binds or connects anything. Zero is refused where it makes no sense (an
//! interval, a timeout, a lease, a count of things to allow); where an option's `--help` says
//! what 0 means, 0 is accepted.

use std::time::Duration;

use async_nats::ServerAddr;

use crate::routing;

/// The longest duration an option takes: 10 years (`10y`). Longer ones would overflow the
/// timers' instants and the stream's nanosecond fields.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// Why an option's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Zero where zero makes no sense.
    #[error("--{option} must be more than zero: {why}")]
    Zero {
        /// The option, without its dashes.
        option: &'static str,
        /// What zero would do.
        why: &'static str,
    },
    /// A value outside the option's range for another reason.
    #[error("--{option} {reason}")]
    OutOfRange {
        /// The option, without its dashes.
        option: &'static str,
        /// The accepted range, and why.
        reason: String,
    },
    /// A URL that does not parse or is not of the expected form.
    #[error("--{option}: {url:?} is not {expected}: {reason}")]
    BadUrl {
        /// The option, without its dashes.
        option: &'static str,
        /// The URL as given.
        url: String,
        /// The form expected.
        expected: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Two options that contradict each other.
    #[error("--{option} must be {relation} --{other}: {why}")]
    Conflict {
        /// The option refused.
        option: &'static str,
        /// How it must relate to the other one.
        relation: &'static str,
        /// The option it contradicts.
        other: &'static str,
        /// What would go wrong.
        why: &'static str,
    },
}

impl OptionError {
    /// The option refused, without its dashes.
    pub fn option(&self) -> &'static str {
        match self {
            Self::Zero { option, .. }
            | Self::OutOfRange { option, .. }
            | Self::BadUrl { option, .. }
            | Self::Conflict { option, .. } => option,
        }
    }
}

/// Checks a duration that may be zero (its `--help` says what zero does): at most
/// [`MAX_DURATION`].
pub fn duration(option: &'static str, value: Duration) -> Result<(), OptionError> {
    if value > MAX_DURATION {
        return Err(OptionError::OutOfRange {
            option,
            reason: "must be at most 10y".to_owned(),
        });
    }
    Ok(())
}

/// Checks a duration that must not be zero; `why` says what zero would do.
pub fn positive_duration(
    option: &'static str,
    value: Duration,
    why: &'static str,
) -> Result<(), OptionError> {
    if value.is_zero() {
        return Err(OptionError::Zero { option, why });
    }
    duration(option, value)
}

/// Checks a count that must not be zero; `why` says what zero would do.
pub fn positive_count(
    option: &'static str,
    value: u64,
    why: &'static str,
) -> Result<(), OptionError> {
    if value == 0 {
        return Err(OptionError::Zero { option, why });
    }
    Ok(())
}

/// Checks a count against its largest accepted value.
pub fn count_at_most(option: &'static str, value: u64, max: u64) -> Result<(), OptionError> {
    if value > max {
        return Err(OptionError::OutOfRange {
            option,
            reason: format!("must be at most {max}"),
        });
    }
    Ok(())
}

/// The NATS servers of `--nats-url`: one URL or several, comma-separated (`nats://host:port`,
/// `tls://`, `ws://`, `wss://`; without a scheme, `nats://`; without a port, 4222).
pub fn nats_servers(urls: &str) -> Result<Vec<ServerAddr>, OptionError> {
    const OPTION: &str = "nats-url";
    const EXPECTED: &str = "a NATS server URL (nats://host:port)";
    let bad = |url: &str, reason: String| OptionError::BadUrl {
        option: OPTION,
        url: url.to_owned(),
        expected: EXPECTED,
        reason,
    };
    let servers = urls
        .split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err(bad(url, "it is empty".to_owned()));
            }
            let server: ServerAddr = url
                .parse()
                .map_err(|e: std::io::Error| bad(url, e.to_string().to_ascii_lowercase()))?;
            if server.host().is_empty() {
                return Err(bad(url, "it has no host".to_owned()));
            }
            Ok(server)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(servers)
}

/// Checks the routers of `--router-urls`: each `http://host:port` (see [`routing::check_url`]).
pub fn router_urls(urls: &[String]) -> Result<(), OptionError> {
    for url in urls {
        routing::check_url(url).map_err(|reason| OptionError::BadUrl {
            option: "router-urls",
            url: url.clone(),
            expected: "a router URL (http://host:port)",
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_and_zero_only_where_allowed() {
        assert!(duration("drain-time", Duration::ZERO).is_ok());
        assert!(duration("drain-time", MAX_DURATION).is_ok());
        let error = duration("drain-time", MAX_DURATION + Duration::from_secs(1)).unwrap_err();
        assert_eq!(error.to_string(), "--drain-time must be at most 10y");
        let error = positive_duration("lease", Duration::ZERO, "nodes expire at once").unwrap_err();
        assert_eq!(
            error.to_string(),
            "--lease must be more than zero: nodes expire at once"
        );
        assert_eq!(error.option(), "lease");
        assert!(positive_duration("lease", Duration::from_millis(1), "").is_ok());
    }

    #[test]
    fn counts_are_positive_and_bounded() {
        assert!(positive_count("batch-size", 0, "nothing is written").is_err());
        assert!(positive_count("batch-size", 1, "nothing is written").is_ok());
        assert!(count_at_most("stream-replicas", 5, 5).is_ok());
        assert!(count_at_most("stream-replicas", 6, 5).is_err());
    }

    #[test]
    fn nats_urls_parse_one_or_several() {
        assert_eq!(nats_servers("nats://127.0.0.1:4222").unwrap().len(), 1);
        let several = nats_servers("nats://a:4222, tls://b:4223,c").unwrap();
        assert_eq!(several.len(), 3);
        assert_eq!(several[2].port(), 4222);
        // The whole list as one URL does not parse: it has to be split.
        assert!("nats://a:4222,nats://b:4222".parse::<ServerAddr>().is_err());
        for bad in [
            "not a url",
            "http://127.0.0.1:4222",
            "",
            "nats://a:4222,",
            "nats://:4222",
        ] {
            let error = nats_servers(bad).unwrap_err();
            assert_eq!(error.option(), "nats-url", "{bad:?}");
        }
    }

    #[test]
    fn router_urls_must_be_http_host_port() {
        let good = [
            "http://127.0.0.1:7070".to_owned(),
            "http://router-1:7070/".to_owned(),
        ];
        assert!(router_urls(&good).is_ok());
        assert!(router_urls(&[]).is_ok());
        for bad in [
            "not a url",
            "127.0.0.1:7070",
            "router:7070",
            "http://router",
            "https://router:7070",
            "grpc://router:7070",
            "http://router:7070/v1",
            "http://:7070",
            "",
        ] {
            let error = router_urls(&[bad.to_owned()]).unwrap_err();
            assert!(
                error.to_string().starts_with("--router-urls: "),
                "{bad:?}: {error}"
            );
        }
    }
}
