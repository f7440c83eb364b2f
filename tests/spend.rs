//! Budgets over HTTP/3, HTTP/2 and HTTP/1.1 and both API surfaces: a key's
//! USD budget refuses at its boundary (the reservation counted: what would
//! take it past the budget is refused, exactly the budget fits) in the
//! client's error shape with `x-should-retry: false`; successes carry
//! `x-h3gate-budget-remaining`; a team's token budget is shared by its
//! keys, with its gauge and soft-limit alerts; what requests cost (cached
//! prompt tokens at their own prices, JSON and streams, an OpenAI and an
//! Anthropic upstream, each API surface) in `h3gate_cost_usd_total`.

mod common;

use common::keys::{bearer, key, with_keys};
use common::spend::{edit_keys, estimate, priced, ACTUAL};
use common::{chat, wait_until, Proto, TestBody};
use h3gate::config::{PriceConfig, TeamConfig};
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    a_key_budget_refuses_at_its_boundary_in_the_clients_shape,
    a_team_token_budget_is_shared_by_its_keys,
    cost_counts_cached_tokens_for_json_and_streams_of_both_families,
    a_failed_stream_costs_nothing_and_a_cancelled_request_keeps_its_reservation,
);

async fn a_key_budget_refuses_at_its_boundary_in_the_clients_shape(p: Proto) {
    let body = chat("gpt-4o-mini", false);
    let est = estimate(&body);
    // Two answered requests, and a third's reservation, exactly.
    let budget = 2 * ACTUAL + est;
    let (gw, keys) = with_keys(vec![key("capped")], move |c| {
        priced(c);
        edit_keys(c.auth.keys_file.as_deref().unwrap(), |k| {
            k.budget = Some(budget as f64 / 1e9);
            k.budget_period = Some(h3gate::spend::Period::Day);
        });
    })
    .await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    let h = [("authorization", auth.as_str())];
    let post = |path: &'static str, body: &Value| {
        c.request(Method::POST, path, &h, TestBody::Json(body.clone()))
    };
    let first = post("/v1/chat/completions", &body).await;
    assert_eq!(first.status, 200);
    let left = format!("{:.6}", (budget - est) as f64 / 1e9);
    assert_eq!(
        first.header("x-h3gate-budget-remaining"),
        Some(left.as_str()),
        "the reservation is taken"
    );
    first.text().await;
    // The second and third fit once the earlier corrections are in (a
    // refused request takes nothing, so asking again costs nothing).
    for n in [2, 3] {
        let mut served = false;
        for _ in 0..500 {
            let r = post("/v1/chat/completions", &body).await;
            if r.status == 200 {
                r.text().await;
                served = true;
                break;
            }
            assert_eq!(r.status, 429);
        }
        assert!(served, "request {n} fits the budget");
    }
    // Two answered and one more's reservation used the budget exactly: the
    // fourth (once the third is corrected: 3·17e6 spent) does not fit.
    let refused = post("/v1/chat/completions", &body).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    assert!(refused.header("x-request-id").is_some());
    let e = refused.json().await;
    assert_eq!(e["error"]["type"], "insufficient_quota", "{e}");
    assert_eq!(e["error"]["code"], "insufficient_quota", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("key \"capped\"")
            && message.contains("per day")
            && message.contains("it resets at"),
        "{message}"
    );
    assert!(e["error"]["request_id"].is_string());

    // Anthropic's API gets Anthropic's shape.
    let mut msg = body.clone();
    msg.as_object_mut().unwrap().remove("stream");
    let refused = c
        .request(
            Method::POST,
            "/v1/messages",
            &[
                ("authorization", auth.as_str()),
                ("anthropic-version", "2023-06-01"),
            ],
            TestBody::Json(msg),
        )
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    let e = refused.json().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("budget"));
    assert!(
        gw.metric("h3gate_rate_limited_total{scope=\"key_budget\"}")
            .await
            >= 2.0
    );
}

