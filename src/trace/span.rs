//! One request's trace: its span and its children, built from what the
//! pipeline learns and queued for export when each ends.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tokio::time::Instant;

use super::{context::traceparent, new_span_id, Parent, Tracer};

/// One request's trace: the ids every span of it shares, whether it is
/// recorded, and the serving attempt (which ends with the request).
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    pub trace_id: TraceId,
    /// The request's own span.
    pub span_id: SpanId,
    parent: Option<Parent>,
    sampled: bool,
    started: (SystemTime, Instant),
    served: Mutex<Option<Attempt>>,
}

/// What the request's span records at its end.
pub struct RequestEnd<'a> {
    pub protocol_version: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: Option<u16>,
    pub outcome: &'static str,
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    pub model: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub client: std::net::IpAddr,
    pub early: bool,
    /// Prompt, completion tokens reported.
    pub usage: Option<(u64, u64)>,
    pub cost_usd: Option<f64>,
    /// When the first token reached the relay.
    pub first_token: Option<Instant>,
    /// The QUIC connection's facts (HTTP/3).
    pub transport: Option<crate::exchange::TransportFacts>,
}

impl RequestTrace {
    pub(super) fn new(
        tracer: Arc<Tracer>,
        trace_id: TraceId,
        parent: Option<Parent>,
        sampled: bool,
    ) -> RequestTrace {
        RequestTrace {
            tracer,
            trace_id,
            span_id: new_span_id(),
            parent,
            sampled,
            started: (SystemTime::now(), Instant::now()),
            served: Mutex::new(None),
        }
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The `traceresponse` header: this request's span.
    pub fn response_header(&self) -> HeaderValue {
        traceparent(self.trace_id, self.span_id, self.sampled)
    }

    /// The caller's `tracestate`, passed on.
    pub fn state(&self) -> Option<&HeaderValue> {
        self.parent.as_ref().and_then(|p| p.state.as_ref())
    }

    fn at(&self, t: Instant) -> SystemTime {
        self.started.0 + t.saturating_duration_since(self.started.1)
    }

    fn span(
        &self,
        span_id: SpanId,
        parent: SpanId,
        kind: SpanKind,
        name: Cow<'static, str>,
        (start, end): (Instant, Instant),
    ) -> SpanData {
        let remote_parent = parent != self.span_id && self.parent.is_some();
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: remote_parent,
            span_kind: kind,
            name,
            start_time: self.at(start),
            end_time: self.at(end),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope(),
        }
    }

    /// A finished span of the gateway's own work (e.g. the admission wait)
    /// under the request's.
    pub fn internal(&self, name: &'static str, start: Instant, attributes: Vec<KeyValue>) {
        if !self.sampled {
            return;
        }
        let mut s = self.span(
            new_span_id(),
            self.span_id,
            SpanKind::Internal,
            name.into(),
            (start, Instant::now()),
        );
        s.attributes = attributes;
        self.tracer.exporter.push(s);
    }

    /// An upstream attempt starts: its span (whose context goes upstream).
    pub fn attempt(self: &Arc<Self>, attributes: Vec<KeyValue>, name: String) -> Attempt {
        Attempt {
            trace: self.clone(),
            span_id: new_span_id(),
            name,
            started: Instant::now(),
            first_byte: None,
            attributes,
            ended: false,
        }
    }

