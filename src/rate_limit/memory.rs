//! The embedded limiter: GCRA token buckets in memory, one process's.
//!
//! GCRA keeps one instant per bucket (the theoretical arrival time, TAT): a
//! claim of cost `c` fits when `max(TAT, now) + c·T - now <= τ`, where
//! `T = 60 s / rate` and `τ = burst·T`. Idle buckets are full buckets, so
//! forgetting them changes nothing: they are swept, and memory stays bounded
//! by the buckets in use.
//!
//! A batch locks the shards of all its buckets (in shard order, so batches
//! never deadlock), decides every claim, and writes only if all fit.
//!
//! Concurrency leases ([`Kind::Lease`]) are not this limiter's: on one node,
//! and in a cluster's local fallback, a key's concurrency is decided at
//! admission (`ClientCaps`, before the body is read). A lease claim here is
//! allowed and not stored, and its correction is ignored.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::budget::{BudgetCounter, Budgets};
use super::{Bucket, Claim, Correction, Decision, Kind, Limit, Limiter, Pending, Subject};

/// foldhash with a random seed, as the budgets' map (SipHash was ~4% of a request).
type Shard = HashMap<Bucket, Instant, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct MemoryLimiter {
    shards: [Mutex<Shard>; SHARDS],
    /// Budgets' counters (locked after the shards, when a batch has any).
    budgets: Budgets,
}

const SHARDS: usize = 16;
/// Claims per batch whose shard is remembered rather than recomputed.
const INLINE: usize = 8;
/// Sweep a shard of idle buckets when it grows past this.
const SWEEP_AT: usize = 4096;

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
            budgets: Budgets::default(),
        }
    }
}

fn interval(limit: Limit) -> Duration {
    Duration::from_secs(60) / u32::try_from(limit.per_minute.max(1)).unwrap_or(u32::MAX)
}

fn times(d: Duration, n: u64) -> Duration {
    d * u32::try_from(n).unwrap_or(u32::MAX)
}

fn shard_of(b: &Bucket) -> usize {
    let fold = |h: u64, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
    };
    let h = match &b.subject {
        Subject::Address(std::net::IpAddr::V4(a)) => fold(1, &a.octets()),
        Subject::Address(std::net::IpAddr::V6(a)) => fold(2, &a.octets()),
        // A key's SHA-256 (hex): its first 16 digits spread as well as all.
        Subject::Key(k) => fold(3, &k.as_bytes()[..k.len().min(16)]),
        Subject::Team(t) => fold(4, t.as_bytes()),
    };
    let kind = match b.kind {
        Kind::Requests => 0,
        Kind::Tokens => 1,
        Kind::Lease => 2,
        Kind::Budget(..) => 3,
    };
    (h as usize ^ kind) % SHARDS
}

/// Decides one claim against the bucket's `tat` (as stored, or as an earlier
/// claim of the same batch left it).
fn decide(now: Instant, tat: Option<Instant>, limit: Limit, cost: u64) -> Decision {
    let t = interval(limit);
    let tau = times(t, limit.burst);
    let tat = tat.unwrap_or(now).max(now);
    let ahead = tat + times(t, cost) - now;
    if ahead > tau {
        return Decision {
            allowed: false,
            retry_after: ahead - tau,
            ..state(now, tat, limit)
        };
    }
    Decision {
        allowed: true,
        limit: limit.burst,
        remaining: remaining(t, tau, ahead),
        reset: ahead,
        retry_after: Duration::ZERO,
    }
}

/// Whether the claim is a rate's (not a lease's or a budget's).
fn rated(c: &Claim) -> bool {
    matches!(c.bucket.kind, Kind::Requests | Kind::Tokens)
}

/// A lease claim: allowed, not counted (see the module documentation).
fn uncounted(limit: Limit) -> Decision {
    Decision {
        allowed: true,
        limit: limit.burst,
        remaining: limit.burst,
        reset: Duration::ZERO,
        retry_after: Duration::ZERO,
    }
}

