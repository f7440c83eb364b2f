//! The one table of metric definitions. Each metric is a `const` [`Def`]:
//! its name, kind (the type parameter: a `Def<Counter>` only registers
//! counters), unit, help and label names, written here and nowhere else.
//! [`FAMILIES`] lists them all; `describe` and every registration derive from
//! it, so a name cannot drift from its `# HELP` or its labels.

use std::marker::PhantomData;

use metrics::{Counter, Gauge, Histogram, Label, SharedString, Unit};

/// A metric's kind, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The handle a [`Def`] registers: [`Counter`], [`Gauge`] or [`Histogram`].
pub trait Handle: Sized {
    const KIND: Kind;
    fn register(name: &'static str, labels: Vec<Label>) -> Self;
}

impl Handle for Counter {
    const KIND: Kind = Kind::Counter;
    fn register(name: &'static str, labels: Vec<Label>) -> Self {
        metrics::counter!(name, labels)
    }
}

impl Handle for Gauge {
    const KIND: Kind = Kind::Gauge;
    fn register(name: &'static str, labels: Vec<Label>) -> Self {
        metrics::gauge!(name, labels)
    }
}

impl Handle for Histogram {
    const KIND: Kind = Kind::Histogram;
    fn register(name: &'static str, labels: Vec<Label>) -> Self {
        metrics::histogram!(name, labels)
    }
}

/// One metric: a handle of kind `H` with the `N` labels named in `labels`.
#[derive(Debug)]
pub struct Def<H, const N: usize = 0> {
    pub name: &'static str,
    pub unit: Option<Unit>,
    pub help: &'static str,
    pub labels: &'static [&'static str; N],
    handle: PhantomData<fn() -> H>,
}

impl<H: Handle, const N: usize> Def<H, N> {
    const fn new(
        name: &'static str,
        labels: &'static [&'static str; N],
        help: &'static str,
    ) -> Self {
        Def {
            name,
            unit: None,
            help,
            labels,
            handle: PhantomData,
        }
    }

    const fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    /// This metric's row in [`FAMILIES`].
    pub const fn family(&self) -> Family {
        Family {
            name: self.name,
            kind: H::KIND,
            unit: self.unit,
            help: self.help,
            labels: self.labels,
        }
    }

    /// The series with these label values, in the order of `labels`.
    /// Registering hashes the labels: keep the handle for a hot path.
    pub fn with<V: Into<SharedString>>(&self, values: [V; N]) -> H {
        let labels = self
            .labels
            .iter()
            .zip(values)
            .map(|(k, v)| Label::new(*k, v))
            .collect();
        H::register(self.name, labels)
    }
}

impl<H: Handle> Def<H> {
    /// The one series of a metric without labels.
    pub fn get(&self) -> H {
        H::register(self.name, Vec::new())
    }
}

impl<const N: usize> Def<Counter, N> {
    const fn counter(
        name: &'static str,
        labels: &'static [&'static str; N],
        help: &'static str,
    ) -> Self {
        Def::new(name, labels, help)
    }
}

impl<const N: usize> Def<Gauge, N> {
    const fn gauge(
        name: &'static str,
        labels: &'static [&'static str; N],
        help: &'static str,
    ) -> Self {
        Def::new(name, labels, help)
    }
}

impl<const N: usize> Def<Histogram, N> {
    const fn histogram(
        name: &'static str,
        labels: &'static [&'static str; N],
        help: &'static str,
    ) -> Self {
        Def::new(name, labels, help)
    }
}

/// A [`Def`] without its type: one row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

