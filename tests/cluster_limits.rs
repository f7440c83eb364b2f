//! Shared rate limits: three gateway processes and one real Redis behave as
//! one gateway. A key's requests and tokens per minute, spread round-robin
//! over the replicas and over HTTP/3, HTTP/2 and HTTP/1.1, are what the
//! single-node limiter accepts for the same timed sequence; a key's
//! concurrency is one cap across the replicas, and a dead replica's slots
//! expire; Redis killed mid-load: the replicas keep serving on local limits
//! (or refuse, with `on_redis_error = "deny"`), stay ready, say so in their
//! metrics, and share again once Redis is back.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use h3gate::auth::NewKey;
use h3gate::rate_limit::{Bucket, Claim, Correction, Kind, Limit, MemoryLimiter, Subject};
use http::Method;
use serde_json::{json, Value};

use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::keys::{bearer, key};
use common::{chat, Client, Proto, TestBody, Upstream};

/// Redis calls may take this long here: the tests share two cores with
/// other builds, and a spurious 50 ms timeout would fall back to local
/// limits (the failure policy, tested on its own below).
const PATIENT: (&str, &str) = ("[cluster]\n", "[cluster]\ntimeout = \"2s\"\n");

/// Routes the base replica configuration lacks.
const GATED: &str = "\n[[routes]]\nmodel = \"gated\"\ntargets = [\"up\"]\n\
    \n[[routes]]\nmodel = \"endless\"\ntargets = [\"up\"]\n";

const PROTOS: [Proto; 3] = [Proto::H3, Proto::H2, Proto::H1];

/// Redis, the upstream, and replicas sharing them, with keys every replica
/// knows (the same keys file, copied: the limits are keyed on the key's
/// SHA-256).
struct Cluster {
    redis: Redis,
    upstream: Upstream,
    dir: tempfile::TempDir,
    ca: Vec<u8>,
    replicas: Vec<Replica>,
    /// The keys, in the order given.
    keys: Vec<String>,
}

impl Cluster {
    async fn start(keys: Vec<NewKey>, replace: &[(&str, &str)]) -> Cluster {
        let redis = Redis::start();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dev_cert(dir.path());
        let first = dir.path().join("replica-1-keys.json");
        let keys = keys
            .into_iter()
            .map(|k| h3gate::auth::create(&first, k).unwrap().0)
            .collect();
        let mut c = Cluster {
            redis,
            upstream,
            dir,
            ca,
            replicas: Vec::new(),
            keys,
        };
        for node in 1..=3 {
            c.spawn(node, replace);
        }
        c.wait_up(1.0).await;
        c
    }

    /// Starts replica `node` (its keys file a copy of the first's).
    fn spawn(&mut self, node: u64, replace: &[(&str, &str)]) {
        let keys = self.dir.path().join(format!("replica-{node}-keys.json"));
        if node > 1 {
            std::fs::copy(self.dir.path().join("replica-1-keys.json"), keys).unwrap();
        }
        let (url, base) = (self.redis.url(), self.upstream.base_url());
        self.replicas.push(Replica::spawn(&ReplicaSpec {
            dir: self.dir.path(),
            redis_url: &url,
            node_id: node,
            upstream: &base,
            extra: GATED,
            replace,
        }));
    }

    /// Until every replica's `h3gate_cluster_up` is `up`.
    async fn wait_up(&self, up: f64) {
        for r in &self.replicas {
            let seen = common::wait_until(Duration::from_secs(10), async || {
                r.metric("h3gate_cluster_up").await == up
            })
            .await;
            assert!(seen, "h3gate_cluster_up never {up}:\n{}", r.metrics().await);
        }
    }

    /// One client per replica (the first three) and protocol:
    /// `clients[replica][protocol]`.
    async fn clients(&self) -> Vec<Vec<Client>> {
        let mut all = Vec::new();
        for r in self.replicas.iter().take(3) {
            let mut per = Vec::new();
            for p in PROTOS {
                per.push(r.client(p, &self.ca).await);
            }
            all.push(per);
        }
        all
    }

