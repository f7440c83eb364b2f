//! A circuit breaker per target: closed → open after N consecutive failures
//! or an error ratio over a sliding window; open → half-open after the
//! cooldown, letting exactly one probe through; the probe's success closes
//! it, its failure opens it again. A probe is numbered: the caller holds it
//! as a value that gives the slot back when dropped unrecorded (a cancelled
//! request cannot wedge the breaker half-open), and giving back a probe
//! that is no longer the current one changes nothing.

use tokio::time::Instant;

use crate::config::BreakerConfig;

/// Buckets of the sliding error-ratio window.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// For the `h3gate_breaker_state` gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    consecutive: u32,
    /// (ok, failed) per bucket; `epoch` is the bucket index of `buckets[0]`'s era.
    buckets: [(u32, u32); BUCKETS],
    last_bucket: u64,
    start: Instant,
    open_until: Instant,
    /// The half-open probe in flight, by number.
    probe: Option<u64>,
    /// The number of the last probe handed out.
    probes: u64,
}

/// What [`Breaker::allow`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Closed: any number of requests.
    Free,
    /// Half-open: this request is the one probe, numbered.
    Probe(u64),
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        let now = Instant::now();
        Breaker {
            cfg,
            state: BreakerState::Closed,
            consecutive: 0,
            buckets: [(0, 0); BUCKETS],
            last_bucket: 0,
            start: now,
            open_until: now,
            probe: None,
            probes: 0,
        }
    }

    /// The state as of `now` (an open breaker whose cooldown is over reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Whether a request may go to this target now (`None`: refused). In
    /// half-open, only one probe at a time; the caller must then
    /// [`Breaker::record`] its outcome or [`Breaker::release`] it.
    pub fn allow(&mut self, now: Instant) -> Option<Pass> {
        if self.state == BreakerState::Open && now >= self.open_until {
            self.state = BreakerState::HalfOpen;
            self.probe = None;
        }
        match self.state {
            BreakerState::Closed => Some(Pass::Free),
            BreakerState::Open => None,
            BreakerState::HalfOpen if self.probe.is_some() => None,
            BreakerState::HalfOpen => {
                self.probes += 1;
                self.probe = Some(self.probes);
                Some(Pass::Probe(self.probes))
            }
        }
    }

    /// Gives back probe `id` if it is still the one in flight (its request
    /// ended without an outcome); any other probe is left alone.
    pub fn release(&mut self, id: u64) {
        if self.probe == Some(id) {
            self.probe = None;
        }
    }

    /// Whether a half-open probe is in flight now.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Records an outcome. Returns the new state when it changed.
    pub fn record(&mut self, now: Instant, ok: bool) -> Option<BreakerState> {
        let before = self.state;
        match self.state {
            BreakerState::HalfOpen => {
                self.probe = None;
                if ok {
                    self.close();
                } else {
                    self.open(now);
                }
            }
            BreakerState::Closed => {
                let b = self.bucket(now);
                if ok {
                    self.consecutive = 0;
                    self.buckets[b].0 += 1;
                } else {
                    self.consecutive += 1;
                    self.buckets[b].1 += 1;
                }
                let (oks, fails) = self
                    .buckets
                    .iter()
                    .fold((0u32, 0u32), |a, b| (a.0 + b.0, a.1 + b.1));
                let total = oks + fails;
                let ratio_trips = total >= self.cfg.min_requests.max(1)
                    && f64::from(fails) / f64::from(total) >= self.cfg.error_ratio;
                if self.consecutive >= self.cfg.consecutive_failures || ratio_trips {
                    self.open(now);
                }
            }
            // Outcomes of requests sent before it opened change nothing.
            BreakerState::Open => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.open_until = now + self.cfg.cooldown.get();
        self.probe = None;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive = 0;
        self.buckets = [(0, 0); BUCKETS];
    }

    /// The window bucket for `now`, clearing buckets that aged out.
    fn bucket(&mut self, now: Instant) -> usize {
        let width =
            (self.cfg.window.get() / BUCKETS as u32).max(std::time::Duration::from_millis(1));
        let index = ((now - self.start).as_nanos() / width.as_nanos()) as u64;
        let stale = index.saturating_sub(self.last_bucket).min(BUCKETS as u64);
        for k in 1..=stale {
            self.buckets[((self.last_bucket + k) % BUCKETS as u64) as usize] = (0, 0);
        }
        self.last_bucket = self.last_bucket.max(index);
        (index % BUCKETS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;
    use std::time::Duration as StdDuration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_ratio: 0.5,
            min_requests: 10,
            window: Duration::secs(10),
            cooldown: Duration::secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_stays_open_half_opens_and_closes() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        assert_eq!(b.allow(now), Some(Pass::Free));
        assert_eq!(b.record(now, false), None);
        b.record(now, false);
        assert_eq!(b.record(now, false), Some(BreakerState::Open));
        assert!(b.allow(now).is_none(), "open: refuses");

        tokio::time::advance(StdDuration::from_secs(29)).await;
        assert!(
            b.allow(Instant::now()).is_none(),
            "still open before the cooldown ends"
        );

        tokio::time::advance(StdDuration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        assert!(matches!(b.allow(now), Some(Pass::Probe(_))), "one probe");
        assert!(b.allow(now).is_none(), "only one probe at a time");
        assert_eq!(
            b.record(now, false),
            Some(BreakerState::Open),
            "failed probe reopens"
        );

        tokio::time::advance(StdDuration::from_secs(30)).await;
        let now = Instant::now();
        assert!(b.allow(now).is_some());
        assert_eq!(
            b.record(now, true),
            Some(BreakerState::Closed),
            "successful probe closes"
        );
        assert!(b.allow(now) == Some(Pass::Free) && b.allow(now) == Some(Pass::Free));
    }

    #[tokio::test(start_paused = true)]
    async fn error_ratio_over_the_window() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        // Alternating: never three in a row, but half fail.
        for i in 0..9 {
            b.record(now, i % 2 == 0);
        }
        assert_eq!(b.state(now), BreakerState::Closed, "below min_requests");
        assert_eq!(b.record(now, false), Some(BreakerState::Open));

        // Old failures age out of the window.
        let mut b = Breaker::new(cfg());
        for i in 0..8 {
            b.record(Instant::now(), i % 2 == 0);
        }
        tokio::time::advance(StdDuration::from_secs(11)).await;
        for _ in 0..4 {
            b.record(Instant::now(), true);
        }
        b.record(Instant::now(), false);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn unused_probe_is_released() {
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            b.record(Instant::now(), false);
        }
        tokio::time::advance(StdDuration::from_secs(30)).await;
        let Some(Pass::Probe(first)) = b.allow(Instant::now()) else {
            panic!("half-open: a probe");
        };
        b.release(first);
        let Some(Pass::Probe(second)) = b.allow(Instant::now()) else {
            panic!("the slot came back");
        };
        b.release(first);
        assert!(b.probing(), "a stale probe does not free the current one");
        assert!(b.allow(Instant::now()).is_none());
        b.release(second);
        assert!(!b.probing());
    }
}