/// A bucket as it is, nothing taken.
fn state(now: Instant, tat: Instant, limit: Limit) -> Decision {
    let t = interval(limit);
    let ahead = tat.max(now) - now;
    Decision {
        allowed: true,
        limit: limit.burst,
        remaining: remaining(t, times(t, limit.burst), ahead),
        reset: ahead,
        retry_after: Duration::ZERO,
    }
}

fn remaining(t: Duration, tau: Duration, ahead: Duration) -> u64 {
    (tau.saturating_sub(ahead).as_nanos() / t.as_nanos().max(1)) as u64
}

impl MemoryLimiter {
    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buckets currently remembered (for tests and memory checks).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch, decided and (when all fit) taken under its shards' locks.
    pub fn consume_now(&self, claims: &[Claim]) -> Vec<Decision> {
        let now = Instant::now();
        // Each claim's shard, computed once (for the usual small batch).
        let mut at = [0u8; INLINE];
        for (i, c) in claims.iter().take(INLINE).enumerate() {
            at[i] = shard_of(&c.bucket) as u8;
        }
        let shard = |i: usize, b: &Bucket| at.get(i).map_or_else(|| shard_of(b), |&s| s as usize);
        let used = claims
            .iter()
            .enumerate()
            .fold(0u32, |m, (i, c)| m | 1 << shard(i, &c.bucket));
        // Ascending shard order: two batches never wait on each other.
        let mut guards: [Option<MutexGuard<'_, Shard>>; SHARDS] = Default::default();
        for (i, g) in guards.iter_mut().enumerate() {
            if used & (1 << i) != 0 {
                let mut shard = self.lock(i);
                if shard.len() >= SWEEP_AT {
                    shard.retain(|_, tat| *tat > now);
                }
                *g = Some(shard);
            }
        }
        let stored = |guards: &[Option<MutexGuard<'_, Shard>>], i: usize, b: &Bucket| {
            guards[shard(i, b)].as_ref().and_then(|s| s.get(b).copied())
        };
        // Budgets, when the batch has any: their counters' lock after the shards'.
        let mut budgets = claims
            .iter()
            .any(|c| matches!(c.bucket.kind, Kind::Budget(..)))
            .then(|| self.budgets.lock());
        let mut spent = match budgets.as_deref_mut() {
            Some(map) => Budgets::decide_all(map, claims),
            None => Vec::new(),
        };
        let mut decisions: Vec<Decision> = Vec::with_capacity(claims.len());
        for (i, c) in claims.iter().enumerate() {
            // The same bucket twice in one batch: the later claim sees the earlier.
            let earlier = claims[..i]
                .iter()
                .zip(&decisions)
                .rfind(|(e, d)| e.bucket == c.bucket && d.allowed)
                .map(|(_, d)| now + d.reset);
            let tat = earlier.or_else(|| stored(&guards, i, &c.bucket));
            decisions.push(match c.bucket.kind {
                Kind::Lease => uncounted(c.limit),
                Kind::Budget(..) => spent
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| uncounted(c.limit)),
                _ => decide(now, tat, c.limit, c.cost),
            });
        }
        if decisions.iter().all(|d| d.allowed) {
            if let Some(map) = budgets.as_deref_mut() {
                Budgets::take_all(map, claims);
            }
            for (i, (c, d)) in claims.iter().zip(&decisions).enumerate() {
                if let Some(map) = guards[shard(i, &c.bucket)].as_mut().filter(|_| rated(c)) {
                    set(map, &c.bucket, now + d.reset);
                }
            }
        } else {
            for (i, (c, d)) in claims.iter().zip(decisions.iter_mut()).enumerate() {
                if d.allowed && rated(c) {
                    let tat = stored(&guards, i, &c.bucket).unwrap_or(now);
                    *d = state(now, tat, c.limit);
                } else if d.allowed && matches!(c.bucket.kind, Kind::Budget(..)) {
                    // Nothing taken: the budget as it is.
                    d.remaining = d.remaining.saturating_add(c.cost).min(d.limit);
                }
            }
        }
        decisions
    }

