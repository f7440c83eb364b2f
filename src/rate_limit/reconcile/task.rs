//! The reconciler: the task that applies a shared backend's corrections
//! (token reservations corrected, leases given back) in batches, and renews
//! the leases this replica holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::rate_limit::lease::Live;
use crate::rate_limit::{Correction, Limiter};
use crate::shutdown::Shutdown;

/// Corrections applied in one backend call, at most.
const BATCH: usize = 256;
/// How long the first correction of a batch waits for more: at 1,000
/// requests a second a call then carries several (without it, nearly one
/// call per request), and a correction lands this much later.
const LINGER: Duration = Duration::from_millis(5);

/// How often lease releases that failed are tried again, and how many are
/// kept for it (more are left to their TTL).
const RETRY: Duration = Duration::from_millis(250);
const RETRY_MAX: usize = 4096;

/// The reconciler task's parts.
pub(super) struct Reconciler {
    pub(super) backend: Arc<dyn Limiter>,
    pub(super) live: Arc<Live>,
    pub(super) renew_every: Option<Duration>,
    pub(super) counted: Counted,
}

impl Reconciler {
    /// Applies corrections as they come, in batches, and renews the live
    /// leases, until the process exits (the drain is over by then: every
    /// request has ended and sent its own). Lease releases the backend
    /// could not take are tried again every [`RETRY`] until it does (a
    /// release is idempotent), so a slot comes back as soon as Redis does,
    /// not a TTL later.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Correction>, sd: Shutdown) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut retry = Vec::new();
        let every = self.renew_every.unwrap_or(Duration::from_secs(3600));
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retries = tokio::time::interval(RETRY);
        retries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    if batch.len() < BATCH {
                        tokio::time::sleep(LINGER).await;
                        while batch.len() < BATCH && rx.try_recv().map(|c| batch.push(c)).is_ok() {}
                    }
                }
                _ = renewals.tick(), if self.renew_every.is_some() => {
                    // The releases queued so far first: a lease given back
                    // is not in the list, or is released after its renewal.
                    while rx.try_recv().map(|c| batch.push(c)).is_ok() {
                        if batch.len() >= BATCH {
                            self.apply(&mut batch, &mut retry).await;
                        }
                    }
                    self.apply(&mut batch, &mut retry).await;
                    self.renew().await;
                    continue;
                }
                _ = retries.tick(), if !retry.is_empty() => {
                    let n = retry.len().min(BATCH);
                    batch.extend(retry.drain(..n));
                }
                _ = sd.exiting() => {
                    rx.close();
                    batch.append(&mut retry);
                    while !batch.is_empty() || rx.recv_many(&mut batch, BATCH).await > 0 {
                        self.apply(&mut batch, &mut Vec::new()).await;
                    }
                    return;
                }
            }
            self.apply(&mut batch, &mut retry).await;
        }
    }

    /// Applies `batch` (emptied); what failed of it and may be tried again
    /// (lease releases) goes to `retry`, at most [`RETRY_MAX`] of them.
    async fn apply(&self, batch: &mut Vec<Correction>, retry: &mut Vec<Correction>) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.backend.correct(batch).await {
            crate::rate_limit::warn_backend_error("corrections", &e);
            // Every attempt that failed is counted, a retried release too.
            self.counted.failed.increment(batch.len() as u64);
            let room = RETRY_MAX.saturating_sub(retry.len());
            retry.extend(batch.drain(..).filter(|c| c.lease.is_some()).take(room));
            batch.clear();
            return;
        }
        self.counted.applied.increment(batch.len() as u64);
        batch.clear();
    }

    async fn renew(&self) {
        let held = self.live.snapshot();
        if held.is_empty() {
            return;
        }
        if let Err(e) = self.backend.renew(&held).await {
            // Renewed at the next tick, or expired if Redis stays away.
            crate::rate_limit::warn_backend_error("lease renewals", &e);
        }
    }
}

/// The corrections counter's series the reconciler records (registered
/// once: a correction per request must not look its series up).
pub(super) struct Counted {
    pub(super) applied: metrics::Counter,
    pub(super) failed: metrics::Counter,
}
