use super::failover::{classify, Sent, Verdict};
use super::*;
use crate::config::{ProviderConfig, ProviderKind, RetryConfig, TargetConfig};
use crate::provider::rewrite_model;
use crate::provider::HttpClients;
use crate::provider::{UpstreamCall, UpstreamError};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

fn providers(names: &[&str]) -> HashMap<String, Arc<Provider>> {
    let mut clients = HttpClients::default();
    names
        .iter()
        .map(|name| {
            let cfg = ProviderConfig {
                name: name.to_string(),
                kind: ProviderKind::Mock,
                models: vec!["gpt-4o".into(), "llama".into()],
                ..Default::default()
            };
            (
                name.to_string(),
                Arc::new(Provider::build(&cfg, &mut clients).unwrap()),
            )
        })
        .collect()
}

fn route(model: &str, targets: &[&str]) -> RouteConfig {
    RouteConfig {
        model: model.into(),
        targets: targets.iter().map(|t| TargetConfig::from(*t)).collect(),
        ..Default::default()
    }
}

#[test]
fn exact_then_most_specific_glob() {
    let config = Config {
        routes: vec![
            route("*", &["a"]),
            route("gpt-*", &["b"]),
            route("gpt-4o-mini", &["c", "a"]),
        ],
        ..Default::default()
    };
    let r = Router::new(&config, &providers(&["a", "b", "c"]));
    assert_eq!(r.resolve("gpt-4o-mini").unwrap().targets.len(), 2);
    assert_eq!(r.resolve("gpt-4o").unwrap().pattern, "gpt-*");
    assert_eq!(r.resolve("llama").unwrap().pattern, "*");
    assert_eq!(r.model_names(), ["gpt-4o", "gpt-4o-mini", "llama"]);
}

#[test]
fn weighted_order_follows_the_weights() {
    let mut rc = route("w", &[]);
    rc.strategy = Strategy::Weighted;
    rc.targets = vec![
        TargetConfig {
            provider: "a".into(),
            model: None,
            weight: 3,
        },
        TargetConfig {
            provider: "b".into(),
            model: None,
            weight: 1,
        },
    ];
    let config = Config {
        routes: vec![rc],
        ..Default::default()
    };
    let r = Router::new(&config, &providers(&["a", "b"]));
    let route = r.resolve("w").unwrap();
    let n = 20_000;
    let firsts = (0..n).filter(|_| route.order()[0].name == "a").count();
    let share = firsts as f64 / n as f64;
    assert!((share - 0.75).abs() < 0.02, "a first in {share}");
    assert_eq!(route.order().len(), 2, "every target stays as a fallback");
}

#[test]
fn least_loaded_prefers_the_cheaper_target() {
    let mut rc = route("l", &["fast", "slow"]);
    rc.strategy = Strategy::LeastLoaded;
    let config = Config {
        routes: vec![rc],
        ..Default::default()
    };
    let r = Router::new(&config, &providers(&["fast", "slow"]));
    let route = r.resolve("l").unwrap();
    route.targets[0]
        .state
        .record(true, Some(Duration::from_millis(5)));
    route.targets[1]
        .state
        .record(true, Some(Duration::from_millis(200)));
    // With two targets, power of two choices always compares both.
    assert!((0..100).all(|_| route.order()[0].name == "fast"));
    // Load shifts the choice: 60 outstanding × 5 ms > 1 × 200 ms.
    for _ in 0..60 {
        route.targets[0]
            .state
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
    }
    assert!((0..100).all(|_| route.order()[0].name == "slow"));
}

