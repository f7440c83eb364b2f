//! The shared limiter: the limits of every replica in one Redis, each
//! request decided by one call of one Lua script (`limits.lua`), atomic on
//! the server — every claim of the request (the address's requests, the
//! key's requests and tokens, the key's concurrency lease) fits, and is
//! taken, or nothing is.
//!
//! Keys (after `[cluster] key_prefix`, default `h3gate:`):
//!
//! | key                             | type   | holds                                          |
//! |---------------------------------|--------|------------------------------------------------|
//! | `rate:addr:{ip}:requests`       | string | the address's GCRA TAT (µs); expires when full  |
//! | `rate:key:{sha256}:requests`    | string | the key's requests TAT                          |
//! | `rate:key:{sha256}:tokens`      | string | the key's tokens TAT                            |
//! | `rate:key:{sha256}:leases`      | zset   | lease id → expiry (µs); expires with the last   |
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

/// Rate limits and leases in the cluster's Redis.
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
                    return Err(LimiterError("budgets are not kept in redis yet".into()))
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
                match c.lease {
                    Some(id) => inv.arg("l").arg(id.to_string()).arg(""),
                    None => inv.arg("r").arg(c.limit.per_minute.max(1)).arg(c.delta),
                };
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
