//! The usage history in a real Redis: two gateway processes record their
//! requests (over HTTP/3, HTTP/2 and HTTP/1.1) into the same per-day hashes,
//! and `GET /admin/usage` on either, and `h3gate usage` on the command
//! line, show both replicas' requests; the days expire after the retention.

mod common;

use std::time::Duration;

use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::keys::{bearer, key};
use common::{chat, wait_until, Proto, TestBody, Upstream};
use http::Method;
use serde_json::Value;

/// Redis calls may take this long here (the tests share two cores).
const PATIENT: (&str, &str) = ("[cluster]\n", "[cluster]\ntimeout = \"2s\"\n");

const EXTRA: &str = "\n[spend]\nretention = \"30d\"\n\n[[teams]]\nname = \"ml\"\nbudget = 1.0\n\n[[prices]]\nmodel = \"gpt-4o-mini\"\ninput = 1000.0\noutput = 2000.0\n";

/// One answered `gpt-4o-mini` request at those prices, in nano-USD.
const ACTUAL: u64 = 17_000_000;

fn usd(nanos: u64) -> Option<f64> {
    Some(nanos as f64 / 1e9)
}

async fn usage(r: &Replica, query: &str) -> (u16, Value) {
    let (status, body) = r
        .admin_request(reqwest::Method::GET, &format!("/admin/usage?{query}"), None)
        .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_usage_history_in_redis() {
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_cert(dir.path());
    let first = dir.path().join("replica-1-keys.json");
    let keys: Vec<String> = ["alice", "bob"]
        .into_iter()
        .map(|n| h3gate::auth::create(&first, key(n)).unwrap().0)
        .collect();
    // alice is in team ml (its budget in EXTRA).
    let mut file = h3gate::auth::read_file(&first).unwrap();
    file.keys[0].team = Some("ml".into());
    std::fs::write(&first, serde_json::to_vec(&file).unwrap()).unwrap();
    std::fs::copy(&first, dir.path().join("replica-2-keys.json")).unwrap();
    let (url, base) = (redis.url(), upstream.base_url());
    let replicas: Vec<Replica> = (1..=2)
        .map(|node| {
            Replica::spawn(&ReplicaSpec {
                dir: dir.path(),
                redis_url: &url,
                node_id: node,
                upstream: &base,
                extra: EXTRA,
                replace: &[PATIENT],
            })
        })
        .collect();
    for r in &replicas {
        let up = wait_until(Duration::from_secs(10), async || {
            r.metric("h3gate_cluster_up").await == 1.0
        })
        .await;
        assert!(up, "replica never reached redis");
    }
    // alice on replica 1 over every protocol; bob on replica 2, twice.
    let post = async |r: &Replica, p: Proto, k: &str| {
        let c = r.client(p, &ca).await;
        let auth = bearer(k);
        let h = [("authorization", auth.as_str())];
        let resp = c
            .request(
                Method::POST,
                "/v1/chat/completions",
                &h,
                TestBody::Json(chat("gpt-4o-mini", p == Proto::H2)),
            )
            .await;
        assert_eq!(resp.status, 200, "{p:?}");
        resp.text().await;
    };
    for p in [Proto::H3, Proto::H2, Proto::H1] {
        post(&replicas[0], p, &keys[0]).await;
    }
    post(&replicas[1], Proto::H3, &keys[1]).await;
    post(&replicas[1], Proto::H1, &keys[1]).await;

    // Either replica shows both once they flushed (every second).
    for r in &replicas {
        let mut last = Value::Null;
        let both = wait_until(Duration::from_secs(15), async || {
            let (status, u) = usage(r, "group_by=key").await;
            assert_eq!(status, 200, "{u}");
            last = u;
            last["total"]["requests"] == 5
        })
        .await;
        assert!(both, "never both replicas' requests: {last}");
        let rows: Vec<(&str, u64)> = last["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["group"].as_str().unwrap(),
                    x["requests"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(rows, [("alice", 3), ("bob", 2)]);
        assert_eq!(last["rows"][0]["input_tokens"], 21);
        assert_eq!(last["rows"][0]["cost_usd"].as_f64(), usd(3 * ACTUAL));
        assert_eq!(last["total"]["cost_usd"].as_f64(), usd(5 * ACTUAL));
        let (_, bob) = usage(r, "key=bob&group_by=day").await;
        assert_eq!(bob["rows"].as_array().unwrap().len(), 1, "{bob}");
        assert_eq!(bob["total"]["requests"], 2);
    }
    // The team's budget, counted by the shared history.
    let (status, b) = replicas[1]
        .admin_request(reqwest::Method::GET, "/admin/budgets", None)
        .await;
    assert_eq!(status, 200, "{b}");
    let b: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(b["counted_by"], "history");
    assert_eq!(b["budgets"][0]["name"], "ml", "{b}");
    assert_eq!(b["budgets"][0]["spent"].as_f64(), usd(3 * ACTUAL), "{b}");
    assert_eq!(
        b["budgets"][0]["remaining"].as_f64(),
        usd(1_000_000_000 - 3 * ACTUAL)
    );
    // In Redis: one hash for today, expiring after the retention.
    let today = &h3gate::spend::period::rfc3339(h3gate::clock::now_secs())[..10];
    let mut conn = redis.connection();
    let day_key = format!("h3gate:usage:{today}");
    let fields: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(&day_key)
        .query(&mut conn)
        .unwrap();
    let requests: i64 = fields
        .iter()
        .filter(|(f, _)| f.ends_with("|r"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(requests, 5, "{fields:?}");
    let ttl: i64 = redis::cmd("TTL").arg(&day_key).query(&mut conn).unwrap();
    assert!(ttl > 29 * 86_400 && ttl <= 31 * 86_400, "ttl {ttl}");
    assert!(
        replicas[0]
            .metric("h3gate_cluster_syncs_total{what=\"usage\",result=\"pushed\"}")
            .await
            >= 1.0
    );

    // The command line reads the same history from Redis.
    let (_, api) = usage(&replicas[1], "group_by=model&from=2026-01-01&to=2100-01-01").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_h3gate"))
        .args([
            "usage",
            "--json",
            "--group-by",
            "model",
            "--from",
            "2026-01-01",
            "--to",
            "2100-01-01",
            "--config",
        ])
        .arg(&replicas[0].config_path)
        .env_remove("H3GATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, api);
    assert_eq!(cli["rows"][0]["group"], "gpt-4o-mini");
}
