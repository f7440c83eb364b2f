//! `/metrics` after real traffic over every protocol: the series move with
//! the right labels; the admin token guards the endpoint; no secret leaks
//! into metrics or logs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::{chat, Gateway, Proto, ADMIN_TOKEN, UPSTREAM_KEY};
use h3gate::auth::{self, NewKey};
use h3gate::config::RouteConfig;
use h3gate::metrics::{Family, Kind, FAMILIES, RENDERED};
use serde_json::json;

over_every_protocol!(traffic_moves_the_series);

/// One scraped sample: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Logs of this test process, as JSON lines, for the no-secrets check.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug")
            .with_writer(move || common::SharedWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

async fn gateway_with_route(route: &str) -> Gateway {
    captured_logs(); // first: this binary's log subscriber is the capturing one
    let route = route.to_string();
    Gateway::start_with(move |c| {
        c.routes.push(RouteConfig {
            model: route,
            targets: vec!["up".into()],
            ..Default::default()
        });
        c.server.server_timing = true;
    })
    .await
}

async fn traffic_moves_the_series(p: Proto) {
    let logs = captured_logs();
    let route = format!("metrics-{p:?}").to_lowercase();
    let gw = gateway_with_route(&route).await;
    let c = gw.client(p).await; // kept open: the connection series count it
    send_traffic(&c, &route).await;
    let proto = match p {
        Proto::H1 => "http/1.1",
        Proto::H2 => "h2",
        Proto::H3 => "h3",
    };
    let samples = samples_once_recorded(&gw, &route).await;
    assert_request_series(&samples, proto, &route);
    assert_upstream_series(&samples);
    // Usage from the JSON answer and from the stream's usage chunk: 5 + 5.
    let tokens = [
        ("direction", "completion"),
        ("model", route.as_str()),
        ("provider", "up"),
    ];
    assert_eq!(value(&samples, "h3gate_tokens_total", &tokens), 10.0);
    assert!(
        value(
            &samples,
            "h3gate_tls_certificate_expiry_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(value(&samples, "h3gate_build_info", &[]), 1.0);
    if p == Proto::H3 {
        assert!(value(&samples, "h3gate_quic_connections_accepted_total", &[]) >= 1.0);
        assert!(value(&samples, "h3gate_quic_connections_open", &[]) >= 1.0);
    }

    // Nothing secret in metrics or logs after this traffic.
    let (_, text) = gw.scrape(Some(ADMIN_TOKEN)).await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains(&route), "the logs were captured");
    for secret in [UPSTREAM_KEY, ADMIN_TOKEN, "sk-test-FAKEKEY"] {
        assert!(!text.contains(secret), "{secret} in /metrics");
        assert!(!logs.contains(secret), "{secret} in logs");
    }
}

/// A JSON answer (with Server-Timing), a stream with a usage chunk, and an
/// upstream 400, on `route`.
async fn send_traffic(c: &common::Client, route: &str) {
    let resp = c
        .post_json("/v1/chat/completions", chat(route, false))
        .await;
    assert!(resp
        .header("server-timing")
        .is_some_and(|t| t.starts_with("gateway;dur=")));
    resp.json().await;
    let mut body = chat(route, true);
    body["stream_options"] = json!({"include_usage": true});
    c.post_json("/v1/chat/completions", body).await.text().await;
    c.post_json("/v1/chat/completions", chat("status-400", false))
        .await
        .text()
        .await;
}

/// The samples, once both answers on `route` are counted: request series
/// are recorded when a response ends, and the scrape may race the last one
/// by a moment (bounded wait; the assertions that follow tell).
async fn samples_once_recorded(gw: &Gateway, route: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    common::wait_until(std::time::Duration::from_secs(5), async || {
        let (status, text) = gw.scrape(Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200);
        samples = parse(&text);
        value(&samples, "h3gate_requests_total", &[("route", route)]) >= 2.0
    })
    .await;
    samples
}

/// The request families: two 2xx on `route`, one 4xx, overhead and bytes.
fn assert_request_series(samples: &[Sample], proto: &str, route: &str) {
    let ok = [
        ("protocol", proto),
        ("route", route),
        ("status_class", "2xx"),
    ];
    assert_eq!(value(samples, "h3gate_requests_total", &ok), 2.0);
    assert_eq!(
        value(samples, "h3gate_request_duration_seconds_count", &ok),
        2.0
    );
    let bad = [
        ("protocol", proto),
        ("route", "status-*"),
        ("status_class", "4xx"),
    ];
    assert!(value(samples, "h3gate_requests_total", &bad) >= 1.0);
    let by_protocol = [("protocol", proto)];
    assert!(
        value(
            samples,
            "h3gate_gateway_overhead_seconds_count",
            &by_protocol
        ) >= 3.0
    );
    assert!(value(samples, "h3gate_request_bytes_total", &by_protocol) > 0.0);
    assert!(value(samples, "h3gate_response_bytes_total", &by_protocol) > 0.0);
}

/// The upstream families of provider `up`: attempts, first byte and token,
/// chunk gaps.
fn assert_upstream_series(samples: &[Sample]) {
    let up = [("provider", "up")];
    assert!(
        value(
            samples,
            "h3gate_upstream_attempts_total",
            &[("provider", "up"), ("outcome", "success")]
        ) >= 2.0
    );
    assert!(
        value(
            samples,
            "h3gate_upstream_attempts_total",
            &[("provider", "up"), ("outcome", "error_status")]
        ) >= 1.0
    );
    assert!(value(samples, "h3gate_upstream_first_byte_seconds_count", &up) >= 2.0);
    assert!(value(samples, "h3gate_upstream_first_token_seconds_count", &up) >= 2.0);
    assert!(value(samples, "h3gate_upstream_chunk_gap_seconds_count", &up) >= 5.0);
}

/// Families the traffic of [`every_exported_family_is_described`] does not
/// reach: they need a misbehaving client or upstream, a full audit queue or
/// a Redis, or are recorded when a connection closes (asynchronously). The table test in
/// `src/metrics/defs.rs` renders them all.
const NOT_DRIVEN: &[&str] = &[
    "h3gate_quic_connections_refused_total",
    "h3gate_quic_handshake_failures_total",
    "h3gate_quic_stream_errors_total",
    "h3gate_quic_retry_sent_total",
    "h3gate_quic_zero_rtt_connections_total",
    "h3gate_quic_early_requests_total",
    "h3gate_quic_rtt_seconds",
    "h3gate_quic_congestion_window_bytes",
    "h3gate_quic_lost_packets_total",
    "h3gate_quic_sent_packets_total",
    "h3gate_tcp_connections_refused_total",
    "h3gate_tls_handshake_failures_total",
    "h3gate_upstream_stream_errors_total",
    "h3gate_audit_dropped_total",
    "h3gate_rate_limit_corrections_total",
    // Recorded only with `[cluster]`, by replica processes: tests/cluster.rs
    // checks them there (the in-process gateway has no Redis).
    "h3gate_cluster_up",
    "h3gate_cluster_redis_seconds",
    "h3gate_cluster_errors_total",
    "h3gate_cluster_fallbacks_total",
    "h3gate_cluster_syncs_total",
    "h3gate_cluster_tickets_total",
    // Budgets' (no key here has one): driven in tests/spend.rs.
    "h3gate_budget_utilisation_ratio",
    "h3gate_budget_alerts_total",
];

/// Every family `/metrics` can show: the recorder's ([`FAMILIES`]) and the
/// ones h3gate renders after them ([`RENDERED`]: the float cost counter).
fn exported() -> impl Iterator<Item = &'static Family> {
    FAMILIES.iter().chain(RENDERED)
}

/// Checks every `h3gate_*` sample of `text` against its `# TYPE`, its
/// `# HELP` and the definition table (kind and label names); returns the
/// families seen.
fn described_families(text: &str) -> std::collections::BTreeSet<String> {
    let mut types = BTreeMap::new();
    let mut helps = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            types.insert(name, ty);
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "{name}: empty # HELP");
            helps.insert(name);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in parse(text).iter().filter(|s| s.name.starts_with("h3gate_")) {
        let family = ["", "_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| s.name.strip_suffix(suffix))
            .find(|n| types.contains_key(n))
            .unwrap_or_else(|| panic!("{} has no # TYPE", s.name));
        assert!(helps.contains(family), "{family} has no # HELP");
        let def = exported()
            .find(|f| f.name == family)
            .unwrap_or_else(|| panic!("{family} is exported but not in the table"));
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(types[family], kind, "{family}");
        let mut labels: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        labels.retain(|l| *l != "le");
        let mut want = def.labels.to_vec();
        want.sort_unstable();
        assert_eq!(labels, want, "{family}: label names");
        seen.insert(family.to_string());
    }
    seen
}

/// Traffic over HTTP/3 and HTTP/1.1 that touches the request, upstream,
/// token and connection families and every refusal (403 forbidden, 429,
/// panic, 401, abuse deny, network deny, a reload): every exported series
/// is described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_family_is_described() {
    captured_logs(); // first: this binary's log subscriber is the capturing one
    let boom = common::armed_panic_model();
    let (gw, all, limited) = gateway_with_two_keys().await;
    let h3 = gw.client(Proto::H3).await;
    let as_key = |key: &str, model: &str, stream: bool| {
        let body = chat(model, stream);
        let h = [("authorization", key.to_string())];
        let c = &h3;
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = c
                .request(
                    http::Method::POST,
                    "/v1/chat/completions",
                    &h,
                    common::TestBody::Json(body),
                )
                .await;
            let status = r.status;
            r.text().await;
            status
        }
    };
    assert_eq!(as_key(&all, "gpt-ok", false).await, 200);
    assert_eq!(as_key(&all, "gpt-ok", true).await, 200);
    assert_eq!(as_key(&all, "failover", false).await, 200);
    for _ in 0..2 {
        assert_eq!(as_key(&all, "keypool", false).await, 200);
    }
    assert_eq!(as_key(&all, boom, false).await, 500, "a panic");
    assert_eq!(
        as_key(&limited, "mock-1", false).await,
        403,
        "a model outside the key's globs"
    );
    assert_eq!(as_key(&limited, "gpt-ok", false).await, 200);
    assert_eq!(as_key(&limited, "gpt-ok", false).await, 429);

    let _h1 = get_the_address_denied(&gw, &all).await;
    assert_eq!(gw.reload().await.0, 200);

    // Spans went to the collector (exported off the request path).
    let spans = async || {
        gw.metrics_text()
            .await
            .contains("h3gate_trace_spans_total{")
    };
    assert!(common::wait_until(std::time::Duration::from_secs(10), spans).await);
    let seen = described_families(&gw.metrics_text().await);
    for f in exported().filter(|f| !NOT_DRIVEN.contains(&f.name)) {
        assert!(seen.contains(f.name), "{} was not exported", f.name);
    }
}

