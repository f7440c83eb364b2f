//! A bounded chaos run: mixed load over HTTP/3, HTTP/2 and HTTP/1.1 with
//! clients that cancel at random, upstream faults (error statuses, 429 with
//! Retry-After, a cut mid-stream, slowness, hanging) and a reload every few
//! seconds. Afterwards nothing is left claimed — in-flight gauges, queue
//! depths — and every request that was not cancelled either succeeded or
//! got an explicit error. Random choices come from one seed, printed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Proto};
use serde_json::json;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    explicit_error: AtomicUsize,
    stream_error: AtomicUsize,
    cancelled: AtomicUsize,
    unexplained: AtomicUsize,
}

/// The models the test upstream misbehaves on, and whether the request streams.
const CASES: &[(&str, bool)] = &[
    ("gpt-4o-mini", false),
    ("gpt-4o-mini", true),
    ("mock-1", false),
    ("mock-1", true),
    ("status-500", false),
    ("status-429", false),
    ("status-503", false),
    ("drop-mid-stream", true),
    ("slow-300", false),
    ("slow-300", true),
    ("slow", false),
    ("claude-x", true),
];

const SEED_ENV: &str = "H3GATE_CHAOS_SEED";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_cancels_faults_and_reloads_leaves_nothing_behind() {
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201);
    eprintln!("chaos seed {seed} (rerun with {SEED_ENV}={seed})");
    let gw = Arc::new(Gateway::start().await);
    add_faulty_provider(&gw).await;
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let workers: Vec<_> = (0..9u64)
        .map(|w| tokio::spawn(worker(gw.clone(), tally.clone(), seed, w, deadline)))
        .collect();
    let reloads = reload_every_few_seconds(gw.clone(), deadline);
    for w in workers {
        w.await.expect("worker panicked");
    }
    let reloads = reloads.await.unwrap();

    nothing_left_claimed(&gw, seed).await;
    let counts = tally.counts();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        .collect();
    eprintln!("chaos: test process (gateway + clients) {rss:?}");
    eprintln!(
        "chaos: {} ok, {} explicit errors, {} mid-stream errors, {} cancelled, {} unexplained; {reloads} reloads",
        counts.0, counts.1, counts.2, counts.3, counts.4
    );
    assert_eq!(counts.4, 0, "seed {seed}: every request ends explicitly");
    assert!(
        counts.0 > 0 && counts.1 > 0 && counts.3 > 0,
        "seed {seed}: the mix ran: {counts:?}"
    );
    breaker_admits_a_probe(&gw, seed).await;
    // And the gateway still serves every protocol.
    for p in [Proto::H3, Proto::H2, Proto::H1] {
        let c = gw.client(p).await;
        let r = c
            .post_json("/v1/chat/completions", common::chat("mock-1", false))
            .await;
        assert_eq!(r.status, 200, "{p:?} after the run");
    }
}

impl Tally {
    /// (ok, explicit errors, mid-stream errors, cancelled, unexplained).
    fn counts(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.explicit_error.load(Ordering::Relaxed),
            self.stream_error.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
            self.unexplained.load(Ordering::Relaxed),
        )
    }
}

/// Faults go to their own provider with a quick breaker (so half-open
/// probes happen, and some get cancelled); the rest keeps working. In the
/// file, so every reload keeps it.
async fn add_faulty_provider(gw: &Gateway) {
    let upstream = gw.upstream.base_url();
    gw.edit_config(|text| {
        let text = text
            .replace(
                "model = \"status-*\"\ntargets = [\"up\"]",
                "model = \"status-*\"\ntargets = [\"faulty\"]",
            )
            .replace(
                "model = \"drop-mid-stream\"\ntargets = [\"up\"]",
                "model = \"drop-mid-stream\"\ntargets = [\"faulty\"]",
            )
            .replace(
                "[[routes]]\nmodel = \"slow\"\n",
                "[[routes]]\nmodel = \"slow-*\"\ntargets = [\"up\"]\n\n[[routes]]\nmodel = \"slow\"\n",
            );
        format!(
            "{text}\n[[providers]]\nname = \"faulty\"\nkind = \"openai\"\nbase_url = \"{upstream}\"\n\
             breaker = {{ consecutive_failures = 3, cooldown = \"200ms\" }}\n\
             \n[admission]\nmax_concurrent = 16\nmax_queue = 16\nmax_wait = \"500ms\"\n\
             \n[retry]\ndeadline = \"2s\"\n"
        )
    });
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
}