pub const BUILD_INFO: Def<Gauge, 1> = Def::gauge(
    "h3gate_build_info",
    &["version"],
    "Build information; the value is always 1.",
);
pub const REQUESTS: Def<Counter, 3> = Def::counter(
    "h3gate_requests_total",
    &["protocol", "route", "status_class"],
    "Requests answered, by protocol, route and status class.",
);
pub const REQUEST_DURATION: Def<Histogram, 3> = Def::histogram(
    "h3gate_request_duration_seconds",
    &["protocol", "route", "status_class"],
    "Whole request duration, streaming included.",
)
.unit(Unit::Seconds);
pub const REQUESTS_IN_FLIGHT: Def<Gauge, 1> = Def::gauge(
    "h3gate_requests_in_flight",
    &["protocol"],
    "Requests being handled now, by protocol.",
);
pub const REQUEST_OUTCOMES: Def<Counter, 2> = Def::counter(
    "h3gate_request_outcomes_total",
    &["protocol", "outcome"],
    "Requests ended, by protocol and outcome (complete, upstream_failed, error, aborted mid-response, cancelled before a response).",
);
pub const REQUEST_BYTES: Def<Counter, 1> = Def::counter(
    "h3gate_request_bytes_total",
    &["protocol"],
    "Request body bytes received, by protocol.",
)
.unit(Unit::Bytes);
pub const RESPONSE_BYTES: Def<Counter, 1> = Def::counter(
    "h3gate_response_bytes_total",
    &["protocol"],
    "Response body bytes sent, by protocol.",
)
.unit(Unit::Bytes);
pub const GATEWAY_OVERHEAD: Def<Histogram, 1> = Def::histogram(
    "h3gate_gateway_overhead_seconds",
    &["protocol"],
    "Latency the gateway adds: time to response headers minus time waiting on upstreams.",
)
.unit(Unit::Seconds);
pub const UPSTREAM_ATTEMPTS: Def<Counter, 2> = Def::counter(
    "h3gate_upstream_attempts_total",
    &["provider", "outcome"],
    "Upstream attempts by provider and outcome.",
);
pub const UPSTREAM_FAILOVERS: Def<Counter, 1> = Def::counter(
    "h3gate_upstream_failovers_total",
    &["route"],
    "Requests moved on to a route's next target.",
);
pub const UPSTREAM_FIRST_BYTE: Def<Histogram, 1> = Def::histogram(
    "h3gate_upstream_first_byte_seconds",
    &["provider"],
    "Upstream time to response headers.",
)
.unit(Unit::Seconds);
pub const UPSTREAM_FIRST_TOKEN: Def<Histogram, 1> = Def::histogram(
    "h3gate_upstream_first_token_seconds",
    &["provider"],
    "Upstream time to the first body chunk.",
)
.unit(Unit::Seconds);
pub const UPSTREAM_CHUNK_GAP: Def<Histogram, 1> = Def::histogram(
    "h3gate_upstream_chunk_gap_seconds",
    &["provider"],
    "Time between upstream body chunks.",
)
.unit(Unit::Seconds);
pub const UPSTREAM_STREAM_ERRORS: Def<Counter, 2> = Def::counter(
    "h3gate_upstream_stream_errors_total",
    &["provider", "reason"],
    "Upstream responses that failed after streaming began, by reason.",
);
pub const TOKENS: Def<Counter, 3> = Def::counter(
    "h3gate_tokens_total",
    &["direction", "model", "provider"],
    "Tokens reported by upstream usage, by direction, model and provider.",
);
pub const BREAKER_STATE: Def<Gauge, 1> = Def::gauge(
    "h3gate_breaker_state",
    &["target"],
    "Circuit breaker per target: 0 closed, 1 half-open, 2 open.",
);
pub const PROVIDER_HEALTHY: Def<Gauge, 1> = Def::gauge(
    "h3gate_provider_healthy",
    &["provider"],
    "1 if the provider passes its active health checks (or has none).",
);
pub const PROVIDER_KEY_RESTS: Def<Counter, 3> = Def::counter(
    "h3gate_provider_key_rests_total",
    &["provider", "key", "reason"],
    "A provider's pool key set aside: rate_limited (answered 429, rests for its Retry-After) or refused (answered 401/403, out until reload). `key` is the key's id (a hash), never the key.",
);
pub const ADMISSION_QUEUE_DEPTH: Def<Gauge, 1> = Def::gauge(
    "h3gate_admission_queue_depth",
    &["scope"],
    "Requests waiting for an admission slot, by scope.",
);
pub const ADMISSION_WAIT: Def<Histogram, 1> = Def::histogram(
    "h3gate_admission_wait_seconds",
    &["scope"],
    "Time waited for an admission slot.",
)
.unit(Unit::Seconds);
pub const ADMISSION_SHED: Def<Counter, 2> = Def::counter(
    "h3gate_admission_shed_total",
    &["scope", "reason"],
    "Requests refused by admission, by scope and reason.",
);
pub const QUIC_CONNECTIONS_OPEN: Def<Gauge> = Def::gauge(
    "h3gate_quic_connections_open",
    &[],
    "Open QUIC connections.",
);
pub const QUIC_CONNECTIONS_ACCEPTED: Def<Counter> = Def::counter(
    "h3gate_quic_connections_accepted_total",
    &[],
    "QUIC connections whose handshake completed.",
);
pub const QUIC_CONNECTIONS_REFUSED: Def<Counter, 1> = Def::counter(
    "h3gate_quic_connections_refused_total",
    &["reason"],
    "QUIC connection attempts refused before any crypto work, by reason (caps, draining).",
);
pub const QUIC_HANDSHAKE_FAILURES: Def<Counter> = Def::counter(
    "h3gate_quic_handshake_failures_total",
    &[],
    "QUIC handshakes that failed.",
);
pub const QUIC_STREAM_ERRORS: Def<Counter, 1> = Def::counter(
    "h3gate_quic_stream_errors_total",
    &["reason"],
    "HTTP/3 request streams the gateway ended with a stream error, by reason (header_timeout, malformed, write_timeout: the client stopped reading).",
);
pub const QUIC_RETRY_SENT: Def<Counter> = Def::counter(
    "h3gate_quic_retry_sent_total",
    &[],
    "QUIC Retry packets sent to validate client addresses.",
);
pub const QUIC_ZERO_RTT_CONNECTIONS: Def<Counter> = Def::counter(
    "h3gate_quic_zero_rtt_connections_total",
    &[],
    "QUIC connections that sent 0-RTT early requests.",
);
pub const QUIC_EARLY_REQUESTS: Def<Counter, 1> = Def::counter(
    "h3gate_quic_early_requests_total",
    &["outcome"],
    "Requests received as 0-RTT early data, by outcome (served, held, rejected).",
);
pub const QUIC_RTT: Def<Histogram> = Def::histogram(
    "h3gate_quic_rtt_seconds",
    &[],
    "Smoothed RTT of QUIC connections, at close.",
)
.unit(Unit::Seconds);
pub const QUIC_CONGESTION_WINDOW: Def<Histogram> = Def::histogram(
    "h3gate_quic_congestion_window_bytes",
    &[],
    "Congestion window of QUIC connections, at close.",
)
.unit(Unit::Bytes);
pub const QUIC_LOST_PACKETS: Def<Counter> = Def::counter(
    "h3gate_quic_lost_packets_total",
    &[],
    "QUIC packets declared lost.",
);
pub const QUIC_SENT_PACKETS: Def<Counter> =
    Def::counter("h3gate_quic_sent_packets_total", &[], "QUIC packets sent.");