    /// The sum of one series over the replicas.
    async fn metric(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for r in &self.replicas {
            sum += r.metric(series).await;
        }
        sum
    }
}

/// Request `i` goes to replica `i % 3`, over protocol `(i / 3) % 3`: every
/// replica sees every protocol.
fn pick(clients: &[Vec<Client>], i: usize) -> &Client {
    &clients[i % clients.len()][(i / clients.len()) % PROTOS.len()]
}

/// One request of a spread: when it was sent, answered and ended (since
/// the spread's start), its status and the usage it reported.
#[derive(Debug, Clone)]
struct Sent {
    at: Duration,
    /// Its response's headers came (the limits were decided before).
    decided: Duration,
    end: Duration,
    status: u16,
    usage: Option<u64>,
}

/// Sends `n` chat requests round-robin (see [`pick`]), `workers` at a time.
async fn spread(
    clients: &[Vec<Client>],
    n: usize,
    workers: usize,
    auth: &str,
    body: &Value,
) -> Vec<Sent> {
    spread_from(Instant::now(), clients, 0..n, workers, auth, body).await
}

/// Requests `range` of a spread that started at `start`.
async fn spread_from(
    start: Instant,
    clients: &[Vec<Client>],
    range: std::ops::Range<usize>,
    workers: usize,
    auth: &str,
    body: &Value,
) -> Vec<Sent> {
    let h = [("authorization", auth)];
    let one = |i: usize| async move {
        let at = start.elapsed();
        let body = TestBody::Json(body.clone());
        let r = pick(clients, i)
            .request(Method::POST, "/v1/chat/completions", &h, body)
            .await;
        let (status, decided) = (r.status, start.elapsed());
        let text = r.text().await;
        Sent {
            at,
            decided,
            end: start.elapsed(),
            status,
            usage: (status == 200).then(|| usage(&text)).flatten(),
        }
    };
    let sent: Vec<Sent> = futures_util::stream::iter(range)
        .map(one)
        .buffer_unordered(workers)
        .collect()
        .await;
    for s in &sent {
        assert!([200, 429].contains(&s.status), "{s:?}");
    }
    sent
}

/// The `total_tokens` of a response (JSON, or the usage chunk of a stream).
fn usage(text: &str) -> Option<u64> {
    let total = |v: Value| v["usage"]["total_tokens"].as_u64();
    serde_json::from_str(text).ok().and_then(total).or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str(l).ok())
            .find_map(total)
    })
}

/// `n` gated streams in waves of `wave`: each wave's requests are all
/// decided (their headers came) before the upstream lets their streams end,
/// and the next wave starts once the replicas applied the wave's token
/// corrections (asynchronous on a shared backend). The order of claims and
/// corrections is then the one the single-node replay sees.
async fn waves(
    c: &Cluster,
    clients: &[Vec<Client>],
    n: usize,
    wave: usize,
    auth: &str,
) -> Vec<Sent> {
    let mut body = chat("gated", true);
    body["max_tokens"] = json!(40);
    body["stream_options"] = json!({"include_usage": true});
    let (start, h) = (Instant::now(), [("authorization", auth)]);
    let mut sent = Vec::new();
    for first in (0..n).step_by(wave) {
        let one = |i: usize| {
            let body = TestBody::Json(body.clone());
            async move {
                let at = start.elapsed();
                let r = pick(clients, i)
                    .request(Method::POST, "/v1/chat/completions", &h, body)
                    .await;
                (at, start.elapsed(), r)
            }
        };
        let answered =
            futures_util::future::join_all((first..(first + wave).min(n)).map(one)).await;
        c.upstream.release();
        for (at, decided, r) in answered {
            let status = r.status;
            let text = r.text().await;
            let usage = (status == 200).then(|| usage(&text)).flatten();
            sent.push(Sent {
                at,
                decided,
                end: start.elapsed(),
                status,
                usage,
            });
        }
        let applied = "h3gate_rate_limit_corrections_total{result=\"applied\"}";
        let done = common::wait_until(Duration::from_secs(5), async || {
            c.metric(applied).await >= accepted(&sent) as f64
        })
        .await;
        assert!(
            done,
            "{} of {} corrections applied",
            c.metric(applied).await,
            accepted(&sent)
        );
    }
    sent
}

