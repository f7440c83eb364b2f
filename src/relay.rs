//! Streaming an upstream response body back to the client, chunk by chunk,
//! with the provider's idle and total timeouts, and with an explicit ending
//! when the upstream fails mid-stream: an SSE stream gets an OpenAI-style
//! `data: {"error":…}` event (and no `[DONE]`), any other body ends in a
//! stream error (a reset on HTTP/2 and HTTP/3, a truncated message on
//! HTTP/1.1) — never a clean-looking end.
//!
//! Dropping a `RelayBody` (the client went away) drops the upstream request
//! with it, so an abandoned completion stops costing money.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

use http::header::{self, HeaderValue};

use crate::access::Record;
use crate::exchange::{Body, BodyError, Response};
use crate::provider::Provider;
use crate::routing::{AttemptGuard, Attempted, Forwarded};
use crate::sse;

/// Largest SSE event the relay inspects; larger ones pass through unread.
const MAX_OBSERVED_EVENT: usize = 1 << 20;
/// Largest JSON body kept (as shared chunks, no copy) to read its `usage`.
const MAX_OBSERVED_JSON: usize = 1 << 20;

pub struct RelayBody {
    inner: Option<Body>,
    watch: Option<SseWatch>,
    /// Non-SSE body chunks, kept to read `usage` at the end.
    json: Option<Vec<Bytes>>,
    json_len: usize,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    target: Arc<Provider>,
    /// Counts the target's outstanding request; told of mid-stream failures.
    guard: AttemptGuard,
    model_label: Arc<str>,
    record: Arc<Record>,
    started: Instant,
    last_chunk: Option<Instant>,
    span: tracing::Span,
}

struct SseWatch {
    parser: sse::Parser,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("upstream stream failed: {0}")]
    Upstream(BodyError),
    #[error("upstream ended the stream without [DONE]")]
    Truncated,
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("upstream exceeded its total time limit")]
    Total,
}

/// The client's response for an upstream answer: its status and headers,
/// `x-h3gate-target`, and the body relayed as it arrives.
pub fn relay(attempted: Attempted, model_label: Arc<str>, record: Arc<Record>) -> Response {
    let Attempted {
        target,
        response: up,
        started,
        guard,
    } = attempted;
    let sse = up
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = RelayBody::new(
        up.body,
        sse,
        target.provider.clone(),
        guard,
        started,
        model_label,
        record,
    );
    let mut resp = http::Response::new(Body::new(body));
    *resp.status_mut() = up.status;
    *resp.headers_mut() = up.headers;
    if sse {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(v) = HeaderValue::from_str(&target.name) {
        resp.headers_mut().insert("x-h3gate-target", v);
    }
    resp
}

impl RelayBody {
    /// `sse`: the body is an event stream (errors become an error event).
    /// `started`: when the upstream call began (the total limit counts from it).
    /// `model_label`: the bounded model name for token metrics.
    pub fn new(
        inner: Body,
        sse: bool,
        target: Arc<Provider>,
        guard: AttemptGuard,
        started: Instant,
        model_label: Arc<str>,
        record: Arc<Record>,
    ) -> Self {
        let timeouts = target.timeouts();
        let idle = timeouts.idle.get();
        let deadline = started + timeouts.total.get();
        RelayBody {
            inner: Some(inner),
            watch: sse.then(|| SseWatch {
                parser: sse::Parser::new(MAX_OBSERVED_EVENT),
                done: false,
            }),
            json: (!sse).then(Vec::new),
            json_len: 0,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            target,
            guard,
            model_label,
            record,
            started,
            last_chunk: None,
            span: tracing::Span::current(),
        }
    }

    fn usage(&self, u: Usage) {
        self.record.set_usage(u.prompt_tokens, u.completion_tokens);
        self.target
            .metrics()
            .tokens(&self.model_label, u.prompt_tokens, u.completion_tokens);
    }

    fn observe(&mut self, data: &Bytes) {
        let now = Instant::now();
        let m = self.target.metrics();
        match self.last_chunk {
            None => m.first_token.record((now - self.started).as_secs_f64()),
            Some(prev) => m.chunk_gap.record((now - prev).as_secs_f64()),
        }
        self.last_chunk = Some(now);
        if let Some(chunks) = self.json.as_mut() {
            self.json_len += data.len();
            if self.json_len <= MAX_OBSERVED_JSON {
                chunks.push(data.clone());
            } else {
                self.json = None;
            }
            return;
        }
        let Some(w) = self.watch.as_mut() else { return };
        let mut ok = w.parser.push(data).is_ok();
        while ok {
            let Some(w) = self.watch.as_mut() else { return };
            match w.parser.next_event() {
                Ok(Some(ev)) if ev.data == "[DONE]" => w.done = true,
                Ok(Some(ev)) => {
                    if ev.data.contains("\"usage\"") {
                        if let Ok(UsageOnly { usage: Some(u) }) = serde_json::from_str(&ev.data) {
                            self.usage(u);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => ok = false,
            }
        }
        if !ok {
            // An event too large to inspect: stop watching, keep relaying.
            self.watch = None;
        }
    }

    /// At a clean end: the usage of a JSON body.
    fn finish(&mut self) {
        if let Some(chunks) = self.json.take() {
            let body: Vec<u8> = chunks.concat();
            if let Ok(UsageOnly { usage: Some(u) }) = serde_json::from_slice(&body) {
                self.usage(u);
            }
        }
    }

    fn fail(&mut self, failure: Failure) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.inner = None;
        self.json = None;
        self.record.mark_upstream_failure();
        self.target.metrics().stream_error(failure.reason());
        self.guard.failed_mid_stream();
        let _span = self.span.enter();
        tracing::warn!(target = self.target.name(), error = %failure, "upstream response failed mid-stream");
        if self.watch.is_some() {
            self.watch = None;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(error_event(&failure))))))
        } else {
            Poll::Ready(Some(Err(Box::new(failure))))
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Upstream(_) => "upstream_error",
            Failure::Truncated => "truncated",
            Failure::Idle(_) => "idle_timeout",
            Failure::Total => "total_timeout",
        }
    }
}

