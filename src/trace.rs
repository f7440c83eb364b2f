//! OpenTelemetry traces (`[tracing]`): W3C trace context in and out, the
//! spans of a request (the request, its admission wait, each upstream
//! attempt), exported over OTLP/HTTP off the request path.
//!
//! The spans are built here from what the pipeline learns, not through a
//! tracing subscriber: a request's span ends at the request's one end
//! (`access::Ending`), an attempt's when its outcome is known (a cancelled
//! one when it is dropped), the serving attempt's with the request. With
//! tracing off there is no [`Tracer`] and a request carries no trace.
//! The module is a leaf: it knows the configuration and the metrics only.

mod context;
mod export;
mod span;

use std::sync::Arc;

use opentelemetry::trace::{SpanId, TraceId};

use crate::config::{TracingConfig, TrustIncoming};
pub use context::{traceparent, Parent};
pub use span::{Attempt, AttemptOutcome, RequestEnd, RequestTrace};

/// The running gateway's tracing: sampling, trust, and the export queue.
pub struct Tracer {
    /// A new trace is sampled when its id's low 63 bits fall below this.
    threshold: u64,
    trust: TrustIncoming,
    record_client_address: bool,
    exporter: export::Exporter,
}

impl Tracer {
    /// The tracer `cfg` asks for, reading the standard `OTEL_*` variables;
    /// `None` when tracing is off.
    pub fn new(cfg: &TracingConfig) -> Option<Arc<Tracer>> {
        let resolved = cfg.resolve(|name| std::env::var(name).ok())?;
        let ratio = resolved.sample_ratio;
        Some(Arc::new(Tracer {
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            trust: cfg.trust_incoming,
            record_client_address: cfg.record_client_address,
            exporter: export::Exporter::new(cfg, resolved),
        }))
    }

    /// Starts the export task (it runs until the process exits, sending
    /// what is queued then).
    pub fn start(&self, shutdown: &crate::shutdown::Shutdown) {
        self.exporter.start(shutdown);
    }

    /// The trace a request arriving with `headers` from `peer_trusted` (a
    /// trusted proxy) belongs to: the client's, when trusted, else a new one.
    pub fn begin(self: &Arc<Self>, headers: &http::HeaderMap, peer_trusted: bool) -> RequestTrace {
        let trusted = match self.trust {
            TrustIncoming::Always => true,
            TrustIncoming::TrustedProxies => peer_trusted,
            TrustIncoming::Never => false,
        };
        let parent = trusted.then(|| Parent::from_headers(headers)).flatten();
        let (trace_id, sampled) = match &parent {
            // Parent-based: the caller decided.
            Some(p) => (p.trace_id, p.sampled),
            None => {
                let id = TraceId::from(fastrand::u128(1..));
                (id, self.samples(id))
            }
        };
        RequestTrace::new(self.clone(), trace_id, parent, sampled)
    }

    fn samples(&self, id: TraceId) -> bool {
        let low = u128::from_be_bytes(id.to_bytes()) as u64 >> 1;
        low < self.threshold
    }

    /// Whether spans record the client's address.
    pub fn records_client_address(&self) -> bool {
        self.record_client_address
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

/// A new span id (never the invalid all-zero one).
fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}