/// One client (worker `w`'s protocol) sending random cases until the
/// deadline (at most 400), a quarter of them cancelled at a random moment.
async fn worker(
    gw: Arc<Gateway>,
    tally: Arc<Tally>,
    seed: u64,
    w: u64,
    deadline: tokio::time::Instant,
) {
    let proto = [Proto::H3, Proto::H2, Proto::H1][(w % 3) as usize];
    let mut rng = fastrand::Rng::with_seed(seed ^ w);
    let client = gw.client(proto).await;
    let mut sent = 0;
    while tokio::time::Instant::now() < deadline && sent < 400 {
        sent += 1;
        let (model, stream) = CASES[rng.usize(..CASES.len())];
        let body = json!({
            "model": model, "stream": stream, "max_tokens": 5,
            "messages": [{"role": "user", "content": "Hi"}],
        });
        // One request in four is cancelled by its client, at a random moment.
        let cancel_after = (rng.u8(..4) == 0).then(|| Duration::from_millis(rng.u64(1..400)));
        let exchange = exchange(&client, body);
        let outcome = match cancel_after {
            Some(after) => match tokio::time::timeout(after, exchange).await {
                Ok(r) => r,
                Err(_) => {
                    tally.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
            None => exchange.await,
        };
        let counter = match outcome {
            // A mid-stream failure is told in the stream itself (an
            // error event) or by a reset: both explicit.
            Ok((200, text, end)) if stream && (end.is_err() || text.contains("error")) => {
                &tally.stream_error
            }
            Ok((200, text, Ok(()))) if !text.is_empty() => &tally.ok,
            Ok((status, text, _)) if status >= 400 && text.contains("\"error\"") => {
                &tally.explicit_error
            }
            other => {
                eprintln!("{proto:?} {model} stream={stream}: unexplained {other:?}");
                &tally.unexplained
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

type Exchange = Result<(u16, String, Result<(), String>), String>;

/// One chat request: its status, body and how the body ended.
async fn exchange(client: &common::Client, body: serde_json::Value) -> Exchange {
    let resp = client
        .try_request(
            http::Method::POST,
            "/v1/chat/completions",
            &[],
            common::TestBody::Json(body),
        )
        .await?;
    let status = resp.status;
    let (text, end) = resp.text_and_end().await;
    Ok((status, text, end))
}

/// A reload every few seconds while the load runs (the pace is part of the
/// load, not a wait); how many there were.
fn reload_every_few_seconds(
    gw: Arc<Gateway>,
    deadline: tokio::time::Instant,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (status, body) = gw.reload().await;
            assert_eq!(status, 200, "reload: {body}");
            n += 1;
        }
        n
    })
}

/// The in-flight and queue-depth series.
fn claims(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.starts_with("h3gate_requests_in_flight")
                || l.starts_with("h3gate_admission_queue_depth")
        })
        .collect()
}

/// Nothing left claimed: in-flight and queues back to zero (bounded wait:
/// cancelled streams are released as their connections notice).
async fn nothing_left_claimed(gw: &Gateway, seed: u64) {
    let settled = common::wait_until(Duration::from_secs(15), async || {
        claims(&gw.metrics_text().await)
            .iter()
            .all(|l| l.ends_with(" 0"))
    })
    .await;
    if !settled {
        let text = gw.metrics_text().await;
        let left = claims(&text);
        panic!("seed {seed}: claims left behind after the run: {left:#?}");
    }
}

/// No breaker probe left wedged: past the cooldown, the faulty provider's
/// breaker lets a probe through (its answer starts with a 200).
async fn breaker_admits_a_probe(gw: &Gateway, seed: u64) {
    // The cooldown (200ms) elapsing is the behaviour under test: not a wait
    // for something else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = gw.client(Proto::H2).await;
    // Polled at a gentle pace: every refused try is a request too.
    let mut probe = None;
    for _ in 0..20 {
        let r = c
            .post_json(
                "/v1/chat/completions",
                common::chat("drop-mid-stream", true),
            )
            .await;
        if r.status == 200 {
            probe = Some(r.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        probe,
        Some(200),
        "seed {seed}: the breaker admits a probe again"
    );
}
