//! The access log and the request's one end. [`Ending`] is created when a
//! request arrives and owns what the request claims ([`Claims`]: admission
//! place, client slot, token reservation) and what is learned ([`Facts`]);
//! it ends exactly once, however the request ends: carried into the
//! response body ([`Logged`]) it ends when the body is delivered
//! (`complete`), fails (`error`, `upstream_failed`) or is dropped mid-way
//! (`aborted`); dropped before any response exists — the client went away —
//! it ends `cancelled` (logged with status 499, nginx's "client closed
//! request"). The end writes one structured line (no secrets, no prompts),
//! records the metrics, brings the in-flight gauge down and corrects the
//! token reservation.

mod charge;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::admission::{ClientSlot, Permit};
use crate::auth::KeyRecord;
use crate::exchange::{Body, BodyError, Outcome, Protocol, Response};
use crate::metrics::Metrics;
use crate::protect::TokenReservation;
use crate::routing::Route;
pub use charge::Charge;
/// What the streaming part of a request learns (token usage, upstream
/// failure) for the log line written at its end.
#[derive(Debug, Default)]
pub struct Record {
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    cache_write_tokens: AtomicU64,
    upstream_failed: AtomicBool,
    /// The target that served: its provider and the model it was asked for
    /// (what the request is priced at).
    served: std::sync::OnceLock<(Arc<str>, Arc<str>)>,
    /// When the first streamed chunk arrived from the upstream.
    first_token: std::sync::OnceLock<Instant>,
}

impl Record {
    pub fn set_usage(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.store(prompt, Ordering::Relaxed);
        self.completion_tokens.store(completion, Ordering::Relaxed);
    }

    /// Of the prompt tokens: read from and written to the prompt cache.
    pub fn set_cache(&self, cached: u64, written: u64) {
        self.cached_tokens.store(cached, Ordering::Relaxed);
        self.cache_write_tokens.store(written, Ordering::Relaxed);
    }

    /// The response comes from `provider`, asked for `model`.
    pub fn served(&self, provider: &str, model: &str) {
        let _ = self.served.set((provider.into(), model.into()));
    }

    /// Who served the response: its provider and the model it was asked for.
    pub fn served_by(&self) -> Option<&(Arc<str>, Arc<str>)> {
        self.served.get()
    }

    /// The usage reported, if any.
    pub fn usage(&self) -> Option<crate::spend::Usage> {
        let u = crate::spend::Usage {
            input: self.prompt_tokens.load(Ordering::Relaxed),
            output: self.completion_tokens.load(Ordering::Relaxed),
            cached_input: self.cached_tokens.load(Ordering::Relaxed),
            cache_write: self.cache_write_tokens.load(Ordering::Relaxed),
        };
        (u.total() > 0).then_some(u)
    }

    /// The first streamed chunk arrived (now).
    pub fn first_token(&self, at: Instant) {
        let _ = self.first_token.set(at);
    }

    pub fn mark_upstream_failure(&self) {
        self.upstream_failed.store(true, Ordering::Relaxed);
    }

    pub fn upstream_failed(&self) -> bool {
        self.upstream_failed.load(Ordering::Relaxed)
    }

    /// Prompt + completion tokens, if the response reported its usage.
    pub fn total_tokens(&self) -> Option<u64> {
        let total = self
            .prompt_tokens
            .load(Ordering::Relaxed)
            .saturating_add(self.completion_tokens.load(Ordering::Relaxed));
        (total > 0).then_some(total)
    }
}

/// What the pipeline's steps learn about a request, for its log line and
/// metrics.
#[derive(Default)]
pub struct Facts {
    pub model: Option<String>,
    pub route: Option<Arc<Route>>,
    /// The upstream target that served (or last failed) the request.
    pub target: Option<String>,
    pub key: Option<Arc<KeyRecord>>,
    pub request_bytes: u64,
    /// Time spent waiting for upstream response headers, all attempts.
    pub upstream_wait: Duration,
    /// `x-ratelimit-*` headers for the response, success or not.
    pub rate_headers: http::HeaderMap,
    /// Served as 0-RTT early data (before the handshake completed).
    pub early: bool,
    /// What the request's cost is accounted with (proxied requests).
    pub charge: Option<Charge>,
    /// The request's trace, with `[tracing]` on.
    pub trace: Option<Arc<crate::trace::RequestTrace>>,
    /// Its QUIC connection, with `[tracing]` on.
    pub connection: Option<Arc<dyn crate::exchange::Handshake>>,
}

/// What the pipeline's steps claim on the way: each a guard given back
/// when the request ends (the reservation corrected with the real usage
/// first).
#[derive(Default)]
pub struct Claims {
    /// This client's share of admission, held until the end.
    pub client_slot: Option<ClientSlot>,
    /// The gateway-wide admission slot, held until the end.
    pub permit: Option<Permit>,
    /// The token reservation, corrected with the real usage at the end.
    pub tokens: Option<TokenReservation>,
    /// On a cluster, the key's concurrency slot (a lease in Redis).
    pub lease: Option<crate::rate_limit::Lease>,
    /// The budgets' reservations, reconciled with the real cost at the end.
    pub budgets: Vec<crate::protect::budget::Held>,
}

