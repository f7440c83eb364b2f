//! The running limiter ([`RateLimits`]: a backend, its failure policy and
//! its reconciler), the token reservation a request holds until its end,
//! and the concurrency lease (see [`super::lease`]).
//!
//! A reservation is a guard: when it drops, its correction (the real usage
//! less the estimate) is applied. For the in-memory backend that is one
//! bucket updated under its shard's lock, at once (so the same client's next
//! request sees the tokens given back); for a shared backend it goes over a
//! bounded channel to a tracked task that applies corrections in batches.
//! Nothing in `Drop` awaits or waits on the network: a full or closed channel
//! drops the correction (the estimate stays), counted in
//! `h3gate_rate_limit_corrections_total{result="dropped"}`. The task runs
//! until the process exits, not just until the drain, so requests that end
//! during the drain are corrected too; at exit it applies what is queued.
//! With leases it also renews, every third of their TTL, the ones this
//! replica holds.
//!
//! A shared backend that cannot answer (`[cluster] on_redis_error`): with
//! `local` a local [`MemoryLimiter`] decides — one that mirrors the shared
//! buckets as the shared backend answers, so it starts from where they
//! were — and the request's reservation is corrected there; with `deny` the
//! request is refused. Either way counted in
//! `h3gate_cluster_fallbacks_total{what="rate_limit"}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

mod task;

use super::lease::{Claiming, Lease, Live};
use super::{Bucket, Claim, Correction, Decision, Limit, Limiter, LimiterError, MemoryLimiter};
use crate::config::OnRedisError;
use crate::shutdown::Shutdown;
use task::{Counted, Reconciler};

/// Corrections waiting for the task, at most.
const QUEUE: usize = 4096;

/// The limiter the gateway runs: kept across reloads (its buckets and its
/// reconciler with it).
#[derive(Debug)]
pub struct RateLimits {
    backend: Backend,
    corrections: mpsc::Sender<Correction>,
    /// Taken by the reconciler when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Correction>>>,
    /// The leases held now (renewed by the reconciler).
    live: Arc<Live>,
}

/// The in-memory backend is called directly (its answer is immediate: no
/// boxed future on the request path); any other through the seam.
#[derive(Debug)]
enum Backend {
    Memory(Arc<MemoryLimiter>),
    Shared(Shared),
}

#[derive(Debug)]
struct Shared {
    limiter: Arc<dyn Limiter>,
    /// `on_redis_error = "local"`: what decides while `limiter` cannot.
    fallback: Option<Arc<MemoryLimiter>>,
    /// Leases are claimed, and renewed this often.
    renew_every: Option<Duration>,
    /// `h3gate_cluster_fallbacks_total{what="rate_limit"}`, this policy's.
    fell_back: metrics::Counter,
}

/// One decision for a request's claims, and where it was made.
#[derive(Debug)]
pub struct Decided {
    /// One per claim, in order.
    pub decisions: Vec<Decision>,
    /// Made by a local limiter (the embedded one, or the fallback while the
    /// shared one cannot answer): corrected there, and no lease was taken.
    pub local: bool,
}

impl Backend {
    fn dyn_limiter(&self) -> Arc<dyn Limiter> {
        match self {
            Backend::Memory(m) => m.clone(),
            Backend::Shared(s) => s.limiter.clone(),
        }
    }
}

impl RateLimits {
    /// The embedded limiter (the default).
    pub fn in_memory(limiter: Arc<MemoryLimiter>) -> RateLimits {
        RateLimits::with(Backend::Memory(limiter))
    }

    /// A shared backend without leases that fails closed (a test double).
    pub fn new(backend: Arc<dyn Limiter>) -> RateLimits {
        RateLimits::shared(backend, OnRedisError::Deny, None)
    }

