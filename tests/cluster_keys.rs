//! Keys, revocations and abuse denies shared by replicas (separate gateway
//! processes) through a real Redis: a change on any replica applies on
//! every replica, over every protocol; a Redis outage or a restart without
//! persistence loses no key and brings no revoked key back.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::{chat, wait_until, Client, Proto, TestBody};
use http::Method;
use reqwest::Method as M;
use serde_json::{json, Value};

const PROTOS: [Proto; 3] = [Proto::H3, Proto::H2, Proto::H1];

/// What a test bounds a propagation by (the goal is 1 s; the measured
/// latency is printed).
const BOUND: Duration = Duration::from_secs(10);

/// For the key tests: polling with a key that has not arrived yet is a
/// failed authentication each time, and would end in an abuse deny.
const NO_ABUSE: &str = "\n[abuse]\nenabled = false\n";

/// Redis, an upstream, and replicas sharing them.
struct Setup {
    redis: Redis,
    _upstream: common::Upstream,
    base: String,
    dir: tempfile::TempDir,
    ca: Vec<u8>,
    extra: &'static str,
    replicas: Vec<Replica>,
}

impl Setup {
    async fn start(n: u64, extra: &'static str) -> Setup {
        let redis = Redis::start();
        let upstream = common::Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dev_cert(dir.path());
        let base = upstream.base_url();
        let mut s = Setup {
            redis,
            _upstream: upstream,
            base,
            dir,
            ca,
            extra,
            replicas: Vec::new(),
        };
        for node in 1..=n {
            let r = s.spawn(node);
            s.replicas.push(r);
        }
        for r in &s.replicas {
            assert!(redis_up(r).await, "{}", r.log());
        }
        s
    }

    fn spawn(&self, node: u64) -> Replica {
        let url = self.redis.url();
        Replica::spawn(&ReplicaSpec {
            dir: self.dir.path(),
            redis_url: &url,
            node_id: node,
            upstream: &self.base,
            extra: self.extra,
            // These tests are about propagation, not slowness: on a loaded
            // machine the default 50 ms would make some changes "pending".
            replace: &[("[cluster]\n", "[cluster]\ntimeout = \"1s\"\n")],
        })
    }

    /// One client per protocol to replica `i`.
    async fn clients(&self, i: usize) -> Vec<Client> {
        let mut v = Vec::new();
        for p in PROTOS {
            v.push(self.replicas[i].client(p, &self.ca).await);
        }
        v
    }
}

/// Whether the replica reaches Redis (observed within a bounded wait).
async fn redis_up(r: &Replica) -> bool {
    wait_until(BOUND, async || r.metric("h3gate_cluster_up").await == 1.0).await
}

/// The status of a chat request with `key` for `model`.
async fn status(c: &Client, key: &str, model: &str) -> u16 {
    let r = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {key}"))],
            TestBody::Json(chat(model, false)),
        )
        .await;
    let s = r.status;
    r.text().await;
    s
}

/// Waits (bounded) until every client answers `want`; the time it took.
async fn until_all(clients: &[Client], key: &str, model: &str, want: u16) -> Option<Duration> {
    let start = Instant::now();
    for c in clients {
        let ok = wait_until(BOUND, async || status(c, key, model).await == want).await;
        if !ok {
            eprintln!("still {} (not {want})", status(c, key, model).await);
            return None;
        }
    }
    Some(start.elapsed())
}

