//! Every metric h3gate exports, described in one place. Prometheus naming:
//! `h3gate_` prefix, `_total` / `_seconds` / `_bytes` suffixes, and only
//! low-cardinality labels (protocol, route pattern, provider, status class,
//! outcome) — never a key, an address or a prompt.
//!
//! The `metrics` facade keeps one process-wide recorder (installed once, by
//! [`install`]); everything else is passed explicitly. Hot-path series are
//! registered ahead of time as handles ([`RouteMetrics`], [`ProviderMetrics`],
//! [`Metrics`]), so recording a request is a few atomic adds with no label
//! hashing. Every name, kind, unit, help and label set is defined once, in
//! the table in `metrics/defs.rs`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::exchange::Outcome;
use crate::exchange::Protocol;

mod defs;
pub use defs::*;

/// Latency buckets (seconds): 50 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Size buckets (bytes): 1 KB to 64 MB.
const BYTES_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// A Prometheus recorder with h3gate's buckets (not installed).
fn recorder() -> PrometheusRecorder {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS));
    match builder {
        Ok(b) => b.build_recorder(),
        Err(_) => PrometheusBuilder::new().build_recorder(),
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that
/// renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            BUILD_INFO.with([env!("CARGO_PKG_VERSION")]).set(1.0);
            handle
        })
        .clone()
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Http3];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Http1 => 0,
        Protocol::Http2 => 1,
        Protocol::Http3 => 2,
    }
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// Per-route request series, registered when the route is built.
#[derive(Debug)]
pub struct RouteMetrics {
    requests: Vec<Counter>,
    duration: Vec<Histogram>,
}

impl RouteMetrics {
    /// `route` is the route's pattern, or `-` for requests no route served.
    pub fn new(route: &str) -> Self {
        let mut requests = Vec::with_capacity(15);
        let mut duration = Vec::with_capacity(15);
        for p in PROTOCOLS {
            for class in CLASSES {
                let labels = [p.as_str(), route, class].map(str::to_string);
                requests.push(REQUESTS.with(labels.clone()));
                duration.push(REQUEST_DURATION.with(labels));
            }
        }
        RouteMetrics { requests, duration }
    }

    pub fn record(&self, protocol: Protocol, status: u16, elapsed: Duration) {
        let i = protocol_index(protocol) * CLASSES.len() + class_index(status);
        self.requests[i].increment(1);
        self.duration[i].record(elapsed.as_secs_f64());
    }
}

/// Gateway-wide series, by protocol.
#[derive(Debug)]
pub struct Metrics {
    in_flight: [Gauge; 3],
    outcomes: [[Counter; 5]; 3],
    request_bytes: [Counter; 3],
    response_bytes: [Counter; 3],
    overhead: [Histogram; 3],
    /// Requests that no route served (bad requests, `/v1/models`, …).
    pub unrouted: RouteMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            in_flight: PROTOCOLS.map(|p| REQUESTS_IN_FLIGHT.with([p.as_str()])),
            outcomes: PROTOCOLS
                .map(|p| Outcome::ALL.map(|o| REQUEST_OUTCOMES.with([p.as_str(), o.as_str()]))),
            request_bytes: PROTOCOLS.map(|p| REQUEST_BYTES.with([p.as_str()])),
            response_bytes: PROTOCOLS.map(|p| RESPONSE_BYTES.with([p.as_str()])),
            overhead: PROTOCOLS.map(|p| GATEWAY_OVERHEAD.with([p.as_str()])),
            unrouted: RouteMetrics::new("-"),
        }
    }
}

impl Metrics {
    pub fn request_started(&self, p: Protocol) {
        self.in_flight[protocol_index(p)].increment(1.0);
    }

    /// A request's one end (see [`crate::access::Ending`]).
    pub fn request_ended(
        &self,
        p: Protocol,
        outcome: Outcome,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let i = protocol_index(p);
        self.in_flight[i].decrement(1.0);
        self.outcomes[i][outcome as usize].increment(1);
        self.request_bytes[i].increment(request_bytes);
        self.response_bytes[i].increment(response_bytes);
    }

    pub fn overhead(&self, p: Protocol, d: Duration) {
        self.overhead[protocol_index(p)].record(d.as_secs_f64());
    }
}

/// Outcome of one upstream attempt.
#[derive(Debug, Clone, Copy)]
pub enum Attempt {
    Success,
    ErrorStatus,
    ConnectError,
    Timeout,
    Failed,
}

const ATTEMPTS: [&str; 5] = [
    "success",
    "error_status",
    "connect_error",
    "timeout",
    "failed",
];

/// Per-provider upstream series.
#[derive(Debug)]
pub struct ProviderMetrics {
    provider: String,
    attempts: Vec<Counter>,
    /// Token counters (prompt, completion) by model label, registered on
    /// first use: a lookup here is much cheaper than registering each time.
    tokens: std::sync::RwLock<std::collections::HashMap<String, [Counter; 2]>>,
    pub first_byte: Histogram,
    pub first_token: Histogram,
    pub chunk_gap: Histogram,
}