/// The request's one end: see the module documentation.
pub struct Ending {
    request_id: String,
    protocol: Protocol,
    method: Method,
    path: String,
    client: IpAddr,
    started: Instant,
    record: Arc<Record>,
    metrics: Arc<Metrics>,
    pub facts: Facts,
    pub claims: Claims,
    /// The response's status, once there is one.
    status: Option<StatusCode>,
    response_bytes: u64,
    done: bool,
    /// The request's trace id (kept for the log line after the trace ends).
    trace_id: Option<opentelemetry::trace::TraceId>,
}

impl Ending {
    /// A request arrives: counted in flight until its end.
    pub fn begin(
        request_id: String,
        protocol: Protocol,
        method: Method,
        path: String,
        client: IpAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.request_started(protocol);
        Ending {
            request_id,
            protocol,
            method,
            path,
            client,
            started: Instant::now(),
            record: Arc::default(),
            metrics,
            facts: Facts::default(),
            claims: Claims::default(),
            status: None,
            response_bytes: 0,
            done: false,
            trace_id: None,
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The request belongs to `trace`.
    pub fn traced(&mut self, trace: crate::trace::RequestTrace) {
        self.trace_id = Some(trace.trace_id);
        self.facts.trace = Some(Arc::new(trace));
    }

    /// What the response body learns (usage, upstream failure).
    pub fn record(&self) -> &Arc<Record> {
        &self.record
    }

    /// The response starts: its body carries this end from now on.
    pub fn respond(mut self, resp: Response) -> Response {
        self.status = Some(resp.status());
        resp.map(|body| Body::new(Logged::new(body, self)))
    }

    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let outcome = if outcome == Outcome::Complete && self.record.upstream_failed() {
            Outcome::UpstreamFailed
        } else {
            outcome
        };
        if let Some(tokens) = self.claims.tokens.take() {
            // An answered failure used nothing; otherwise the real usage
            // (unknown for a request cut short: the estimate stays).
            let failed = self.status.is_some_and(|s| !s.is_success());
            tokens.reconcile(if failed {
                Some(0)
            } else {
                self.record.total_tokens()
            });
        }
        let budgets = std::mem::take(&mut self.claims.budgets);
        let mut cost = None;
        if let Some(charge) = self.facts.charge.take() {
            cost = charge.settle(
                &self.record,
                self.status,
                budgets,
                self.facts.key.as_deref(),
            );
        }
        let elapsed = self.started.elapsed();
        if let Some(status) = self.status {
            let f = &self.facts;
            let route_metrics = f
                .route
                .as_ref()
                .map_or(&self.metrics.unrouted, |r| &r.metrics);
            route_metrics.record(self.protocol, status.as_u16(), elapsed);
        }
        self.metrics.request_ended(
            self.protocol,
            outcome,
            self.facts.request_bytes,
            self.response_bytes,
        );
        if let Some(trace) = self.facts.trace.take() {
            // Nano-USD to USD.
            self.end_trace(&trace, outcome, cost.map(|n| n as f64 / 1e9));
        }
        self.log(outcome, elapsed);
    }

    fn end_trace(&self, trace: &crate::trace::RequestTrace, outcome: Outcome, cost: Option<f64>) {
        let f = &self.facts;
        let usage = self.record.usage().map(|u| (u.input, u.output));
        trace.finish(crate::trace::RequestEnd {
            protocol_version: match self.protocol {
                Protocol::Http1 => "1.1",
                Protocol::Http2 => "2",
                Protocol::Http3 => "3",
            },
            method: self.method.as_str(),
            path: &self.path,
            status: self.status.map(|s| s.as_u16()),
            outcome: outcome.as_str(),
            request_id: &self.request_id,
            route: f.route.as_ref().map(|r| r.pattern.as_str()),
            model: f.model.as_deref(),
            key_id: f.key.as_ref().map(|k| k.id.as_str()),
            client: self.client,
            early: f.early,
            usage,
            cost_usd: cost,
            first_token: self.record.first_token.get().copied(),
            transport: f.connection.as_ref().and_then(|c| c.transport()),
        });
    }

    fn log(&self, outcome: Outcome, elapsed: Duration) {
        let f = &self.facts;
        let prompt = self.record.prompt_tokens.load(Ordering::Relaxed);
        let completion = self.record.completion_tokens.load(Ordering::Relaxed);
        // `upstream`, not `target`: that key is the log line's own (the
        // tracing target) in JSON output.
        tracing::info!(
            target: "h3gate::access",
            request_id = %self.request_id,
            protocol = self.protocol.as_str(),
            method = %self.method,
            path = %self.path,
            status = self.status.map_or(499, |s| s.as_u16()),
            model = f.model.as_deref().unwrap_or(""),
            upstream = f.target.as_deref().unwrap_or(""),
            key_id = f.key.as_ref().map_or("", |k| k.id.as_str()),
            // Only with `[tracing]` on (a `None` is left out of the line).
            trace_id = self.trace_id.map(tracing::field::display),
            client = %self.client,
            request_bytes = f.request_bytes,
            response_bytes = self.response_bytes,
            prompt_tokens = prompt,
            completion_tokens = completion,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            outcome = outcome.as_str(),
            "request"
        );
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        // Not handed to a response body (or that body already ended it):
        // the request was dropped before it had a response.
        self.finish(Outcome::Cancelled);
    }
}

/// A response body carrying the request's end: ends it when the body is
/// delivered, fails or is dropped. A body with an exact size counts as
/// delivered once that many bytes went out — HTTP/1.1 stops polling at its
/// `Content-Length` and drops it.
pub struct Logged {
    inner: Body,
    end: Ending,
    exact: Option<u64>,
}

impl Logged {
    fn new(inner: Body, end: Ending) -> Self {
        let exact = inner.size_hint().exact();
        Logged { inner, end, exact }
    }

