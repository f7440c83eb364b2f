//! Every metric h3gate exports, described in one place. Prometheus naming:
//! `h3gate_` prefix, `_total` / `_seconds` / `_bytes` suffixes, and only
//! low-cardinality labels (protocol, route pattern, provider, status class,
//! outcome) — never a key, an address or a prompt.
//!
//! The `metrics` facade keeps one process-wide recorder (installed once, by
//! [`install`]); everything else is passed explicitly. Hot-path series are
//! registered ahead of time as handles ([`RouteMetrics`], [`ProviderMetrics`],
//! [`Metrics`]), so recording a request is a few atomic adds with no label
//! hashing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::access::Outcome;
use crate::exchange::Protocol;

/// Latency buckets (seconds): 50 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Size buckets (bytes): 1 KB to 64 MB.
const BYTES_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// Every metric name, for the dashboard and alert checks.
pub const NAMES: &[&str] = &[
    "h3gate_build_info",
    "h3gate_requests_total",
    "h3gate_request_duration_seconds",
    "h3gate_requests_in_flight",
    "h3gate_request_outcomes_total",
    "h3gate_request_bytes_total",
    "h3gate_response_bytes_total",
    "h3gate_gateway_overhead_seconds",
    "h3gate_upstream_attempts_total",
    "h3gate_upstream_failovers_total",
    "h3gate_upstream_first_byte_seconds",
    "h3gate_upstream_first_token_seconds",
    "h3gate_upstream_chunk_gap_seconds",
    "h3gate_upstream_stream_errors_total",
    "h3gate_tokens_total",
    "h3gate_breaker_state",
    "h3gate_provider_healthy",
    "h3gate_admission_queue_depth",
    "h3gate_admission_wait_seconds",
    "h3gate_admission_shed_total",
    "h3gate_quic_connections_open",
    "h3gate_quic_connections_accepted_total",
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
    "h3gate_tcp_connections_open",
    "h3gate_tcp_connections_refused_total",
    "h3gate_tls_handshake_failures_total",
    "h3gate_tls_certificate_expiry_timestamp_seconds",
    "h3gate_config_reloads_total",
    "h3gate_auth_failures_total",
    "h3gate_rate_limited_total",
    "h3gate_network_denied_total",
    "h3gate_abuse_denies_total",
    "h3gate_panics_total",
    "h3gate_audit_dropped_total",
];

