//! Budgets under hostile timing, over HTTP/3, HTTP/2 and HTTP/1.1: many
//! requests at once on a budget that fits a few (never more served than the
//! reservations allow, a refused request takes nothing), clients that go
//! away before the response's headers and mid-stream, upstreams that fail
//! (an error status, a failover, a stream cut mid-way). Whatever happened,
//! what the budget counted (`GET /admin/budgets`) is what the usage history
//! says was spent (`GET /admin/usage`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::keys::{bearer, key, with_keys};
use common::{chat, wait_until, Gateway, Proto, TestBody, ADMIN_TOKEN};
use h3gate::config::Config;
use http::Method;
use serde_json::Value;

over_every_protocol!(
    parallel_requests_never_overspend_and_the_refused_take_nothing,
    a_client_gone_before_the_headers_is_in_the_history_as_the_budget_counts_it,
    a_stream_cut_short_is_in_the_history_as_the_budget_counts_it,
    failed_attempts_cost_nothing_and_a_failover_costs_the_served_answer,
    a_hostile_max_tokens_is_refused_not_wrapped_to_a_small_reservation,
    client_chosen_model_names_do_not_grow_the_history,
);

/// The test upstream's usage of an answer: 7 prompt + 5 completion tokens.
const REAL: u64 = 12;

/// A key's token budget (per day) of `tokens`.
fn token_budget(c: &Config, tokens: u64) {
    let path = c.auth.keys_file.clone().unwrap();
    let mut file = h3gate::auth::read_file(&path).unwrap();
    for k in &mut file.keys {
        k.budget_tokens = Some(tokens);
        k.budget_period = Some(h3gate::spend::Period::Day);
    }
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
}

/// The tokens a chat body reserves: its `max_tokens` and a quarter of its bytes.
fn reserves(body: &Value) -> u64 {
    body["max_tokens"].as_u64().unwrap() + body.to_string().len() as u64 / 4
}

async fn admin(gw: &Gateway, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("http://{}{path}", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

/// What the key's token budget counted, and what the history has: its
/// requests and tokens.
async fn counted(gw: &Gateway) -> (u64, (u64, u64)) {
    let b = admin(gw, "/admin/budgets").await;
    let spent = b["budgets"][0]["spent"].as_u64().unwrap();
    let u = admin(gw, "/admin/usage").await;
    let t = &u["total"];
    let tokens = t["input_tokens"].as_u64().unwrap() + t["output_tokens"].as_u64().unwrap();
    (spent, (t["requests"].as_u64().unwrap(), tokens))
}

/// Waits (bounded) until the history has `requests` and says the same as
/// the budget; returns what both said last.
async fn settled(gw: &Gateway, requests: u64) -> (u64, (u64, u64)) {
    let mut last = (0, (0, 0));
    wait_until(Duration::from_secs(10), async || {
        last = counted(gw).await;
        last.1 .0 == requests && last.0 == last.1 .1
    })
    .await;
    last
}

fn post<'a>(
    c: &'a common::Client,
    auth: &'a str,
    body: &'a Value,
) -> impl std::future::Future<Output = common::client::TestResponse> + 'a {
    let h = [("authorization", auth)];
    async move {
        c.request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            TestBody::Json(body.clone()),
        )
        .await
    }
}

async fn parallel_requests_never_overspend_and_the_refused_take_nothing(p: Proto) {
    const N: usize = 8;
    const FIT: u64 = 3;
    let mut body = chat("gated", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let each = reserves(&body);
    let (gw, keys) = with_keys(vec![key("many")], move |c| token_budget(c, FIT * each)).await;
    let auth = Arc::new(bearer(&keys[0]));
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(Arc::new(gw.client(p).await));
    }
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, auth, body) = (c.clone(), auth.clone(), body.clone());
            tokio::spawn(async move { post(&c, &auth, &body).await })
        })
        .collect();
    let mut served = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => served.push(r),
            429 => {
                assert_eq!(r.header("x-should-retry"), Some("false"));
                refused += 1;
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(
        served.len() as u64,
        FIT,
        "exactly the reservations that fit"
    );
    assert_eq!(refused, N - FIT as usize);
    // While they stream, the budget holds their reservations, nothing of the refused.
    let (spent, _) = counted(&gw).await;
    assert_eq!(spent, FIT * each, "the refused took nothing");
    gw.upstream.release();
    for r in served {
        let (_, end) = r.text_and_end().await;
        assert!(end.is_ok());
    }
    let (spent, (requests, tokens)) = settled(&gw, FIT).await;
    assert_eq!(requests, FIT);
    assert_eq!((spent, tokens), (FIT * REAL, FIT * REAL));
}

