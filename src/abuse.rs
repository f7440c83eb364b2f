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

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::now_secs;
use crate::config::AbuseConfig;
use crate::files::write_atomic;
use crate::shutdown::Shutdown;

/// Failure counters kept at most; older windows are dropped first.
const MAX_TRACKED: usize = 100_000;

/// Address → (expiry for this process, expiry as Unix time for the file).
type Denied = HashMap<IpAddr, (Instant, u64)>;

#[derive(Debug)]
pub struct Abuse {
    cfg: RwLock<AbuseConfig>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    denied: Mutex<Denied>,
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
            denied: Mutex::new(cfg.state_file.as_deref().map(load).unwrap_or_default()),
            writer: OnceLock::new(),
            writes: AtomicU64::new(0),
        }
    }

    fn cfg(&self) -> std::sync::RwLockReadGuard<'_, AbuseConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner())
    }

    fn denied(&self) -> std::sync::MutexGuard<'_, Denied> {
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
            let loaded = std::mem::take(&mut *fresh.denied());
            let mut denied = self.denied();
            for (ip, entry) in loaded {
                let e = denied.entry(ip).or_insert(entry);
                if entry.0 > e.0 {
                    *e = entry;
                }
            }
            drop(denied);
            self.persist();
        }
    }

    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let mut denied = self.denied();
        match denied.get(&ip) {
            Some((until, _)) if *until > Instant::now() => true,
            Some(_) => {
                denied.remove(&ip);
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

    pub fn deny(&self, ip: IpAddr, ttl: Duration) {
        self.denied()
            .insert(ip, (Instant::now() + ttl, now_secs() + ttl.as_secs()));
        self.persist();
    }

    /// Lifts a deny; false if the address was not denied.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let removed = self.denied().remove(&ip).is_some();
        if removed {
            self.persist();
        }
        removed
    }

    /// Denied addresses and the seconds left.
    pub fn list(&self) -> Vec<(IpAddr, u64)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .denied()
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(ip, (until, _))| (*ip, until.duration_since(now).as_secs()))
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
            .iter()
            .map(|(ip, (_, wall))| (*ip, *wall))
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

/// Denies in `path` that have not expired yet.
fn load(path: &std::path::Path) -> Denied {
    let mut denied = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        let saved: HashMap<IpAddr, u64> = serde_json::from_str(&text).unwrap_or_default();
        let (now, wall) = (Instant::now(), now_secs());
        for (ip, until) in saved.into_iter().filter(|(_, u)| *u > wall) {
            denied.insert(ip, (now + Duration::from_secs(until - wall), until));
        }
    }
    denied
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
mod tests {
    use super::*;
    use crate::config::Duration as D;

    fn cfg(file: Option<PathBuf>) -> AbuseConfig {
        AbuseConfig {
            enabled: true,
            max_failures: 3,
            window: D::secs(60),
            deny_for: D::secs(600),
            state_file: file,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deny_after_repeated_failures_lifted_after_ttl() {
        let a = Abuse::new(&cfg(None));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!a.failure(ip) && !a.failure(ip));
        assert!(a.failure(ip), "third failure denies");
        assert!(a.is_denied(ip));
        assert!(!a.is_denied("192.0.2.8".parse().unwrap()));
        tokio::time::advance(std::time::Duration::from_secs(599)).await;
        assert!(a.is_denied(ip));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(!a.is_denied(ip), "lifted after its TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let a = Abuse::new(&cfg(None));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        a.failure(ip);
        a.failure(ip);
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert!(!a.failure(ip));
        assert!(!a.is_denied(ip));
    }

    #[tokio::test]
    async fn denies_survive_a_restart_and_can_be_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/denied.json");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        Abuse::new(&cfg(Some(file.clone()))).deny(ip, std::time::Duration::from_secs(600));
        let again = Abuse::new(&cfg(Some(file.clone())));
        assert!(again.is_denied(ip));
        assert_eq!(again.list().len(), 1);
        assert!(again.lift(ip));
        assert!(!Abuse::new(&cfg(Some(file))).is_denied(ip));
    }

    /// Polls (bounded) until `file` holds a deny for every address in `ips`.
    async fn wait_persisted(file: &std::path::Path, ips: &[IpAddr]) -> bool {
        for _ in 0..500 {
            let saved: HashMap<IpAddr, u64> = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            if ips.iter().all(|ip| saved.contains_key(ip)) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_burst_of_denies_is_persisted_off_the_request_path_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/denied.json");
        let a = std::sync::Arc::new(Abuse::new(&cfg(Some(file.clone()))));
        let shutdown = crate::shutdown::Shutdown::new(Default::default());
        Abuse::start_writer(&a, &shutdown);
        let mut ips: Vec<IpAddr> = (1..=50u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        for ip in &ips {
            a.deny(*ip, std::time::Duration::from_secs(600));
        }
        let tripped: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(!a.failure(tripped) && !a.failure(tripped) && a.failure(tripped));
        ips.push(tripped);
        // This (current-thread) runtime has not run the writer yet: had
        // `deny` or `failure` written the file, it would exist now.
        assert!(!file.exists(), "persisted on the caller's thread");
        assert!(wait_persisted(&file, &ips).await, "the writer persists");
        // The file is visible at its rename; the write is counted a moment
        // later, once the directory is synced.
        for _ in 0..500 {
            if a.writes() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(a.writes(), 1, "the burst is coalesced into one write");
        assert_eq!(Abuse::new(&cfg(Some(file))).list().len(), ips.len());
    }

    #[tokio::test]
    async fn the_drain_writes_a_pending_deny_and_ends_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("denied.json");
        let a = std::sync::Arc::new(Abuse::new(&cfg(Some(file.clone()))));
        let graceful = tokio_util::sync::CancellationToken::new();
        let shutdown = crate::shutdown::Shutdown::new(graceful.clone());
        Abuse::start_writer(&a, &shutdown);
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        a.deny(ip, std::time::Duration::from_secs(600));
        graceful.cancel();
        assert!(shutdown.drain(std::time::Duration::from_secs(5)).await);
        assert!(Abuse::new(&cfg(Some(file))).is_denied(ip));
    }

    #[tokio::test]
    async fn reconfigure_keeps_denies_and_counters_and_moves_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let (old_file, new_file) = (dir.path().join("a.json"), dir.path().join("b.json"));
        let (kept, loaded, counted): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        Abuse::new(&cfg(Some(new_file.clone()))).deny(loaded, Duration::from_secs(600));
        let a = Abuse::new(&cfg(Some(old_file)));
        a.deny(kept, Duration::from_secs(600));
        assert!(!a.failure(counted));
        let mut next = cfg(Some(new_file.clone()));
        next.max_failures = 2;
        a.reconfigure(&next, &Abuse::new(&next));
        assert!(a.is_denied(kept) && a.is_denied(loaded));
        assert!(
            a.failure(counted),
            "the earlier failure counts toward the new threshold"
        );
        let again = Abuse::new(&cfg(Some(new_file)));
        assert_eq!(again.list().len(), 3, "the whole list is in the new file");
    }
}
