//! The access log: one structured line per request, written when its
//! response body has been delivered (or abandoned), so it carries the real
//! byte count, duration and outcome of streams too. No secrets, no prompts.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::exchange::{Body, BodyError, Protocol};
use crate::metrics::Metrics;
use crate::routing::Route;

/// What the streaming part of a request learns (token usage, upstream
/// failure) for the log line written at its end.
#[derive(Debug, Default)]
pub struct Record {
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    upstream_failed: AtomicBool,
}

impl Record {
    pub fn set_usage(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.store(prompt, Ordering::Relaxed);
        self.completion_tokens.store(completion, Ordering::Relaxed);
    }

    pub fn mark_upstream_failure(&self) {
        self.upstream_failed.store(true, Ordering::Relaxed);
    }

    pub fn upstream_failed(&self) -> bool {
        self.upstream_failed.load(Ordering::Relaxed)
    }

    /// Prompt + completion tokens, if the response reported its usage.
    pub fn total_tokens(&self) -> Option<u64> {
        let total = self.prompt_tokens.load(Ordering::Relaxed)
            + self.completion_tokens.load(Ordering::Relaxed);
        (total > 0).then_some(total)
    }
}

/// Work to run once when a response ends.
pub type OnEnd = Box<dyn FnOnce(&Record) + Send + Sync>;

/// The facts of one request, known when its response starts.
pub struct Entry {
    pub request_id: String,
    pub protocol: Protocol,
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub model: Option<String>,
    pub target: Option<String>,
    /// The obfuscated id of the caller's key.
    pub key_id: Option<String>,
    pub client: std::net::IpAddr,
    pub request_bytes: u64,
    pub started: Instant,
    pub record: Arc<Record>,
    pub metrics: Arc<Metrics>,
    /// The route that served the request, if one did.
    pub route: Option<Arc<Route>>,
    /// Held until the response ends (the admission slot).
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Run once at the end (token reconciliation).
    pub on_end: Option<OnEnd>,
}

/// Wraps a response body; logs the request once the body ends, fails or is dropped.
pub struct Logged {
    inner: Body,
    entry: Entry,
    bytes: u64,
    done: bool,
}

impl Logged {
    pub fn new(inner: Body, entry: Entry) -> Self {
        Logged {
            inner,
            entry,
            bytes: 0,
            done: false,
        }
    }

    fn finish(&mut self, outcome: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(on_end) = self.entry.on_end.take() {
            on_end(&self.entry.record);
        }
        let e = &self.entry;
        let outcome = if outcome == "complete" && e.record.upstream_failed() {
            "upstream_failed"
        } else {
            outcome
        };
        let elapsed = e.started.elapsed();
        let route_metrics = e.route.as_ref().map_or(&e.metrics.unrouted, |r| &r.metrics);
        route_metrics.record(e.protocol, e.status.as_u16(), elapsed);
        e.metrics
            .request_ended(e.protocol, e.request_bytes, self.bytes);
        let prompt = e.record.prompt_tokens.load(Ordering::Relaxed);
        let completion = e.record.completion_tokens.load(Ordering::Relaxed);
        tracing::info!(
            target: "h3gate::access",
            request_id = %e.request_id,
            protocol = e.protocol.as_str(),
            method = %e.method,
            path = %e.path,
            status = e.status.as_u16(),
            model = e.model.as_deref().unwrap_or(""),
            target = e.target.as_deref().unwrap_or(""),
            key_id = e.key_id.as_deref().unwrap_or(""),
            client = %e.client,
            request_bytes = e.request_bytes,
            response_bytes = self.bytes,
            prompt_tokens = prompt,
            completion_tokens = completion,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            outcome,
            "request"
        );
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
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish("error"),
            Poll::Ready(None) => this.finish("complete"),
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
        let outcome = if self.inner.is_end_stream() {
            "complete"
        } else {
            "aborted"
        };
        self.finish(outcome);
    }
}