pub const TCP_CONNECTIONS_OPEN: Def<Gauge> = Def::gauge(
    "h3gate_tcp_connections_open",
    &[],
    "Open TCP (HTTPS) connections.",
);
pub const TCP_CONNECTIONS_REFUSED: Def<Counter, 1> = Def::counter(
    "h3gate_tcp_connections_refused_total",
    &["reason"],
    "TCP connections closed right after accept, before any TLS work, by reason (max_connections, max_connections_per_ip).",
);
pub const TLS_HANDSHAKE_FAILURES: Def<Counter> = Def::counter(
    "h3gate_tls_handshake_failures_total",
    &[],
    "TLS handshakes that failed on the TCP listener.",
);
pub const TLS_CERTIFICATE_EXPIRY: Def<Gauge> = Def::gauge(
    "h3gate_tls_certificate_expiry_timestamp_seconds",
    &[],
    "When the served certificate expires (Unix time).",
)
.unit(Unit::Seconds);
pub const CONFIG_RELOADS: Def<Counter, 1> = Def::counter(
    "h3gate_config_reloads_total",
    &["result"],
    "Configuration reloads by result.",
);
pub const AUTH_FAILURES: Def<Counter, 1> = Def::counter(
    "h3gate_auth_failures_total",
    &["reason"],
    "Requests refused by authentication (unauthorized: 401) or authorization (forbidden: 403), by reason.",
);
pub const RATE_LIMITED: Def<Counter, 1> = Def::counter(
    "h3gate_rate_limited_total",
    &["scope"],
    "Requests refused by a rate limit (429), by scope (ip, ip_tokens, key_requests, key_tokens).",
);
pub const RATE_LIMIT_CORRECTIONS: Def<Counter, 1> = Def::counter(
    "h3gate_rate_limit_corrections_total",
    &["result"],
    "Token reservations corrected to the real usage, by result (applied, failed, dropped).",
);
pub const NETWORK_DENIED: Def<Counter> = Def::counter(
    "h3gate_network_denied_total",
    &[],
    "Requests refused (403) for their client address: a denied network, outside the allow list, or under an abuse deny.",
);
pub const ABUSE_DENIES: Def<Counter> = Def::counter(
    "h3gate_abuse_denies_total",
    &[],
    "Addresses denied for a while after repeated failed authentications or malformed requests.",
);
pub const PANICS: Def<Counter> = Def::counter(
    "h3gate_panics_total",
    &[],
    "Requests whose handling panicked, each answered 500 while the gateway kept serving.",
);
pub const AUDIT_DROPPED: Def<Counter> = Def::counter(
    "h3gate_audit_dropped_total",
    &[],
    "Audit events dropped because the audit log writer was too far behind.",
);

