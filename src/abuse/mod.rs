//! Abuse control: too many failed authentications or malformed requests
//! from one address within a window → that address is denied for a while
//! (a TTL, never forever). Denies persist atomically, so a restart keeps
//! them, and can be listed and lifted through the admin API. The gateway's
//! own 429s never count.
//!
//! Persisting (write, fsync, rename) happens on a background writer task,
//! never on the request path: a change only signals the writer, and a burst
//! of changes is coalesced into one write of the latest list. Without a
//! running writer (the CLI, or after the drain has flushed it) a change is
//! written at once.
//!
//! One `Abuse` lives for the whole process: a reload hands the running one
//! its new settings ([`Abuse::reconfigure`]), so counters and denies stay.
//!
//! In a cluster the denies are shared through Redis ([`shared`]): a deny
//! on one replica is enforced by every replica within a poll, with its
//! TTL, and the admin API lists and lifts them from any replica. The check
//! stays a lookup in memory; the failure counting that trips a deny stays
//! per replica (N replicas let an address fail up to N × `max_failures`
//! times before the first of them denies it — everywhere).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::sync::{now_ms, Sharing};
use crate::config::AbuseConfig;
use crate::files::write_atomic;
use crate::shutdown::Shutdown;

/// Failure counters kept at most; older windows are dropped first.
const MAX_TRACKED: usize = 100_000;

mod shared;

/// One address's deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deny {
    /// Its end, for this process.
    until: Instant,
    /// Its end as Unix time in ms (the file, Redis).
    until_ms: u64,
    /// When it was made (Unix ms; 0: unknown, as when loaded from the
    /// file): a lift made later wins over it in Redis.
    made_ms: u64,
}

type Denied = HashMap<IpAddr, Deny>;

/// A change Redis lacks (in a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Deny(Deny),
    /// Lifted at (Unix ms).
    Lift(u64),
}

/// The denies, and the changes Redis lacks.
#[derive(Debug, Default)]
struct Denies {
    map: Denied,
    unshared: HashMap<IpAddr, Change>,
}

#[derive(Debug)]
pub struct Abuse {
    cfg: RwLock<AbuseConfig>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    denied: Mutex<Denies>,
    /// The link to the cluster's Redis, once [`Abuse::share`] ran.
    link: shared::Link,
    /// Wakes the writer; capacity one, so pending changes coalesce.
    writer: OnceLock<mpsc::Sender<()>>,
    /// Writes of the state file so far.
    writes: AtomicU64,
}

impl Abuse {
    /// Loads persisted denies that have not expired yet.
    pub fn new(cfg: &AbuseConfig) -> Abuse {
        Abuse {
            cfg: RwLock::new(cfg.clone()),
            failures: Mutex::new(HashMap::new()),
            denied: Mutex::new(Denies {
                map: cfg.state_file.as_deref().map(load).unwrap_or_default(),
                unshared: HashMap::new(),
            }),
            link: shared::Link::default(),
            writer: OnceLock::new(),
            writes: AtomicU64::new(0),
        }
    }

