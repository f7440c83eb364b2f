//! Failover, retries, breakers, strategies, admission and keep-alive, with
//! the test upstream injecting each failure.

mod common;

use std::time::Duration;

use common::{chat, Client, Gateway, Proto};
use h3gate::config::{Config, RouteConfig, Strategy, TargetConfig};
use serde_json::Value;

over_every_protocol!(
    fails_over_on_500,
    fails_over_on_first_byte_timeout,
    never_retries_a_400,
    failures_list_each_attempt,
    queue_sheds_at_its_bound_while_admitted_requests_complete,
    a_greedy_client_cannot_starve_another,
    keepalive_pings_while_waiting_for_the_first_token,
);

fn target(provider: &str, model: Option<&str>, weight: u32) -> TargetConfig {
    TargetConfig {
        provider: provider.into(),
        model: model.map(str::to_string),
        weight,
    }
}

fn add_route(c: &mut Config, model: &str, strategy: Strategy, targets: Vec<TargetConfig>) {
    c.routes.push(RouteConfig {
        model: model.into(),
        targets,
        strategy,
        stream_keepalive: None,
        ..Default::default()
    });
}

fn models_seen(gw: &Gateway) -> Vec<String> {
    gw.upstream
        .seen()
        .iter()
        .map(|s| s.body["model"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn fails_over_on_500(p: Proto) {
    let gw = Gateway::start_with(|c| {
        add_route(
            c,
            "r",
            Strategy::Priority,
            vec![
                target("up", Some("status-500"), 1),
                target("up", Some("gpt-ok"), 1),
            ],
        );
    })
    .await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("r", false))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up/gpt-ok"));
    assert_eq!(
        models_seen(&gw),
        ["status-500", "gpt-ok"],
        "the model was rewritten per target"
    );
}

async fn fails_over_on_first_byte_timeout(p: Proto) {
    let gw = Gateway::start_with(|c| {
        add_route(
            c,
            "r",
            Strategy::Priority,
            vec![target("slowprov", Some("slow"), 1), target("up", None, 1)],
        );
    })
    .await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("r", false))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up"));
}

async fn never_retries_a_400(p: Proto) {
    let gw = Gateway::start_with(|c| {
        add_route(
            c,
            "r",
            Strategy::Priority,
            vec![
                target("up", Some("status-400"), 1),
                target("up", Some("gpt-ok"), 1),
            ],
        );
    })
    .await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("r", false))
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        models_seen(&gw),
        ["status-400"],
        "a client error goes straight back"
    );
}

async fn failures_list_each_attempt(p: Proto) {
    let gw = Gateway::start_with(|c| {
        c.retry.max_attempts = 2;
        add_route(
            c,
            "r",
            Strategy::Priority,
            vec![target("dead", None, 1), target("slowprov", Some("slow"), 1)],
        );
    })
    .await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("r", false))
        .await;
    assert_eq!(resp.status, 504);
    let body = resp.json().await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("dead: connect error") && msg.contains("slowprov/slow: timeout"),
        "{msg}"
    );
    assert!(
        !msg.contains("Rate limit") && !msg.contains("127.0.0.1"),
        "classes, not bodies or addresses: {msg}"
    );
}

/// One slot, one place in the queue: a third request is shed at once while
/// the first two complete.
async fn queue_sheds_at_its_bound_while_admitted_requests_complete(p: Proto) {
    let gw = Gateway::start_with(|c| {
        c.admission.max_concurrent = 1;
        c.admission.max_queue = 1;
        c.admission.max_wait = h3gate::config::Duration::secs(10);
    })
    .await;
    let c = std::sync::Arc::new(gw.client(p).await);
    let mut first = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    first.chunk().await.unwrap().unwrap();
    let queued = {
        let c = c.clone();
        tokio::spawn(async move {
            c.post_json("/v1/chat/completions", chat("gpt-ok", false))
                .await
        })
    };
    // Wait until the second request is in the queue.
    let mut depth = 0.0;
    for _ in 0..100 {
        let ready: Value = reqwest::get(format!("http://{}/ready", gw.admin))
            .await
            .unwrap()
            .json_value()
            .await;
        depth = ready["admission"]["queued"].as_f64().unwrap_or(0.0);
        if depth >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth, 1.0, "the second request waits in the queue");
    let shed = c
        .post_json("/v1/chat/completions", chat("gpt-ok", false))
        .await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(shed.json().await["error"]["code"], "overloaded");

    gw.upstream.release();
    assert!(first.text().await.contains("[DONE]"));
    let second = queued.await.unwrap();
    assert_eq!(second.status, 200, "the queued request completes");
}

async fn a_greedy_client_cannot_starve_another(p: Proto) {
    let gw = Gateway::start_with(|c| c.admission.max_per_client = 2).await;
    let greedy = gw.client(p).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut r = greedy
            .post_json("/v1/chat/completions", chat("gated", true))
            .await;
        r.chunk().await.unwrap().unwrap();
        held.push(r);
    }
    let refused = greedy
        .post_json("/v1/chat/completions", chat("gpt-ok", false))
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.json().await["error"]["code"],
        "too_many_concurrent_requests"
    );

    let other = Client::connect_from(p, gw.tcp, gw.udp, &gw.ca, "127.0.0.2".parse().unwrap()).await;
    let resp = other
        .post_json("/v1/chat/completions", chat("gpt-ok", false))
        .await;
    assert_eq!(resp.status, 200, "another client is served");
    gw.upstream.release();
    for r in held {
        assert!(r.text().await.contains("[DONE]"));
    }
}