/// A gateway requiring keys (abuse deny after 2 failures), with the keys
/// `all` and `limited` (gpt-* only, 1 rpm): their `Authorization` values.
async fn gateway_with_two_keys() -> (Gateway, String, String) {
    let mut keys = Vec::new();
    let collector = common::otlp::Collector::start().await;
    let gw = Gateway::start_with(|c| {
        c.auth.required = true;
        c.abuse.max_failures = 2;
        c.tracing.endpoint = Some(collector.url());
        c.tracing.export_interval = h3gate::config::Duration::millis(50);
        // A key pool with a rate-limited key (rested, counted).
        let mut pool = c.providers.iter().find(|p| p.name == "up").unwrap().clone();
        pool.name = "keypool".into();
        pool.api_key = h3gate::config::Secret::default();
        pool.api_keys = vec![
            h3gate::config::Secret::new("test-pool-ratelimited"),
            h3gate::config::Secret::new("test-pool-ok"),
        ];
        c.providers.push(pool);
        c.routes.push(h3gate::config::RouteConfig {
            model: "keypool".into(),
            targets: vec!["keypool".into()],
            ..Default::default()
        });
        let path = c.auth.keys_file.clone().unwrap();
        let limited = NewKey {
            name: "limited".into(),
            models: vec!["gpt-*".into()],
            rpm: Some(1),
            ..Default::default()
        };
        for k in [
            NewKey {
                name: "all".into(),
                ..Default::default()
            },
            limited,
        ] {
            keys.push(auth::create(&path, k).unwrap().0);
        }
    })
    .await;
    let (all, limited) = (format!("Bearer {}", keys[0]), format!("Bearer {}", keys[1]));
    (gw, all, limited)
}