fn accepted(sent: &[Sent]) -> usize {
    sent.iter().filter(|s| s.status == 200).count()
}

/// What the single-node limiter accepts for the same timed sequence: each
/// request claims `claim` when it was sent, and (tokens) is corrected to
/// `usage` when it ended. Replayed on a paused clock.
fn single_node_accepts(sent: &[Sent], claim: Claim, usage: u64) -> usize {
    let sent = sent.to_vec();
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(replay(sent, claim, usage))
    };
    std::thread::spawn(run).join().unwrap()
}

async fn replay(sent: Vec<Sent>, claim: Claim, usage: u64) -> usize {
    let limiter = MemoryLimiter::default();
    // (when, which request, a claim or its correction)
    let mut events: Vec<(Duration, usize, bool)> = sent
        .iter()
        .enumerate()
        .map(|(i, s)| (s.at + (s.decided - s.at) / 2, i, true))
        .collect();
    events.sort();
    let (start, mut accepted, mut i) = (tokio::time::Instant::now(), 0, 0);
    while i < events.len() {
        let (when, n, is_claim) = events[i];
        tokio::time::advance((start + when).saturating_duration_since(tokio::time::Instant::now()))
            .await;
        i += 1;
        if !is_claim {
            let correction = Correction {
                bucket: claim.bucket.clone(),
                limit: claim.limit,
                delta: usage as i64 - claim.cost as i64,
                lease: None,
                window: None,
            };
            limiter.correct_now(&[correction]);
        } else if limiter.consume_now(std::slice::from_ref(&claim))[0].allowed {
            accepted += 1;
            if claim.bucket.kind == Kind::Tokens {
                // Corrected when it ended (a refused one: when its 429 came,
                // still before the next wave).
                let end = sent[n].end;
                let at = events[i..].partition_point(|e| e.0 <= end) + i;
                events.insert(at, (end, n, false));
            }
        }
    }
    accepted
}

fn key_claim(kind: Kind, per_minute: u64, cost: u64) -> Claim {
    Claim {
        bucket: Bucket {
            subject: Subject::Key("k".into()),
            kind,
        },
        limit: Limit {
            per_minute,
            burst: per_minute,
        },
        cost,
        lease: None,
        window: None,
    }
}

fn within(got: usize, expected: usize, what: &str) {
    let tolerance = (expected as f64 * 0.02).max(1.0);
    assert!(
        (got as f64 - expected as f64).abs() <= tolerance,
        "{what}: {got} accepted across the replicas, {expected} by the single-node limiter (± {tolerance})"
    );
}