async fn keepalive_pings_while_waiting_for_the_first_token(p: Proto) {
    let gw = Gateway::start_with(|c| {
        c.routes.push(RouteConfig {
            model: "r".into(),
            targets: vec![target("up", Some("slow-400"), 1)],
            strategy: Strategy::Priority,
            stream_keepalive: Some(h3gate::config::Duration::millis(100)),
            ..Default::default()
        });
    })
    .await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("r", true))
        .await;
    assert_eq!(
        resp.status, 200,
        "the status is committed before the upstream answers"
    );
    let text = resp.text().await;
    let pings = text.matches(": ping\n\n").count();
    assert!(pings >= 2, "pings while waiting: {text}");
    assert!(text.starts_with(": ping"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_or_the_target_skipped() {
    let gw = Gateway::start_with(|c| {
        c.retry.max_attempts = 2;
        add_route(
            c,
            "wait",
            Strategy::Priority,
            vec![target("up", Some("status-429-ra1"), 1)],
        );
        add_route(
            c,
            "skip",
            Strategy::Priority,
            vec![target("up", Some("status-429-ra120"), 1)],
        );
    })
    .await;
    let c = gw.client(Proto::H2).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("wait", false))
        .await;
    assert_eq!(resp.status, 429);
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 2, "retried once");
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(950),
        "waited for Retry-After"
    );

    let resp = c
        .post_json("/v1/chat/completions", chat("skip", false))
        .await;
    assert_eq!(resp.status, 429);
    let msg = resp.json().await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("cooling down"), "{msg}");
    assert_eq!(gw.upstream.seen().len(), 3, "not retried past the budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_and_skips_the_target() {
    let gw = Gateway::start_with(|c| {
        c.retry.max_attempts = 1;
        for p in &mut c.providers {
            p.breaker.consecutive_failures = 2;
        }
        add_route(
            c,
            "r",
            Strategy::Priority,
            vec![target("up", Some("status-500"), 1)],
        );
    })
    .await;
    let c = gw.client(Proto::H3).await;
    for _ in 0..2 {
        assert_eq!(
            c.post_json("/v1/chat/completions", chat("r", false))
                .await
                .status,
            500
        );
    }
    let resp = c.post_json("/v1/chat/completions", chat("r", false)).await;
    assert_eq!(resp.status, 503);
    let body = resp.json().await;
    assert_eq!(body["error"]["code"], "no_available_target");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("up/status-500: breaker_open"));
    assert_eq!(
        gw.upstream.seen().len(),
        2,
        "the open breaker kept the third away"
    );

    let ready = reqwest::get(format!("http://{}/ready", gw.admin))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a route without a usable target degrades the node; the other routes still serve"
    );
    let ready: Value = ready.json_value().await;
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["routes_without_target"], serde_json::json!(["r"]));
    assert_eq!(ready["targets"]["up/status-500"]["breaker"], "open");
    assert!(ready["routes_without_target"]
        .as_array()
        .unwrap()
        .contains(&"r".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_within_tolerance() {
    let gw = Gateway::start_with(|c| {
        for name in ["mock-a", "mock-b"] {
            let mut p = c
                .providers
                .iter()
                .find(|p| p.name == "mock")
                .unwrap()
                .clone();
            p.name = name.into();
            c.providers.push(p);
        }
        add_route(
            c,
            "w",
            Strategy::Weighted,
            vec![target("mock-a", None, 3), target("mock-b", None, 1)],
        );
    })
    .await;
    let c = gw.client(Proto::H2).await;
    let n = 400;
    let mut a = 0;
    for _ in 0..n {
        let r = c.post_json("/v1/chat/completions", chat("w", false)).await;
        if r.header("x-h3gate-target") == Some("mock-a") {
            a += 1;
        }
        r.text().await;
    }
    let share = f64::from(a) / f64::from(n);
    assert!((share - 0.75).abs() < 0.08, "mock-a served {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_prefers_the_faster_target() {
    let gw = Gateway::start_with(|c| {
        let base = c
            .providers
            .iter()
            .find(|p| p.name == "mock")
            .unwrap()
            .clone();
        for (name, ms) in [("fast", 0), ("slow", 60)] {
            let mut p = base.clone();
            p.name = name.into();
            p.mock.first_token_latency = h3gate::config::Duration::millis(ms);
            c.providers.push(p);
        }
        add_route(
            c,
            "l",
            Strategy::LeastLoaded,
            vec![target("slow", None, 1), target("fast", None, 1)],
        );
    })
    .await;
    let c = gw.client(Proto::H1).await;
    let mut fast = 0;
    for _ in 0..40 {
        let r = c.post_json("/v1/chat/completions", chat("l", false)).await;
        if r.header("x-h3gate-target") == Some("fast") {
            fast += 1;
        }
        r.text().await;
    }
    assert!(fast >= 35, "fast served {fast} of 40");
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}

/// Fault injection: requests spread over a flaky and a healthy target; the
/// client must see no failure while one target is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_no_client_failures_while_one_target_is_healthy() {
    let gw = Gateway::start_with(|c| {
        add_route(
            c,
            "f",
            Strategy::Weighted,
            vec![
                target("up", Some("flaky-50"), 1),
                target("up", Some("gpt-ok"), 1),
            ],
        );
    })
    .await;
    let c = gw.client(Proto::H2).await;
    let n = 300;
    let mut failed = 0;
    for _ in 0..n {
        let r = c.post_json("/v1/chat/completions", chat("f", false)).await;
        let ok = r.status == 200;
        let (_, end) = r.text_and_end().await;
        if !ok || end.is_err() {
            failed += 1;
        }
    }
    let flaky_attempts = models_seen(&gw).iter().filter(|m| *m == "flaky-50").count();
    eprintln!("fault injection: {n} requests, target A failing 50% ({flaky_attempts} attempts reached it), client failures: {failed}");
    assert_eq!(failed, 0);
}
