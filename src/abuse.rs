//! Abuse control: too many failed authentications or malformed requests
//! from one address within a window → that address is denied for a while
//! (a TTL, never forever). Denies persist atomically, so a restart keeps
//! them, and can be listed and lifted through the admin API. The gateway's
//! own 429s never count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use metrics::counter;
use tokio::time::Instant;

use crate::auth::{now_secs, write_atomic};
use crate::config::AbuseConfig;

/// Failure counters kept at most; older windows are dropped first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
pub struct Abuse {
    cfg: AbuseConfig,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Address → (expiry for this process, expiry as Unix time for the file).
    denied: Mutex<HashMap<IpAddr, (Instant, u64)>>,
    path: Option<PathBuf>,
}

impl Abuse {
    /// Loads persisted denies that have not expired yet.
    pub fn new(cfg: &AbuseConfig) -> Abuse {
        let mut denied = HashMap::new();
        if let Some(path) = &cfg.state_file {
            if let Ok(text) = std::fs::read_to_string(path) {
                let saved: HashMap<IpAddr, u64> = serde_json::from_str(&text).unwrap_or_default();
                let (now, wall) = (Instant::now(), now_secs());
                for (ip, until) in saved.into_iter().filter(|(_, u)| *u > wall) {
                    denied.insert(ip, (now + Duration::from_secs(until - wall), until));
                }
            }
        }
        Abuse {
            cfg: cfg.clone(),
            failures: Mutex::new(HashMap::new()),
            denied: Mutex::new(denied),
            path: cfg.state_file.clone(),
        }
    }

    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let mut denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
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
        if !self.cfg.enabled {
            return false;
        }
        let now = Instant::now();
        let window = self.cfg.window.get();
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
            let trip = entry.0 >= self.cfg.max_failures;
            if trip {
                f.remove(&ip);
            }
            trip
        };
        if trip {
            self.deny(ip, self.cfg.deny_for.get());
            counter!("h3gate_abuse_denies_total").increment(1);
            tracing::warn!(client = %ip, ttl = ?self.cfg.deny_for.get(), "address denied after repeated failures");
        }
        trip
    }

    pub fn deny(&self, ip: IpAddr, ttl: Duration) {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip, (Instant::now() + ttl, now_secs() + ttl.as_secs()));
        self.persist();
    }

    /// Lifts a deny; false if the address was not denied.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let removed = self
            .denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip)
            .is_some();
        if removed {
            self.persist();
        }
        removed
    }

    /// Denied addresses and the seconds left.
    pub fn list(&self) -> Vec<(IpAddr, u64)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(ip, (until, _))| (*ip, until.duration_since(now).as_secs()))
            .collect();
        v.sort();
        v
    }

    fn persist(&self) {
        let Some(path) = &self.path else { return };
        let snapshot: HashMap<IpAddr, u64> = self
            .denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(ip, (_, wall))| (*ip, *wall))
            .collect();
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        if let Err(e) = write_atomic(path, &bytes) {
            tracing::error!(error = %e, file = %path.display(), "cannot persist the deny list");
        }
    }
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
}
