//! Live state of one target: its breaker (with the half-open probe as a
//! permit), outstanding requests, latency and `Retry-After` cooldown.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Gauge;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerState, Pass};
use crate::config::BreakerConfig;

/// Live state of one target (shared by every route that names it).
#[derive(Debug)]
pub struct TargetState {
    pub(super) breaker: Mutex<Breaker>,
    breaker_gauge: Gauge,
    /// Requests sent and not yet finished (response body included).
    pub(super) outstanding: AtomicUsize,
    /// EWMA of time to response headers, in microseconds (0: unknown yet).
    ewma_us: AtomicU64,
    /// No attempt before this (an upstream `Retry-After`).
    not_before: Mutex<Option<Instant>>,
}

impl TargetState {
    pub(super) fn new(name: &str, cfg: BreakerConfig) -> Self {
        let g = crate::metrics::BREAKER_STATE.with([name.to_string()]);
        g.set(0.0);
        TargetState {
            breaker: Mutex::new(Breaker::new(cfg)),
            breaker_gauge: g,
            outstanding: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(0),
            not_before: Mutex::new(None),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.lock().state(Instant::now())
    }

    /// Whether a half-open breaker's probe is in flight now.
    pub fn probing(&self) -> bool {
        self.lock().probing()
    }

    /// Lets one request through the breaker (`None`: refused). A half-open
    /// breaker's single probe comes as a [`Probe`], to hold until the
    /// outcome is recorded.
    pub fn pass(self: &Arc<Self>) -> Option<Option<Probe>> {
        match self.lock().allow(Instant::now())? {
            Pass::Free => Some(None),
            Pass::Probe(id) => Some(Some(Probe {
                state: self.clone(),
                id,
            })),
        }
    }

    /// Records an outcome in the breaker (and the latency of a success).
    pub fn record(&self, ok: bool, latency: Option<Duration>) {
        if let Some(l) = latency {
            let new = l.as_micros().min(u128::from(u64::MAX)) as u64;
            let old = self.ewma_us.load(Ordering::Relaxed);
            let ewma = if old == 0 { new } else { (old * 4 + new) / 5 };
            self.ewma_us.store(ewma.max(1), Ordering::Relaxed);
        }
        if let Some(state) = self.lock().record(Instant::now(), ok) {
            self.breaker_gauge.set(state.as_gauge());
            tracing::warn!(breaker = state.as_str(), "circuit breaker changed state");
        }
    }

    pub(super) fn cooling_until(&self) -> Option<Instant> {
        let nb = *self.not_before.lock().unwrap_or_else(|p| p.into_inner());
        nb.filter(|t| *t > Instant::now())
    }

    pub(super) fn cool_down(&self, d: Duration) {
        *self.not_before.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + d);
    }

    /// Outstanding × latency: what least-loaded minimises.
    pub(super) fn cost(&self) -> u128 {
        let out = self.outstanding.load(Ordering::Relaxed) as u128 + 1;
        out * u128::from(self.ewma_us.load(Ordering::Relaxed).max(1))
    }
}

/// A half-open breaker's one probe, held by the request that is it. Dropped
/// before an outcome was recorded (the client went away, the attempt was
/// never sent), it gives the probe back, so a cancelled request cannot wedge
/// the breaker half-open; after an outcome it changes nothing.
#[derive(Debug)]
pub struct Probe {
    state: Arc<TargetState>,
    id: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.state.lock().release(self.id);
    }
}
