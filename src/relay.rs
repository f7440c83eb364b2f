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
use crate::provider::Prepared;
use crate::provider::Provider;
use crate::routing::{AttemptGuard, Attempted};
use crate::sse;

mod keepalive;
use crate::translate::stream::{anthropic_error_event, has_usage_object, Translator};
use crate::translate::{response as translate_response, Api, Conversion};
pub use keepalive::KeepAliveBody;

/// Largest SSE event the relay inspects; larger ones pass through unread.
const MAX_OBSERVED_EVENT: usize = 1 << 20;
/// Largest JSON body kept (as shared chunks, no copy) to read its `usage`.
const MAX_OBSERVED_JSON: usize = 1 << 20;
/// Largest JSON body translated to the client's API (it is held whole).
const MAX_TRANSLATED_JSON: usize = 32 << 20;

pub struct RelayBody {
    inner: Option<Body>,
    watch: Option<SseWatch>,
    /// Non-SSE body chunks, kept to read `usage` at the end.
    json: Option<Vec<Bytes>>,
    json_len: usize,
    /// The upstream's wire format (how usage and the end are read).
    upstream_api: Api,
    /// The client's wire format (how failures are reported).
    client_api: Api,
    /// Turns upstream SSE events into the client's (None: pass through).
    translator: Option<Translator>,
    /// A JSON body to convert whole at its end (None: pass through).
    json_conversion: Option<Conversion>,
    /// Anthropic reports input tokens first, output tokens last.
    input_tokens: u64,
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
    #[error("upstream response too large to translate")]
    Untranslatable,
}