async fn a_team_token_budget_is_shared_by_its_keys(p: Proto) {
    let body = chat("gpt-ok", false);
    let tokens = 5 + body.to_string().len() as u64 / 4;
    // One request's reservation fits; its real 12 tokens and a second
    // request's reservation do not.
    let budget = tokens + 11;
    let audit = std::sync::Arc::new(std::sync::Mutex::new(None));
    let audit_path = audit.clone();
    let (gw, keys) = with_keys(vec![key("alice"), key("bob")], move |c| {
        c.teams.push(TeamConfig {
            name: "ml".into(),
            budget: None,
            budget_tokens: Some(budget),
            budget_period: h3gate::spend::Period::Month,
        });
        edit_keys(c.auth.keys_file.as_deref().unwrap(), |k| {
            k.team = Some("ml".into())
        });
        let file = c
            .auth
            .keys_file
            .clone()
            .unwrap()
            .with_file_name("audit.jsonl");
        c.audit.file = Some(file.clone());
        *audit_path.lock().unwrap() = Some(file);
    })
    .await;
    let c = gw.client(p).await;
    let (alice, bob) = (bearer(&keys[0]), bearer(&keys[1]));
    let post = async |auth: &str| {
        let h = [("authorization", auth)];
        c.request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            TestBody::Json(body.clone()),
        )
        .await
    };
    let first = post(&alice).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-h3gate-budget-remaining-tokens"),
        Some("11"),
        "the team's budget less the reservation"
    );
    assert_eq!(
        first.header("x-h3gate-budget-remaining"),
        None,
        "no USD budget"
    );
    first.text().await;
    let refused = post(&bob).await;
    assert_eq!(refused.status, 429, "bob's request counts against the team");
    let e = refused.json().await;
    assert_eq!(e["error"]["code"], "insufficient_quota");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team \"ml\""),
        "{e}"
    );
    // The team's gauge, and its 100% alert (an audit event too).
    let gauge = "h3gate_budget_utilisation_ratio{team=\"ml\",unit=\"tokens\"}";
    assert!(gw.metric(gauge).await > 0.0);
    assert!(
        gw.metric("h3gate_budget_alerts_total{scope=\"team\",level=\"100\"}")
            .await
            >= 1.0
    );
    let file = audit.lock().unwrap().clone().unwrap();
    let alerted = wait_until(std::time::Duration::from_secs(5), async || {
        std::fs::read_to_string(&file).is_ok_and(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|l| {
                    l["action"] == "budget_alert"
                        && l["details"]["name"] == "ml"
                        && l["result"] == "100"
                })
        })
    })
    .await;
    assert!(alerted, "the team's 100% alert is in the audit log");
}