/// A key limited to N requests a minute sends 3N round-robin; another to T
/// tokens a minute streams with its usage reported (reserved, then
/// reconciled). Both get what one node would give them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tokens_per_minute_are_shared_by_the_replicas() {
    let (rpm, tpm) = (150u32, 1200u32);
    let keys = vec![
        NewKey {
            rpm: Some(rpm),
            ..key("rpm")
        },
        NewKey {
            tpm: Some(tpm),
            ..key("tpm")
        },
    ];
    let c = Cluster::start(keys, &[PATIENT]).await;
    let clients = c.clients().await;
    let body = chat("gpt-ok", false);
    let sent = spread(&clients, 3 * rpm as usize, 6, &bearer(&c.keys[0]), &body).await;
    let expected = single_node_accepts(&sent, key_claim(Kind::Requests, rpm.into(), 1), 0);
    eprintln!(
        "requests: {} of {} accepted in {:?}; single node: {expected}",
        accepted(&sent),
        sent.len(),
        sent.iter().map(|s| s.end).max()
    );
    within(accepted(&sent), expected, "requests per minute");
    assert!(
        accepted(&sent) < 2 * rpm as usize,
        "the replicas multiplied the limit"
    );

    let sent = waves(&c, &clients, 200, 10, &bearer(&c.keys[1])).await;
    let mut stream = chat("gated", true);
    stream["max_tokens"] = json!(40);
    stream["stream_options"] = json!({"include_usage": true});
    let estimate = 40 + stream.to_string().len() as u64 / 4;
    let usage = sent
        .iter()
        .find_map(|s| s.usage)
        .expect("streams report usage");
    let expected = single_node_accepts(&sent, key_claim(Kind::Tokens, tpm.into(), estimate), usage);
    eprintln!(
        "tokens: {} of {} accepted ({} tokens, estimate {estimate}); single node: {expected} ({} tokens)",
        accepted(&sent), sent.len(), accepted(&sent) as u64 * usage, expected as u64 * usage
    );
    within(accepted(&sent), expected, "tokens per minute");
    assert!(
        c.metric("h3gate_cluster_fallbacks_total{what=\"rate_limit\",decision=\"local\"}")
            .await
            == 0.0
    );
}

/// A chat request with `auth` on `client`.
async fn post(client: &Client, auth: &str, model: &str) -> common::client::TestResponse {
    let h = [("authorization", auth)];
    let body = TestBody::Json(chat(model, model != "gpt-ok"));
    client
        .request(Method::POST, "/v1/chat/completions", &h, body)
        .await
}

/// The lease sets in Redis: their sizes.
fn leases_in_redis(redis: &Redis) -> Vec<usize> {
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("h3gate:rate:key:*:leases")
        .query(&mut conn)
        .unwrap();
    keys.iter()
        .map(|k| redis::cmd("ZCARD").arg(k).query(&mut conn).unwrap())
        .collect()
}

/// A key with two concurrent requests at most: two streams held on two
/// replicas leave none for the third (429 in the client-limit shape), also
/// after twice the lease TTL (the holders renew them); a replica killed
/// holding one loses it within the TTL; a stream that ends or whose client
/// goes away gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_concurrency_is_one_cap_across_the_replicas_and_a_dead_replicas_slots_expire() {
    let keys = vec![NewKey {
        max_concurrent: Some(2),
        ..key("slots")
    }];
    let ttl = ("[cluster]\n", "[cluster]\nlease_ttl = \"1s\"\n");
    let mut c = Cluster::start(keys, &[PATIENT, ttl]).await;
    let clients = c.clients().await;
    let auth = bearer(&c.keys[0]);
    let mut held = Vec::new();
    for i in [0, 4] {
        let mut r = post(pick(&clients, i), &auth, "gated").await; // replica 0 H3, replica 1 H2
        assert_eq!(r.status, 200);
        r.chunk().await.unwrap().unwrap();
        held.push(r);
    }
    assert_eq!(leases_in_redis(&c.redis), [2]);
    let refused = post(&clients[2][2], &auth, "gpt-ok").await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("x-request-id").is_some());
    assert_eq!(
        refused.json().await["error"]["code"],
        "too_many_concurrent_requests"
    );
    // The behaviour under test: leases outlive their TTL while held.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        post(&clients[2][0], &auth, "gpt-ok").await.status,
        429,
        "renewed"
    );

    // Replica 0 dies holding a slot: within the TTL it is free again.
    drop(held.remove(0));
    drop(c.replicas.remove(0));
    let mut refusals = 0;
    let freed = common::wait_until(Duration::from_secs(10), async || {
        let ok = post(&clients[2][1], &auth, "gpt-ok").await.status == 200;
        refusals += usize::from(!ok);
        ok
    })
    .await;
    assert!(freed, "the dead replica's slot never expired");
    eprintln!("the dead replica's slot expired after {refusals} refusals");

    // An ended stream and a client gone away give their slots back. The
    // release is queued for the reconciler at the request's end, so it
    // lands in Redis shortly after the client read the last byte.
    c.upstream.release();
    held.remove(0).text().await;
    let ended = common::wait_until(Duration::from_secs(5), async || {
        leases_in_redis(&c.redis).iter().sum::<usize>() == 0
    })
    .await;
    assert!(
        ended,
        "the ended stream's slot: {:?}",
        leases_in_redis(&c.redis)
    );
    let mut gone = post(&clients[2][1], &auth, "endless").await;
    assert_eq!(gone.status, 200);
    gone.chunk().await.unwrap().unwrap();
    assert_eq!(leases_in_redis(&c.redis), [1]);
    drop(gone);
    let back = common::wait_until(Duration::from_secs(5), async || {
        leases_in_redis(&c.redis).iter().sum::<usize>() == 0
    })
    .await;
    assert!(back, "{:?}", leases_in_redis(&c.redis));
}

