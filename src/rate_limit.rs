//! Rate limits as GCRA token buckets (requests per minute with a burst, and
//! tokens per minute), behind the small [`Limiter`] interface so a shared
//! backend (Redis) can replace the in-memory one for multi-replica
//! deployments without touching the pipeline.
//!
//! GCRA keeps one instant per bucket (the theoretical arrival time, TAT): a
//! request of cost `c` is allowed when `max(TAT, now) + c·T - now <= τ`,
//! where `T = 60 s / rate` and `τ = burst·T`. Idle buckets are full buckets,
//! so forgetting them changes nothing: they are swept, and memory stays
//! bounded by the buckets in use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

/// A bucket's rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per_minute: u64,
    pub burst: u64,
}

/// The answer for one take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the request would be allowed.
    pub retry_after: Duration,
}

pub trait Limiter: Send + Sync + std::fmt::Debug {
    /// Takes `cost` from the bucket `key`, or refuses without taking.
    fn take(&self, key: &str, limit: Limit, cost: u64) -> Decision;
    /// Corrects an earlier take by `delta` (negative gives back), e.g. when
    /// the real token usage is known.
    fn adjust(&self, key: &str, limit: Limit, delta: i64);
}

/// The embedded in-memory limiter.
#[derive(Debug)]
pub struct MemoryLimiter {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
}

const SHARDS: usize = 16;
/// Sweep a shard of idle buckets when it grows past this.
const SWEEP_AT: usize = 4096;

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn interval(limit: Limit) -> Duration {
    Duration::from_secs(60) / u32::try_from(limit.per_minute.max(1)).unwrap_or(u32::MAX)
}

impl MemoryLimiter {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        let h = key
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        self.shards[(h as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Buckets currently remembered (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Limiter for MemoryLimiter {
    fn take(&self, key: &str, limit: Limit, cost: u64) -> Decision {
        let now = Instant::now();
        let t = interval(limit);
        let tau = t * u32::try_from(limit.burst).unwrap_or(u32::MAX);
        let mut shard = self.shard(key);
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, tat| *tat > now);
        }
        let tat = shard.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + t * u32::try_from(cost).unwrap_or(u32::MAX);
        let ahead = new_tat - now;
        let remaining =
            |ahead: Duration| (tau.saturating_sub(ahead).as_nanos() / t.as_nanos().max(1)) as u64;
        if ahead > tau {
            return Decision {
                allowed: false,
                limit: limit.burst,
                remaining: remaining(tat - now),
                reset: tat - now,
                retry_after: ahead - tau,
            };
        }
        set(&mut shard, key, new_tat);
        Decision {
            allowed: true,
            limit: limit.burst,
            remaining: remaining(ahead),
            reset: ahead,
            retry_after: Duration::ZERO,
        }
    }

    fn adjust(&self, key: &str, limit: Limit, delta: i64) {
        let now = Instant::now();
        let t = interval(limit);
        let mut shard = self.shard(key);
        let tat = shard.get(key).copied().unwrap_or(now).max(now);
        let step = t * u32::try_from(delta.unsigned_abs()).unwrap_or(u32::MAX);
        let new_tat = if delta >= 0 {
            tat + step
        } else {
            tat.checked_sub(step).unwrap_or(now).max(now)
        };
        set(&mut shard, key, new_tat);
    }
}

/// Stores a bucket's time, allocating the key only for a new bucket.
fn set(shard: &mut HashMap<String, Instant>, key: &str, tat: Instant) {
    match shard.get_mut(key) {
        Some(v) => *v = tat,
        None => {
            shard.insert(key.to_string(), tat);
        }
    }
}

/// OpenAI-style duration: `1s`, `6m0s`, `20ms`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms.div_ceil(1000))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000).div_ceil(1000))
    }
}

/// Which limit a decision is about: names the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests,
    Tokens,
}

impl Limited {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI's names).
    fn names(self) -> [HeaderName; 3] {
        let n = HeaderName::from_static;
        match self {
            Limited::Requests => [
                n("x-ratelimit-limit-requests"),
                n("x-ratelimit-remaining-requests"),
                n("x-ratelimit-reset-requests"),
            ],
            Limited::Tokens => [
                n("x-ratelimit-limit-tokens"),
                n("x-ratelimit-remaining-tokens"),
                n("x-ratelimit-reset-tokens"),
            ],
        }
    }
}

/// Adds the `x-ratelimit-*` headers of a decision (on every request, so
/// static names and no formatting machinery for the numbers).
pub fn headers(h: &mut HeaderMap, what: Limited, d: &Decision) {
    let [limit, remaining, reset] = what.names();
    h.insert(limit, HeaderValue::from(d.limit));
    h.insert(remaining, HeaderValue::from(d.remaining));
    if let Ok(v) = HeaderValue::try_from(openai_duration(d.reset)) {
        h.insert(reset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limit = Limit {
        per_minute: 60,
        burst: 3,
    };

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = MemoryLimiter::default();
        for left in [2, 1, 0] {
            let d = l.take("k", L, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = l.take("k", L, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.take("k", L, 1).allowed, "one per second refills");
        assert!(!l.take("k", L, 1).allowed);
        assert!(l.take("other", L, 1).allowed, "buckets are separate");
    }

    #[tokio::test(start_paused = true)]
    async fn adjust_reconciles_costs() {
        let l = MemoryLimiter::default();
        let tokens = Limit {
            per_minute: 600,
            burst: 600,
        };
        assert!(l.take("k", tokens, 500).allowed);
        assert!(!l.take("k", tokens, 200).allowed);
        l.adjust("k", tokens, -400); // the real usage was 100
        assert!(l.take("k", tokens, 200).allowed);
        l.adjust("k", tokens, 300);
        assert!(!l.take("k", tokens, 200).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_forgotten() {
        let l = MemoryLimiter::default();
        for i in 0..(SWEEP_AT * SHARDS * 2) {
            l.take(&format!("ip{i}"), L, 1);
            if i % 1000 == 0 {
                tokio::time::advance(Duration::from_secs(5)).await;
            }
        }
        assert!(l.len() < SWEEP_AT * SHARDS + SHARDS, "bounded: {}", l.len());
    }

    #[test]
    fn durations() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    }
}