    /// A shared backend with its failure policy; with `lease_ttl`, keys'
    /// concurrency is claimed as leases, renewed every third of it.
    pub fn shared(
        backend: Arc<dyn Limiter>,
        policy: OnRedisError,
        lease_ttl: Option<Duration>,
    ) -> RateLimits {
        let (fallback, label) = match policy {
            OnRedisError::Local => (Some(Arc::default()), "local"),
            OnRedisError::Deny => (None, "deny"),
        };
        RateLimits::with(Backend::Shared(Shared {
            limiter: backend,
            fallback,
            renew_every: lease_ttl.map(|t| t / 3),
            fell_back: crate::metrics::CLUSTER_FALLBACKS.with(["rate_limit", label]),
        }))
    }

    fn with(backend: Backend) -> RateLimits {
        let (corrections, receiver) = mpsc::channel(QUEUE);
        RateLimits {
            backend,
            corrections,
            receiver: Mutex::new(Some(receiver)),
            live: Arc::default(),
        }
    }

    /// Whether keys' concurrency is claimed here (as leases), not only at
    /// admission.
    pub fn leases(&self) -> bool {
        matches!(&self.backend, Backend::Shared(s) if s.renew_every.is_some())
    }

    /// The in-memory backend, when it is the one deciding (one node): its
    /// budget counters are saved in the spend file.
    pub fn memory(&self) -> Option<&Arc<MemoryLimiter>> {
        match &self.backend {
            Backend::Memory(m) => Some(m),
            Backend::Shared(_) => None,
        }
    }

    /// Leases this replica holds now.
    pub fn leases_held(&self) -> usize {
        self.live.len()
    }

    /// See [`Limiter::consume`]; a shared backend's failure is the policy's.
    pub async fn consume(&self, claims: &[Claim]) -> Result<Decided, LimiterError> {
        let s = match &self.backend {
            Backend::Memory(m) => {
                return Ok(Decided {
                    decisions: m.consume_now(claims),
                    local: true,
                })
            }
            Backend::Shared(s) => s,
        };
        // Only built when leases are on: a guard built and dropped would
        // queue a release for a claim never made.
        let claiming = self
            .leases()
            .then(|| Claiming::of(claims, &self.corrections))
            .flatten();
        let answer = s.limiter.consume(claims).await.and_then(|d| {
            if d.len() == claims.len() {
                Ok(d)
            } else {
                Err(LimiterError(format!(
                    "{} decisions for {} claims",
                    d.len(),
                    claims.len()
                )))
            }
        });
        match (answer, &s.fallback) {
            (Ok(decisions), fallback) => {
                if let Some(c) = claiming {
                    c.answered();
                }
                if let Some(f) = fallback {
                    f.mirror(claims, &decisions);
                }
                Ok(Decided {
                    decisions,
                    local: false,
                })
            }
            (Err(e), fallback) => {
                super::warn_backend_error("decisions", &e);
                s.fell_back.increment(1);
                let f = fallback.as_ref().ok_or(e)?;
                Ok(Decided {
                    decisions: f.consume_now(claims),
                    local: true,
                })
            }
        }
    }

    /// Reserves `claim` (taken as `decided` says): corrected to the real
    /// usage, where it was taken, when the guard drops after
    /// [`TokenReservation::reconcile`].
    pub fn reservation(&self, claim: &Claim, decided: &Decided) -> TokenReservation {
        let to = match &self.backend {
            Backend::Memory(m) => Corrector::Memory(m.clone()),
            Backend::Shared(Shared {
                fallback: Some(f), ..
            }) if decided.local => Corrector::Memory(f.clone()),
            Backend::Shared(_) => Corrector::Queue(self.corrections.clone()),
        };
        TokenReservation {
            to,
            bucket: claim.bucket.clone(),
            limit: claim.limit,
            reserved: claim.cost,
            used: None,
            window: claim.window,
        }
    }

    /// The lease `claim` took (shared decisions only), held until it drops.
    pub fn lease(&self, claim: &Claim, decided: &Decided) -> Option<Lease> {
        let id = claim.lease.filter(|_| !decided.local && self.leases())?;
        Some(Lease::hold(
            id,
            claim.bucket.clone(),
            claim.limit,
            self.live.clone(),
            self.corrections.clone(),
        ))
    }