    /// Takes over a shared backend's view of the claims' buckets (their
    /// state after `decisions`), so that a fallback to this limiter starts
    /// from where the shared limits were, not from full buckets.
    pub fn mirror(&self, claims: &[Claim], decisions: &[Decision]) {
        let now = Instant::now();
        for (c, d) in claims.iter().zip(decisions) {
            if matches!(c.bucket.kind, Kind::Budget(..)) {
                self.budgets.mirror(c, d);
            }
        }
        for (c, d) in claims.iter().zip(decisions).filter(|(c, _)| rated(c)) {
            let mut shard = self.lock(shard_of(&c.bucket));
            if d.reset.is_zero() {
                shard.remove(&c.bucket);
            } else {
                set(&mut shard, &c.bucket, now + d.reset);
            }
        }
    }

    /// Applies corrections at once.
    pub fn correct_now(&self, corrections: &[Correction]) {
        let now = Instant::now();
        for c in corrections {
            if matches!(c.bucket.kind, Kind::Budget(..)) {
                self.budgets.correct(c);
            }
        }
        let rates = corrections
            .iter()
            .filter(|c| matches!(c.bucket.kind, Kind::Requests | Kind::Tokens));
        for c in rates {
            let t = interval(c.limit);
            let mut shard = self.lock(shard_of(&c.bucket));
            let tat = shard.get(&c.bucket).copied().unwrap_or(now).max(now);
            let step = times(t, c.delta.unsigned_abs());
            let new_tat = if c.delta >= 0 {
                tat + step
            } else {
                tat.checked_sub(step).unwrap_or(now).max(now)
            };
            set(&mut shard, &c.bucket, new_tat);
        }
    }
}

impl MemoryLimiter {
    /// Every budget's counters (for the spend file).
    pub fn budget_counters(&self) -> Vec<BudgetCounter> {
        self.budgets.snapshot()
    }

    /// Adds saved budget counters (the spend file's, at start).
    pub fn restore_budgets(&self, counters: &[BudgetCounter]) {
        self.budgets.restore(counters);
    }
}

impl Limiter for MemoryLimiter {
    fn consume<'a>(&'a self, claims: &'a [Claim]) -> Pending<'a, Vec<Decision>> {
        Box::pin(std::future::ready(Ok(self.consume_now(claims))))
    }

