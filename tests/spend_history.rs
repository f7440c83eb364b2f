//! The usage history and spend beyond the process, one node: requests over
//! HTTP/3, HTTP/2 and HTTP/1.1 (both API surfaces) are recorded and
//! `GET /admin/usage` groups and filters them; `GET /admin/budgets` shows
//! what each budget has spent; spend (history and budget counters)
//! survives a restart with `[spend] file` — a clean one, and a crash
//! (SIGKILL) of the process, whose file is whole.

mod common;

use std::time::Duration;

use common::cluster::{dev_cert, Replica, ReplicaSpec};
use common::keys::{bearer, key, with_keys};
use common::spend::{admin, edit_keys, estimate, priced, ACTUAL, INPUT, OUTPUT};
use common::{chat, wait_until, Gateway, Proto, TestBody, Upstream};
use h3gate::config::{Config, TeamConfig};
use h3gate::spend::Period;
use http::Method;
use serde_json::Value;

over_every_protocol!(usage_is_recorded_and_grouped_by_key_team_model_and_day);

/// USD per million tokens for `gpt-4o-mini` here; the test upstream
/// reports 7 prompt and 5 completion tokens.
/// One answered `gpt-4o-mini` request, in nano-USD.
/// A model no price table has: it costs 0.
const CLAUDE: &str = "claude-h3gate-test";

/// `/admin/usage?query` once it reports `requests` in all (bounded: a
/// request is recorded at its end, a moment after the client has it all).
async fn usage_once(addr: std::net::SocketAddr, query: &str, requests: u64) -> Value {
    let path = format!("/admin/usage?{query}");
    let mut last = Value::Null;
    let seen = wait_until(Duration::from_secs(10), async || {
        let (status, body) = admin(addr, &path).await;
        assert_eq!(status, 200, "{body}");
        last = body;
        last["total"]["requests"] == requests
    })
    .await;
    assert!(seen, "{path}: never {requests} requests: {last}");
    last
}

/// `(group, requests)` of an answer's rows.
fn groups(u: &Value) -> Vec<(String, u64)> {
    u["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row<'a>(u: &'a Value, group: &str) -> &'a Value {
    u["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"] == group)
        .unwrap_or_else(|| panic!("no row {group}: {u}"))
}