/// Two 401s over HTTP/1.1 get the address denied: then even a good key
/// (`auth`) is refused with 403. The client, still connected.
async fn get_the_address_denied(gw: &Gateway, auth: &str) -> common::Client {
    let h1 = gw.client(Proto::H1).await;
    let bad = [("authorization", "Bearer h3g_bad")];
    for _ in 0..2 {
        let r = h1
            .request(
                http::Method::GET,
                "/v1/models",
                &bad,
                common::TestBody::Empty,
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let good = [("authorization", auth)];
    let r = h1
        .request(
            http::Method::GET,
            "/v1/models",
            &good,
            common::TestBody::Empty,
        )
        .await;
    assert_eq!(r.status, 403, "the address is denied now");
    h1
}

/// A metric name is written once, in the table: nowhere else in `src/` is
/// a `"h3gate_…"` literal or a `counter!`/`gauge!`/`histogram!` call.
#[test]
fn metrics_are_recorded_only_through_the_table() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    for file in files.iter().filter(|f| !f.starts_with(src.join("metrics"))) {
        let text = std::fs::read_to_string(file).unwrap();
        for needle in ["\"h3gate_", "counter!(", "gauge!(", "histogram!("] {
            assert!(
                !text.contains(needle),
                "{} has `{needle}`: define the metric in src/metrics/defs.rs and use its Def",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_metrics() {
    let gw = gateway_with_route("metrics-token").await;
    assert_eq!(gw.scrape(None).await.0, 401);
    assert_eq!(gw.scrape(Some("wrong-token-of-some-length")).await.0, 401);
    let (status, text) = gw.scrape(Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(text.contains("h3gate_build_info"));
    // Health and readiness stay open for probes.
    let health = reqwest::get(format!("http://{}/health", gw.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn admin_off_loopback_requires_a_token() {
    let text = r#"
[tls]
generate_dev_cert = true
[auth]
required = false
[admin]
listen = "0.0.0.0:9901"
[[providers]]
name = "m"
kind = "mock"
[[routes]]
model = "*"
targets = ["m"]
"#;
    let err =
        h3gate::config::Config::from_toml(text, std::path::Path::new("."), &|_| None).unwrap_err();
    assert!(
        err.problems().iter().any(|p| p.path == "admin.token"),
        "{err}"
    );
    let with_token = text.replace("[admin]", "[admin]\ntoken = \"${ADMIN}\"");
    let env = |k: &str| (k == "ADMIN").then(|| ADMIN_TOKEN.to_string());
    h3gate::config::Config::from_toml(&with_token, std::path::Path::new("."), &env)
        .expect("valid with a token");
}

#[test]
fn dashboard_and_alerts_use_real_metric_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["deploy/grafana/h3gate.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut used = 0;
        for (i, _) in text.match_indices("h3gate_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            if base == "h3gate_" {
                continue;
            }
            assert!(
                exported().any(|f| f.name == base),
                "{file} uses unknown metric {name}"
            );
            used += 1;
        }
        assert!(used >= 5, "{file} uses the gateway's metrics");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/h3gate.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}

#[test]
fn alert_rules_pass_promtool() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Fails with the install line when promtool is missing: never skipped.
    let promtool = common::tools::require_tool("promtool", "apt-get install -y prometheus");
    let out = std::process::Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(root.join("deploy/prometheus/alerts.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The float cost counter is rendered after the recorder's families on
/// `/metrics`, with its `# HELP`, `# TYPE` and the table's labels, and
/// promtool reads the whole exposition. (Metered directly here: the meter
/// is process-wide, like the recorder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_counter_is_exported_as_a_float() {
    let gw = gateway_with_route("metrics-cost").await;
    h3gate::spend::meter::cost("metrics-cost", "up", 1_500_000, true);
    h3gate::spend::meter::cost("metrics-cost", "up", 250, true);
    let text = gw.metrics_text().await;
    let seen = described_families(&text);
    let cost = h3gate::metrics::COST_USD.name;
    assert!(seen.contains(cost), "{text}");
    let samples = parse(&text);
    let labels = [("model", "metrics-cost"), ("provider", "up")];
    assert_eq!(value(&samples, cost, &labels), 0.00150025);

    let promtool = common::tools::require_tool("promtool", "apt-get install -y prometheus");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {said}");
}