    fn correct<'a>(&'a self, corrections: &'a [Correction]) -> Pending<'a, ()> {
        self.correct_now(corrections);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Stores a bucket's time, cloning the bucket only for a new one.
fn set(shard: &mut Shard, bucket: &Bucket, tat: Instant) {
    match shard.get_mut(bucket) {
        Some(v) => *v = tat,
        None => {
            shard.insert(bucket.clone(), tat);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rate_limit::Kind;

    const L: Limit = Limit {
        per_minute: 60,
        burst: 3,
    };

    fn claim(subject: Subject, kind: Kind, limit: Limit, cost: u64) -> Claim {
        Claim {
            bucket: Bucket { subject, kind },
            limit,
            cost,
            lease: None,
            window: None,
        }
    }

    fn ip(s: &str) -> Subject {
        Subject::Address(s.parse().unwrap())
    }

    fn key() -> Subject {
        Subject::Key(Arc::from("k"))
    }

    fn one(l: &MemoryLimiter, c: &Claim) -> Decision {
        l.consume_now(std::slice::from_ref(c))[0]
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = MemoryLimiter::default();
        let c = claim(ip("192.0.2.1"), Kind::Requests, L, 1);
        for left in [2, 1, 0] {
            let d = one(&l, &c);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = one(&l, &c);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(one(&l, &c).allowed, "one per second refills");
        assert!(!one(&l, &c).allowed);
        let other = claim(ip("192.0.2.2"), Kind::Requests, L, 1);
        assert!(one(&l, &other).allowed, "buckets are separate");
        let tokens = claim(ip("192.0.2.1"), Kind::Tokens, L, 1);
        assert!(one(&l, &tokens).allowed, "so are kinds");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_claim_takes_nothing_from_the_others() {
        let l = MemoryLimiter::default();
        let tokens = Limit {
            per_minute: 600,
            burst: 600,
        };
        let batch = |cost| {
            vec![
                claim(ip("192.0.2.1"), Kind::Requests, L, 1),
                claim(key(), Kind::Requests, L, 1),
                claim(key(), Kind::Tokens, tokens, cost),
            ]
        };
        let first = l.consume_now(&batch(500));
        assert!(first.iter().all(|d| d.allowed));
        assert_eq!(
            first.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 2, 100]
        );
        let refused = l.consume_now(&batch(200));
        assert!(!refused[2].allowed, "200 tokens do not fit in 100");
        assert!(refused[2].retry_after > Duration::ZERO);
        assert!(refused[0].allowed && refused[1].allowed, "these alone fit");
        assert_eq!(
            [
                refused[0].remaining,
                refused[1].remaining,
                refused[2].remaining
            ],
            [2, 2, 100],
            "and report their buckets as they are"
        );
        // Nothing was taken: two more requests fit in each request bucket.
        assert!(l.consume_now(&batch(50)).iter().all(|d| d.allowed));
        let last = l.consume_now(&batch(50));
        assert!(last.iter().all(|d| d.allowed));
        assert_eq!(last[0].remaining, 0);
        assert_eq!(last[1].remaining, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_bucket_twice_in_a_batch_counts_twice() {
        let l = MemoryLimiter::default();
        let c = claim(key(), Kind::Requests, L, 2);
        let d = l.consume_now(&[c.clone(), c.clone()]);
        assert!(d[0].allowed && !d[1].allowed, "2 + 2 > 3");
        assert_eq!(one(&l, &c).remaining, 1, "and the refusal took nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn corrections_reconcile_costs() {
        let l = MemoryLimiter::default();
        let tokens = Limit {
            per_minute: 600,
            burst: 600,
        };
        let take = |cost| one(&l, &claim(key(), Kind::Tokens, tokens, cost)).allowed;
        let correct = |delta| {
            l.correct_now(&[Correction {
                bucket: Bucket {
                    subject: key(),
                    kind: Kind::Tokens,
                },
                limit: tokens,
                delta,
                lease: None,
                window: None,
            }])
        };
        assert!(take(500));
        assert!(!take(200));
        correct(-400); // the real usage was 100
        assert!(take(200));
        correct(300);
        assert!(!take(200));
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_admissions_here_allowed_and_not_stored() {
        let l = MemoryLimiter::default();
        let lease = claim(
            key(),
            Kind::Lease,
            Limit {
                per_minute: 0,
                burst: 1,
            },
            1,
        );
        let rate = claim(key(), Kind::Requests, L, 1);
        for _ in 0..3 {
            assert!(l
                .consume_now(&[lease.clone(), rate.clone()])
                .iter()
                .all(|d| d.allowed));
        }
        assert_eq!(l.len(), 1, "only the requests bucket");
        l.correct_now(&[Correction {
            bucket: lease.bucket.clone(),
            limit: lease.limit,
            delta: -1,
            lease: None,
            window: None,
        }]);
        assert_eq!(l.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_forgotten() {
        let l = MemoryLimiter::default();
        for i in 0..(SWEEP_AT * SHARDS * 2) as u32 {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            one(
                &l,
                &claim(Subject::Address(addr.into()), Kind::Requests, L, 1),
            );
            if i % 1000 == 0 {
                tokio::time::advance(Duration::from_secs(5)).await;
            }
        }
        assert!(l.len() < SWEEP_AT * SHARDS + SHARDS, "bounded: {}", l.len());
    }
}
