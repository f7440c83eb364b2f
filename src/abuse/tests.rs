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