fn describe() {
    describe_gauge!(
        "h3gate_build_info",
        "Build information; the value is always 1."
    );
    describe_counter!(
        "h3gate_requests_total",
        "Requests answered, by protocol, route and status class."
    );
    describe_histogram!(
        "h3gate_request_duration_seconds",
        Unit::Seconds,
        "Whole request duration, streaming included."
    );
    describe_gauge!(
        "h3gate_requests_in_flight",
        "Requests being handled now, by protocol."
    );
    describe_counter!(
        "h3gate_request_outcomes_total",
        "Requests ended, by protocol and outcome (complete, upstream_failed, error, aborted mid-response, cancelled before a response)."
    );
    describe_counter!(
        "h3gate_request_bytes_total",
        Unit::Bytes,
        "Request body bytes received, by protocol."
    );
    describe_counter!(
        "h3gate_response_bytes_total",
        Unit::Bytes,
        "Response body bytes sent, by protocol."
    );
    describe_histogram!(
        "h3gate_gateway_overhead_seconds",
        Unit::Seconds,
        "Latency the gateway adds: time to response headers minus time waiting on upstreams."
    );
    describe_counter!(
        "h3gate_upstream_attempts_total",
        "Upstream attempts by provider and outcome."
    );
    describe_counter!(
        "h3gate_upstream_failovers_total",
        "Requests moved on to a route's next target."
    );
    describe_histogram!(
        "h3gate_upstream_first_byte_seconds",
        Unit::Seconds,
        "Upstream time to response headers."
    );
    describe_histogram!(
        "h3gate_upstream_first_token_seconds",
        Unit::Seconds,
        "Upstream time to the first body chunk."
    );
    describe_histogram!(
        "h3gate_upstream_chunk_gap_seconds",
        Unit::Seconds,
        "Time between upstream body chunks."
    );
    describe_counter!(
        "h3gate_upstream_stream_errors_total",
        "Upstream responses that failed after streaming began, by reason."
    );
    describe_counter!(
        "h3gate_tokens_total",
        "Tokens reported by upstream usage, by direction, model and provider."
    );
    describe_gauge!(
        "h3gate_breaker_state",
        "Circuit breaker per target: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        "h3gate_provider_healthy",
        "1 if the provider passes its active health checks (or has none)."
    );
    describe_gauge!(
        "h3gate_admission_queue_depth",
        "Requests waiting for an admission slot, by scope."
    );
    describe_histogram!(
        "h3gate_admission_wait_seconds",
        Unit::Seconds,
        "Time waited for an admission slot."
    );
    describe_counter!(
        "h3gate_admission_shed_total",
        "Requests refused by admission, by scope and reason."
    );
    describe_gauge!("h3gate_quic_connections_open", "Open QUIC connections.");
    describe_counter!(
        "h3gate_quic_connections_accepted_total",
        "QUIC connections whose handshake completed."
    );
    describe_counter!(
        "h3gate_quic_connections_refused_total",
        "QUIC connection attempts refused before any crypto work, by reason (caps, draining)."
    );
    describe_counter!(
        "h3gate_quic_retry_sent_total",
        "QUIC Retry packets sent to validate client addresses."
    );
    describe_counter!(
        "h3gate_quic_zero_rtt_connections_total",
        "QUIC connections that sent 0-RTT early requests."
    );
    describe_counter!(
        "h3gate_quic_early_requests_total",
        "Requests received as 0-RTT early data, by outcome (served, held, rejected)."
    );
    describe_counter!(
        "h3gate_quic_handshake_failures_total",
        "QUIC handshakes that failed."
    );
    describe_counter!(
        "h3gate_quic_stream_errors_total",
        "HTTP/3 request streams the gateway ended with a stream error, by reason (header_timeout, malformed, write_timeout: the client stopped reading)."
    );
    describe_histogram!(
        "h3gate_quic_rtt_seconds",
        Unit::Seconds,
        "Smoothed RTT of QUIC connections, at close."
    );
    describe_histogram!(
        "h3gate_quic_congestion_window_bytes",
        Unit::Bytes,
        "Congestion window of QUIC connections, at close."
    );
    describe_counter!(
        "h3gate_quic_lost_packets_total",
        "QUIC packets declared lost."
    );
    describe_counter!("h3gate_quic_sent_packets_total", "QUIC packets sent.");
    describe_gauge!(
        "h3gate_tcp_connections_open",
        "Open TCP (HTTPS) connections."
    );
    describe_counter!(
        "h3gate_tcp_connections_refused_total",
        "TCP connections closed right after accept, before any TLS work, by reason (max_connections, max_connections_per_ip)."
    );
    describe_counter!(
        "h3gate_tls_handshake_failures_total",
        "TLS handshakes that failed on the TCP listener."
    );
    describe_gauge!(
        "h3gate_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the served certificate expires (Unix time)."
    );
    describe_counter!(
        "h3gate_config_reloads_total",
        "Configuration reloads by result."
    );
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that
/// renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            gauge!("h3gate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
                let labels = [
                    ("protocol", p.as_str().to_string()),
                    ("route", route.to_string()),
                    ("status_class", class.to_string()),
                ];
                requests.push(counter!("h3gate_requests_total", &labels));
                duration.push(histogram!("h3gate_request_duration_seconds", &labels));
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
        let per = |f: &dyn Fn(&'static str) -> Counter| PROTOCOLS.map(|p| f(p.as_str()));
        Metrics {
            in_flight: PROTOCOLS
                .map(|p| gauge!("h3gate_requests_in_flight", "protocol" => p.as_str())),
            outcomes: PROTOCOLS.map(|p| {
                Outcome::ALL.map(|o| {
                    counter!("h3gate_request_outcomes_total", "protocol" => p.as_str(), "outcome" => o.as_str())
                })
            }),
            request_bytes: per(&|p| counter!("h3gate_request_bytes_total", "protocol" => p)),
            response_bytes: per(&|p| counter!("h3gate_response_bytes_total", "protocol" => p)),
            overhead: PROTOCOLS
                .map(|p| histogram!("h3gate_gateway_overhead_seconds", "protocol" => p.as_str())),
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
                .map(|o| counter!("h3gate_upstream_attempts_total", "provider" => provider.to_string(), "outcome" => *o))
                .collect(),
            tokens: Default::default(),
            first_byte: histogram!("h3gate_upstream_first_byte_seconds", "provider" => provider.to_string()),
            first_token: histogram!("h3gate_upstream_first_token_seconds", "provider" => provider.to_string()),
            chunk_gap: histogram!("h3gate_upstream_chunk_gap_seconds", "provider" => provider.to_string()),
        }
    }

    pub fn attempt(&self, outcome: Attempt) {
        self.attempts[outcome as usize].increment(1);
    }

    pub fn stream_error(&self, reason: &'static str) {
        counter!("h3gate_upstream_stream_errors_total", "provider" => self.provider.clone(), "reason" => reason).increment(1);
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
        let counters = ["prompt", "completion"].map(|direction| {
            counter!("h3gate_tokens_total", "direction" => direction, "model" => model.to_string(), "provider" => self.provider.clone())
        });
        add(&counters);
        if let Ok(mut m) = self.tokens.write() {
            m.insert(model.to_string(), counters);
        }
    }
}