async fn usage_is_recorded_and_grouped_by_key_team_model_and_day(p: Proto) {
    let (gw, keys) = with_keys(vec![key("alice"), key("bob")], |c| {
        priced(c);
        c.teams.push(TeamConfig {
            name: "eng".into(),
            budget: Some(10.0),
            budget_tokens: None,
            budget_period: Period::Month,
        });
        edit_keys(c.auth.keys_file.as_deref().unwrap(), |k| {
            if k.name == "alice" {
                k.team = Some("eng".into());
                k.budget = Some(1.0);
                k.budget_period = Some(Period::Day);
            }
        });
    })
    .await;
    let c = gw.client(p).await;
    let (alice, bob) = (bearer(&keys[0]), bearer(&keys[1]));
    // alice: a JSON and a streamed chat completion; bob: an Anthropic message.
    for stream in [false, true] {
        let h = [("authorization", alice.as_str())];
        let r = c
            .request(
                Method::POST,
                "/v1/chat/completions",
                &h,
                TestBody::Json(chat("gpt-4o-mini", stream)),
            )
            .await;
        assert_eq!(r.status, 200);
        r.text().await;
    }
    let msg = serde_json::json!({"model": CLAUDE, "max_tokens": 5,
        "messages": [{"role": "user", "content": "Say hi"}]});
    let h = [
        ("authorization", bob.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];
    let r = c
        .request(Method::POST, "/v1/messages", &h, TestBody::Json(msg))
        .await;
    assert_eq!(r.status, 200);
    r.text().await;

    let by_key = usage_once(gw.admin, "group_by=key", 3).await;
    assert_eq!(groups(&by_key), [("alice".into(), 2), ("bob".into(), 1)]);
    let a = row(&by_key, "alice");
    assert_eq!(
        (a["input_tokens"].as_u64(), a["output_tokens"].as_u64()),
        (Some(14), Some(10)),
        "{a}"
    );
    assert_eq!(a["cost_usd"].as_f64(), Some(2.0 * ACTUAL as f64 / 1e9));
    assert_eq!(by_key["group_by"], "key");
    assert!(
        by_key["from"].as_str().unwrap().ends_with("-01T00:00:00Z"),
        "the month's start"
    );
    assert!(
        by_key["total"]["input_tokens"].as_u64().unwrap() > 14,
        "bob's tokens too"
    );
    let by_model = usage_once(gw.admin, "", 3).await;
    // A model no provider declares, on a wildcard route: under its pattern
    // (the client chose the name), as in the metrics.
    assert_eq!(
        groups(&by_model),
        [("gpt-4o-mini".into(), 2), ("claude-*".into(), 1)]
    );
    let by_team = usage_once(gw.admin, "group_by=team", 3).await;
    assert_eq!(groups(&by_team), [("eng".into(), 2), ("".into(), 1)]);
    let by_day = usage_once(gw.admin, "group_by=day", 3).await;
    let today = &h3gate::spend::period::rfc3339(h3gate::clock::now_secs())[..10];
    assert_eq!(groups(&by_day), [(today.to_string(), 3)]);
    // Filters.
    let alice_models = usage_once(gw.admin, "key=alice&group_by=model", 2).await;
    assert_eq!(groups(&alice_models), [("gpt-4o-mini".into(), 2)]);
    assert_eq!(usage_once(gw.admin, "team=eng", 2).await["team"], "eng");
    usage_once(gw.admin, "key=bob&team=eng", 0).await;
    let tomorrow = &h3gate::spend::period::rfc3339(h3gate::clock::now_secs() + 86_400)[..10];
    usage_once(gw.admin, &format!("from={tomorrow}&to=2999-01-01"), 0).await;
    // What is not right is named.
    for (query, param) in [
        ("from=yesterday", "from"),
        ("to=2026-02-30", "to"),
        ("group_by=week", "group_by"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("model=x", "model"),
    ] {
        let (status, e) = admin(gw.admin, &format!("/admin/usage?{query}")).await;
        assert_eq!(status, 400, "{query}: {e}");
        assert_eq!(e["error"]["param"], param, "{query}: {e}");
        assert_eq!(e["error"]["code"], "invalid_parameter");
    }
    let unauthenticated = reqwest::get(format!("http://{}/admin/usage", gw.admin))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // Budgets: alice's (daily) and the team's (monthly), from the limiter.
    let (status, b) = admin(gw.admin, "/admin/budgets").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["counted_by"], "limiter");
    let list = b["budgets"].as_array().unwrap();
    let names: Vec<(&str, &str, &str)> = list
        .iter()
        .map(|x| {
            let s = |f: &str| x[f].as_str().unwrap();
            (s("scope"), s("name"), s("unit"))
        })
        .collect();
    assert_eq!(
        names,
        [("key", "alice", "usd"), ("team", "eng", "usd")],
        "bob has no budget"
    );
    let spent = 2.0 * ACTUAL as f64 / 1e9;
    for x in list {
        assert_eq!(x["spent"].as_f64(), Some(spent), "{x}");
        assert_eq!(x["spent_usd"].as_f64(), Some(spent), "{x}");
        assert_eq!(x["spent_tokens"], 24, "{x}");
    }
    assert_eq!(list[0]["budget"], 1.0);
    assert_eq!(
        list[0]["remaining"].as_f64(),
        Some((1e9 - 2.0 * ACTUAL as f64) / 1e9)
    );
    assert_eq!(list[0]["period"], "1d");
    assert_eq!(list[0]["team"], "eng");
    assert_eq!(list[1]["period"], "month");
    assert!(list[1]["resets_at"]
        .as_str()
        .unwrap()
        .ends_with("-01T00:00:00Z"));
}

/// A keys file with one key, `capped`, whose daily budget fits three
/// `gpt-4o-mini` requests and not a fourth's reservation; the key.
fn capped_keys(path: &std::path::Path) -> String {
    let (k, _) = h3gate::auth::create(path, key("capped")).unwrap();
    let budget = 3 * ACTUAL + estimate(&chat("gpt-4o-mini", false)) - 1;
    edit_keys(path, |r| {
        r.budget = Some(budget as f64 / 1e9);
        r.budget_period = Some(Period::Day);
    });
    k
}

async fn post(c: &common::Client, auth: &str) -> u16 {
    let h = [("authorization", auth)];
    let r = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            TestBody::Json(chat("gpt-4o-mini", false)),
        )
        .await;
    let status = r.status;
    r.text().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_restart_without_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (keys_file, spend_file) = (dir.path().join("keys.json"), dir.path().join("spend.json"));
    let auth = bearer(&capped_keys(&keys_file));
    let setup = |keys_file: std::path::PathBuf, spend_file: std::path::PathBuf| {
        move |c: &mut Config| {
            priced(c);
            c.auth.required = true;
            c.auth.keys_file = Some(keys_file);
            c.spend.file = Some(spend_file);
        }
    };
    let mut first = Gateway::start_with(setup(keys_file.clone(), spend_file.clone())).await;
    for (n, p) in [Proto::H3, Proto::H2, Proto::H1].into_iter().enumerate() {
        let c = first.client(p).await;
        assert_eq!(post(&c, &auth).await, 200, "{p:?}");
        // Its correction is in once it is recorded.
        usage_once(first.admin, "", n as u64 + 1).await;
    }
    // A reload keeps the spend (and the file it was started with: the
    // configuration file never named it, so it is a restart's to change).
    let (status, report) = first.reload().await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["restart_required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "spend.file"),
        "{report}"
    );
    usage_once(first.admin, "", 3).await;
    let written = wait_until(Duration::from_secs(10), async || {
        h3gate::usage::file::read(&spend_file)
            .ok()
            .flatten()
            .is_some_and(|s| s.buckets.iter().map(|(_, s)| s.requests).sum::<u64>() == 3)
    })
    .await;
    assert!(written, "the spend file is written while the gateway runs");
    first.begin_shutdown();
    first.stopped().await.unwrap();
    let saved = h3gate::usage::file::read(&spend_file).unwrap().unwrap();
    assert_eq!(
        saved.buckets.iter().map(|(_, s)| s.requests).sum::<u64>(),
        3
    );

    let second = Gateway::start_with(setup(keys_file.clone(), spend_file.clone())).await;
    let u = usage_once(second.admin, "group_by=key", 3).await;
    assert_eq!(groups(&u), [("capped".into(), 3)]);
    assert_eq!(
        u["total"]["cost_usd"].as_f64(),
        Some(3.0 * ACTUAL as f64 / 1e9)
    );
    let (_, b) = admin(second.admin, "/admin/budgets").await;
    assert_eq!(
        b["budgets"][0]["spent"].as_f64(),
        Some(3.0 * ACTUAL as f64 / 1e9),
        "{b}"
    );
    // The budget counters came back: the fourth request does not fit.
    let c = second.client(Proto::H3).await;
    assert_eq!(post(&c, &auth).await, 429, "the restored budget is spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_gateways_spend_file_is_whole_and_read_back() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_cert(dir.path());
    let auth = bearer(&capped_keys(&dir.path().join("replica-1-keys.json")));
    let spend_file = dir.path().join("spend.json");
    let base = upstream.base_url();
    let extra = format!(
        "\n[spend]\nfile = \"spend.json\"\n\n[[prices]]\nmodel = \"gpt-4o-mini\"\ninput = {INPUT:.1}\noutput = {OUTPUT:.1}\n"
    );
    let spec = ReplicaSpec {
        dir: dir.path(),
        redis_url: "",
        node_id: 1,
        upstream: &base,
        extra: &extra,
        replace: &[],
    };
    let replica = Replica::spawn(&spec);
    for (n, p) in [Proto::H3, Proto::H2].into_iter().enumerate() {
        let c = replica.client(p, &ca).await;
        assert_eq!(post(&c, &auth).await, 200, "{p:?}");
        usage_once(replica.admin, "", n as u64 + 1).await;
    }
    let written = wait_until(Duration::from_secs(10), async || {
        h3gate::usage::file::read(&spend_file)
            .ok()
            .flatten()
            .is_some_and(|s| s.buckets.iter().map(|(_, s)| s.requests).sum::<u64>() == 2)
    })
    .await;
    assert!(written, "the spend file has both requests");
    // SIGKILL: no drain, no last write.
    drop(replica);
    let again = Replica::spawn(&spec);
    let u = usage_once(again.admin, "group_by=key", 2).await;
    assert_eq!(groups(&u), [("capped".into(), 2)]);
    let c = again.client(Proto::H1, &ca).await;
    assert_eq!(post(&c, &auth).await, 200, "the third fits");
    usage_once(again.admin, "", 3).await;
    assert_eq!(
        post(&c, &auth).await,
        429,
        "the fourth does not: the counters came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_spend_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let spend_file = dir.path().join("spend.json");
    std::fs::write(&spend_file, "{\"version\": 1, \"buckets\": [[{").unwrap();
    let f = spend_file.clone();
    let mut gw = Gateway::start_with(move |c| c.spend.file = Some(f)).await;
    let err = gw.stopped().await.unwrap_err().to_string();
    assert!(
        err.contains("spend file") && err.contains("not a spend file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&spend_file).unwrap(),
        "{\"version\": 1, \"buckets\": [[{",
        "left as it was"
    );
}
