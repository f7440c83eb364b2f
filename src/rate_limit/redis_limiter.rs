//! The shared limiter: the limits of every replica in one Redis, each
//! request decided by one call of one Lua script (`limits.lua`), atomic on
//! the server — every claim of the request (the address's requests, the
//! key's requests and tokens, the key's concurrency lease, the key's and
//! its team's budgets) fits, and is taken, or nothing is.
//!
//! Keys (after `[cluster] key_prefix`, default `h3gate:`):
//!
//! | key                             | type   | holds                                          |
//! |---------------------------------|--------|------------------------------------------------|
//! | `rate:addr:{ip}:requests`       | string | the address's GCRA TAT (µs); expires when full  |
//! | `rate:key:{sha256}:requests`    | string | the key's requests TAT                          |
//! | `rate:key:{sha256}:tokens`      | string | the key's tokens TAT                            |
//! | `rate:key:{sha256}:leases`      | zset   | lease id → expiry (µs); expires with the last   |
//! | `budget:key:{sha256}:{unit}:{p}`| hash   | the key's budget: slot → spend                  |
//! | `budget:team:{name}:{unit}:{p}` | hash   | the team's budget: slot → spend                 |
//!
//! A budget's `{unit}` is `usd` (nano-USD) or `tokens`, `{p}` its period's
//! tag (`d`, `m`, `r720`: [`crate::spend::Period::tag`]); its fields are the
//! slots of the claim's [`super::Window`] (days, months or steps since the
//! epoch). A claim reads the window's slots, drops the older ones, and adds
//! its cost to the current slot; the key expires an hour after its newest
//! slot leaves the window. Budgets are decided as the in-memory limiter
//! decides them (`budget.rs`), in the same script call as the request's
//! rates. Their windows come from the replicas' clocks (calendar days and
//! months need no better than NTP's agreement).
//!
//! A key is named by its SHA-256, never by the key. The server's clock
//! (`TIME`) is the only clock, so the replicas' clocks need not agree. All
//! keys of one request are read and written by one script, so the limits
//! need one Redis primary (Valkey works the same; Redis Cluster's hash slots
//! would split a request's keys and are not supported).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::{Bucket, Claim, Correction, Decision, Kind, LeaseId, Limiter, LimiterError, Pending};
use crate::cluster::Cluster;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limits.lua")));

/// Corrections or renewals in one script call, at most.
const CHUNK: usize = 256;

/// Rate limits, leases and budgets in the cluster's Redis.
#[derive(Debug)]
pub struct RedisLimiter {
    cluster: Arc<Cluster>,
}

impl RedisLimiter {
    pub fn new(cluster: Arc<Cluster>) -> RedisLimiter {
        RedisLimiter { cluster }
    }

    /// A lease's TTL, in milliseconds.
    fn ttl_ms(&self) -> u64 {
        self.cluster.config().lease_ttl.get().as_millis() as u64
    }

    /// The Redis key of a bucket (see the module documentation).
    pub fn key_of(&self, b: &Bucket) -> String {
        let prefix = &self.cluster.config().key_prefix;
        let kind = match b.kind {
            Kind::Requests => "requests".to_string(),
            Kind::Tokens => "tokens".to_string(),
            Kind::Lease => "leases".to_string(),
            Kind::Budget(unit, period) => {
                let unit = match unit {
                    super::Unit::Usd => "usd",
                    super::Unit::Tokens => "tokens",
                };
                format!("{unit}:{}", period.tag())
            }
        };
        match (&b.subject, b.kind) {
            (super::Subject::Address(ip), _) => format!("{prefix}rate:addr:{ip}:{kind}"),
            (super::Subject::Key(sha), Kind::Budget(..)) => {
                format!("{prefix}budget:key:{sha}:{kind}")
            }
            (super::Subject::Key(sha), _) => format!("{prefix}rate:key:{sha}:{kind}"),
            (super::Subject::Team(team), _) => format!("{prefix}budget:team:{team}:{kind}"),
        }
    }