pub const TRACE_SPANS: Def<Counter, 1> = Def::counter(
    "h3gate_trace_spans_total",
    &["result"],
    "Trace spans by what became of them: exported, dropped (queue full: the collector is slow or away) or failed (the export failed).",
);

pub const CLUSTER_UP: Def<Gauge> = Def::gauge(
    "h3gate_cluster_up",
    &[],
    "1 while this replica reaches the cluster's Redis, 0 while it does not (then the failure policy applies).",
);
pub const CLUSTER_CALL: Def<Histogram, 1> = Def::histogram(
    "h3gate_cluster_redis_seconds",
    &["op"],
    "Round-trip time of the calls to the cluster's Redis that answered, by operation.",
)
.unit(Unit::Seconds);
pub const CLUSTER_ERRORS: Def<Counter, 1> = Def::counter(
    "h3gate_cluster_errors_total",
    &["op"],
    "Calls to the cluster's Redis that failed or timed out, by operation.",
);
pub const CLUSTER_FALLBACKS: Def<Counter, 2> = Def::counter(
    "h3gate_cluster_fallbacks_total",
    &["what", "decision"],
    "Decisions made without Redis, by what (rate_limit, ticket, …) and decision (local, deny; for a 0-RTT ticket, hold: its early requests wait for the handshake).",
);
pub const CLUSTER_SYNCS: Def<Counter, 2> = Def::counter(
    "h3gate_cluster_syncs_total",
    &["what", "result"],
    "Shared state (keys, denies, tickets, usage) read from or written to Redis, by what and result (usage: pushed, failed, dropped — a request's usage left out while the buckets waiting for Redis were at their cap).",
);
pub const CLUSTER_TICKETS: Def<Counter, 1> = Def::counter(
    "h3gate_cluster_tickets_total",
    &["result"],
    "0-RTT session tickets checked for first use when a replica resumed a connection with one (in Redis; a ticket taken before it was shared is a first use without asking), by result (first_use, replayed, unknown, error).",
);
pub const COST_UNPRICED: Def<Counter, 2> = Def::counter(
    "h3gate_cost_unpriced_requests_total",
    &["model", "provider"],
    "Requests served by a model without a price (counted as costing 0), by the bounded model label and provider.",
);
pub const BUDGET_UTILISATION: Def<Gauge, 2> = Def::gauge(
    "h3gate_budget_utilisation_ratio",
    &["team", "unit"],
    "How much of each team's budget is spent in its current period (reservations included), by team and unit (usd, tokens); 1 is all of it.",
);
pub const BUDGET_ALERTS: Def<Counter, 2> = Def::counter(
    "h3gate_budget_alerts_total",
    &["scope", "level"],
    "Budgets that reached a soft limit in their period, by scope (key, team) and level (80, 100); also an audit event each.",
);

