//! The running limiter ([`RateLimits`]: a backend and its reconciler) and
//! the token reservation a request holds until its end.
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

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{Bucket, Claim, Correction, Decision, Limit, Limiter, LimiterError, MemoryLimiter};
use crate::shutdown::Shutdown;

/// Corrections waiting for the task, at most.
const QUEUE: usize = 4096;
/// Corrections applied in one backend call, at most.
const BATCH: usize = 256;

/// The limiter the gateway runs: kept across reloads (its buckets and its
/// reconciler with it).
#[derive(Debug)]
pub struct RateLimits {
    backend: Backend,
    corrections: mpsc::Sender<Correction>,
    /// Taken by the reconciler when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Correction>>>,
}

/// The in-memory backend is called directly (its answer is immediate: no
/// boxed future on the request path); any other through the seam.
#[derive(Debug, Clone)]
enum Backend {
    Memory(Arc<MemoryLimiter>),
    Shared(Arc<dyn Limiter>),
}

impl Backend {
    fn dyn_limiter(&self) -> Arc<dyn Limiter> {
        match self {
            Backend::Memory(m) => m.clone(),
            Backend::Shared(s) => s.clone(),
        }
    }
}

impl RateLimits {
    /// The embedded limiter (the default).
    pub fn in_memory(limiter: Arc<MemoryLimiter>) -> RateLimits {
        RateLimits::with(Backend::Memory(limiter))
    }

    /// A shared backend (or a test double).
    pub fn new(backend: Arc<dyn Limiter>) -> RateLimits {
        RateLimits::with(Backend::Shared(backend))
    }

    fn with(backend: Backend) -> RateLimits {
        let (corrections, receiver) = mpsc::channel(QUEUE);
        RateLimits {
            backend,
            corrections,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// See [`Limiter::consume`].
    pub async fn consume(&self, claims: &[Claim]) -> Result<Vec<Decision>, LimiterError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.consume_now(claims)),
            Backend::Shared(s) => s.consume(claims).await,
        }
    }

    /// Reserves `claim` (already taken): corrected to the real usage when the
    /// guard drops after [`TokenReservation::reconcile`].
    pub fn reservation(&self, claim: &Claim) -> TokenReservation {
        let to = match &self.backend {
            Backend::Memory(m) => Corrector::Memory(m.clone()),
            Backend::Shared(_) => Corrector::Queue(self.corrections.clone()),
        };
        TokenReservation {
            to,
            bucket: claim.bucket.clone(),
            limit: claim.limit,
            reserved: claim.cost,
            used: None,
        }
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
            let backend = self.backend.dyn_limiter();
            // Until exit, not the drain: requests that end during the drain
            // still send their corrections.
            shutdown.spawn_until_exit(reconciler(backend, rx, shutdown.clone()));
        }
    }
}

/// Applies corrections as they come, in batches, until the process exits
/// (the drain is over by then: every request has ended and sent its own).
async fn reconciler(backend: Arc<dyn Limiter>, mut rx: mpsc::Receiver<Correction>, sd: Shutdown) {
    let mut batch = Vec::with_capacity(BATCH);
    // Registered once: a correction per request must not look its series up.
    let counted = Counted {
        applied: crate::metrics::RATE_LIMIT_CORRECTIONS.with(["applied"]),
        failed: crate::metrics::RATE_LIMIT_CORRECTIONS.with(["failed"]),
    };
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
            }
            _ = sd.exiting() => {
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    apply(&*backend, &mut batch, &counted).await;
                }
                return;
            }
        }
        apply(&*backend, &mut batch, &counted).await;
    }
}

/// The corrections counter's series the reconciler records.
struct Counted {
    applied: metrics::Counter,
    failed: metrics::Counter,
}

async fn apply(backend: &dyn Limiter, batch: &mut Vec<Correction>, counted: &Counted) {
    let counter = match backend.correct(batch).await {
        Ok(()) => &counted.applied,
        Err(e) => {
            super::warn_backend_error("corrections", &e);
            &counted.failed
        }
    };
    counter.increment(batch.len() as u64);
    batch.clear();
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
        }
    }

    /// What is left in the bucket (a claim of nothing takes nothing).
    fn left(l: &MemoryLimiter) -> u64 {
        l.consume_now(&[tokens(0)])[0].remaining
    }

    /// Lets the other tasks run until `done` (bounded; no sleeping).
    async fn settles(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if done() {
                return true;
            }
            tokio::task::yield_now().await;
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
        assert!(limits.consume(std::slice::from_ref(&claim)).await.unwrap()[0].allowed);
        let reservation = limits.reservation(&claim);
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
        assert!(limits.consume(std::slice::from_ref(&more)).await.unwrap()[0].allowed);
        limits.reservation(&more).reconcile(None);
        drop(limits.reservation(&more));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
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
        assert!(limits.consume(std::slice::from_ref(&claim)).await.unwrap()[0].allowed);
        assert_eq!(left(&memory), 100);
        limits.reservation(&claim).reconcile(Some(12));
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
}