    /// The request ends: the serving attempt's span and then its own.
    pub fn finish(&self, end: RequestEnd<'_>) {
        let served = self.served.lock().ok().and_then(|mut s| s.take());
        if !self.sampled {
            if let Some(mut a) = served {
                a.ended = true;
            }
            return;
        }
        let now = Instant::now();
        let mut usage = Vec::new();
        if let Some((input, output)) = end.usage {
            usage.push(KeyValue::new("gen_ai.usage.input_tokens", input as i64));
            usage.push(KeyValue::new("gen_ai.usage.output_tokens", output as i64));
        }
        if let Some(mut a) = served {
            a.attributes.extend(usage.iter().cloned());
            a.attributes
                .push(KeyValue::new("h3gate.outcome", end.outcome));
            let mut events = Vec::new();
            if let Some(t) = a.first_byte {
                events.push(event("gen_ai.first_byte", self.at(t)));
            }
            if let Some(t) = end.first_token {
                events.push(event("gen_ai.first_token", self.at(t)));
            }
            let failed = end.outcome != "complete" && end.outcome != "cancelled";
            a.end(events, failed.then_some(end.outcome), now);
        }
        let mut s = self.span(
            self.span_id,
            self.parent.as_ref().map_or(SpanId::INVALID, |p| p.span_id),
            SpanKind::Server,
            format!("{} {}", end.method, end.path).into(),
            (self.started.1, now),
        );
        s.parent_span_is_remote = self.parent.is_some();
        let a = &mut s.attributes;
        a.extend([
            KeyValue::new("http.request.method", end.method.to_string()),
            KeyValue::new("url.path", end.path.to_string()),
            KeyValue::new("http.route", end.path.to_string()),
            KeyValue::new("url.scheme", "https"),
            KeyValue::new("network.protocol.name", "http"),
            KeyValue::new("network.protocol.version", end.protocol_version),
            KeyValue::new("h3gate.request_id", end.request_id.to_string()),
            KeyValue::new("h3gate.outcome", end.outcome),
            KeyValue::new("h3gate.early_data", end.early),
        ]);
        if let Some(status) = end.status {
            a.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        let optional = [
            ("h3gate.route", end.route),
            ("gen_ai.request.model", end.model),
            ("h3gate.key_id", end.key_id),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                a.push(KeyValue::new(k, v.to_string()));
            }
        }
        if self.tracer.records_client_address() {
            a.push(KeyValue::new("client.address", end.client.to_string()));
        }
        a.extend(usage);
        if let Some(t) = end.transport {
            a.push(KeyValue::new(
                "h3gate.quic.rtt_ms",
                t.rtt.as_secs_f64() * 1000.0,
            ));
            a.push(KeyValue::new("h3gate.quic.zero_rtt", t.zero_rtt));
            if let Some(h) = t.handshake {
                a.push(KeyValue::new(
                    "h3gate.quic.handshake_ms",
                    h.as_secs_f64() * 1000.0,
                ));
            }
        }
        if let Some(cost) = end.cost_usd {
            a.push(KeyValue::new("h3gate.cost_usd", cost));
        }
        let error = match end.status {
            Some(s) if s >= 500 => Some(s.to_string()),
            _ if matches!(end.outcome, "error" | "aborted" | "upstream_failed") => {
                Some(end.outcome.to_string())
            }
            _ => None,
        };
        if let Some(e) = error {
            s.attributes.push(KeyValue::new("error.type", e.clone()));
            s.status = Status::error(e);
        }
        if let Some(t) = end.first_token {
            s.events
                .events
                .push(event("gen_ai.first_token", self.at(t)));
        }
        self.tracer.exporter.push(s);
    }
}

fn event(name: &'static str, at: SystemTime) -> opentelemetry::trace::Event {
    opentelemetry::trace::Event::new(name, at, Vec::new(), 0)
}

fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("h3gate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

/// How an attempt ended.
pub enum AttemptOutcome {
    /// Response headers with a success status: it serves the request (its
    /// span ends with the request).
    Served(u16),
    /// A failure: its class (`status 503`, `connect`, `timeout` …) and the
    /// status, if the upstream answered.
    Failed(String, Option<u16>),
}

/// An upstream attempt's span, from before it is sent to its outcome;
/// dropped before one (the request was cancelled) it ends `cancelled`.
pub struct Attempt {
    trace: Arc<RequestTrace>,
    span_id: SpanId,
    name: String,
    started: Instant,
    first_byte: Option<Instant>,
    attributes: Vec<KeyValue>,
    ended: bool,
}

impl Attempt {
    /// The `traceparent` the upstream is sent: this attempt's span.
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(self.trace.trace_id, self.span_id, self.trace.sampled)
    }

    pub fn tracestate(&self) -> Option<HeaderValue> {
        self.trace.state().cloned()
    }

    /// The outcome is known.
    pub fn outcome(mut self, outcome: AttemptOutcome) {
        let now = Instant::now();
        self.first_byte = Some(now);
        match outcome {
            AttemptOutcome::Served(status) => {
                self.attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                let trace = self.trace.clone();
                if let Ok(mut served) = trace.served.lock() {
                    *served = Some(self);
                };
            }
            AttemptOutcome::Failed(class, status) => {
                if let Some(status) = status {
                    self.attributes.push(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                }
                self.attributes
                    .push(KeyValue::new("h3gate.outcome", class.clone()));
                self.end(Vec::new(), Some(&class), now);
            }
        }
    }

    fn end(&mut self, events: Vec<opentelemetry::trace::Event>, error: Option<&str>, at: Instant) {
        if std::mem::replace(&mut self.ended, true) || !self.trace.sampled {
            return;
        }
        let t = &self.trace;
        let mut s = t.span(
            self.span_id,
            t.span_id,
            SpanKind::Client,
            std::mem::take(&mut self.name).into(),
            (self.started, at),
        );
        s.attributes = std::mem::take(&mut self.attributes);
        s.events.events = events;
        if let Some(e) = error {
            s.attributes
                .push(KeyValue::new("error.type", e.to_string()));
            s.status = Status::error(e.to_string());
        }
        t.tracer.exporter.push(s);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.ended {
            self.attributes
                .push(KeyValue::new("h3gate.outcome", "cancelled"));
            let now = Instant::now();
            self.end(Vec::new(), None, now);
        }
    }
}