/// The client's response for an upstream answer: its status and headers,
/// `x-h3gate-target`, and the body relayed as it arrives.
pub fn relay(
    attempted: Attempted,
    model_label: Arc<str>,
    record: Arc<Record>,
    client_api: Api,
) -> Response {
    let Attempted {
        target,
        response: up,
        prepared,
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
    )
    .converting(&prepared, client_api);
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
            upstream_api: Api::OpenAi,
            client_api: Api::OpenAi,
            translator: None,
            json_conversion: None,
            input_tokens: 0,
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

    /// Reads the body as `prepared`'s API and hands it to the client in
    /// `client_api`, translating when they differ.
    pub fn converting(mut self, prepared: &Prepared, client_api: Api) -> Self {
        self.upstream_api = prepared.upstream_api();
        self.client_api = client_api;
        let conversion = prepared.conversion;
        if self.watch.is_some() {
            self.translator = Translator::new(conversion, &prepared.model);
        } else if conversion != Conversion::None {
            self.json_conversion = Some(conversion);
        }
        self
    }

    fn usage(&self, u: Usage) {
        let prompt = u.prompt_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
        self.record.set_usage(prompt, u.completion_tokens);
        self.target
            .metrics()
            .tokens(&self.model_label, prompt, u.completion_tokens);
    }

    /// Usage and the end of the stream, read from one upstream event.
    fn watch_event(&mut self, ev: &sse::Event) {
        if self.upstream_api == Api::OpenAi {
            if ev.data == "[DONE]" {
                self.mark_done();
            } else if has_usage_object(&ev.data) {
                if let Ok(UsageOnly { usage: Some(u) }) = serde_json::from_str(&ev.data) {
                    self.usage(u);
                }
            }
            return;
        }
        let kind = ev.event.as_deref().unwrap_or_default();
        match kind {
            "message_start" => {
                if let Ok(MessageStart { message }) = serde_json::from_str(&ev.data) {
                    let u = message.usage;
                    self.input_tokens =
                        u.prompt_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
                }
            }
            "message_delta" => {
                if let Ok(UsageOnly { usage: Some(mut u) }) = serde_json::from_str(&ev.data) {
                    if u.prompt_tokens + u.cache_read_input_tokens == 0 {
                        u.prompt_tokens = self.input_tokens;
                    }
                    self.usage(u);
                }
            }
            "message_stop" => self.mark_done(),
            "error" => {
                // An explicit failure, passed on to the client as such.
                self.record.mark_upstream_failure();
                self.mark_done();
            }
            _ => {}
        }
    }

    fn mark_done(&mut self) {
        if let Some(w) = self.watch.as_mut() {
            w.done = true;
        }
    }

    /// Looks at one chunk; returns what the client gets instead of it
    /// when the stream is being translated (`Err`: it cannot be).
    fn observe(&mut self, data: &Bytes) -> Result<Option<Bytes>, Failure> {
        self.observe_timing();
        if let Some(chunks) = self.json.as_mut() {
            self.json_len += data.len();
            let cap = if self.json_conversion.is_some() {
                MAX_TRANSLATED_JSON
            } else {
                MAX_OBSERVED_JSON
            };
            if self.json_len <= cap {
                chunks.push(data.clone());
            } else if self.json_conversion.is_some() {
                return Err(Failure::Untranslatable);
            } else {
                self.json = None;
            }
            // A converted JSON body is sent whole at the end.
            return Ok(self.json_conversion.map(|_| Bytes::new()));
        }
        let Some(w) = self.watch.as_mut() else {
            return Ok(None);
        };
        let mut out = self.translator.as_ref().map(|_| String::new());
        if w.parser.push(data).is_err() {
            return self.unwatchable();
        }
        while let Some(w) = self.watch.as_mut() {
            match w.parser.next_event() {
                Ok(Some(ev)) => {
                    self.watch_event(&ev);
                    if let (Some(t), Some(out)) = (self.translator.as_mut(), out.as_mut()) {
                        t.event(&ev, out);
                    }
                }
                Ok(None) => break,
                Err(_) => return self.unwatchable(),
            }
        }
        Ok(out.map(Bytes::from))
    }

    /// An event too large to inspect: stop watching and keep relaying —
    /// unless the stream is being translated, which then cannot go on.
    fn unwatchable(&mut self) -> Result<Option<Bytes>, Failure> {
        if self.translator.is_some() {
            return Err(Failure::Untranslatable);
        }
        self.watch = None;
        Ok(None)
    }

    fn observe_timing(&mut self) {
        let now = Instant::now();
        let m = self.target.metrics();
        match self.last_chunk {
            None => m.first_token.record((now - self.started).as_secs_f64()),
            Some(prev) => m.chunk_gap.record((now - prev).as_secs_f64()),
        }
        self.last_chunk = Some(now);
    }

    /// At a clean end: the usage of a JSON body, and what a converted body
    /// or stream still owes the client.
    fn finish(&mut self) -> Option<Bytes> {
        if let Some(t) = self.translator.as_mut() {
            let mut out = String::new();
            t.finish(&mut out);
            return (!out.is_empty()).then(|| Bytes::from(out));
        }
        let chunks = self.json.take()?;
        let body: Vec<u8> = chunks.concat();
        if let Ok(UsageOnly { usage: Some(u) }) = serde_json::from_slice(&body) {
            self.usage(u);
        }
        let conversion = self.json_conversion?;
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let converted = match conversion {
            Conversion::MessagesToChat { .. } => translate_response::message_to_chat(&value),
            Conversion::ChatToMessages => translate_response::chat_to_message(&value),
            Conversion::ModelToOpenAi => translate_response::model_to_openai(&value),
            Conversion::None | Conversion::StripUsage => value,
        };
        Some(Bytes::from(converted.to_string()))
    }

    /// A body passed through whose upstream has delivered its exact size:
    /// ends it now (its usage read), since the client may not poll again —
    /// HTTP/1.1 stops at the `Content-Length` and drops the body.
    fn end_if_delivered(&mut self) {
        let passed_through = self.watch.is_none() && self.json_conversion.is_none();
        if passed_through && self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
            self.inner = None;
            // Nothing is owed to a body passed through: only its usage.
            let _ = self.finish();
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
            let event = match self.client_api {
                Api::OpenAi => error_event(&failure),
                Api::Anthropic => anthropic_error_event(502, &failure.client_message()),
            };
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
        } else {
            Poll::Ready(Some(Err(Box::new(failure))))
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

/// OpenAI's usage, or Anthropic's under its own names.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(alias = "output_tokens")]
    completion_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
}

#[derive(Deserialize)]
struct MessageStart {
    message: MessageUsage,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    usage: Usage,
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Upstream(_) => "upstream_error",
            Failure::Truncated => "truncated",
            Failure::Idle(_) => "idle_timeout",
            Failure::Total => "total_timeout",
            Failure::Untranslatable => "untranslatable",
        }
    }

    fn client_message(&self) -> String {
        let (message, _) = self.describe();
        message.to_string()
    }

    fn describe(&self) -> (&'static str, &'static str) {
        match self {
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
            Failure::Untranslatable => (
                "the upstream response was too large to translate",
                "upstream_untranslatable",
            ),
        }
    }
}

/// The OpenAI-style error event that ends a failed stream.
fn error_event(failure: &Failure) -> String {
    let (message, code) = failure.describe();
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
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            return match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let next = Instant::now() + this.idle;
                    this.idle_timer.as_mut().reset(next);
                    let Some(data) = frame.data_ref() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    match this.observe(data) {
                        Ok(None) => {
                            this.end_if_delivered();
                            Poll::Ready(Some(Ok(frame)))
                        }
                        // Translated to nothing (yet): read on.
                        Ok(Some(out)) if out.is_empty() => continue,
                        Ok(Some(out)) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(failure) => this.fail(failure),
                    }
                }
                Poll::Ready(Some(Err(e))) => this.fail(Failure::Upstream(e)),
                Poll::Ready(None) => {
                    if this.watch.as_ref().is_some_and(|w| !w.done) {
                        return this.fail(Failure::Truncated);
                    }
                    this.inner = None;
                    match this.finish() {
                        Some(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => Poll::Ready(None),
                    }
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
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        // Polled to the end always: a watched stream that ends without
        // `[DONE]` still owes an error event, a JSON body its usage.
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            // A watched stream may gain an error event, a converted body
            // changes size: no exact size then.
            Some(b) if self.watch.is_none() && self.json_conversion.is_none() => b.size_hint(),
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(0),
        }
    }
}
