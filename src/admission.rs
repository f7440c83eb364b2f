//! Admission: bounded concurrency with a bounded FIFO wait queue and a
//! maximum wait, gateway-wide and per provider; and a per-client cap so one
//! client cannot fill the queue. When full, or when the wait runs out, the
//! request is shed at once (503 with `Retry-After`), never piled up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The wait queue is at its bound.
    QueueFull,
    /// The slot did not come within the maximum wait.
    Timeout,
    /// This client already has its share in flight or queued.
    ClientLimit,
}

impl Shed {
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::Timeout => "wait_timeout",
            Shed::ClientLimit => "client_limit",
        }
    }
}

/// A bounded semaphore with a bounded FIFO queue (tokio's semaphore is fair).
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    /// The configured concurrency (what [`Gate::resize`] changes).
    limit: AtomicUsize,
    /// Slots to retire as their holders give them back: the limit was
    /// lowered while they were in use.
    debt: Arc<AtomicUsize>,
    waiting: AtomicUsize,
    max_queue: AtomicUsize,
    max_wait: std::sync::Mutex<Duration>,
    depth: Gauge,
    wait: Histogram,
    sheds: [Counter; 2],
}

/// Holding one admits one request; dropped when its response ends.
#[derive(Debug)]
pub struct Permit {
    slot: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        // A lowered limit is reached as slots come back, not by cutting
        // the requests that hold them.
        let retire = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if retire {
            slot.forget();
        }
    }
}

impl Gate {
    /// `scope` labels the metrics (`gateway` or a provider name).
    pub fn new(scope: &str, max_concurrent: usize, max_queue: usize, max_wait: Duration) -> Self {
        let max_concurrent = max_concurrent.min(Semaphore::MAX_PERMITS);
        Gate {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            limit: AtomicUsize::new(max_concurrent),
            debt: Arc::default(),
            waiting: AtomicUsize::new(0),
            max_queue: AtomicUsize::new(max_queue),
            max_wait: std::sync::Mutex::new(max_wait),
            depth: crate::metrics::ADMISSION_QUEUE_DEPTH.with([scope.to_string()]),
            wait: crate::metrics::ADMISSION_WAIT.with([scope.to_string()]),
            sheds: [Shed::QueueFull, Shed::Timeout].map(|r| {
                crate::metrics::ADMISSION_SHED.with([scope, r.as_str()].map(str::to_string))
            }),
        }
    }

    /// Applies new limits to the running gate (a reload): the requests in
    /// it and in its queue stay, a raised limit admits queued ones at once,
    /// a lowered one is reached as requests end.
    pub fn resize(&self, max_concurrent: usize, max_queue: usize, max_wait: Duration) {
        let new = max_concurrent.min(Semaphore::MAX_PERMITS);
        let old = self.limit.swap(new, Ordering::AcqRel);
        if new > old {
            let mut grow = new - old;
            // Cancel retirements still owed before adding slots.
            while grow > 0 {
                let owed = self.debt.load(Ordering::Acquire);
                let pay = owed.min(grow);
                if pay == 0 {
                    break;
                }
                if self
                    .debt
                    .compare_exchange(owed, owed - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    grow -= pay;
                }
            }
            self.slots.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let forgotten = self.slots.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        self.max_queue.store(max_queue, Ordering::Release);
        *self.max_wait.lock().unwrap_or_else(|p| p.into_inner()) = max_wait;
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> Permit {
        Permit {
            slot: Some(slot),
            debt: self.debt.clone(),
        }
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Takes a slot, waiting in line (up to the maximum wait) if none is free.
    pub async fn enter(&self) -> Result<Permit, Shed> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            self.wait.record(0.0);
            return Ok(self.permit(slot));
        }
        // Claim a place in the queue, or shed at once.
        let Some(place) = QueuePlace::claim(self) else {
            self.sheds[0].increment(1);
            return Err(Shed::QueueFull);
        };
        let started = Instant::now();
        let max_wait = *self.max_wait.lock().unwrap_or_else(|p| p.into_inner());
        let got = tokio::time::timeout(max_wait, self.slots.clone().acquire_owned()).await;
        drop(place);
        match got {
            Ok(Ok(slot)) => {
                self.wait.record(started.elapsed().as_secs_f64());
                Ok(self.permit(slot))
            }
            _ => {
                self.sheds[1].increment(1);
                Err(Shed::Timeout)
            }
        }
    }

    /// Takes a slot only if one is free now.
    pub fn try_enter(&self) -> Option<Permit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|slot| self.permit(slot))
    }
}

/// A place in a gate's wait queue: claimed before the wait, given back
/// (count and depth gauge) when dropped — also when the waiting request is
/// cancelled mid-wait.
struct QueuePlace<'a> {
    gate: &'a Gate,
}