    async fn run<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, LimiterError> {
        self.cluster
            .call::<T>(op, inv)
            .await
            .map_err(|e| LimiterError(e.to_string()))
    }

    async fn consume_all(&self, claims: &[Claim]) -> Result<Vec<Decision>, LimiterError> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.arg("consume");
        for c in claims {
            inv.key(self.key_of(&c.bucket));
            match (c.bucket.kind, c.lease) {
                (Kind::Lease, Some(id)) => {
                    inv.arg("l")
                        .arg(c.limit.burst)
                        .arg(id.to_string())
                        .arg(self.ttl_ms());
                }
                (Kind::Lease, None) => {
                    return Err(LimiterError("a lease claim without an id".into()))
                }
                (Kind::Budget(..), _) => {
                    inv.arg("b").arg(c.limit.burst).arg(c.cost);
                    window_args(&mut inv, c.window);
                }
                _ => {
                    inv.arg("r")
                        .arg(c.limit.per_minute.max(1))
                        .arg(c.limit.burst)
                        .arg(c.cost);
                }
            }
        }
        let flat: Vec<i64> = self.run("rate_limit", inv).await?;
        decode(claims, &flat)
    }

    async fn correct_all(&self, corrections: &[Correction]) -> Result<(), LimiterError> {
        for chunk in corrections.chunks(CHUNK) {
            let mut inv = SCRIPT.prepare_invoke();
            inv.arg("correct");
            for c in chunk {
                inv.key(self.key_of(&c.bucket));
                match (c.bucket.kind, c.lease) {
                    (Kind::Budget(..), _) => {
                        inv.arg("b").arg(c.delta);
                        window_args(&mut inv, c.window);
                    }
                    (_, Some(id)) => {
                        inv.arg("l").arg(id.to_string());
                    }
                    (_, None) => {
                        inv.arg("r").arg(c.limit.per_minute.max(1)).arg(c.delta);
                    }
                }
            }
            self.run::<i64>("rate_limit_correct", inv).await?;
        }
        Ok(())
    }

    async fn renew_all(&self, leases: &[(Bucket, LeaseId)]) -> Result<(), LimiterError> {
        for chunk in leases.chunks(CHUNK) {
            let mut inv = SCRIPT.prepare_invoke();
            inv.arg("renew").arg(self.ttl_ms());
            for (bucket, id) in chunk {
                inv.key(self.key_of(bucket)).arg(id.to_string());
            }
            self.run::<i64>("lease_renew", inv).await?;
        }
        Ok(())
    }
}

/// A budget's window as the script reads it: slot, slots, step, ends, now.
fn window_args(inv: &mut redis::ScriptInvocation<'_>, w: Option<super::Window>) {
    let w = super::budget::window_of(w);
    inv.arg(w.slot)
        .arg(w.slots)
        .arg(w.step)
        .arg(w.ends)
        .arg(w.now);
}

/// The script's answer: four integers per claim.
fn decode(claims: &[Claim], flat: &[i64]) -> Result<Vec<Decision>, LimiterError> {
    if flat.len() != claims.len() * 4 {
        return Err(LimiterError(format!(
            "{} values for {} claims",
            flat.len(),
            claims.len()
        )));
    }
    let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
    Ok(claims
        .iter()
        .zip(flat.chunks_exact(4))
        .map(|(c, v)| Decision {
            allowed: v[0] == 1,
            limit: c.limit.burst,
            remaining: v[1].max(0) as u64,
            reset: micros(v[2]),
            retry_after: micros(v[3]),
        })
        .collect())
}

impl Limiter for RedisLimiter {
    fn consume<'a>(&'a self, claims: &'a [Claim]) -> Pending<'a, Vec<Decision>> {
        Box::pin(self.consume_all(claims))
    }

    fn correct<'a>(&'a self, corrections: &'a [Correction]) -> Pending<'a, ()> {
        Box::pin(self.correct_all(corrections))
    }

    fn renew<'a>(&'a self, leases: &'a [(Bucket, LeaseId)]) -> Pending<'a, ()> {
        Box::pin(self.renew_all(leases))
    }
}
