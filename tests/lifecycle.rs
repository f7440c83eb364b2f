//! Every request ends exactly once, and everything it claims comes back:
//! a client that goes away mid-request (breaker probe, in-flight gauge,
//! access-log line), a sized response delivered whole, failover around a
//! target cooling down after a `Retry-After`, and admission decided before
//! the body is read.
//!
//! The metrics recorder is process-wide, so these tests take turns
//! ([`serial`]) and compare each series before and after.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{chat, Client, Gateway, Proto, TestBody};
use h3gate::config::{Config, RouteConfig, TargetConfig};
use http::Method;
use serde_json::Value;

over_every_protocol!(
    a_cancelled_breaker_probe_does_not_wedge_its_target,
    a_cancelled_request_ends_once_and_leaves_the_gauge,
    a_sized_response_is_complete_and_counts_its_tokens,
    failover_passes_over_a_cooling_target,
);

/// An upstream answer that takes longer than any of these tests.
const SLOW: &str = "slow-20000";

/// One test at a time: the metrics they compare are shared.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// This binary's logs as JSON lines, flattened like production's
/// (`[log] format = "json"`). Call before starting a gateway.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_target(true)
            .with_env_filter("warn,h3gate=info")
            .with_writer(move || common::SharedWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

/// The access-log lines (raw JSON text) of one request id.
fn access_lines(request_id: &str) -> Vec<String> {
    let logs = captured_logs();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains("h3gate::access") && l.contains(request_id))
        .map(str::to_string)
        .collect()
}

