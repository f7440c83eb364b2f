//! Rate limits behind one seam, so a shared backend (Redis) can replace the
//! in-memory one for multi-replica deployments without touching the
//! pipeline.
//!
//! The seam is [`Limiter`]: asynchronous, fallible and batched, like
//! TensorZero's. One [`Limiter::consume`] call decides every limit that
//! applies to a request — its address's requests, its key's requests and
//! tokens — atomically: when any claim is refused, none is taken (a Redis
//! backend does the same in one Lua script). [`Limiter::correct`] applies
//! corrections once the real usage is known; it runs on a background task
//! ([`reconcile`]), never on a request's drop path.
//!
//! The default backend is [`MemoryLimiter`]: GCRA token buckets. With
//! `[cluster]` it is [`RedisLimiter`]: the same GCRA in one Lua script per
//! request on the shared Redis, plus per-key concurrency leases with a TTL
//! ([`Kind::Lease`]); while Redis cannot answer, `[cluster] on_redis_error`
//! applies (a local [`MemoryLimiter`] decides, or the request is refused:
//! see [`RateLimits`]).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use crate::spend::{Unit, Window};

mod budget;
pub mod lease;
mod memory;
pub mod reconcile;
mod redis_limiter;

pub use budget::BudgetCounter;
pub use lease::{Lease, LeaseId};
pub use memory::MemoryLimiter;
pub use reconcile::{Decided, RateLimits, TokenReservation};
pub use redis_limiter::RedisLimiter;

/// A bucket's rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per_minute: u64,
    pub burst: u64,
}

/// Whose limit: a client address, a key (by its SHA-256, never the key),
/// or a team (by its name: budgets only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Address(IpAddr),
    Key(Arc<str>),
    Team(Arc<str>),
}

/// What a claim takes. Each kind is decided in the same atomic call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Requests per minute (cost 1).
    Requests,
    /// Tokens per minute (cost: the estimate; corrected with the real usage).
    Tokens,
    /// A concurrency slot (cost 1, `limit.burst` slots): held until the
    /// request ends and a correction gives it back, or until its TTL runs
    /// out when the replica holding it died. Shared backends only: on one
    /// node (and in the local fallback) a key's concurrency is admission's
    /// (`ClientCaps`), so the memory limiter allows leases without counting.
    Lease,
    /// Spend over a period (`limit.burst` is the budget, `per_minute`
    /// unused): the claim's [`Window`] says which counters it reads and
    /// which it adds to. Reserved from an estimate and reconciled with the
    /// real cost or tokens, like [`Kind::Tokens`]; a claim fits while the
    /// counted spend plus its cost stays within the budget and the budget
    /// is not already spent.
    Budget(Unit, crate::spend::Period),
}

impl Kind {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI's
    /// names); none for leases.
    fn header_names(self) -> Option<[HeaderName; 3]> {
        let n = HeaderName::from_static;
        match self {
            Kind::Requests => Some([
                n("x-ratelimit-limit-requests"),
                n("x-ratelimit-remaining-requests"),
                n("x-ratelimit-reset-requests"),
            ]),
            Kind::Tokens => Some([
                n("x-ratelimit-limit-tokens"),
                n("x-ratelimit-remaining-tokens"),
                n("x-ratelimit-reset-tokens"),
            ]),
            Kind::Lease | Kind::Budget(..) => None,
        }
    }
}

/// One bucket: whose, and of what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    pub subject: Subject,
    pub kind: Kind,
}

impl Bucket {
    /// The name of the limit, for the 429 message and the metric label.
    pub fn scope(&self) -> &'static str {
        match (&self.subject, self.kind) {
            (Subject::Address(_), Kind::Requests) => "ip",
            (Subject::Address(_), Kind::Tokens) => "ip_tokens",
            (Subject::Key(_), Kind::Requests) => "key_requests",
            (Subject::Key(_), Kind::Tokens) => "key_tokens",
            (_, Kind::Lease) => "key_concurrency",
            (Subject::Team(_), Kind::Budget(Unit::Usd, _)) => "team_budget",
            (Subject::Team(_), Kind::Budget(Unit::Tokens, _)) => "team_budget_tokens",
            (_, Kind::Budget(Unit::Usd, _)) => "key_budget",
            (_, Kind::Budget(Unit::Tokens, _)) => "key_budget_tokens",
            (Subject::Team(_), _) => "team",
        }
    }
}

/// Take `cost` from `bucket`, whose limit is `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub bucket: Bucket,
    pub limit: Limit,
    pub cost: u64,
    /// A lease's id (for [`Kind::Lease`] only): what gives it back.
    pub lease: Option<LeaseId>,
    /// Where now falls in a budget's period ([`Kind::Budget`] only).
    pub window: Option<Window>,
}

/// Correct an earlier claim by `delta` (negative gives back; a lease's
/// correction gives the lease `lease` back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub bucket: Bucket,
    pub limit: Limit,
    pub delta: i64,
    pub lease: Option<LeaseId>,
    /// A budget's window as it was claimed: the correction goes to the slot
    /// the reservation was added to.
    pub window: Option<Window>,
}

/// The answer for one claim of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether this claim fits. When any claim of the batch does not,
    /// nothing is taken, and every decision reports its bucket as it is.
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the claim would fit.
    pub retry_after: Duration,
}

/// The backend could not answer (unreachable, timed out, a script error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit backend: {0}")]
pub struct LimiterError(pub String);

/// A backend's answer, later.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, LimiterError>> + Send + 'a>>;

/// A rate-limit backend. Used as `Arc<dyn Limiter>`; the caller does not
/// know which backend it has.
pub trait Limiter: Send + Sync + std::fmt::Debug {
    /// Decides every claim together: one decision per claim, in order. When
    /// any is refused, none is taken from any bucket.
    fn consume<'a>(&'a self, claims: &'a [Claim]) -> Pending<'a, Vec<Decision>>;
    /// Applies corrections of earlier claims (never refused).
    fn correct<'a>(&'a self, corrections: &'a [Correction]) -> Pending<'a, ()>;
    /// Extends the TTL of live leases (a backend without leases has none).
    fn renew<'a>(&'a self, leases: &'a [(Bucket, LeaseId)]) -> Pending<'a, ()> {
        let _ = leases;
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Warns that the backend failed, at most once every 10 s (a failing
/// backend fails for every request).
pub(crate) fn warn_backend_error(what: &'static str, e: &LimiterError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::now_secs();
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %e, "rate-limit backend failed ({what}); warnings paused for 10 s");
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

/// Adds the `x-ratelimit-*` headers of a decision (on every request, so
/// static names and no formatting machinery for the numbers).
pub fn headers(h: &mut HeaderMap, kind: Kind, d: &Decision) {
    let Some([limit, remaining, reset]) = kind.header_names() else {
        return;
    };
    h.insert(limit, HeaderValue::from(d.limit));
    h.insert(remaining, HeaderValue::from(d.remaining));
    if let Ok(v) = HeaderValue::try_from(openai_duration(d.reset)) {
        h.insert(reset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    }
}
