//! Hostile timing against the shared limiter: a Redis that stalls (SIGSTOP,
//! not dead) while a request's lease claim is in flight, and clients that
//! go away while it is. The script still runs when Redis goes on; the slot
//! it took must come back, not wait out its TTL (30 s by default): a key
//! with `max_concurrent = 1` is usable again as soon as Redis answers.

mod common;

use std::time::Duration;

use h3gate::auth::NewKey;
use http::Method;

use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::keys::{bearer, key};
use common::{chat, Client, Proto, TestBody, Upstream};

/// One replica, one key of one concurrent request, and its Redis.
struct One {
    redis: Redis,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
    ca: Vec<u8>,
    replica: Replica,
    auth: String,
}

impl One {
    /// `timeout`: the replica's `[cluster] timeout`.
    async fn start(timeout: &str) -> One {
        let redis = Redis::start();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dev_cert(dir.path());
        let keys = dir.path().join("replica-1-keys.json");
        let one = NewKey {
            max_concurrent: Some(1),
            ..key("one")
        };
        let (k, _) = h3gate::auth::create(&keys, one).unwrap();
        let cluster = format!("[cluster]\ntimeout = \"{timeout}\"\n");
        let (url, base) = (redis.url(), upstream.base_url());
        let replica = Replica::spawn(&ReplicaSpec {
            dir: dir.path(),
            redis_url: &url,
            node_id: 1,
            upstream: &base,
            extra: "",
            replace: &[("[cluster]\n", &cluster)],
        });
        let o = One {
            redis,
            _upstream: upstream,
            _dir: dir,
            ca,
            replica,
            auth: bearer(&k),
        };
        o.wait_up(1.0).await;
        o
    }

    async fn wait_up(&self, up: f64) {
        let r = &self.replica;
        let seen = common::wait_until(Duration::from_secs(10), async || {
            r.metric("h3gate_cluster_up").await == up
        })
        .await;
        assert!(seen, "h3gate_cluster_up never {up}");
    }

    /// A chat request, its body read to the end: the request is over
    /// for the client. The key's one slot may still be held until the
    /// replica has finished it too: see [`One::idle`].
    async fn post(&self, client: &Client) -> u16 {
        let resp = self.try_post(client).await;
        let status = resp.status;
        resp.text().await;
        status
    }

    /// Waits until the replica has no request in flight (on any protocol):
    /// the previous request's end, and with it its slot, has run there.
    async fn idle(&self) {
        let r = &self.replica;
        let idle = common::wait_until(Duration::from_secs(5), async || {
            let text = r.metrics().await;
            let in_flight: f64 = text
                .lines()
                .filter(|l| l.starts_with("h3gate_requests_in_flight{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            in_flight == 0.0
        })
        .await;
        assert!(idle, "requests still in flight");
    }

    async fn try_post(&self, client: &Client) -> common::client::TestResponse {
        let h = [("authorization", self.auth.as_str())];
        let body = TestBody::Json(chat("gpt-ok", false));
        client
            .request(Method::POST, "/v1/chat/completions", &h, body)
            .await
    }

    /// The members of every lease set in Redis.
    fn leases(&self) -> usize {
        let mut conn = self.redis.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("h3gate:rate:key:*:leases")
            .query(&mut conn)
            .unwrap();
        keys.iter()
            .map(|k| {
                redis::cmd("ZCARD")
                    .arg(k)
                    .query::<usize>(&mut conn)
                    .unwrap()
            })
            .sum()
    }

    /// Whether every lease set in Redis empties (within 5 s).
    async fn leases_drain(&self) -> bool {
        common::wait_until(Duration::from_secs(5), async || self.leases() == 0).await
    }
}

/// Redis stalls while a request's claim is in flight: the call times out
/// (50 ms, the default), the request is served on local limits, and the
/// script runs when Redis goes on — taking the key's only slot for nobody.
/// That slot must be given back, so the key is served again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_claimed_while_redis_stalls_is_given_back_when_it_answers() {
    let o = One::start("50ms").await;
    for proto in [Proto::H3, Proto::H2, Proto::H1] {
        let client = o.replica.client(proto, &o.ca).await;
        o.idle().await;
        assert_eq!(o.post(&client).await, 200, "{proto:?}: shared, before");
        assert!(
            o.leases_drain().await,
            "{proto:?}: the first slot came back"
        );
        o.redis.pause();
        o.idle().await;
        assert_eq!(
            o.post(&client).await,
            200,
            "{proto:?}: served on local limits"
        );
        let (ready, body) = o.replica.ready().await;
        assert_eq!(ready, 200, "{proto:?}: ready while Redis stalls: {body}");
        o.redis.resume();
        o.wait_up(1.0).await;
        assert!(
            o.leases_drain().await,
            "{proto:?}: the slot the stalled claim took is still held: {}",
            o.leases()
        );
        o.idle().await;
        assert_eq!(o.post(&client).await, 200, "{proto:?}: usable again");
    }
    assert!(o.leases_drain().await);
}

/// The client goes away (HTTP/3 stream reset, HTTP/2 RST_STREAM, HTTP/1.1
/// connection closed) while its claim is in Redis' queue: when Redis runs
/// the script, the slot it took is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_claimed_for_a_client_gone_away_is_given_back() {
    let o = One::start("3s").await;
    for proto in [Proto::H3, Proto::H2, Proto::H1] {
        let client = o.replica.client(proto, &o.ca).await;
        o.idle().await;
        assert_eq!(o.post(&client).await, 200, "{proto:?}: before");
        assert!(o.leases_drain().await);
        o.redis.pause();
        let gone = tokio::time::timeout(Duration::from_millis(500), o.try_post(&client)).await;
        assert!(gone.is_err(), "{proto:?}: answered while Redis was stopped");
        drop(client);
        o.redis.resume();
        assert!(
            o.leases_drain().await,
            "{proto:?}: the gone client's slot is still held: {}",
            o.leases()
        );
        let client = o.replica.client(proto, &o.ca).await;
        o.idle().await;
        assert_eq!(o.post(&client).await, 200, "{proto:?}: usable again");
    }
}