    fn cfg(&self) -> std::sync::RwLockReadGuard<'_, AbuseConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner())
    }

    fn denied(&self) -> std::sync::MutexGuard<'_, Denies> {
        self.denied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies reloaded settings, keeping the counters and the deny list.
    /// `fresh` is the state built from the new configuration: when the state
    /// file changed, the denies it holds are added, and the whole list is
    /// written to the new file.
    pub fn reconfigure(&self, cfg: &AbuseConfig, fresh: &Abuse) {
        let moved = {
            let mut current = self.cfg.write().unwrap_or_else(|p| p.into_inner());
            let moved = current.state_file != cfg.state_file;
            *current = cfg.clone();
            moved
        };
        if moved {
            let loaded = std::mem::take(&mut fresh.denied().map);
            for (ip, entry) in loaded {
                let longer = self
                    .denied()
                    .map
                    .get(&ip)
                    .is_none_or(|e| entry.until > e.until);
                if longer {
                    self.insert(ip, entry);
                }
            }
            self.persist();
        }
    }

    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let mut denied = self.denied();
        match denied.map.get(&ip) {
            Some(d) if d.until > Instant::now() => true,
            Some(_) => {
                denied.map.remove(&ip);
                drop(denied);
                self.persist();
                false
            }
            None => false,
        }
    }

    /// Counts a failure; returns true when it starts a deny.
    pub fn failure(&self, ip: IpAddr) -> bool {
        let (max_failures, window, deny_for) = {
            let c = self.cfg();
            if !c.enabled {
                return false;
            }
            (c.max_failures, c.window.get(), c.deny_for.get())
        };
        let now = Instant::now();
        let trip = {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if f.len() >= MAX_TRACKED {
                f.retain(|_, (_, start)| now.duration_since(*start) < window);
            }
            let entry = f.entry(ip).or_insert((0, now));
            if now.duration_since(entry.1) >= window {
                *entry = (0, now);
            }
            entry.0 += 1;
            let trip = entry.0 >= max_failures;
            if trip {
                f.remove(&ip);
            }
            trip
        };
        if trip {
            self.deny(ip, deny_for);
            crate::metrics::ABUSE_DENIES.get().increment(1);
            tracing::warn!(client = %ip, ttl = ?deny_for, "address denied after repeated failures");
        }
        trip
    }

    /// Denies `ip` for `ttl` here at once; in a cluster, everywhere within
    /// a poll (the longest deny of an address wins).
    pub fn deny(&self, ip: IpAddr, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        self.insert(
            ip,
            Deny {
                until: Instant::now() + ttl,
                until_ms: now.saturating_add(ms),
                made_ms: now,
            },
        );
        self.persist();
        self.link.wake();
    }

    /// Sets a deny here (and queues it for Redis, in a cluster).
    fn insert(&self, ip: IpAddr, entry: Deny) {
        let mut d = self.denied();
        d.map.insert(ip, entry);
        if self.link.is_attached() {
            d.unshared.insert(ip, Change::Deny(entry));
        }
    }

    /// Lifts a deny here (and queues the lift for Redis, in a cluster);
    /// false if the address was not denied here.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let removed = {
            let mut d = self.denied();
            if self.link.is_attached() {
                d.unshared.insert(ip, Change::Lift(now_ms()));
            }
            d.map.remove(&ip).is_some()
        };
        if removed {
            self.persist();
        }
        removed
    }

    /// Lifts a deny everywhere: whether it was denied (here or in Redis),
    /// and whether the lift reached Redis.
    pub async fn lift_everywhere(&self, ip: IpAddr) -> (bool, Sharing) {
        let here = self.lift(ip);
        match self.link.flush(self, Some(ip)).await {
            Some((there, sharing)) => (here || there, sharing),
            None => (here, Sharing::Local),
        }
    }

    /// [`Abuse::list`] after catching up with Redis, in a cluster (and
    /// whether it could: `Pending` when only this replica's view is known).
    pub async fn list_everywhere(&self) -> (Vec<(IpAddr, u64)>, Sharing) {
        let sharing = match self.link.flush(self, None).await {
            Some((_, sharing)) => sharing,
            None => Sharing::Local,
        };
        (self.list(), sharing)
    }

    /// Shares the denies through `cluster` (none: stops sharing) until
    /// `stop` or the drain: a deny made here reaches Redis at once (on this
    /// task), and Redis' changes are pulled every 250 ms. Called by every
    /// new state; the last call's cluster is the one used.
    pub fn share(
        self: &Arc<Self>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        stop: tokio_util::sync::CancellationToken,
        shutdown: &Shutdown,
    ) {
        shared::start(self, cluster, stop, shutdown);
    }

    /// Denied addresses and the seconds left.
    pub fn list(&self) -> Vec<(IpAddr, u64)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .denied()
            .map
            .iter()
            .filter(|(_, d)| d.until > now)
            .map(|(ip, d)| (*ip, d.until.duration_since(now).as_secs()))
            .collect();
        v.sort();
        v
    }

    /// Starts the background writer of the state file (once; later calls,
    /// as after a reload, keep the running one). It ends when this `Abuse`
    /// is dropped, or at the drain, after writing what is pending.
    pub fn start_writer(self: &Arc<Self>, shutdown: &Shutdown) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        if self.writer.set(tx).is_err() {
            return;
        }
        let abuse = Arc::downgrade(self);
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                let pending = tokio::select! {
                    biased;
                    signal = rx.recv() => signal.is_some(),
                    _ = sd.draining() => {
                        // Later changes are written at once (`persist`).
                        rx.close();
                        if rx.recv().await.is_some() {
                            write_snapshot(&abuse).await;
                        }
                        break;
                    }
                };
                if !pending {
                    break;
                }
                write_snapshot(&abuse).await;
            }
        });
    }

    #[cfg(test)]
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Has the deny list written: by the writer when it runs, else now.
    fn persist(&self) {
        if self.cfg().state_file.is_none() {
            return;
        }
        let queued = self
            .writer
            .get()
            .map(|tx| tx.try_send(()))
            .is_some_and(|r| !matches!(r, Err(mpsc::error::TrySendError::Closed(_))));
        if !queued {
            if let Some((path, bytes)) = self.snapshot() {
                self.write(&path, &bytes);
            }
        }
    }

    /// The state file and the deny list's bytes for it.
    fn snapshot(&self) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.cfg().state_file.clone()?;
        let snapshot: HashMap<IpAddr, u64> = self
            .denied()
            .map
            .iter()
            .map(|(ip, d)| (*ip, d.until_ms.div_ceil(1000)))
            .collect();
        Some((path, serde_json::to_vec(&snapshot).unwrap_or_default()))
    }

    fn write(&self, path: &std::path::Path, bytes: &[u8]) {
        match write_atomic(path, bytes) {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, file = %path.display(), "cannot persist the deny list");
            }
        }
    }
}

/// Denies in `path` (expiries in Unix seconds) that have not expired yet.
fn load(path: &std::path::Path) -> Denied {
    let mut denied = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        let saved: HashMap<IpAddr, u64> = serde_json::from_str(&text).unwrap_or_default();
        let wall = now_ms();
        for (ip, until) in saved {
            if let Some(entry) = entry_until(until.saturating_mul(1000), 0, wall) {
                denied.insert(ip, entry);
            }
        }
    }
    denied
}
/// A deny until `until_ms` made at `made_ms` (Unix ms), `now_ms` being
/// now; `None` once expired.
fn entry_until(until_ms: u64, made_ms: u64, now_ms: u64) -> Option<Deny> {
    (until_ms > now_ms).then(|| Deny {
        until: Instant::now() + Duration::from_millis(until_ms - now_ms),
        until_ms,
        made_ms,
    })
}
/// The writer's step: the latest list, written on a blocking thread.
async fn write_snapshot(abuse: &Weak<Abuse>) {
    let Some(a) = abuse.upgrade() else { return };
    let _ = tokio::task::spawn_blocking(move || {
        if let Some((path, bytes)) = a.snapshot() {
            a.write(&path, &bytes);
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
