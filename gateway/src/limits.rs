//! Rate limits: a token bucket per key (a user, a client address), held on this node. A bucket
//! holds `burst` tokens and refills at `per_minute`; a bucket unused for ten minutes is full
//! again and is forgotten.

use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long an unused bucket is kept (it would have refilled by then at any sensible rate).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most buckets a limiter keeps; beyond, the least recently used are forgotten.
const MAX_BUCKETS: u64 = 1_000_000;

/// A rate: `per_minute` sustained, `burst` at once. A `per_minute` of 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// Parses `<per minute>/<burst>`, e.g. `100/20`; `0` turns the limit off.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("expected <per minute>/<burst> (e.g. 100/20) or 0, got {text:?}");
        if text.trim() == "0" {
            return Ok(Self::UNLIMITED);
        }
        let (per_minute, burst) = text.split_once('/').ok_or_else(bad)?;
        let per_minute = per_minute.trim().parse().map_err(|_| bad())?;
        let burst = burst.trim().parse().map_err(|_| bad())?;
        if per_minute == 0 || burst == 0 {
            return Err(bad());
        }
        Ok(Self { per_minute, burst })
    }

    /// No limit.
    pub const UNLIMITED: Self = Self {
        per_minute: 0,
        burst: 0,
    };

    fn is_unlimited(self) -> bool {
        self.per_minute == 0
    }

    fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key.
pub struct Limiter<K> {
    buckets: moka::sync::Cache<K, Arc<Mutex<Bucket>>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> Limiter<K> {
    pub fn new() -> Self {
        Self {
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .time_to_idle(FORGET_AFTER)
                .build(),
        }
    }

    /// Takes a token from `key`'s bucket at `rate`: `Err` says when one will be there.
    pub fn take(&self, key: K, rate: Rate) -> Result<(), Duration> {
        if rate.is_unlimited() {
            return Ok(());
        }
        let now = Instant::now();
        let bucket = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: f64::from(rate.burst),
                at: now,
            }))
        });
        let mut bucket = bucket.lock().expect("bucket lock poisoned");
        let refilled = now.duration_since(bucket.at).as_secs_f64() * rate.per_second();
        bucket.tokens = (bucket.tokens + refilled).min(f64::from(rate.burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - bucket.tokens) / rate.per_second(),
        ))
    }
}

impl<K: Hash + Eq + Send + Sync + 'static> Default for Limiter<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_or_say_what_is_expected() {
        assert_eq!(
            Rate::parse("100/20"),
            Ok(Rate {
                per_minute: 100,
                burst: 20
            })
        );
        assert_eq!(Rate::parse("0"), Ok(Rate::UNLIMITED));
        for bad in ["", "100", "100/0", "0/5", "a/b", "-1/3"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_sustained_rate() {
        let limiter = Limiter::new();
        let rate = Rate::parse("60/3").unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.take("u", rate), Ok(()));
        }
        let wait = limiter.take("u", rate).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        assert_eq!(
            limiter.take("v", rate),
            Ok(()),
            "another key has its own bucket"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limiter.take("u", rate), Ok(()), "one a second comes back");
        assert!(limiter.take("u", rate).is_err());
        assert_eq!(limiter.take("u", Rate::UNLIMITED), Ok(()));
    }
}