async fn a_client_gone_before_the_headers_is_in_the_history_as_the_budget_counts_it(p: Proto) {
    let body = chat("slow-4000", false);
    let each = reserves(&body);
    let (gw, keys) = with_keys(vec![key("gone")], move |c| {
        token_budget(c, 10 * each);
        c.routes
            .push(toml::from_str("model = \"slow-*\"\ntargets = [\"up\"]").unwrap());
    })
    .await;
    let c = Arc::new(gw.client(p).await);
    let auth = bearer(&keys[0]);
    let task = {
        let (c, body) = (c.clone(), body.clone());
        tokio::spawn(async move { post(&c, &auth, &body).await.status })
    };
    let asked = wait_until(Duration::from_secs(10), async || {
        gw.upstream
            .seen()
            .iter()
            .any(|s| s.body["model"] == "slow-4000")
    })
    .await;
    assert!(asked, "the upstream has the request");
    // The client goes away while the upstream works on it.
    task.abort();
    let _ = task.await;
    let (spent, (requests, tokens)) = settled(&gw, 1).await;
    assert_eq!(spent, each, "the reservation stays (the upstream worked)");
    assert_eq!(
        (requests, tokens),
        (1, spent),
        "the history counts what the budget counts"
    );
}

async fn a_stream_cut_short_is_in_the_history_as_the_budget_counts_it(p: Proto) {
    let (gw, keys) = with_keys(vec![key("cut")], move |c| token_budget(c, 100_000)).await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    // The client leaves mid-stream.
    let endless = chat("endless", true);
    let mut r = post(&c, &auth, &endless).await;
    assert_eq!(r.status, 200);
    assert!(r.chunk().await.is_some_and(|c| c.is_ok()));
    drop(r);
    assert!(
        gw.upstream.wait_dropped().await,
        "the upstream stream was dropped"
    );
    let (spent, (requests, tokens)) = settled(&gw, 1).await;
    assert_eq!(spent, reserves(&endless), "charged its reservation");
    assert_eq!((requests, tokens), (1, spent), "the history agrees");
    // The upstream cuts the stream mid-way, before its usage: the
    // provider's failure costs the client nothing, in both counts.
    let cut = chat("drop-mid-stream", true);
    let r = post(&c, &auth, &cut).await;
    assert_eq!(r.status, 200);
    let (_, end) = r.text_and_end().await;
    assert!(end.is_ok(), "the cut is told as an error event: {end:?}");
    let (spent, (requests, tokens)) = settled(&gw, 2).await;
    assert_eq!(
        spent,
        reserves(&endless),
        "the cut stream gave its reservation back"
    );
    assert_eq!((requests, tokens), (2, spent), "the history agrees");
}

async fn failed_attempts_cost_nothing_and_a_failover_costs_the_served_answer(p: Proto) {
    let (gw, keys) = with_keys(vec![key("failing")], move |c| token_budget(c, 100_000)).await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    // `failover`: the dead target first, then the upstream answers.
    for stream in [false, true] {
        let mut body = chat("failover", stream);
        body["stream_options"] = serde_json::json!({"include_usage": stream});
        let r = post(&c, &auth, &body).await;
        assert_eq!(r.status, 200);
        r.text().await;
    }
    let (spent, (requests, tokens)) = settled(&gw, 2).await;
    assert_eq!((spent, requests, tokens), (2 * REAL, 2, 2 * REAL));
    // Answered errors: nothing more.
    for model in ["status-500", "status-400", "dead"] {
        for stream in [false, true] {
            let r = post(&c, &auth, &chat(model, stream)).await;
            assert!(r.status >= 400, "{model}: {}", r.status);
            r.text().await;
        }
    }
    let back = wait_until(Duration::from_secs(10), async || {
        counted(&gw).await.0 == 2 * REAL
    })
    .await;
    assert!(
        back,
        "answered errors cost nothing: {:?}",
        counted(&gw).await
    );
    assert_eq!(
        counted(&gw).await.1,
        (2, 2 * REAL),
        "nor are in the history"
    );
}

async fn a_hostile_max_tokens_is_refused_not_wrapped_to_a_small_reservation(p: Proto) {
    let (gw, keys) = with_keys(vec![key("huge")], move |c| token_budget(c, 100_000)).await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    // Its cap plus the prompt's estimate is past u64: the most it can
    // cost is more than any budget, not a few tokens.
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut body = chat("gpt-4o-mini", false);
        body[field] = serde_json::json!(u64::MAX);
        let r = post(&c, &auth, &body).await;
        assert_eq!(r.status, 429, "{field}");
        let e = r.json().await;
        assert_eq!(e["error"]["code"], "insufficient_quota", "{field}: {e}");
    }
    assert_eq!(counted(&gw).await, (0, (0, 0)), "nothing taken");
}

async fn client_chosen_model_names_do_not_grow_the_history(p: Proto) {
    let (gw, keys) = with_keys(vec![key("names")], move |c| token_budget(c, 100_000)).await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    // `gpt-*` passes the client's model through: each name is new, some
    // with the Redis field separator and its escape.
    const N: u64 = 12;
    for i in 0..N {
        let model = format!("gpt-{i}-{}|%7C\u{1F4B8}", fastrand::u64(..));
        let r = post(&c, &auth, &chat(&model, false)).await;
        assert_eq!(r.status, 200);
        r.text().await;
    }
    let r = post(&c, &auth, &chat("gpt-4o-mini", false)).await;
    assert_eq!(r.status, 200);
    r.text().await;
    settled(&gw, N + 1).await;
    let u = admin(&gw, "/admin/usage?group_by=model").await;
    let rows: Vec<(&str, u64)> = u["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    // Under the route's pattern, as in the metrics; a declared model by its name.
    assert_eq!(rows, [("gpt-4o-mini", 1), ("gpt-*", N)], "{u}");
}