    /// Whether the client has had the whole body (a `HEAD` response has
    /// none to send: its body is dropped unread).
    fn delivered(&self) -> bool {
        self.inner.is_end_stream()
            || self.exact == Some(self.end.response_bytes)
            || self.end.method == Method::HEAD
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.end.response_bytes += d.len() as u64;
                }
                if this.delivered() {
                    this.end.finish(Outcome::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.end.finish(Outcome::Error),
            Poll::Ready(None) => this.end.finish(Outcome::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let outcome = if self.delivered() {
            Outcome::Complete
        } else {
            Outcome::Aborted
        };
        self.end.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` under the production JSON format; returns the lines written.
    fn json_lines(f: impl FnOnce()) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_target(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                // The format's own keys and the event's fields, in order.
                let keys: Vec<String> = l
                    .trim_start_matches('{')
                    .split(",\"")
                    .filter_map(|kv| kv.trim_start_matches('"').split_once("\":"))
                    .map(|(k, _)| k.to_string())
                    .filter(|k| !k.contains('{') && !k.contains('}'))
                    .collect();
                let map: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(l).unwrap();
                // (No nested objects here: no span is entered.)
                assert_eq!(keys.len(), map.len(), "duplicate keys in {l}");
                map
            })
            .collect()
    }

    fn ending(protocol: Protocol) -> Ending {
        let mut end = Ending::begin(
            "req-1".into(),
            protocol,
            Method::POST,
            "/v1/chat/completions".into(),
            "127.0.0.1".parse().unwrap(),
            Arc::new(Metrics::default()),
        );
        end.facts.target = Some("up".into());
        end.facts.model = Some("m".into());
        end
    }

    /// A body of exact size that never says it ended (as HTTP/1.1 leaves one).
    struct Sized(Option<Bytes>);

    impl HttpBody for Sized {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(3)
        }
    }

    #[test]
    fn a_request_dropped_before_its_response_is_cancelled_once() {
        let lines = json_lines(|| drop(ending(Protocol::Http1)));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["outcome"], "cancelled");
        assert_eq!(lines[0]["status"], 499);
        assert_eq!(lines[0]["upstream"], "up");
        assert_eq!(lines[0]["target"], "h3gate::access");
    }

    #[test]
    fn a_sized_body_delivered_whole_is_complete_even_if_dropped_unfinished() {
        let lines = json_lines(|| {
            let resp = http::Response::new(Body::new(Sized(Some(Bytes::from_static(b"abc")))));
            let mut body = ending(Protocol::Http1).respond(resp).into_body();
            let frame = body.frame().now_or_never().flatten();
            assert!(frame.is_some_and(|f| f.is_ok()));
            drop(body); // what hyper's HTTP/1.1 does at the Content-Length
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["outcome"], "complete");
        assert_eq!(lines[0]["response_bytes"], 3);

        let lines = json_lines(|| {
            let resp = http::Response::new(Body::new(Sized(Some(Bytes::from_static(b"ab")))));
            drop(ending(Protocol::Http2).respond(resp));
        });
        assert_eq!(lines[0]["outcome"], "aborted", "dropped before its end");

        let lines = json_lines(|| {
            let resp = http::Response::new(Body::new(Sized(Some(Bytes::from_static(b"ab")))));
            let mut end = ending(Protocol::Http2);
            end.method = Method::HEAD;
            drop(end.respond(resp));
        });
        assert_eq!(
            lines[0]["outcome"], "complete",
            "a HEAD response sends no body"
        );
    }
}