async fn admin(r: &Replica, method: M, path: &str, body: Option<Value>) -> (u16, Value) {
    let (s, b) = r.admin_request(method, path, body).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

/// `POST /admin/keys` on `r`: the new key (asserting how it was stored).
async fn create(r: &Replica, body: Value, want: u16, sharing: &str) -> String {
    let (s, b) = admin(r, M::POST, "/admin/keys", Some(body)).await;
    assert_eq!(s, want, "{b}");
    assert_eq!(b["sharing"], sharing, "{b}");
    b["key"].as_str().unwrap().to_string()
}

fn h3gate(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_h3gate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_created_edited_and_revoked_on_one_replica_apply_on_every_replica() {
    let s = Setup::start(3, NO_ABUSE).await;
    let (a, b, c) = (s.clients(0).await, s.clients(1).await, s.clients(2).await);
    let all: Vec<&Client> = a.iter().chain(&b).chain(&c).collect();

    // Created on B: works on A and C, over every protocol.
    let key = create(
        &s.replicas[1],
        json!({"name": "svc", "models": ["gpt-*", "mock-*"]}),
        201,
        "shared",
    )
    .await;
    let created = until_all(&a, &key, "mock-1", 200).await;
    let created_c = until_all(&c, &key, "mock-1", 200).await;
    assert!(
        created.is_some() && created_c.is_some(),
        "the new key works on A and C"
    );

    // A name is unique across the cluster, checked in Redis.
    let (st, body) = admin(
        &s.replicas[2],
        M::POST,
        "/admin/keys",
        Some(json!({"name": "svc"})),
    )
    .await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["error"]["code"], "key_exists", "{body}");

    // Edited on C: the models apply on A.
    let (st, body) = admin(
        &s.replicas[2],
        M::PATCH,
        "/admin/keys/svc",
        Some(json!({"models": ["mock-*"], "rpm": 1000})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["sharing"], "shared");
    assert_eq!(body["keys"][0]["revision"], 2, "{body}");
    let edited = until_all(&a, &key, "gpt-4o-mini", 403).await;
    assert!(edited.is_some(), "the edit reached A");
    assert_eq!(status(&a[0], &key, "mock-1").await, 200);
    let (_, listed) = admin(&s.replicas[0], M::GET, "/admin/keys", None).await;
    assert_eq!(listed["keys"][0]["rpm"], 1000, "{listed}");
    assert!(!listed.to_string().contains(&key), "no secret listed");

    // Bad edits are refused clearly, with a request id.
    let r = &s.replicas[0];
    for (body, status, code) in [
        (r#"{"name":"x"}"#, 400, "invalid_json"),
        (r#"{"rpm":"many"}"#, 400, "invalid_json"),
        (r#"{"scopes":["admin"]}"#, 400, "invalid_key_request"),
        (r#"{"expires":"soon"}"#, 400, "invalid_expires"),
        ("{}", 400, "invalid_key_request"),
    ] {
        let (st, got, id) = refused(r, M::PATCH, "/admin/keys/svc", body).await;
        assert_eq!((st, got.as_str()), (status, code), "{body}");
        assert!(id.starts_with("adm_"), "{id:?}");
    }
    let (st, code, _) = refused(r, M::PATCH, "/admin/keys/nobody", r#"{"rpm":1}"#).await;
    assert_eq!((st, code.as_str()), (404, "no_such_key"));

    // Revoked on A: refused on B and C, every protocol.
    let (st, body) = admin(&s.replicas[0], M::DELETE, "/admin/keys/svc", None).await;
    assert_eq!(
        (st, body["sharing"].as_str()),
        (200, Some("shared")),
        "{body}"
    );
    let start = Instant::now();
    let on_b = until_all(&b, &key, "mock-1", 401).await;
    let on_c = until_all(&c, &key, "mock-1", 401).await;
    assert!(
        on_b.is_some() && on_c.is_some(),
        "the revocation reached B and C"
    );
    eprintln!(
        "propagation: create → A {:?}, edit → A {:?}, revoke → B {:?} and C {:?} (all three protocols; since the admin answer, total {:?})",
        created.unwrap(),
        edited.unwrap(),
        on_b.unwrap(),
        on_c.unwrap(),
        start.elapsed()
    );
    for cl in &all {
        assert_eq!(status(cl, &key, "mock-1").await, 401);
    }

    // Each replica's keys file mirrors the set: the revoked record, never the key.
    let mirror = s.dir.path().join("replica-2-keys.json");
    let mirrored = wait_until(BOUND, async || {
        let file: Value = std::fs::read_to_string(&mirror)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        file["keys"][0]["name"] == "svc" && file["keys"][0]["revoked_at"].is_u64()
    })
    .await;
    let text = std::fs::read_to_string(&mirror).unwrap();
    assert!(mirrored && !text.contains(&key), "{text}");

    the_cli_with_the_cluster_configured_changes_redis(&s, &a, &c).await;
}

/// `h3gate keys … --config` with the replicas' configuration works on Redis.
async fn the_cli_with_the_cluster_configured_changes_redis(s: &Setup, a: &[Client], c: &[Client]) {
    let config = &s.replicas[0].config_path;
    let out = h3gate(
        &["keys", "create", "--name", "cli", "--models", "mock-*"],
        config,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        key.starts_with("h3g_") && !stderr.contains(&key),
        "{stderr}"
    );
    assert!(
        until_all(c, &key, "mock-1", 200).await.is_some(),
        "a CLI key works on C"
    );

    let out = h3gate(&["keys", "edit", "cli", "--models", "none-*"], config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        until_all(a, &key, "mock-1", 403).await.is_some(),
        "a CLI edit applies"
    );

    let out = h3gate(&["keys", "list"], config);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("cli\t") && listed.contains("svc\t"),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("svc\t") && l.contains("revoked")),
        "{listed}"
    );

    let out = h3gate(&["keys", "revoke", "cli"], config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        until_all(c, &key, "mock-1", 401).await.is_some(),
        "a CLI revocation applies"
    );

    // `--keys-file` on a replica's own file: that replica merges it into Redis.
    let file = s.dir.path().join("replica-1-keys.json");
    // Once A's mirror has the revocation: a mirror write still to come
    // would replace the file this writes (under load it came after).
    let mirrored = wait_until(BOUND, async || {
        h3gate::auth::read_file(&file).is_ok_and(|f| {
            f.keys
                .iter()
                .any(|k| k.name == "cli" && k.revoked_at.is_some())
        })
    })
    .await;
    assert!(mirrored, "A's keys file mirrors the revocation");
    let local = h3gate::auth::create(
        &file,
        h3gate::auth::NewKey {
            name: "by-file".into(),
            ..Default::default()
        },
    )
    .unwrap()
    .0;
    assert!(
        until_all(c, &local, "mock-1", 200).await.is_some(),
        "a key written into A's file reaches C"
    );
}

/// A bad admin request: its status, error code and request id.
async fn refused(r: &Replica, method: M, path: &str, body: &str) -> (u16, String, String) {
    let resp = r.admin_raw(method, path, body).await.unwrap();
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap().to_string(),
        id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_and_a_restart_without_persistence_lose_no_key_and_revive_no_revoked_one() {
    let mut s = Setup::start(3, NO_ABUSE).await;
    let r = &s.replicas;
    let keep = create(&r[0], json!({"name": "keep"}), 201, "shared").await;
    let gone = create(&r[0], json!({"name": "gone"}), 201, "shared").await;
    let late = create(&r[1], json!({"name": "late"}), 201, "shared").await;
    let c = s.clients(2).await;
    for k in [&keep, &gone, &late] {
        assert!(until_all(&c, k, "mock-1", 200).await.is_some());
    }
    // C stops with all three live in its keys file; `gone` is revoked meanwhile.
    drop(c);
    let stale = s.replicas.pop().unwrap();
    drop(stale);
    let (st, _) = admin(&s.replicas[1], M::DELETE, "/admin/keys/gone", None).await;
    assert_eq!(st, 200);
    let a = s.clients(0).await;
    assert!(until_all(&a, &gone, "mock-1", 401).await.is_some());

    // Redis goes away: authentication goes on from each replica's copy, and
    // changes apply on the replica that took them (202, pending).
    s.redis.kill();
    let b = s.clients(1).await;
    let down = wait_until(BOUND, async || {
        s.replicas[0].metric("h3gate_cluster_up").await == 0.0
    })
    .await;
    assert!(down, "A saw redis go");
    assert_eq!(
        status(&b[1], &keep, "mock-1").await,
        200,
        "keys work while redis is down"
    );
    let (st, body) = admin(&s.replicas[0], M::DELETE, "/admin/keys/late", None).await;
    assert_eq!(
        (st, body["sharing"].as_str()),
        (202, Some("pending")),
        "{body}"
    );
    let new = create(&s.replicas[0], json!({"name": "new"}), 202, "pending").await;
    for cl in &a {
        assert_eq!(
            status(cl, &late, "mock-1").await,
            401,
            "the revocation applies here at once"
        );
        assert_eq!(
            status(cl, &new, "mock-1").await,
            200,
            "the new key works here at once"
        );
    }
    let (_, listed) = admin(&s.replicas[0], M::GET, "/admin/keys", None).await;
    assert_eq!(listed["sharing"], "pending", "{listed}");
    // The CLI serves nobody locally: it refuses, and changes nothing.
    let out = h3gate(
        &["keys", "create", "--name", "offline"],
        &s.replicas[0].config_path,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unreachable"),
        "{stderr}"
    );

    // C comes back first, from its stale file; then Redis, empty.
    s.replicas.push(s.spawn(3));
    s.redis.start_again();
    for r in &s.replicas {
        assert!(redis_up(r).await, "{}", r.log());
    }
    let c = s.clients(2).await;
    for clients in [&a, &b, &c] {
        assert!(
            until_all(clients, &keep, "mock-1", 200).await.is_some(),
            "no key is lost"
        );
        assert!(
            until_all(clients, &new, "mock-1", 200).await.is_some(),
            "the key made while down is shared"
        );
        assert!(
            until_all(clients, &gone, "mock-1", 401).await.is_some(),
            "a revoked key stays revoked"
        );
        assert!(
            until_all(clients, &late, "mock-1", 401).await.is_some(),
            "the revocation made while down is shared"
        );
    }
    let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("h3gate:keys")
        .query(&mut s.redis.connection())
        .unwrap();
    let records: Vec<Value> = stored
        .values()
        .map(|v| serde_json::from_str(v).unwrap())
        .collect();
    let revoked = |name: &str| {
        records
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| !r["revoked_at"].is_null())
    };
    assert_eq!(records.len(), 4, "{records:?}");
    assert_eq!(revoked("keep"), Some(false));
    assert_eq!(revoked("new"), Some(false));
    assert_eq!(revoked("gone"), Some(true));
    assert_eq!(revoked("late"), Some(true));
    assert!(
        stored.values().all(|v| ![&keep, &gone, &late, &new]
            .iter()
            .any(|k| v.contains(k.as_str()))),
        "only hashes in redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_on_one_replica_is_enforced_listed_and_lifted_on_every_replica() {
    let mut s = Setup::start(3, "\n[abuse]\nmax_failures = 3\ndeny_for = \"10m\"\n").await;
    let key = create(&s.replicas[0], json!({"name": "ok"}), 201, "shared").await;
    // Waited for through the admin API: a request before the key arrives
    // would be a failed authentication, counted toward a deny.
    for r in &s.replicas {
        let known = wait_until(BOUND, async || {
            let (_, body) = admin(r, M::GET, "/admin/keys", None).await;
            body["keys"][0]["name"] == "ok"
        })
        .await;
        assert!(known, "the key reached every replica");
    }
    let (a, b, c) = (s.clients(0).await, s.clients(1).await, s.clients(2).await);
    for clients in [&a, &b, &c] {
        for cl in clients {
            assert_eq!(status(cl, &key, "mock-1").await, 200);
        }
    }
    // Three failed authentications on A: the address is denied there…
    for _ in 0..3 {
        assert_eq!(status(&a[1], "h3g_wrong", "mock-1").await, 401);
    }
    assert_eq!(status(&a[0], &key, "mock-1").await, 403);
    // … and on C, every protocol, within a poll.
    let on_c = until_all(&c, &key, "mock-1", 403).await;
    assert!(on_c.is_some(), "the deny reached C");
    eprintln!(
        "propagation: deny on A → enforced on C (three protocols) in {:?}",
        on_c.unwrap()
    );

    // Listed from B, with its TTL; it survives a Redis restart without persistence.
    let listed = async |r: &Replica| {
        let (st, body) = admin(r, M::GET, "/admin/denylist", None).await;
        assert_eq!(st, 200, "{body}");
        body
    };
    let body = listed(&s.replicas[1]).await;
    assert_eq!(body["denied"][0]["address"], "127.0.0.1", "{body}");
    let left = body["denied"][0]["seconds_left"].as_u64().unwrap();
    assert!(left > 0 && left <= 600, "{body}");
    s.redis.kill();
    s.redis.start_again();
    let reseeded = wait_until(BOUND, async || {
        let n: u64 = redis::cmd("ZCARD")
            .arg("h3gate:denies")
            .query(&mut s.redis.connection())
            .unwrap_or(0);
        n == 1
    })
    .await;
    assert!(reseeded, "the replicas merged their denies back into redis");
    for r in &s.replicas {
        assert!(redis_up(r).await);
    }

    // Lifted from C: served again on A and B.
    let (st, body) = admin(&s.replicas[2], M::DELETE, "/admin/denylist/127.0.0.1", None).await;
    assert_eq!(
        (st, body["sharing"].as_str()),
        (200, Some("shared")),
        "{body}"
    );
    let start = Instant::now();
    assert!(
        until_all(&a, &key, "mock-1", 200).await.is_some(),
        "lifted on A"
    );
    assert!(
        until_all(&b, &key, "mock-1", 200).await.is_some(),
        "lifted on B"
    );
    eprintln!(
        "propagation: lift on C → served on A and B in {:?}",
        start.elapsed()
    );
    let body = listed(&s.replicas[0]).await;
    assert_eq!(body["denied"], json!([]), "{body}");
    let (st, _) = admin(&s.replicas[1], M::DELETE, "/admin/denylist/127.0.0.1", None).await;
    assert_eq!(st, 404, "nothing left to lift");
}

/// Denies of `Abuse`s in this process sharing one Redis (no gateway: what
/// is checked is the merge in Redis). A replica that kept a deny in its
/// state file while the deny was lifted elsewhere does not bring it back
/// when it starts; a deny made after the lift applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifted_deny_does_not_come_back_from_a_replica_that_kept_it() {
    use h3gate::abuse::Abuse;
    use h3gate::cluster::sync::Sharing;
    use h3gate::config::{AbuseConfig, ClusterConfig, Duration as D, Secret};
    use std::sync::Arc;

    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ClusterConfig {
        redis_url: redis.url(),
        secret: Secret::new(common::cluster::TEST_SECRET),
        timeout: D::secs(1),
        ..Default::default()
    };
    let shutdown = h3gate::shutdown::Shutdown::new(Default::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let cluster = h3gate::cluster::Cluster::connect(&cfg).unwrap().unwrap();
    cluster.start(&shutdown);
    assert!(cluster.ready(BOUND).await);
    let replica = |name: &str| {
        let a = Arc::new(Abuse::new(&AbuseConfig {
            state_file: Some(dir.path().join(name)),
            ..Default::default()
        }));
        a.share(Some(cluster.clone()), stop.clone(), &shutdown);
        a
    };
    let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    let (a, b) = (replica("a.json"), replica("b.json"));
    a.deny(ip, Duration::from_secs(600));
    assert!(wait_until(BOUND, async || b.is_denied(ip)).await, "shared");
    // C was away with the deny in its state file.
    std::fs::copy(dir.path().join("a.json"), dir.path().join("c.json")).unwrap();
    assert_eq!(b.lift_everywhere(ip).await, (true, Sharing::Shared));
    assert!(
        wait_until(BOUND, async || !a.is_denied(ip)).await,
        "lifted on A"
    );

    let c = replica("c.json");
    assert!(
        wait_until(BOUND, async || !c.is_denied(ip)).await,
        "C takes the lift from redis instead of bringing its deny back"
    );
    let (listed, sharing) = a.list_everywhere().await;
    assert_eq!((listed, sharing), (vec![], Sharing::Shared));
    assert!(!a.is_denied(ip) && !b.is_denied(ip));

    c.deny(ip, Duration::from_secs(60));
    assert!(
        wait_until(BOUND, async || a.is_denied(ip) && b.is_denied(ip)).await,
        "a deny made after the lift applies everywhere"
    );
    stop.cancel();
}

/// A new replica has no keys file yet: it starts, takes the keys from
/// Redis and writes its mirror (only hashes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_keys_file_takes_the_keys_from_redis_and_mirrors_them() {
    use h3gate::auth::{Keys, NewKey, Offline};
    use h3gate::cluster::sync::Sharing;
    use std::sync::Arc;

    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("new/keys.json");
    let text = format!(
        "[tls]\ngenerate_dev_cert = true\n[auth]\nkeys_file = \"{}\"\n\
         [cluster]\nredis_url = \"{}\"\nsecret = \"{}\"\ntimeout = \"1s\"\n\
         [[providers]]\nname = \"m\"\nkind = \"mock\"\n[[routes]]\nmodel = \"*\"\ntargets = [\"m\"]\n",
        mirror.display(),
        redis.url(),
        common::cluster::TEST_SECRET
    );
    let config = h3gate::config::Config::from_toml(&text, dir.path(), &|_| None)
        .unwrap_or_else(|e| panic!("a missing mirror is fine in a cluster: {e}"));
    let shutdown = h3gate::shutdown::Shutdown::new(Default::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let cluster = h3gate::cluster::Cluster::connect(&config.cluster)
        .unwrap()
        .unwrap();
    cluster.start(&shutdown);
    assert!(cluster.ready(BOUND).await);

    let elsewhere = Keys::shared(None, cluster.clone(), Offline::Refuse).unwrap();
    let made = elsewhere
        .create(NewKey {
            name: "early".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(made.sharing, Sharing::Shared);

    let keys = Arc::new(Keys::shared(Some(&mirror), cluster, Offline::ApplyLocally).unwrap());
    assert!(keys.list().is_empty());
    shutdown.spawn(keys.clone().watch(stop.clone(), shutdown.clone()));
    let mut h = http::HeaderMap::new();
    h.insert("x-api-key", made.key.parse().unwrap());
    assert!(wait_until(BOUND, async || keys.authenticate(&h).is_ok()).await);
    let mirrored = wait_until(BOUND, async || {
        std::fs::read_to_string(&mirror).is_ok_and(|t| t.contains(&made.record.sha256))
    })
    .await;
    assert!(mirrored, "the mirror is written");
    assert!(!std::fs::read_to_string(&mirror)
        .unwrap()
        .contains(&made.key));
    stop.cancel();
}