/// What the load of [`redis_killed_mid_load`] saw: (since its start, status).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Duration, u16)>>>;

/// Requests with `auth`, round-robin over `clients`, until `stop` (at most
/// 3,000, at most 60 s), each recorded in `seen`.
fn load(
    clients: std::sync::Arc<Vec<Vec<Client>>>,
    auth: String,
    stop: tokio_util::sync::CancellationToken,
    seen: Seen,
    start: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..3000 {
            if stop.is_cancelled() || start.elapsed() > Duration::from_secs(60) {
                return;
            }
            let status = post(pick(&clients, i), &auth, "gpt-ok").await.status;
            seen.lock().unwrap().push((start.elapsed(), status));
        }
    })
}

/// 18 requests of a key limited to 6 a minute, round-robin: how many were
/// served.
async fn six_a_minute(clients: &[Vec<Client>], auth: &str) -> usize {
    accepted(&spread(clients, 18, 3, auth, &chat("gpt-ok", false)).await)
}

/// The failure policy's timeline. Three replicas (`local`, the default)
/// and a fourth (`deny`) under a steady load; Redis is killed mid-load and
/// started again, empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load() {
    let six = |name| NewKey {
        rpm: Some(6),
        ..key(name)
    };
    let keys = vec![
        NewKey {
            rpm: Some(1_000_000),
            ..key("load")
        },
        six("a"),
        six("b"),
        six("c"),
    ];
    let mut c = Cluster::start(keys, &[PATIENT]).await;
    let deny = ("[cluster]\n", "[cluster]\non_redis_error = \"deny\"\n");
    c.spawn(4, &[PATIENT, deny]);
    c.wait_up(1.0).await;
    let clients = std::sync::Arc::new(c.clients().await);
    let (start, stop, seen) = (
        Instant::now(),
        tokio_util::sync::CancellationToken::new(),
        Seen::default(),
    );
    let running = load(
        clients.clone(),
        bearer(&c.keys[0]),
        stop.clone(),
        seen.clone(),
        start,
    );
    let mut timeline = Vec::new();
    let mut mark =
        |what: String| timeline.push(format!("{:>6.2}s  {what}", start.elapsed().as_secs_f64()));

    // Shared: the remaining requests in the headers go down across replicas.
    let a = bearer(&c.keys[1]);
    for (i, left) in ["5", "4", "3"].into_iter().enumerate() {
        let r = post(pick(&clients, i), &a, "gpt-ok").await;
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some(left),
            "replica {i}"
        );
    }
    let shared = 3 + six_a_minute(&clients, &a).await;
    mark(format!(
        "redis up: key A (6/min) got {shared} of 21 across the replicas"
    ));
    assert!((6..=7).contains(&shared), "{shared}");

    c.redis.kill();
    mark("redis killed".into());
    c.wait_up(0.0).await;
    mark("every replica shows h3gate_cluster_up 0".into());
    let local = six_a_minute(&clients, &bearer(&c.keys[2])).await;
    mark(format!(
        "redis down: key B (6/min) got {local} of 18: 6 per replica"
    ));
    assert_eq!(local, 18, "each replica's own limit");
    down_is_visible(&c, &mut mark).await;

    c.redis.start_again();
    mark("redis started again (empty)".into());
    c.wait_up(1.0).await;
    let fell_back = c.metric(LOCAL).await;
    mark(format!(
        "every replica shows h3gate_cluster_up 1; {fell_back} local decisions so far"
    ));
    let again = six_a_minute(&clients, &bearer(&c.keys[3])).await;
    mark(format!(
        "redis back: key C (6/min) got {again} of 18 across the replicas"
    ));
    assert!((6..=7).contains(&again), "{again}");
    assert_eq!(
        c.metric(LOCAL).await,
        fell_back,
        "shared again: no more local decisions"
    );
    stop.cancel();
    running.await.unwrap();
    report(&seen, &timeline);
}