#[test]
fn model_rewrite_only_when_asked() {
    let body = Bytes::from_static(br#"{"model":"fast","messages":[]}"#);
    assert_eq!(rewrite_model(&body, None), body);
    let v: serde_json::Value =
        serde_json::from_slice(&rewrite_model(&body, Some("llama3.1:8b"))).unwrap();
    assert_eq!(v["model"], "llama3.1:8b");
    assert_eq!(v["messages"], serde_json::json!([]));
}

fn mock_provider(name: &str, latency: crate::config::Duration) -> Arc<Provider> {
    let cfg = ProviderConfig {
        name: name.to_string(),
        kind: ProviderKind::Mock,
        models: vec!["m".into()],
        mock: crate::config::MockConfig {
            first_token_latency: latency,
            ..Default::default()
        },
        breaker: crate::config::BreakerConfig {
            consecutive_failures: 1,
            cooldown: crate::config::Duration::secs(10),
            ..Default::default()
        },
        ..Default::default()
    };
    Arc::new(Provider::build(&cfg, &mut HttpClients::default()).unwrap())
}

fn call() -> UpstreamCall {
    UpstreamCall {
        endpoint: crate::provider::Endpoint::ChatCompletions,
        model: "m".into(),
        body: Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
        stream: false,
        include_usage: false,
        request_id: "req-test".into(),
        early_data: false,
        trace: None,
        headers: Default::default(),
        pin: None,
        owner: 0,
        drop_unsupported: false,
    }
}

fn mock_route(targets: &[(&str, u64)]) -> Arc<Route> {
    route_of(
        targets
            .iter()
            .map(|(n, ms)| mock_provider(n, crate::config::Duration::millis(*ms)))
            .collect(),
    )
}

/// The route of model `m` to these providers, in this order.
fn route_of(providers: Vec<Arc<Provider>>) -> Arc<Route> {
    let names: Vec<String> = providers.iter().map(|p| p.common().name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = Config {
        routes: vec![route("m", &names)],
        ..Default::default()
    };
    let providers = providers
        .into_iter()
        .map(|p| (p.common().name.clone(), p))
        .collect();
    Router::new(&config, &providers)
        .resolve("m")
        .unwrap()
        .clone()
}

/// An OpenAI-style provider at an address nothing listens on.
fn dead_provider(name: &str) -> Arc<Provider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = ProviderConfig {
        name: name.to_string(),
        kind: ProviderKind::Openai,
        base_url: format!("http://{addr}/v1"),
        models: vec!["m".into()],
        breaker: crate::config::BreakerConfig {
            consecutive_failures: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    Arc::new(Provider::build(&cfg, &mut HttpClients::default()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_the_half_open_breaker_back() {
    let route = mock_route(&[("probe-a", 60_000)]);
    let target = route.targets[0].clone();
    target.state.record(false, None);
    assert_eq!(target.state.breaker_state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(target.state.breaker_state(), BreakerState::HalfOpen);

    // The probe goes to an upstream that takes a minute; its client goes away.
    let r = route.clone();
    let probe = tokio::spawn(async move {
        forward(&r, &call(), &RetryConfig::default()).await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(target.state.probing(), "the request is the probe");
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    assert!(!target.state.probing(), "the dropped probe was given back");

    // A later request is admitted as the next probe.
    let pass = target.state.pass();
    assert!(matches!(pass, Some(Some(_))), "the next request probes");
    drop(pass);
    assert!(!target.state.probing());
}

#[tokio::test(start_paused = true)]
async fn a_stale_probe_never_frees_the_current_one() {
    let route = mock_route(&[("probe-b", 0)]);
    let state = route.targets[0].state.clone();
    state.record(false, None);
    tokio::time::advance(Duration::from_secs(10)).await;
    let first = state.pass().unwrap().unwrap();
    state.record(false, None); // some outcome reopens it; the first probe is done
    tokio::time::advance(Duration::from_secs(10)).await;
    let second = state.pass().unwrap().unwrap();
    drop(first);
    assert!(state.probing(), "the current probe is still in flight");
    assert!(state.pass().is_none(), "still one probe at a time");
    drop(second);
    assert!(state.pass().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_cooling_target_is_passed_over_while_another_can_serve() {
    let route = mock_route(&[("cool-a", 0), ("cool-b", 0)]);
    route.targets[0].state.cool_down(Duration::from_secs(15));
    let started = Instant::now();
    let done = forward(&route, &call(), &RetryConfig::default()).await;
    let served = done.result.ok().map(|a| a.target.name.clone());
    assert_eq!(served.as_deref(), Some("cool-b"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "did not wait out the Retry-After: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_cooling_target_is_waited_for_when_no_other_can_serve() {
    let route = mock_route(&[("wait-a", 0), ("wait-b", 0)]);
    route.targets[0].state.cool_down(Duration::from_secs(2));
    route.targets[1].state.record(false, None); // breaker open
    let started = Instant::now();
    let done = forward(&route, &call(), &RetryConfig::default()).await;
    let served = done.result.ok().map(|a| a.target.name.clone());
    assert_eq!(served.as_deref(), Some("wait-a"));
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Beyond the request's deadline: not waited for, an explicit 503.
    route.targets[0].state.cool_down(Duration::from_secs(600));
    let done = forward(&route, &call(), &RetryConfig::default()).await;
    let err = done.result.err().expect("no target can serve");
    assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

fn zero_latency() -> crate::config::Duration {
    crate::config::Duration::millis(0)
}

#[tokio::test(start_paused = true)]
async fn the_ledger_lists_each_attempt_in_order() {
    let route = route_of(vec![
        mock_provider("led-cool", zero_latency()),
        dead_provider("led-dead"),
        mock_provider("led-ok", zero_latency()),
    ]);
    route.targets[0].state.cool_down(Duration::from_secs(15));
    let done = forward(&route, &call(), &RetryConfig::default()).await;
    let served = done.result.ok().map(|a| a.target.name.clone());
    assert_eq!(served.as_deref(), Some("led-ok"));
    assert_eq!(done.target.as_deref(), Some("led-ok"));
    let attempts: Vec<_> = done
        .ledger
        .iter()
        .map(|a| (a.target.as_str(), a.class))
        .collect();
    assert_eq!(
        attempts,
        [
            ("led-cool", FailureClass::Skipped(Skip::Cooling)),
            ("led-dead", FailureClass::Connect),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_client_reads_each() {
    let route = route_of(vec![
        mock_provider("all-cool", zero_latency()),
        dead_provider("all-dead"),
        mock_provider("all-open", zero_latency()),
    ]);
    route.targets[0].state.cool_down(Duration::from_secs(15));
    route.targets[2].state.record(false, None); // breaker open
    let retry = RetryConfig {
        max_attempts: 2,
        ..Default::default()
    };
    let done = forward(&route, &call(), &retry).await;
    assert_eq!(
        done.target.as_deref(),
        Some("all-dead"),
        "the last one sent"
    );
    let err = done.result.err().expect("every attempt failed");
    assert!(matches!(&err, GatewayError::UpstreamUnreachable(l) if *l == done.ledger));
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    let expected = "the upstream provider could not be reached (attempts: \
        all-cool: cooling down (retry-after); all-dead: connect error; \
        all-open: breaker_open; all-dead: connect error)";
    assert_eq!(err.to_string(), expected);
    let body: serde_json::Value = serde_json::from_slice(&err.body("req-1")).unwrap();
    assert_eq!(body["error"]["message"], expected);
    assert_eq!(body["error"]["code"], "upstream_unreachable");
}

#[tokio::test(start_paused = true)]
async fn no_target_to_send_to_is_a_503_listing_why() {
    let route = route_of(vec![
        mock_provider("none-cool", zero_latency()),
        mock_provider("none-open", zero_latency()),
    ]);
    route.targets[0].state.cool_down(Duration::from_secs(600));
    route.targets[1].state.record(false, None);
    let done = forward(&route, &call(), &RetryConfig::default()).await;
    assert_eq!(done.target, None, "nothing was sent");
    let err = done.result.err().expect("no target can serve");
    assert_eq!(
        err.to_string(),
        "no upstream target can take this request now (attempts: \
         none-cool: cooling down (retry-after); none-open: breaker_open)"
    );
}

fn answer(status: u16) -> Sent {
    Some(Ok(crate::provider::UpstreamResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: crate::exchange::empty(),
        key: None,
    }))
}

/// A verdict as (what comes next, the failure's class).
fn verdict(sent: Sent) -> (&'static str, Option<FailureClass>) {
    match classify(sent) {
        Verdict::Done(_) => ("done", None),
        Verdict::Retry(failed) => ("retry", Some(failed.class())),
        Verdict::Stop(failed) => ("stop", Some(failed.class())),
    }
}

#[test]
fn classify_table() {
    use FailureClass::*;
    let timeout = UpstreamError::Timeout(Duration::from_secs(1));
    let table: Vec<(Sent, (&str, Option<FailureClass>))> = vec![
        (answer(200), ("done", None)),
        (answer(201), ("done", None)),
        (answer(408), ("retry", Some(Status(408)))),
        (answer(429), ("retry", Some(Status(429)))),
        (answer(500), ("retry", Some(Status(500)))),
        (answer(502), ("retry", Some(Status(502)))),
        (answer(503), ("retry", Some(Status(503)))),
        (answer(504), ("retry", Some(Status(504)))),
        (answer(529), ("retry", Some(Status(529)))),
        (answer(400), ("stop", Some(Status(400)))),
        (answer(401), ("stop", Some(Status(401)))),
        (answer(403), ("stop", Some(Status(403)))),
        (answer(404), ("stop", Some(Status(404)))),
        (answer(422), ("stop", Some(Status(422)))),
        (answer(501), ("stop", Some(Status(501)))),
        (
            Some(Err(UpstreamError::Connect("refused".into()))),
            ("retry", Some(Connect)),
        ),
        (Some(Err(timeout)), ("retry", Some(Timeout))),
        (
            Some(Err(UpstreamError::Failed("reset".into()))),
            ("retry", Some(Invalid)),
        ),
        (None, ("stop", Some(Deadline))),
    ];
    for (sent, expected) in table {
        let shown = match &sent {
            Some(Ok(up)) => up.status.to_string(),
            Some(Err(e)) => e.to_string(),
            None => "deadline".into(),
        };
        assert_eq!(verdict(sent), expected, "{shown}");
    }
}

#[test]
fn ledger_notes_and_renders() {
    let mut ledger = Ledger::default();
    ledger.skip("a", Skip::Cooling);
    ledger.skip("a", Skip::Cooling);
    ledger.push("b", FailureClass::Status(503));
    ledger.skip("b", Skip::BreakerOpen); // its failure says why
    ledger.skip("c", Skip::Unhealthy);
    ledger.skip("d", Skip::Busy);
    ledger.skip("d", Skip::Busy); // refused each time its turn came
    ledger.push("b", FailureClass::Deadline);
    assert_eq!(
        ledger.to_string(),
        "a: cooling down (retry-after); b: status 503; c: unhealthy; d: busy; d: busy; \
         b: timeout (request deadline)"
    );
    assert_eq!(ledger.sent(), 2);
    assert_eq!(ledger.last_sent().map(|a| a.target.as_str()), Some("b"));
    assert!(ledger.refused("d") && !ledger.refused("a"));
}
