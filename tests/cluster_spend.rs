//! Spend shared by replicas (separate gateway processes on one real
//! Redis): a key's team and budgets set on one replica reach the other; a
//! key's USD budget and a team's token budget are each one budget across
//! the replicas, over every protocol. (The script itself is checked against
//! the in-memory limiter in `cluster_budgets.rs`.)

mod common;

use std::time::Duration;

use common::cluster::Redis;

/// Two replicas on one Redis, `[[teams]]` naming `research`.
struct Pair {
    redis: Redis,
    _upstream: common::Upstream,
    dir: tempfile::TempDir,
    ca: Vec<u8>,
    a: common::cluster::Replica,
    b: common::cluster::Replica,
}

impl Pair {
    async fn start(extra: &str) -> Pair {
        use common::cluster::{dev_cert, Replica, ReplicaSpec};
        let redis = Redis::start();
        let upstream = common::Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dev_cert(dir.path());
        let (url, base) = (redis.url(), upstream.base_url());
        let spawn = |node| {
            Replica::spawn(&ReplicaSpec {
                dir: dir.path(),
                redis_url: &url,
                node_id: node,
                upstream: &base,
                extra,
                // Patient Redis calls: a spurious 50 ms timeout on a loaded
                // machine would make a change "pending" or a limit local.
                replace: &[("[cluster]\n", "[cluster]\ntimeout = \"2s\"\n")],
            })
        };
        let (a, b) = (spawn(1), spawn(2));
        for r in [&a, &b] {
            let up = common::wait_until(BOUND, async || r.metric("h3gate_cluster_up").await == 1.0)
                .await;
            assert!(up, "{}", r.log());
        }
        Pair {
            redis,
            _upstream: upstream,
            dir,
            ca,
            a,
            b,
        }
    }
}

const BOUND: Duration = Duration::from_secs(10);

async fn admin(
    r: &common::cluster::Replica,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (s, b) = r.admin_request(method, path, body).await;
    (
        s,
        serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)),
    )
}