/// Keys that occur twice in one JSON object, anywhere in `text`.
fn duplicate_keys(text: &str) -> Vec<String> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Dups(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Dups {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Dups;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Dups, A::Error> {
                    let (mut seen, mut dups) = (std::collections::HashSet::new(), Vec::new());
                    while let Some(k) = m.next_key::<String>()? {
                        dups.extend(m.next_value::<Dups>()?.0);
                        if !seen.insert(k.clone()) {
                            dups.push(k);
                        }
                    }
                    Ok(Dups(dups))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Dups, A::Error> {
                    let mut dups = Vec::new();
                    while let Some(d) = s.next_element::<Dups>()? {
                        dups.extend(d.0);
                    }
                    Ok(Dups(dups))
                }
                fn visit_str<E>(self, _: &str) -> Result<Dups, E> {
                    Ok(Dups(vec![]))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Dups, E> {
                    Ok(Dups(vec![]))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Dups, E> {
                    Ok(Dups(vec![]))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Dups, E> {
                    Ok(Dups(vec![]))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Dups, E> {
                    Ok(Dups(vec![]))
                }
                fn visit_unit<E>(self) -> Result<Dups, E> {
                    Ok(Dups(vec![]))
                }
            }
            d.deserialize_any(V)
        }
    }
    serde_json::from_str::<Dups>(text)
        .map(|d| d.0)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn label(p: Proto) -> &'static str {
    match p {
        Proto::H1 => "http/1.1",
        Proto::H2 => "h2",
        Proto::H3 => "h3",
    }
}

fn in_flight(p: Proto) -> String {
    format!("h3gate_requests_in_flight{{protocol=\"{}\"}}", label(p))
}

fn outcomes(p: Proto, outcome: &str) -> String {
    format!(
        "h3gate_request_outcomes_total{{protocol=\"{}\",outcome=\"{outcome}\"}}",
        label(p)
    )
}

/// The sum of every series of `name` whose labels include all of `labels`.
async fn sum_of(gw: &Gateway, name: &str, labels: &[&str]) -> f64 {
    gw.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `series` until it reads `want` (bounded: 10 s); returns the last value.
async fn settles_at(gw: &Gateway, series: &str, want: f64) -> f64 {
    let mut last = f64::NAN;
    for _ in 0..200 {
        last = gw.metric(series).await;
        if last == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

fn slow_route(c: &mut Config) {
    c.routes.push(RouteConfig {
        model: "slow-*".into(),
        targets: vec!["up".into()],
        ..Default::default()
    });
}

/// Starts a request for `model` (a `slow-NNN` one), waits until the upstream
/// has it, then drops the request and the client: the client went away
/// while the gateway waited on the upstream.
async fn start_and_abandon(gw: &Gateway, client: Client, model: &str, request_id: &str) {
    let seen_before = gw.upstream.seen().len();
    {
        let headers = [("x-request-id", request_id)];
        let req = client.request(
            Method::POST,
            "/v1/chat/completions",
            &headers,
            TestBody::Json(chat(model, false)),
        );
        tokio::pin!(req);
        let arrived = async {
            while !gw
                .upstream
                .seen()
                .iter()
                .skip(seen_before)
                .any(|s| s.body["model"] == model)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            _ = &mut req => panic!("{model} was answered before the client left"),
            r = tokio::time::timeout(Duration::from_secs(5), arrived) => {
                r.expect("the upstream got the request within 5 s")
            }
        }
    }
    drop(client);
}

/// 1. A half-open breaker lets one probe through; the probe's client goes
///    away; the target must still take the next request.
async fn a_cancelled_breaker_probe_does_not_wedge_its_target(p: Proto) {
    let _turn = serial().await;
    captured_logs();
    let gw = Gateway::start_with(|c| {
        slow_route(c);
        c.retry.max_attempts = 1;
        let up = c.providers.iter_mut().find(|p| p.name == "up").unwrap();
        up.breaker.consecutive_failures = 1;
        up.breaker.cooldown = h3gate::config::Duration::millis(500);
    })
    .await;
    let c = gw.client(p).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("status-500", false))
        .await;
    assert_eq!(resp.status, 500);
    assert_eq!(gw.metric("h3gate_breaker_state{target=\"up\"}").await, 2.0);
    let refused = c
        .post_json("/v1/chat/completions", chat("gpt-4o-mini", false))
        .await;
    assert_eq!(refused.status, 503, "open: refused");
    tokio::time::sleep(Duration::from_millis(700)).await; // the cooldown passes

    // The probe: a slow upstream, and the client leaves before it answers.
    start_and_abandon(&gw, c, SLOW, "probe-left").await;

    // The target takes requests again (a new probe, which closes the breaker).
    let mut last = 0;
    for _ in 0..50 {
        let c = gw.client(p).await;
        let resp = c
            .post_json("/v1/chat/completions", chat("gpt-4o-mini", false))
            .await;
        last = resp.status;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last, 200,
        "the abandoned probe left the breaker half-open for good"
    );
}

/// 3. The client goes away before any response exists: the in-flight gauge
///    comes back and the request is logged once, `cancelled`.
async fn a_cancelled_request_ends_once_and_leaves_the_gauge(p: Proto) {
    let _turn = serial().await;
    captured_logs();
    let gw = Gateway::start_with(slow_route).await;
    let before = gw.metric(&in_flight(p)).await;
    let cancelled = gw.metric(&outcomes(p, "cancelled")).await;
    let id = format!("cancel-{}", label(p).replace('/', ""));

    start_and_abandon(&gw, gw.client(p).await, SLOW, &id).await;

    assert_eq!(
        settles_at(&gw, &in_flight(p), before).await,
        before,
        "the in-flight gauge came back"
    );
    assert_eq!(
        settles_at(&gw, &outcomes(p, "cancelled"), cancelled + 1.0).await,
        cancelled + 1.0,
        "one cancelled request"
    );
    let lines = access_lines(&id);
    assert_eq!(lines.len(), 1, "one access line: {lines:#?}");
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["outcome"], "cancelled", "{line}");
    assert_eq!(line["model"], SLOW, "{line}");
    // Still one, once the upstream would have answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(access_lines(&id).len(), 1);
    assert_eq!(gw.metric(&outcomes(p, "cancelled")).await, cancelled + 1.0);
}

/// 4 and 5. A non-streaming answer with a Content-Length, delivered whole,
///    from the test upstream and from the built-in mock: logged `complete`
///    (one line, no duplicate keys, the upstream target under `upstream`)
///    and its tokens counted.
async fn a_sized_response_is_complete_and_counts_its_tokens(p: Proto) {
    let _turn = serial().await;
    captured_logs();
    let gw = Gateway::start().await;
    for (model, provider) in [("gpt-4o-mini", "up"), ("mock-1", "mock")] {
        let tokens = [
            "direction=\"completion\"",
            &format!("provider=\"{provider}\""),
        ];
        let before = sum_of(&gw, "h3gate_tokens_total", &tokens).await;
        let complete = gw.metric(&outcomes(p, "complete")).await;
        let aborted = gw.metric(&outcomes(p, "aborted")).await;
        let id = format!("sized-{model}-{}", label(p).replace('/', ""));

        let resp = gw
            .client(p)
            .await
            .request(
                Method::POST,
                "/v1/chat/completions",
                &[("x-request-id", &id)],
                TestBody::Json(chat(model, false)),
            )
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json().await["usage"]["completion_tokens"], 5);

        assert_eq!(
            settles_at(&gw, &outcomes(p, "complete"), complete + 1.0).await,
            complete + 1.0,
            "{model}: the request ended complete"
        );
        assert_eq!(gw.metric(&outcomes(p, "aborted")).await, aborted, "{model}");
        assert_eq!(
            sum_of(&gw, "h3gate_tokens_total", &tokens).await - before,
            5.0,
            "{model}: its completion tokens were counted"
        );
        let lines = access_lines(&id);
        assert_eq!(lines.len(), 1, "one access line: {lines:#?}");
        let line: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["outcome"], "complete", "{line}");
        assert_eq!(line["completion_tokens"], 5, "{line}");
        assert_eq!(line["upstream"], provider, "{line}");
        assert_eq!(line["target"], "h3gate::access", "{line}");
        assert_eq!(
            duplicate_keys(&lines[0]),
            Vec::<String>::new(),
            "{}",
            lines[0]
        );
        let spans = line["spans"].as_array().cloned().unwrap_or_default();
        assert!(
            spans.iter().all(|s| s.get("protocol").is_none()),
            "only the request says `protocol`: {line}"
        );
    }
}

fn target(provider: &str, model: &str) -> TargetConfig {
    TargetConfig {
        provider: provider.into(),
        model: Some(model.into()),
        weight: 1,
    }
}

/// 6. `[429 with Retry-After: 15, healthy]`: while the first cools down,
///    requests go to the second at once; a 429 that reaches the client
///    carries the upstream's Retry-After.
async fn failover_passes_over_a_cooling_target(p: Proto) {
    let _turn = serial().await;
    captured_logs();
    let gw = Gateway::start_with(|c| {
        c.retry.max_attempts = 2;
        c.retry.deadline = h3gate::config::Duration::secs(20);
        c.routes.push(RouteConfig {
            model: "cooling".into(),
            targets: vec![target("up", "status-429-ra15"), target("up", "gpt-ok")],
            ..Default::default()
        });
        c.routes.push(RouteConfig {
            model: "cooling-alone".into(),
            targets: vec![target("up", "status-429-ra30")],
            ..Default::default()
        });
    })
    .await;
    let c = gw.client(p).await;
    for i in 0..3 {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            c.post_json("/v1/chat/completions", chat("cooling", false)),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} waited out the Retry-After"));
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(resp.header("x-h3gate-target"), Some("up/gpt-ok"));
    }
    let models: Vec<String> = gw
        .upstream
        .seen()
        .iter()
        .map(|s| s.body["model"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        models,
        ["status-429-ra15", "gpt-ok", "gpt-ok", "gpt-ok"],
        "the cooling target was not asked again"
    );

    // No other target: the upstream's 429 and its Retry-After reach the client.
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        c.post_json("/v1/chat/completions", chat("cooling-alone", false)),
    )
    .await
    .expect("a cooldown beyond the deadline is not waited for");
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("30"));
    assert!(resp.header("x-request-id").is_some());
    let body = resp.json().await;
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
}

/// 7. With one slot, no queue and that slot taken, a request is shed before
///    its body is read: the 503 arrives although the upload never finishes.
async fn admission_sheds_before_the_body_is_read(p: Proto) {
    let _turn = serial().await;
    captured_logs();
    let gw = Gateway::start_with(|c| {
        c.admission.max_concurrent = 1;
        c.admission.max_queue = 0;
    })
    .await;
    let c = gw.client(p).await;
    let held = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    assert_eq!(held.status, 200, "the one slot is taken");

    let body = chat("gpt-4o-mini", false).to_string();
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        c.post_unfinished("/v1/chat/completions", 60_000, body.into_bytes()),
    )
    .await
    .expect("shed without waiting for the body")
    .expect("a response");
    assert_eq!(status, 503);
    gw.upstream.release();
    assert!(held.text().await.contains("[DONE]"));
    assert_eq!(
        gw.upstream.seen().len(),
        1,
        "only the admitted request went up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_sheds_before_the_body_is_read_h2() {
    admission_sheds_before_the_body_is_read(Proto::H2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_sheds_before_the_body_is_read_h3() {
    admission_sheds_before_the_body_is_read(Proto::H3).await
}