pub fn failover(route: &str) {
    counter!("h3gate_upstream_failovers_total", "route" => route.to_string()).increment(1);
}

/// QUIC connection events.
pub mod quic {
    use super::*;

    pub fn accepted() {
        counter!("h3gate_quic_connections_accepted_total").increment(1);
        gauge!("h3gate_quic_connections_open").increment(1.0);
    }

    /// A connection attempt refused cheaply, before any crypto work.
    pub fn refused(reason: &'static str) {
        counter!("h3gate_quic_connections_refused_total", "reason" => reason).increment(1);
    }

    pub fn retry_sent() {
        counter!("h3gate_quic_retry_sent_total").increment(1);
    }

    /// A connection that sent requests as 0-RTT early data.
    pub fn zero_rtt_connection() {
        counter!("h3gate_quic_zero_rtt_connections_total").increment(1);
    }

    /// An early request: `served` (safe), `held` (until the handshake), `rejected` (425).
    pub fn early_request(outcome: &'static str) {
        counter!("h3gate_quic_early_requests_total", "outcome" => outcome).increment(1);
    }

    pub fn handshake_failed() {
        counter!("h3gate_quic_handshake_failures_total").increment(1);
    }

    /// A request stream ended with a stream error: `header_timeout`,
    /// `malformed`, `write_timeout` (the client stopped reading).
    pub fn stream_error(reason: &'static str) {
        counter!("h3gate_quic_stream_errors_total", "reason" => reason).increment(1);
    }

    /// At close: the connection's path statistics.
    pub fn closed(stats: &quinn::ConnectionStats) {
        gauge!("h3gate_quic_connections_open").decrement(1.0);
        histogram!("h3gate_quic_rtt_seconds").record(stats.path.rtt.as_secs_f64());
        histogram!("h3gate_quic_congestion_window_bytes").record(stats.path.cwnd as f64);
        counter!("h3gate_quic_lost_packets_total").increment(stats.path.lost_packets);
        counter!("h3gate_quic_sent_packets_total").increment(stats.path.sent_packets);
    }
}

/// TCP connection events.
pub mod tcp {
    use super::*;

    pub fn opened() {
        gauge!("h3gate_tcp_connections_open").increment(1.0);
    }

    pub fn closed() {
        gauge!("h3gate_tcp_connections_open").decrement(1.0);
    }

    pub fn handshake_failed() {
        counter!("h3gate_tls_handshake_failures_total").increment(1);
    }

    /// A connection closed at accept by a cap, before any TLS work.
    pub fn refused(reason: &'static str) {
        counter!("h3gate_tcp_connections_refused_total", "reason" => reason).increment(1);
    }
}

pub fn certificate_expiry(unix_seconds: i64) {
    gauge!("h3gate_tls_certificate_expiry_timestamp_seconds").set(unix_seconds as f64);
}

pub fn config_reload(result: &'static str) {
    counter!("h3gate_config_reloads_total", "result" => result).increment(1);
}