impl<'a> QueuePlace<'a> {
    fn claim(gate: &'a Gate) -> Option<Self> {
        gate.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < gate.max_queue.load(Ordering::Acquire)).then_some(w + 1)
            })
            .ok()?;
        gate.depth.increment(1.0);
        Some(QueuePlace { gate })
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::AcqRel);
        self.gate.depth.decrement(1.0);
    }
}

/// Requests per client (key id, else address), admitted or queued.
#[derive(Debug)]
pub struct ClientCaps {
    max: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    shed: Counter,
}

/// A client's place, released when the request ends.
#[derive(Debug)]
pub struct ClientSlot {
    client: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl ClientCaps {
    /// `max` 0 means no cap.
    pub fn new(max: usize) -> Self {
        ClientCaps {
            max,
            counts: Arc::default(),
            shed: crate::metrics::ADMISSION_SHED.with(["client", Shed::ClientLimit.as_str()]),
        }
    }

    /// Takes over the running counts of `old` (a reload): requests admitted
    /// before it still count against their client's share.
    pub fn inherit(&mut self, old: &ClientCaps) {
        self.counts = old.counts.clone();
    }

    /// `cap` overrides the default for this client (a key's own cap).
    pub fn enter(&self, client: &str, cap: Option<usize>) -> Result<Option<ClientSlot>, Shed> {
        let max = cap.unwrap_or(self.max);
        if max == 0 {
            return Ok(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(client.to_string()).or_insert(0);
        if *n >= max {
            self.shed.increment(1);
            return Err(Shed::ClientLimit);
        }
        *n += 1;
        Ok(Some(ClientSlot {
            client: client.to_string(),
            counts: self.counts.clone(),
        }))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                // Idle clients leave no trace: memory stays bounded.
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sheds_when_the_queue_is_full_or_the_wait_runs_out() {
        let gate = Arc::new(Gate::new("test", 1, 1, Duration::from_secs(5)));
        let held = gate.enter().await.unwrap();
        let g = gate.clone();
        let queued = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(gate.depth(), 1);
        assert_eq!(gate.enter().await.unwrap_err(), Shed::QueueFull);
        drop(held);
        assert_eq!(
            queued.await.unwrap(),
            Ok(()),
            "the queued request gets the slot"
        );

        let _held = gate.enter().await.unwrap();
        let started = Instant::now();
        assert_eq!(gate.enter().await.unwrap_err(), Shed::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let gate = Arc::new(Gate::new("test-cancel", 1, 2, Duration::from_secs(60)));
        let held = gate.enter().await.unwrap();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(gate.depth(), 1, "queued");
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(gate.depth(), 0, "the cancelled waiter left the queue");

        // The whole queue is usable again: max_queue waiters, then a shed.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let g = gate.clone();
                tokio::spawn(async move { g.enter().await.map(|_| ()) })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.depth(), 2);
        assert_eq!(gate.enter().await.unwrap_err(), Shed::QueueFull);
        drop(held);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(gate.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn resizing_keeps_the_requests_in_it_and_in_its_queue() {
        let gate = Arc::new(Gate::new("test-resize", 1, 4, Duration::from_secs(60)));
        let held = gate.enter().await.unwrap();
        let g = gate.clone();
        let queued = tokio::spawn(async move { g.enter().await });
        tokio::task::yield_now().await;
        assert_eq!(gate.depth(), 1);
        // A raised limit admits the queued request at once.
        gate.resize(2, 4, Duration::from_secs(60));
        let second = queued.await.unwrap().expect("admitted by the new limit");
        assert_eq!(gate.depth(), 0);
        // Lowered below what is in use: no new request until enough end.
        gate.resize(1, 0, Duration::from_secs(60));
        assert!(gate.try_enter().is_none());
        drop(held);
        assert!(gate.try_enter().is_none(), "the returned slot was retired");
        drop(second);
        let third = gate.try_enter().expect("one slot, free again");
        assert_eq!(
            gate.enter().await.unwrap_err(),
            Shed::QueueFull,
            "max_queue 0 applies"
        );
        drop(third);
        // Raised again: the owed retirements are cancelled first.
        gate.resize(3, 4, Duration::from_secs(60));
        let all: Vec<_> = (0..3).map(|_| gate.try_enter()).collect();
        assert!(all.iter().all(Option::is_some));
        assert!(gate.try_enter().is_none());
    }

    #[test]
    fn client_cap_and_cleanup() {
        let caps = ClientCaps::new(2);
        let a = caps.enter("a", None).unwrap();
        let _b = caps.enter("a", None).unwrap();
        assert_eq!(caps.enter("a", None).unwrap_err(), Shed::ClientLimit);
        assert!(caps.enter("b", None).is_ok(), "other clients unaffected");
        assert!(caps.enter("k", Some(1)).is_ok(), "a key's own cap");
        drop(a);
        assert!(caps.enter("a", None).is_ok());
        drop(_b);
        assert!(caps.counts.lock().unwrap().len() <= 1);
    }
}