const LOCAL: &str = "h3gate_cluster_fallbacks_total{what=\"rate_limit\",decision=\"local\"}";

/// While Redis is down: ready but degraded, the fallbacks counted, and the
/// `deny` replica refusing with 503 in the API's shape.
async fn down_is_visible(c: &Cluster, mark: &mut impl FnMut(String)) {
    for r in &c.replicas {
        let (status, body) = r.ready().await;
        assert_eq!(
            (status, &body["status"], &body["cluster"]["redis"]),
            (200, &json!("degraded"), &json!("down")),
            "{body}"
        );
    }
    let deny = &c.replicas[3];
    let r = post(
        &deny.client(Proto::H2, &c.ca).await,
        &bearer(&c.keys[0]),
        "gpt-ok",
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(r.header("x-request-id").is_some() && r.header("retry-after").is_some());
    assert_eq!(r.json().await["error"]["code"], "rate_limiter_unavailable");
    let denied = deny
        .metric("h3gate_cluster_fallbacks_total{what=\"rate_limit\",decision=\"deny\"}")
        .await;
    let local = c.metric(LOCAL).await;
    let errors = c
        .metric("h3gate_cluster_errors_total{op=\"rate_limit\"}")
        .await;
    mark(format!("all 4 ready (200, degraded, redis down); the deny replica answers 503; fallbacks: {local} local, {denied} deny; {errors} failed rate_limit calls"));
    assert!(local > 0.0 && denied >= 1.0);
}

/// Every load request was served; the timeline, with the load's counts.
fn report(seen: &Seen, timeline: &[String]) {
    let seen = seen.lock().unwrap();
    let refused: Vec<_> = seen.iter().filter(|(_, s)| *s != 200).collect();
    assert!(refused.is_empty(), "the load was refused: {refused:?}");
    eprintln!("timeline ({} load requests, all 200):", seen.len());
    for line in timeline {
        let at: f64 = line
            .trim_start()
            .split('s')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let before = seen.iter().filter(|(t, _)| t.as_secs_f64() <= at).count();
        eprintln!("{line}   [load: {before} served so far]");
    }
}

/// The script against the in-memory limiter: the same batches (the
/// address's requests, the key's requests and tokens; random costs, some
/// refused) get the same decisions and remainders; leases are counted to
/// their cap, a refused batch takes no lease, a released one is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_decides_as_the_single_node_limiter_does() {
    use h3gate::rate_limit::{LeaseId, Limiter, RedisLimiter};
    let redis = Redis::start();
    let cfg = h3gate::config::ClusterConfig {
        redis_url: redis.url(),
        secret: h3gate::config::Secret::new(common::cluster::TEST_SECRET),
        timeout: h3gate::config::Duration::secs(2),
        ..Default::default()
    };
    let cluster = h3gate::cluster::Cluster::connect(&cfg).unwrap().unwrap();
    let shutdown = h3gate::shutdown::Shutdown::new(tokio_util::sync::CancellationToken::new());
    cluster.start(&shutdown);
    assert!(cluster.ready(Duration::from_secs(5)).await);
    let shared = RedisLimiter::new(cluster);
    let memory = MemoryLimiter::default();
    // Slow rates (one request every 10 s, one token a second): the few
    // milliseconds between the two limiters' clocks refill nothing.
    let address = Subject::Address("192.0.2.7".parse().unwrap());
    let claim = |subject: &Subject, kind, per_minute, burst, cost| Claim {
        bucket: Bucket {
            subject: subject.clone(),
            kind,
        },
        limit: Limit { per_minute, burst },
        cost,
        lease: None,
        window: None,
    };
    let k = Subject::Key("ab".repeat(32).into());
    for i in 0..60u64 {
        let batch = [
            claim(&address, Kind::Requests, 6, 40, 1),
            claim(&k, Kind::Requests, 6, 30, 1 + i % 2),
            claim(&k, Kind::Tokens, 60, 60, (i * 7) % 13),
        ];
        let (m, r) = (
            memory.consume_now(&batch),
            shared.consume(&batch).await.unwrap(),
        );
        let view = |d: &[h3gate::rate_limit::Decision]| {
            d.iter()
                .map(|d| (d.allowed, d.remaining))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&r), view(&m), "batch {i}");
        if i % 5 == 0 {
            let back = [Correction {
                bucket: batch[2].bucket.clone(),
                limit: batch[2].limit,
                delta: -3,
                lease: None,
                window: None,
            }];
            memory.correct_now(&back);
            shared.correct(&back).await.unwrap();
        }
    }
    let lease = |subject: &Subject| Claim {
        lease: Some(LeaseId::random()),
        window: None,
        ..claim(subject, Kind::Lease, 0, 2, 1)
    };
    let (one, two, three) = (lease(&k), lease(&k), lease(&k));
    assert!(shared.consume(std::slice::from_ref(&one)).await.unwrap()[0].allowed);
    assert!(shared.consume(std::slice::from_ref(&two)).await.unwrap()[0].allowed);
    let probe = [claim(&address, Kind::Requests, 6, 100, 0)];
    let before = shared.consume(&probe).await.unwrap()[0].remaining;
    let batch = [claim(&address, Kind::Requests, 6, 100, 1), three.clone()];
    let full = shared.consume(&batch).await.unwrap();
    assert!(full[0].allowed && !full[1].allowed, "{full:?}");
    let after = shared.consume(&probe).await.unwrap()[0].remaining;
    assert_eq!(after, before, "the refused batch took no request");
    let release = Correction {
        bucket: one.bucket.clone(),
        limit: one.limit,
        delta: -1,
        lease: one.lease,
        window: None,
    };
    shared.correct(&[release]).await.unwrap();
    shared
        .renew(&[(two.bucket.clone(), two.lease.unwrap())])
        .await
        .unwrap();
    assert!(shared.consume(std::slice::from_ref(&three)).await.unwrap()[0].allowed);
    assert_eq!(leases_in_redis(&redis), [2]);
}

/// A reload with `[cluster]` unchanged keeps the cluster and its limiter:
/// the key's shared bucket goes on, and `h3gate_cluster_up` stays 1 (it was
/// reset to 0 by the reload's restart of the probe, and never set back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_shared_limiter_and_the_up_gauge() {
    let keys = vec![NewKey {
        rpm: Some(6),
        ..key("reload")
    }];
    let mut c = Cluster::start(keys, &[PATIENT]).await;
    c.replicas.truncate(1);
    let r = &c.replicas[0];
    let client = r.client(Proto::H2, &c.ca).await;
    let auth = bearer(&c.keys[0]);
    let first = post(&client, &auth, "gpt-ok").await;
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("5"));
    let (status, body) = r.admin_request(Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let second = post(&client, &auth, "gpt-ok").await;
    assert_eq!(second.header("x-ratelimit-remaining-requests"), Some("4"));
    // Past a probe of the reloaded state (one a second while up).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        r.metric("h3gate_cluster_up").await,
        1.0,
        "{}",
        r.metrics().await
    );
}