    /// Starts the reconciler (once: a no-op for a limiter kept across a
    /// reload, whose reconciler runs).
    pub fn start(&self, shutdown: &Shutdown) {
        let taken = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = taken {
            let task = Reconciler {
                backend: self.backend.dyn_limiter(),
                live: self.live.clone(),
                renew_every: match &self.backend {
                    Backend::Shared(s) => s.renew_every,
                    Backend::Memory(_) => None,
                },
                counted: Counted {
                    applied: crate::metrics::RATE_LIMIT_CORRECTIONS.with(["applied"]),
                    failed: crate::metrics::RATE_LIMIT_CORRECTIONS.with(["failed"]),
                },
            };
            // Until exit, not the drain: requests that end during the drain
            // still send their corrections.
            shutdown.spawn_until_exit(task.run(rx, shutdown.clone()));
        }
    }
}

/// Where a reservation's correction goes.
#[derive(Debug)]
enum Corrector {
    /// Applied at once: one bucket updated under its shard's lock, as short
    /// as the take on the request path, so the next request (the same
    /// client's, a moment later) already sees the tokens given back.
    Memory(Arc<MemoryLimiter>),
    /// Queued for the reconciler: a shared backend is a network call away.
    Queue(mpsc::Sender<Correction>),
}

/// A request's reservation of tokens: the estimate was taken; the real
/// usage corrects it when the guard drops.
#[derive(Debug)]
pub struct TokenReservation {
    to: Corrector,
    bucket: Bucket,
    limit: Limit,
    reserved: u64,
    /// The real usage, once known.
    used: Option<u64>,
    /// A budget's window as claimed (its correction goes to that slot).
    window: Option<super::Window>,
}

impl TokenReservation {
    /// Corrects the reservation to what the response really used (`None`:
    /// unknown, the estimate stays).
    pub fn reconcile(mut self, used: Option<u64>) {
        self.used = used;
    }
}