impl ProviderMetrics {
    pub fn new(provider: &str) -> Self {
        ProviderMetrics {
            provider: provider.to_string(),
            attempts: ATTEMPTS
                .iter()
                .map(|o| UPSTREAM_ATTEMPTS.with([provider, *o].map(str::to_string)))
                .collect(),
            tokens: Default::default(),
            first_byte: UPSTREAM_FIRST_BYTE.with([provider.to_string()]),
            first_token: UPSTREAM_FIRST_TOKEN.with([provider.to_string()]),
            chunk_gap: UPSTREAM_CHUNK_GAP.with([provider.to_string()]),
        }
    }

    pub fn attempt(&self, outcome: Attempt) {
        self.attempts[outcome as usize].increment(1);
    }

    pub fn stream_error(&self, reason: &'static str) {
        UPSTREAM_STREAM_ERRORS
            .with([self.provider.clone().into(), SharedString::from(reason)])
            .increment(1);
    }

    /// Tokens from a response's usage. `model` must be bounded (a known
    /// model name or the route pattern), never free client input.
    pub fn tokens(&self, model: &str, prompt: u64, completion: u64) {
        let add = |c: &[Counter; 2]| {
            c[0].increment(prompt);
            c[1].increment(completion);
        };
        if let Some(c) = self.tokens.read().ok().as_ref().and_then(|m| m.get(model)) {
            return add(c);
        }
        let counters = ["prompt", "completion"]
            .map(|direction| TOKENS.with([direction, model, &self.provider].map(str::to_string)));
        add(&counters);
        if let Ok(mut m) = self.tokens.write() {
            m.insert(model.to_string(), counters);
        }
    }
}

pub fn failover(route: &str) {
    UPSTREAM_FAILOVERS.with([route.to_string()]).increment(1);
}

/// QUIC connection events.
pub mod quic {
    use super::*;

    pub fn accepted() {
        QUIC_CONNECTIONS_ACCEPTED.get().increment(1);
        QUIC_CONNECTIONS_OPEN.get().increment(1.0);
    }

    /// A connection attempt refused cheaply, before any crypto work.
    pub fn refused(reason: &'static str) {
        QUIC_CONNECTIONS_REFUSED.with([reason]).increment(1);
    }

    pub fn retry_sent() {
        QUIC_RETRY_SENT.get().increment(1);
    }

    /// A connection that sent requests as 0-RTT early data.
    pub fn zero_rtt_connection() {
        QUIC_ZERO_RTT_CONNECTIONS.get().increment(1);
    }

    /// An early request: `served` (safe), `held` (until the handshake), `rejected` (425).
    pub fn early_request(outcome: &'static str) {
        QUIC_EARLY_REQUESTS.with([outcome]).increment(1);
    }

    pub fn handshake_failed() {
        QUIC_HANDSHAKE_FAILURES.get().increment(1);
    }

    /// A request stream ended with a stream error: `header_timeout`,
    /// `malformed`, `write_timeout` (the client stopped reading).
    pub fn stream_error(reason: &'static str) {
        QUIC_STREAM_ERRORS.with([reason]).increment(1);
    }

    /// A connection's path at its close, as the listener read it.
    pub struct PathStats {
        pub rtt: std::time::Duration,
        pub cwnd: u64,
        pub lost_packets: u64,
        pub sent_packets: u64,
    }

    /// At close: the connection's path statistics.
    pub fn closed(path: PathStats) {
        QUIC_CONNECTIONS_OPEN.get().decrement(1.0);
        QUIC_RTT.get().record(path.rtt.as_secs_f64());
        QUIC_CONGESTION_WINDOW.get().record(path.cwnd as f64);
        QUIC_LOST_PACKETS.get().increment(path.lost_packets);
        QUIC_SENT_PACKETS.get().increment(path.sent_packets);
    }
}

/// TCP connection events.
pub mod tcp {
    use super::*;

    pub fn opened() {
        TCP_CONNECTIONS_OPEN.get().increment(1.0);
    }

    pub fn closed() {
        TCP_CONNECTIONS_OPEN.get().decrement(1.0);
    }

    pub fn handshake_failed() {
        TLS_HANDSHAKE_FAILURES.get().increment(1);
    }

    /// A connection closed at accept by a cap, before any TLS work.
    pub fn refused(reason: &'static str) {
        TCP_CONNECTIONS_REFUSED.with([reason]).increment(1);
    }
}

pub fn certificate_expiry(unix_seconds: i64) {
    TLS_CERTIFICATE_EXPIRY.get().set(unix_seconds as f64);
}

pub fn config_reload(result: &'static str) {
    CONFIG_RELOADS.with([result]).increment(1);
}