/// The OpenAI-style error event that ends a failed stream.
fn error_event(failure: &Failure) -> String {
    let (message, code) = match failure {
        Failure::Upstream(_) => (
            "the upstream provider failed mid-stream",
            "upstream_stream_error",
        ),
        Failure::Truncated => (
            "the upstream provider ended the stream early",
            "upstream_stream_truncated",
        ),
        Failure::Idle(_) => (
            "the upstream provider stalled mid-stream",
            "upstream_idle_timeout",
        ),
        Failure::Total => (
            "the upstream provider exceeded its time limit",
            "upstream_timeout",
        ),
    };
    let body = serde_json::json!({
        "error": {"message": message, "type": "upstream_error", "code": code}
    });
    sse::encode(None, &body.to_string())
}

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.observe(data);
                }
                let next = Instant::now() + this.idle;
                this.idle_timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(Failure::Upstream(e)),
            Poll::Ready(None) => {
                if this.watch.as_ref().is_some_and(|w| !w.done) {
                    return this.fail(Failure::Truncated);
                }
                this.inner = None;
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return this.fail(Failure::Total);
                }
                if this.idle_timer.as_mut().poll(cx).is_ready() {
                    let idle = this.idle;
                    return this.fail(Failure::Idle(idle));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Polled to the end always: a watched stream that ends without
        // `[DONE]` still owes an error event, a JSON body its usage.
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            // A watched stream may gain an error event: no exact size then.
            Some(b) if self.watch.is_none() => b.size_hint(),
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(0),
        }
    }
}

type Forwarding = Pin<Box<dyn std::future::Future<Output = Forwarded> + Send>>;

/// A streaming response committed (200) before the upstream answered:
/// `: ping` comments every `every` keep idle-timeout middleboxes from
/// cutting it; then the upstream's stream, or an error event if every
/// attempt failed (the status can no longer change).
pub struct KeepAliveBody {
    waiting: Option<(Forwarding, tokio::time::Interval)>,
    relay: Option<RelayBody>,
    model_label: Arc<str>,
    record: Arc<Record>,
}

impl KeepAliveBody {
    pub fn response(
        fwd: Forwarding,
        every: Duration,
        model_label: Arc<str>,
        record: Arc<Record>,
    ) -> Response {
        let mut tick = tokio::time::interval_at(Instant::now(), every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let body = KeepAliveBody {
            waiting: Some((fwd, tick)),
            relay: None,
            model_label,
            record,
        };
        let mut resp = http::Response::new(Body::new(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

impl HttpBody for KeepAliveBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(relay) = this.relay.as_mut() {
            return Pin::new(relay).poll_frame(cx);
        }
        let Some((fwd, tick)) = this.waiting.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(done) = fwd.as_mut().poll(cx) {
            this.waiting = None;
            return match done.result {
                Ok(Attempted {
                    target,
                    response,
                    started,
                    guard,
                }) => {
                    let relay = RelayBody::new(
                        response.body,
                        true,
                        target.provider.clone(),
                        guard,
                        started,
                        this.model_label.clone(),
                        this.record.clone(),
                    );
                    Pin::new(this.relay.insert(relay)).poll_frame(cx)
                }
                Err(e) => {
                    this.record.mark_upstream_failure();
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(e.sse_event())))))
                }
            };
        }
        if tick.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": ping\n\n")))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.relay.as_ref().is_none_or(|r| r.is_end_stream())
    }
}