impl Drop for TokenReservation {
    fn drop(&mut self) {
        let Some(used) = self.used else { return };
        let delta = i64::try_from(used).unwrap_or(i64::MAX) - self.reserved as i64;
        if delta == 0 {
            return;
        }
        let correction = Correction {
            bucket: self.bucket.clone(),
            limit: self.limit,
            delta,
            lease: None,
            window: self.window,
        };
        let queue = match &self.to {
            Corrector::Memory(m) => return m.correct_now(std::slice::from_ref(&correction)),
            Corrector::Queue(queue) => queue,
        };
        if queue.try_send(correction).is_err() {
            crate::metrics::RATE_LIMIT_CORRECTIONS
                .with(["dropped"])
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Method;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::access::Ending;
    use crate::config::OnRedisError;
    use crate::exchange::{Body, BodyError, Protocol};
    use crate::rate_limit::{Kind, MemoryLimiter, Subject};

    const TOKENS: Limit = Limit {
        per_minute: 600,
        burst: 600,
    };

    fn tokens(cost: u64) -> Claim {
        Claim {
            bucket: Bucket {
                subject: Subject::Key(Arc::from("k")),
                kind: Kind::Tokens,
            },
            limit: TOKENS,
            cost,
            lease: None,
            window: None,
        }
    }

    /// What is left in the bucket (a claim of nothing takes nothing).
    fn left(l: &MemoryLimiter) -> u64 {
        l.consume_now(&[tokens(0)])[0].remaining
    }

    /// Lets the other tasks run until `done` (bounded; on the paused
    /// clock, so the reconciler's short wait for more corrections passes).
    async fn settles(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if done() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        done()
    }

    /// A limiter with 500 of its 600 tokens reserved, and its reservation;
    /// the memory backend behind the seam, as a shared backend is (its
    /// corrections go through the reconciler).
    async fn reserved() -> (Arc<MemoryLimiter>, RateLimits, TokenReservation) {
        let memory = Arc::new(MemoryLimiter::default());
        let limits = RateLimits::new(memory.clone());
        let claim = tokens(500);
        let decided = limits.consume(std::slice::from_ref(&claim)).await.unwrap();
        assert!(decided.decisions[0].allowed && !decided.local);
        let reservation = limits.reservation(&claim, &decided);
        assert_eq!(left(&memory), 100);
        (memory, limits, reservation)
    }

    #[tokio::test(start_paused = true)]
    async fn the_reconciler_applies_a_dropped_reservations_correction() {
        let (memory, limits, reservation) = reserved().await;
        reservation.reconcile(Some(100));
        assert_eq!(left(&memory), 100, "the drop only queued the correction");
        let shutdown = Shutdown::new(CancellationToken::new());
        limits.start(&shutdown);
        assert!(settles(|| left(&memory) == 500).await, "{}", left(&memory));

        // Unknown usage (a request cut short before any): the estimate stays.
        let more = tokens(100);
        let decided = limits.consume(std::slice::from_ref(&more)).await.unwrap();
        assert!(decided.decisions[0].allowed);
        limits.reservation(&more, &decided).reconcile(None);
        drop(limits.reservation(&more, &decided));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(left(&memory), 400);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_the_client_left_is_corrected_with_the_usage_seen() {
        let (memory, limits, reservation) = reserved().await;
        let shutdown = Shutdown::new(CancellationToken::new());
        limits.start(&shutdown);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let mut end = Ending::begin(
            "req-1".into(),
            Protocol::Http3,
            Method::POST,
            "/v1/chat/completions".into(),
            client,
            Arc::default(),
        );
        end.claims.tokens = Some(reservation);
        let record = end.record().clone();
        // One chunk, then an upstream that never ends.
        let chunk: Result<Frame<Bytes>, BodyError> = Ok(Frame::data(Bytes::from("data: {}\n\n")));
        let frames = futures_util::stream::iter([chunk]).chain(futures_util::stream::pending());
        let resp = end.respond(http::Response::new(Body::new(StreamBody::new(frames))));
        let mut body = resp.into_body();
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        record.set_usage(7, 5);
        drop(body); // the client went away mid-stream
        assert!(settles(|| left(&memory) == 588).await, "{}", left(&memory));
    }

    #[tokio::test(start_paused = true)]
    async fn an_in_memory_reservation_is_corrected_as_it_drops() {
        let memory = Arc::new(MemoryLimiter::default());
        let limits = RateLimits::in_memory(memory.clone());
        let claim = tokens(500);
        let decided = limits.consume(std::slice::from_ref(&claim)).await.unwrap();
        assert!(decided.decisions[0].allowed && decided.local);
        assert_eq!(left(&memory), 100);
        limits.reservation(&claim, &decided).reconcile(Some(12));
        // No task has run: the next request already sees the tokens back.
        assert_eq!(left(&memory), 588);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reconciler_outlives_the_drain_and_ends_at_exit() {
        let (memory, limits, reservation) = reserved().await;
        let signal = CancellationToken::new();
        let shutdown = Shutdown::new(signal.clone());
        limits.start(&shutdown);
        limits.start(&shutdown); // a reload's: the running one stays alone
        signal.cancel();
        // It does not hold the drain up...
        assert!(shutdown.drain(std::time::Duration::from_secs(5)).await);
        // ...and a request that ends during the drain is still corrected.
        reservation.reconcile(Some(1));
        assert!(settles(|| left(&memory) > 100).await, "{}", left(&memory));
        let exited = tokio::time::timeout(std::time::Duration::from_secs(3), shutdown.exit());
        assert!(exited.await.is_ok());
    }

    /// A shared backend (memory behind the seam) that can go down, and
    /// records the leases it is told about.
    #[derive(Debug, Default)]
    struct Switch {
        inner: MemoryLimiter,
        down: std::sync::atomic::AtomicBool,
        renewed: Mutex<Vec<crate::rate_limit::LeaseId>>,
        released: Mutex<Vec<crate::rate_limit::LeaseId>>,
    }

    impl Switch {
        fn answer(&self) -> Result<(), LimiterError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(LimiterError("down".into()));
            }
            Ok(())
        }
    }

    impl Limiter for Switch {
        fn consume<'a>(&'a self, claims: &'a [Claim]) -> super::super::Pending<'a, Vec<Decision>> {
            let answer = self.answer().map(|()| self.inner.consume_now(claims));
            Box::pin(std::future::ready(answer))
        }
        fn correct<'a>(&'a self, c: &'a [Correction]) -> super::super::Pending<'a, ()> {
            let ids = c.iter().filter_map(|c| c.lease);
            self.released.lock().unwrap().extend(ids);
            Box::pin(std::future::ready(self.answer()))
        }
        fn renew<'a>(
            &'a self,
            leases: &'a [(Bucket, crate::rate_limit::LeaseId)],
        ) -> super::super::Pending<'a, ()> {
            let ids = leases.iter().map(|(_, id)| *id);
            self.renewed.lock().unwrap().extend(ids);
            Box::pin(std::future::ready(self.answer()))
        }
    }