/// The sum of a metric's series whose labels contain `labels`.
fn sum_series(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn cost_counts_cached_tokens_for_json_and_streams_of_both_families(p: Proto) {
    // Routes of this protocol's own (the cost counter is the process's,
    // and the other protocols' cases run beside this one): their patterns
    // are the model labels.
    let (openai_model, claude_model) = (format!("cost-openai-{p:?}"), format!("cost-claude-{p:?}"));
    let (om, cm) = (openai_model.clone(), claude_model.clone());
    let gw = common::Gateway::start_with(move |c| {
        let route = |model: &str, target: &str| -> h3gate::config::RouteConfig {
            toml::from_str(&format!("model = {model:?}\ntargets = [{target}]")).unwrap()
        };
        c.routes
            .push(route(&om, r#"{ provider = "up", model = "gpt-4o-mini" }"#));
        c.routes.push(route(
            &cm,
            r#"{ provider = "claude", model = "claude-test" }"#,
        ));
        c.prices.push(PriceConfig {
            model: "gpt-4o-mini".into(),
            input: 1.0,
            output: 4.0,
            cached_input: Some(0.5),
            cache_write: Some(2.0),
        });
        c.prices.push(PriceConfig {
            model: "claude-t*".into(),
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
        });
    })
    .await;
    let c = gw.client(p).await;
    // The upstream reports 7 prompt tokens and 5 completion tokens, plus
    // the cache the message asks for (tests/common/upstream.rs).
    let ask = "Say hi. cached:600 cache_write:100";
    for stream in [false, true] {
        let chat = json!({"model": openai_model, "stream": stream, "max_tokens": 5,
            "stream_options": {"include_usage": stream},
            "messages": [{"role": "user", "content": ask}]});
        let r = c.post_json("/v1/chat/completions", chat).await;
        assert_eq!(r.status, 200);
        r.text().await;
        let msg = json!({"model": claude_model, "stream": stream, "max_tokens": 5,
            "messages": [{"role": "user", "content": ask}]});
        let r = c
            .request(
                Method::POST,
                "/v1/messages",
                &[("anthropic-version", "2023-06-01")],
                TestBody::Json(msg),
            )
            .await;
        assert_eq!(r.status, 200);
        r.text().await;
    }
    // OpenAI counts the cache in `prompt_tokens` and reports no writes:
    // 107 plain at 1.0, 600 cached at 0.5, 5 out at 4.0 (USD per million).
    let openai = (107.0 * 1.0 + 600.0 * 0.5 + 5.0 * 4.0) / 1e6;
    // Anthropic: 7 plain at 3.0, 600 read at 0.3, 100 written at 3.75, 5 out at 15.
    let anthropic = (7.0 * 3.0 + 600.0 * 0.3 + 100.0 * 3.75 + 5.0 * 15.0) / 1e6;
    let (mut up, mut claude) = (0.0, 0.0);
    let counted = wait_until(std::time::Duration::from_secs(5), async || {
        let text = gw.metrics_text().await;
        let series = |m: &str, p: &str| format!("model=\"{m}\",provider=\"{p}\"");
        up = sum_series(&text, "h3gate_cost_usd_total", &series(&openai_model, "up"));
        claude = sum_series(
            &text,
            "h3gate_cost_usd_total",
            &series(&claude_model, "claude"),
        );
        (up - 2.0 * openai).abs() < 1e-9 && (claude - 2.0 * anthropic).abs() < 1e-9
    })
    .await;
    assert!(
        counted,
        "cost: up {up} (want {}), claude {claude} (want {})",
        2.0 * openai,
        2.0 * anthropic
    );
    // A model without a price costs nothing, and shows.
    let r = c
        .post_json("/v1/chat/completions", chat_body("llama3"))
        .await;
    assert_eq!(r.status, 200);
    r.text().await;
    let unpriced = wait_until(std::time::Duration::from_secs(5), async || {
        let text = gw.metrics_text().await;
        sum_series(
            &text,
            "h3gate_cost_unpriced_requests_total",
            "provider=\"local\"",
        ) >= 1.0
    })
    .await;
    assert!(unpriced, "the unpriced request is counted");
}

fn chat_body(model: &str) -> Value {
    chat(model, false)
}

/// A key's token budget as `/admin/budgets` has it (spent, on one node the
/// limiter's count).
async fn spent_tokens(gw: &common::Gateway, key: &str) -> f64 {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/admin/budgets", gw.admin))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    body["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == key && b["unit"] == "tokens")
        .map_or(-1.0, |b| b["spent"].as_f64().unwrap())
}

/// An upstream that fails mid-stream before reporting usage: the
/// reservation is given back (the provider's failure is not the client's
/// spend). A client that leaves before any response: its reservation stays
/// (it must not get work for free by leaving), and the history says so.
async fn a_failed_stream_costs_nothing_and_a_cancelled_request_keeps_its_reservation(p: Proto) {
    let (gw, keys) = with_keys(vec![key("k")], |c| {
        edit_keys(c.auth.keys_file.as_deref().unwrap(), |k| {
            k.budget_tokens = Some(100_000);
            k.budget_period = Some(h3gate::spend::Period::Day);
        });
        let route: h3gate::config::RouteConfig =
            toml::from_str("model = \"slow-*\"\ntargets = [\"up\"]").unwrap();
        c.routes.push(route);
    })
    .await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    let h = [("authorization", auth.as_str())];
    let cut = chat("drop-mid-stream", true);
    let r = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            TestBody::Json(cut),
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, end) = r.text_and_end().await;
    let _ = end; // an error event, or a cut body: either way not a clean end
    let back = wait_until(std::time::Duration::from_secs(5), async || {
        spent_tokens(&gw, "k").await == 0.0
    })
    .await;
    assert!(
        back,
        "the failed stream's reservation came back: {}",
        spent_tokens(&gw, "k").await
    );

    // Leaves while the upstream works on it (before its headers).
    let slow = chat("slow-5000", false);
    let reserved = 5 + slow.to_string().len() as u64 / 4;
    let request = c.request(
        Method::POST,
        "/v1/chat/completions",
        &h,
        TestBody::Json(slow),
    );
    let reached = wait_until(std::time::Duration::from_secs(5), async || {
        gw.upstream
            .seen()
            .iter()
            .any(|s| s.body["model"] == "slow-5000")
    });
    tokio::select! {
        _ = request => panic!("the slow request was answered"),
        seen = reached => assert!(seen, "the request reached the upstream"),
    }
    let kept = wait_until(std::time::Duration::from_secs(5), async || {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/admin/usage?group_by=key", gw.admin))
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let u: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        u["total"]["requests"] == 2
    })
    .await;
    assert!(kept, "the cancelled request is in the history");
    assert_eq!(
        spent_tokens(&gw, "k").await,
        reserved as f64,
        "its reservation stays"
    );
}