/// The record named `name` in `GET /admin/keys` on `r`.
async fn listed(r: &common::cluster::Replica, name: &str) -> serde_json::Value {
    let (_, body) = admin(r, reqwest::Method::GET, "/admin/keys", None).await;
    body["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["name"] == name).cloned())
        .unwrap_or_default()
}

/// A key's team and budgets, set with `POST /admin/keys` on A and changed
/// with `PATCH` on B (`null` clears), reach the other replica through
/// Redis unchanged; a team `[[teams]]` lacks is allowed with a warning;
/// bad budgets are refused with 400 and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_team_and_budgets_reach_every_replica() {
    use reqwest::Method as M;
    use serde_json::json;
    let p = Pair::start("\n[[teams]]\nname = \"research\"\nbudget = 100.0\n").await;
    let (s, body) = admin(
        &p.a,
        M::POST,
        "/admin/keys",
        Some(json!({"name": "spender", "team": "research", "budget": 5.0,
                    "budget_tokens": 2_000_000, "budget_period": "1d"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["sharing"], "shared", "{body}");
    assert!(body.get("warning").is_none(), "a known team: {body}");
    let arrived = common::wait_until(BOUND, async || {
        listed(&p.b, "spender").await["budget_period"] == "1d"
    })
    .await;
    assert!(arrived, "the budget reached B");
    let on_b = listed(&p.b, "spender").await;
    assert_eq!(
        (&on_b["team"], &on_b["budget"], &on_b["budget_tokens"]),
        (&json!("research"), &json!(5.0), &json!(2_000_000)),
        "{on_b}"
    );

    // Changed on B: a team the configuration lacks (warned), a rolling
    // period, the tokens budget cleared.
    let (s, body) = admin(
        &p.b,
        M::PATCH,
        "/admin/keys/spender",
        Some(json!({"team": "ops", "budget_period": "30d", "budget_tokens": null})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let warning = body["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("\"ops\"") && warning.contains("[[teams]]"),
        "{body}"
    );
    assert_eq!(body["keys"][0]["budget_period"], "30d", "{body}");
    let arrived = common::wait_until(BOUND, async || {
        listed(&p.a, "spender").await["budget_period"] == "30d"
    })
    .await;
    assert!(arrived, "the edit reached A");
    let on_a = listed(&p.a, "spender").await;
    assert_eq!(on_a["team"], "ops", "{on_a}");
    assert_eq!(on_a["budget"], 5.0, "untouched: {on_a}");
    assert!(on_a["budget_tokens"].is_null(), "cleared: {on_a}");
    // And the records in Redis carry the fields as written.
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.dir.path().join("replica-1-keys.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        file["keys"][0]["budget_period"], "30d",
        "A's mirror: {file}"
    );

    for bad in [
        json!({"budget": 0}),
        json!({"budget": -1.5}),
        json!({"budget_tokens": 0}),
        json!({"budget_period": "1w"}),
        json!({"team": "a b"}),
    ] {
        let (s, body) = admin(&p.a, M::PATCH, "/admin/keys/spender", Some(bad.clone())).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_key_request",
            "{bad}: {body}"
        );
    }
    let (s, body) = admin(
        &p.a,
        M::POST,
        "/admin/keys",
        Some(json!({"name": "nobudget", "budget_period": "month"})),
    )
    .await;
    assert_eq!(s, 400, "a period without a budget: {body}");
    assert_eq!(listed(&p.a, "spender").await["budget"], 5.0);
}

/// USD per million tokens for `gpt-4o-mini` on the replicas: round numbers,
/// so a request's cost is exact in nano-USD (the test upstream reports 7
/// prompt and 5 completion tokens: 7·1000·1000 + 5·2000·1000).
const PRICED: &str = "\n[[prices]]\nmodel = \"gpt-4o-mini\"\ninput = 1000.0\noutput = 2000.0\n";
const ACTUAL: u64 = 17_000_000;

/// A request's reservation: a quarter of its bytes as prompt tokens at the
/// input price, its `max_tokens` at the output price (as the gateway
/// estimates it).
fn estimate(body: &serde_json::Value) -> u64 {
    let prompt = body.to_string().len() as u64 / 4;
    prompt * 1_000_000 + body["max_tokens"].as_u64().unwrap() * 2_000_000
}

/// Posts `body` until it is served (a refusal takes nothing, so asking
/// again is free while an earlier request's correction is on its way);
/// every other answer must be the budget's 429.
async fn until_served(
    c: &common::Client,
    auth: &str,
    body: &serde_json::Value,
) -> common::client::TestResponse {
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let r = post(c, auth, body).await;
        if r.status == 200 {
            return r;
        }
        assert_eq!(r.status, 429, "only the budget refuses");
        r.text().await;
        assert!(std::time::Instant::now() < deadline, "never served");
    }
}

async fn post(
    c: &common::Client,
    auth: &str,
    body: &serde_json::Value,
) -> common::client::TestResponse {
    c.request(
        http::Method::POST,
        "/v1/chat/completions",
        &[("authorization", auth)],
        common::TestBody::Json(body.clone()),
    )
    .await
}

/// Spend is shared by the replicas, over every protocol: a key's USD
/// budget spent on A and B in turn — B's answer shows A's spend — refuses
/// on both once spent; a team's token budget spent by one key on A refuses
/// the team's other key on B. Without the shared counters each replica
/// would allow its own budget's worth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_shared_by_the_replicas() {
    use common::Proto;
    use reqwest::Method as M;
    use serde_json::json;
    let body = common::chat("gpt-4o-mini", false);
    let est = estimate(&body);
    assert!(
        est > 2 * ACTUAL,
        "a second request waits for the first's correction"
    );
    // Two answered requests and a third's reservation, exactly.
    let budget = 2 * ACTUAL + est;
    let tokens = 5 + body.to_string().len() as u64 / 4;
    let mut extra = PRICED.to_string();
    for p in ["h3", "h2", "h1"] {
        // One request's reservation fits; its real 12 tokens and a second
        // request's reservation do not.
        extra.push_str(&format!(
            "\n[[teams]]\nname = \"ml-{p}\"\nbudget_tokens = {}\n",
            tokens + 11
        ));
    }
    let pair = Pair::start(&extra).await;
    let (a, b) = (&pair.a, &pair.b);
    for (proto, p) in [(Proto::H3, "h3"), (Proto::H2, "h2"), (Proto::H1, "h1")] {
        let create = async |name: String, fields: serde_json::Value| {
            let mut req = json!({"name": name});
            req.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            let (s, body) = admin(a, M::POST, "/admin/keys", Some(req)).await;
            assert_eq!((s, &body["sharing"]), (201, &json!("shared")), "{body}");
            assert!(
                common::wait_until(BOUND, async || !listed(b, &name).await.is_null()).await,
                "the key reached B"
            );
            format!("Bearer {}", body["key"].as_str().unwrap())
        };
        let spender = create(
            format!("spender-{p}"),
            json!({"budget": budget as f64 / 1e9, "budget_period": "1d"}),
        )
        .await;
        let (ca, cb) = (
            a.client(proto, &pair.ca).await,
            b.client(proto, &pair.ca).await,
        );

        let first = post(&ca, &spender, &body).await;
        assert_eq!(first.status, 200, "{p}");
        first.text().await;
        // B sees A's spend: its reservation leaves one request's cost.
        let second = until_served(&cb, &spender, &body).await;
        assert_eq!(
            second.header("x-h3gate-budget-remaining"),
            Some(format!("{:.6}", ACTUAL as f64 / 1e9).as_str()),
            "{p}: the budget less A's request and B's reservation"
        );
        second.text().await;
        until_served(&ca, &spender, &body).await.text().await;
        for (side, c) in [("B", &cb), ("A", &ca)] {
            let refused = post(c, &spender, &body).await;
            assert_eq!(refused.status, 429, "{p}: {side} refuses the spent budget");
            assert_eq!(refused.header("x-should-retry"), Some("false"));
            let e = refused.json().await;
            assert_eq!(e["error"]["code"], "insufficient_quota", "{p}: {e}");
        }

        // A team's tokens: alice on A, then bob on B.
        let team = json!({"team": format!("ml-{p}")});
        let alice = create(format!("alice-{p}"), team.clone()).await;
        let bob = create(format!("bob-{p}"), team).await;
        let first = post(&ca, &alice, &body).await;
        assert_eq!(first.status, 200, "{p}");
        first.text().await;
        let refused = post(&cb, &bob, &body).await;
        assert_eq!(
            refused.status, 429,
            "{p}: bob's request counts against the team"
        );
        let e = refused.json().await;
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("team \"ml-{p}\"")), "{p}: {e}");
    }
    // The counters are in Redis, named by the key's hash and the team.
    let mut conn = pair.redis.connection();
    let budgets: Vec<String> = redis::cmd("KEYS")
        .arg("h3gate:budget:*")
        .query(&mut conn)
        .unwrap();
    assert!(
        budgets.iter().filter(|k| k.ends_with(":usd:d")).count() == 3
            && budgets
                .iter()
                .any(|k| k == "h3gate:budget:team:ml-h2:tokens:m"),
        "{budgets:?}"
    );
    assert!(
        !budgets.iter().any(|k| k.contains("spender")),
        "keys are named by their hash: {budgets:?}"
    );
}