    fn requests(burst: u64) -> Claim {
        Claim {
            bucket: Bucket {
                subject: Subject::Key(Arc::from("k")),
                kind: Kind::Requests,
            },
            limit: Limit {
                per_minute: 60,
                burst,
            },
            cost: 1,
            lease: None,
            window: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_fallback_starts_from_where_the_shared_buckets_were() {
        let shared = Arc::new(Switch::default());
        let limits = RateLimits::shared(shared.clone(), OnRedisError::Local, None);
        let one = [requests(3)];
        for _ in 0..3 {
            let d = limits.consume(&one).await.unwrap();
            assert!(d.decisions[0].allowed && !d.local);
        }
        shared.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let d = limits.consume(&one).await.unwrap();
        assert!(d.local, "decided locally while the shared backend is down");
        assert!(!d.decisions[0].allowed, "the shared bucket was empty");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(limits.consume(&one).await.unwrap().decisions[0].allowed);
        // Back: the shared backend decides again.
        shared
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(!limits.consume(&one).await.unwrap().local);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_renewed_while_held_and_released_once_dropped() {
        let shared = Arc::new(Switch::default());
        let ttl = std::time::Duration::from_secs(30);
        let limits = RateLimits::shared(shared.clone(), OnRedisError::Local, Some(ttl));
        assert!(limits.leases());
        let id = crate::rate_limit::LeaseId::random();
        let claim = Claim {
            bucket: Bucket {
                subject: Subject::Key(Arc::from("k")),
                kind: Kind::Lease,
            },
            lease: Some(id),
            window: None,
            ..requests(2)
        };
        let decided = limits.consume(std::slice::from_ref(&claim)).await.unwrap();
        let lease = limits.lease(&claim, &decided).expect("a shared lease");
        assert_eq!(limits.leases_held(), 1);
        let shutdown = Shutdown::new(CancellationToken::new());
        limits.start(&shutdown);
        for n in 1..=2 {
            tokio::time::sleep(ttl / 3).await;
            assert!(settles(|| shared.renewed.lock().unwrap().len() == n).await);
        }
        drop(lease);
        assert_eq!(limits.leases_held(), 0);
        assert!(settles(|| shared.released.lock().unwrap().as_slice() == [id]).await);
        tokio::time::sleep(ttl).await;
        assert_eq!(
            shared.renewed.lock().unwrap().len(),
            2,
            "not renewed once given back"
        );

        // Decided locally (the backend down): no lease; admission holds the share.
        shared.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let decided = limits.consume(std::slice::from_ref(&claim)).await.unwrap();
        assert!(decided.local && limits.lease(&claim, &decided).is_none());
    }
}