/// `h3gate_cost_usd_total`: a float counter, which the `metrics` crate's
/// whole-number counters cannot hold. Kept in nano-USD by
/// [`crate::spend::meter`] and rendered by it beside the recorder's
/// exposition; so it is in [`RENDERED`], not [`FAMILIES`].
pub const COST_USD: Family = Family {
    name: "h3gate_cost_usd_total",
    kind: Kind::Counter,
    unit: None,
    help: "What requests cost in USD at the price of the model that served them (unpriced models count 0), by the bounded model label and provider.",
    labels: &["model", "provider"],
};

/// Families h3gate renders itself, after the recorder's exposition on
/// `/metrics` (not registered with the recorder, so not in [`FAMILIES`]).
pub const RENDERED: &[Family] = &[COST_USD];

/// Every metric h3gate exports, for `describe`, the dashboard and alert
/// checks and the tests.
pub const FAMILIES: &[Family] = &[
    BUILD_INFO.family(),
    REQUESTS.family(),
    REQUEST_DURATION.family(),
    REQUESTS_IN_FLIGHT.family(),
    REQUEST_OUTCOMES.family(),
    REQUEST_BYTES.family(),
    RESPONSE_BYTES.family(),
    GATEWAY_OVERHEAD.family(),
    UPSTREAM_ATTEMPTS.family(),
    UPSTREAM_FAILOVERS.family(),
    UPSTREAM_FIRST_BYTE.family(),
    UPSTREAM_FIRST_TOKEN.family(),
    UPSTREAM_CHUNK_GAP.family(),
    UPSTREAM_STREAM_ERRORS.family(),
    TOKENS.family(),
    BREAKER_STATE.family(),
    PROVIDER_HEALTHY.family(),
    PROVIDER_KEY_RESTS.family(),
    ADMISSION_QUEUE_DEPTH.family(),
    ADMISSION_WAIT.family(),
    ADMISSION_SHED.family(),
    QUIC_CONNECTIONS_OPEN.family(),
    QUIC_CONNECTIONS_ACCEPTED.family(),
    QUIC_CONNECTIONS_REFUSED.family(),
    QUIC_HANDSHAKE_FAILURES.family(),
    QUIC_STREAM_ERRORS.family(),
    QUIC_RETRY_SENT.family(),
    QUIC_ZERO_RTT_CONNECTIONS.family(),
    QUIC_EARLY_REQUESTS.family(),
    QUIC_RTT.family(),
    QUIC_CONGESTION_WINDOW.family(),
    QUIC_LOST_PACKETS.family(),
    QUIC_SENT_PACKETS.family(),
    TCP_CONNECTIONS_OPEN.family(),
    TCP_CONNECTIONS_REFUSED.family(),
    TLS_HANDSHAKE_FAILURES.family(),
    TLS_CERTIFICATE_EXPIRY.family(),
    CONFIG_RELOADS.family(),
    AUTH_FAILURES.family(),
    RATE_LIMITED.family(),
    RATE_LIMIT_CORRECTIONS.family(),
    NETWORK_DENIED.family(),
    ABUSE_DENIES.family(),
    PANICS.family(),
    AUDIT_DROPPED.family(),
    TRACE_SPANS.family(),
    CLUSTER_UP.family(),
    CLUSTER_CALL.family(),
    CLUSTER_ERRORS.family(),
    CLUSTER_FALLBACKS.family(),
    CLUSTER_SYNCS.family(),
    CLUSTER_TICKETS.family(),
    COST_UNPRICED.family(),
    BUDGET_UTILISATION.family(),
    BUDGET_ALERTS.family(),
];

/// Describes every family (HELP, unit) to the installed recorder.
pub(super) fn describe() {
    metrics::with_recorder(|r| {
        for f in FAMILIES {
            let help: SharedString = f.help.into();
            match f.kind {
                Kind::Counter => r.describe_counter(f.name.into(), f.unit, help),
                Kind::Gauge => r.describe_gauge(f.name.into(), f.unit, help),
                Kind::Histogram => r.describe_histogram(f.name.into(), f.unit, help),
            }
        }
    });
}

#[cfg(test)]
mod tests;
