use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::file;
use super::*;
use crate::rate_limit::{Bucket, Claim, Kind, Limit, Subject, Unit};
use crate::spend::{Period, Spent, Usage};

fn spent(key: &str) -> Spent {
    Spent {
        at: crate::clock::now_secs(),
        key: Some(key.into()),
        team: None,
        model: "gpt-4o".into(),
        provider: "up".into(),
        usage: Usage {
            input: 10,
            output: 2,
            cached_input: 0,
            cache_write: 0,
        },
        cost: 42,
    }
}

fn config(path: &std::path::Path) -> SpendConfig {
    SpendConfig {
        file: Some(path.to_path_buf()),
        ..SpendConfig::default()
    }
}

/// Until the file holds `requests` requests in all (bounded).
async fn file_has(path: &std::path::Path, requests: u64) -> bool {
    for _ in 0..500 {
        if let Ok(Some(saved)) = file::read(path) {
            if saved.buckets.iter().map(|(_, s)| s.requests).sum::<u64>() == requests {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A budget claim of `cost` nano-USD on key `k`'s daily budget.
fn budget_claim(k: &str, cost: u64) -> Claim {
    Claim {
        bucket: Bucket {
            subject: Subject::Key(k.into()),
            kind: Kind::Budget(Unit::Usd, Period::Day),
        },
        limit: Limit {
            per_minute: 0,
            burst: 1_000_000,
        },
        cost,
        lease: None,
        window: Some(Period::Day.window(crate::clock::now_secs())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_follows_changes_and_takes_the_drains_last_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.json");
    let spend = Arc::new(Spend::default());
    let keeper = Arc::new(Keeper::default());
    let limiter = Arc::new(MemoryLimiter::default());
    let signal = CancellationToken::new();
    let shutdown = Shutdown::new(signal.clone());
    keeper.start(
        &spend,
        &config(&path),
        Some(limiter.clone()),
        None,
        &shutdown,
    );
    spend.history.record(&spent("alice"));
    assert!(file_has(&path, 1).await, "written after a change");
    // A budget change alone is a change too.
    assert!(limiter.consume_now(&[budget_claim("k", 700)])[0].allowed);
    let mut saw_budget = false;
    for _ in 0..500 {
        let saved = file::read(&path).unwrap().unwrap_or_default();
        if saved
            .budgets
            .iter()
            .any(|b| b.slots.iter().any(|(_, u)| *u == 700))
        {
            saw_budget = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_budget, "budget counters are saved");
    // Requests that end during the drain count: the last write is at exit.
    signal.cancel();
    spend.history.record(&spent("bob"));
    assert!(shutdown.drain(Duration::from_secs(5)).await);
    spend.history.record(&spent("carol"));
    shutdown.exit().await;
    let saved = file::read(&path).unwrap().unwrap();
    let keys: Vec<&str> = saved.buckets.iter().map(|(k, _)| k.key.as_str()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    // And they come back.
    let again = History::default();
    let l2 = MemoryLimiter::default();
    file::load_into(&path, &again, Some(&l2), 86_400, crate::clock::now_secs()).unwrap();
    assert_eq!(again.buckets(), spend.history.buckets());
    assert_eq!(l2.budget_counters(), limiter.budget_counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_replaced_never_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.json");
    let spend = Arc::new(Spend::default());
    let keeper = Arc::new(Keeper::default());
    let shutdown = Shutdown::new(CancellationToken::new());
    keeper.start(&spend, &config(&path), None, None, &shutdown);
    spend.history.record(&spent("alice"));
    assert!(file_has(&path, 1).await);
    // A second name for the file as it is now: a write in place (truncate,
    // then write) would change what it shows, and a crash in between
    // would leave a partial file. A replacement (a new file renamed over
    // it) leaves it whole.
    let before = dir.path().join("before.json");
    std::fs::hard_link(&path, &before).unwrap();
    let old = std::fs::read(&before).unwrap();
    spend.history.record(&spent("bob"));
    assert!(file_has(&path, 2).await);
    assert_eq!(
        std::fs::read(&before).unwrap(),
        old,
        "the old file was not touched"
    );
    assert_eq!(file::read(&before).unwrap().unwrap().buckets.len(), 1);
    // Nothing is left beside it (the temporary file was renamed).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["before.json", "spend.json"]);
    shutdown.exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_write_leaves_the_last_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.json");
    let h = History::default();
    h.record(&spent("alice"));
    let saved = file::Saved {
        version: file::VERSION,
        buckets: h.buckets(),
        ..file::Saved::default()
    };
    file::write(&path, &saved).unwrap();
    // What a crash during the next write leaves: its temporary file, partial.
    std::fs::write(
        dir.path().join(".spend.json.12345.tmp"),
        br#"{"version":1,"buck"#,
    )
    .unwrap();
    let spend = Arc::new(Spend::default());
    let n = file::load_into(
        &path,
        &spend.history,
        None,
        86_400,
        crate::clock::now_secs(),
    )
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(spend.history.buckets(), h.buckets());
}

#[tokio::test]
async fn a_second_start_keeps_one_task_and_takes_the_new_parts() {
    let dir = tempfile::tempdir().unwrap();
    let spend = Arc::new(Spend::default());
    let keeper = Arc::new(Keeper::default());
    let shutdown = Shutdown::new(CancellationToken::new());
    let first = Arc::new(MemoryLimiter::default());
    keeper.start(
        &spend,
        &config(&dir.path().join("a.json")),
        Some(first),
        None,
        &shutdown,
    );
    let second = Arc::new(MemoryLimiter::default());
    let mut cfg = config(&dir.path().join("b.json"));
    cfg.retention = crate::config::Duration::secs(3600);
    keeper.start(&spend, &cfg, Some(second.clone()), None, &shutdown);
    assert!(Arc::ptr_eq(&keeper.limiter().unwrap(), &second));
    assert_eq!(keeper.retention(), 3600);
    assert!(matches!(keeper.source(&spend.history), Source::Memory(_)));
    shutdown.exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_is_told_and_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.json");
    // A directory where the file goes: the rename onto it fails (even as root).
    std::fs::create_dir_all(path.join("in-the-way")).unwrap();
    let spend = Arc::new(Spend::default());
    let keeper = Arc::new(Keeper::default());
    let shutdown = Shutdown::new(CancellationToken::new());
    keeper.start(&spend, &config(&path), None, None, &shutdown);
    spend.history.record(&spent("alice"));
    let mut told = false;
    for _ in 0..500 {
        if keeper.file_failing() {
            told = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(told, "the failure is visible");
    std::fs::remove_dir_all(&path).unwrap();
    assert!(file_has(&path, 1).await, "written once it can be");
    assert!(!keeper.file_failing());
    shutdown.exit().await;
}