/// An admin request that may fail to get an answer: its status, or `None`.
async fn admin(r: &Replica, method: reqwest::Method, path: &str, body: &str) -> Option<u16> {
    let resp = r.admin_raw(method, path, body).await.ok()?;
    Some(resp.status().as_u16())
}

/// Hostile bodies on `PATCH /admin/keys/NAME` (and `POST /admin/keys`):
/// an expiry so far that `now + it` overflows, wrong types, unknown
/// fields, names that are not names. Each is answered (400, 404 or a
/// clamped success), never a dropped connection, and the key keeps
/// working: no change half-made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_edits_are_answered_and_change_nothing_they_should_not() {
    let o = One::start("2s").await;
    let r = &o.replica;
    let far = r#"{"expires":"584542046090y"}"#;
    let patch = reqwest::Method::PATCH;
    let cases: &[(&reqwest::Method, &str, &str)] = &[
        (&patch, "/admin/keys/one", far),
        (
            &reqwest::Method::POST,
            "/admin/keys",
            r#"{"name":"far","expires":"584542046090y"}"#,
        ),
        (&patch, "/admin/keys/one", r#"{"rpm":-1}"#),
        (&patch, "/admin/keys/one", r#"{"rpm":4294967296}"#),
        (&patch, "/admin/keys/one", r#"{"scopes":["root"]}"#),
        (&patch, "/admin/keys/one", r#"{"revoked_at":1}"#),
        (&patch, "/admin/keys/one", r#"{"revision":999999}"#),
        (&patch, "/admin/keys/one", r#"{}"#),
        (&patch, "/admin/keys/one", r#"[1,2]"#),
        (&patch, "/admin/keys/one", "\u{0}\u{1}not json"),
        (&patch, "/admin/keys/", r#"{"rpm":5}"#),
        (&patch, "/admin/keys/nobody", r#"{"rpm":5}"#),
        (&patch, "/admin/keys/one%00", r#"{"rpm":5}"#),
        (&patch, "/admin/keys/..%2f..%2fetc", r#"{"rpm":5}"#),
    ];
    for (method, path, body) in cases {
        let status = admin(r, (*method).clone(), path, body).await;
        let s = status.unwrap_or_else(|| panic!("{method} {path} {body}: no answer"));
        assert!(
            (200..300).contains(&s) || s == 400 || s == 404,
            "{method} {path} {body}: {s}"
        );
    }
    let client = o.replica.client(Proto::H2, &o.ca).await;
    assert_eq!(o.post(&client).await, 200, "the key still works");
    let (status, body) = r
        .admin_request(reqwest::Method::GET, "/admin/keys", None)
        .await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let one = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "one")
        .cloned()
        .unwrap();
    assert!(one["revoked_at"].is_null(), "{one}");
    let exp = one["expires_at"].as_u64();
    assert!(
        exp.is_none_or(|e| e > 4_000_000_000),
        "an expiry far off stays far off: {one}"
    );
}

/// Everything the replica wrote to Redis and to its log, after a served
/// request, a created key and an edit: no client key, no cluster secret,
/// no admin token, no upstream key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_redis_or_the_log() {
    let o = One::start("2s").await;
    let client = o.replica.client(Proto::H3, &o.ca).await;
    assert_eq!(o.post(&client).await, 200);
    let (s, body) = o
        .replica
        .admin_request(
            reqwest::Method::POST,
            "/admin/keys",
            Some(serde_json::json!({"name": "two"})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let two = created["key"].as_str().unwrap().to_string();
    let patch = Some(serde_json::json!({"rpm": 7}));
    assert_eq!(
        o.replica
            .admin_request(reqwest::Method::PATCH, "/admin/keys/two", patch)
            .await
            .0,
        200
    );
    let mut conn = o.redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut dump = keys.join("\n");
    for k in &keys {
        let v: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut conn).unwrap();
        dump.push_str(&String::from_utf8_lossy(&v));
    }
    let secrets = [
        ("the first key", o.auth.trim_start_matches("Bearer ")),
        ("the created key", two.as_str()),
        ("the cluster secret", common::cluster::TEST_SECRET),
        ("the admin token", common::ADMIN_TOKEN),
        ("the upstream key", common::UPSTREAM_KEY),
    ];
    let log = o.replica.log();
    for (what, s) in secrets {
        assert!(!dump.contains(s), "{what} is stored in redis");
        assert!(!log.contains(s), "{what} is in the replica's log");
    }
}
