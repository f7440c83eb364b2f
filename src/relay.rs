//! Streaming an upstream response body back to the client, chunk by chunk,
//! with the provider's idle and total timeouts, and with an explicit ending
//! when the upstream fails mid-stream: an event stream gets an error event
//! in the client's API (and no clean end), any other body ends in a stream
//! error (a reset on HTTP/2 and HTTP/3, a truncated message on HTTP/1.1) —
//! never a clean-looking end.
//!
//! What the body does with the upstream's bytes is its [`Mode`]: an event
//! stream read event by event (passed through or translated), a JSON body
//! kept to read its usage (passed through or converted whole), or bytes
//! relayed unread. What every mode shares — timers and accounting — sits
//! beside it.
//!
//! Dropping a `RelayBody` (the client went away) drops the upstream request
//! with it, so an abandoned completion stops costing money; its attempt
//! guard gives the target's outstanding count back.

mod events;
mod failure;
mod json;
mod keepalive;
#[cfg(test)]
mod tests;
mod usage;

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::access::Record;
use crate::api::Api;
use crate::exchange::{Body, BodyError, Response};
use crate::provider::{Prepared, Provider};
use crate::routing::{AttemptGuard, Attempted};
use crate::translate::stream::Translator;
use events::Events;
use failure::Failure;
use json::Json;
pub use keepalive::KeepAliveBody;
use usage::Tokens;

/// The client's response for an upstream answer: its status and headers,
/// `x-h3gate-target`, and the body relayed as it arrives.
pub fn relay(
    attempted: Attempted,
    model_label: Arc<str>,
    record: Arc<Record>,
    client_api: Api,
) -> Response {
    let client = ClientEnd {
        model_label,
        record,
        api: client_api,
    };
    RelayBody::start(attempted, client, Framing::Upstream).map(Body::new)
}

/// Whom a relayed body answers: the client's API (how failures are told)
/// and where its usage goes.
#[derive(Clone)]
struct ClientEnd {
    /// The bounded model name for token metrics.
    model_label: Arc<str>,
    record: Arc<Record>,
    api: Api,
}

/// How the client's body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// As the upstream's `Content-Type` says.
    Upstream,
    /// An event stream already promised to the client (keep-alive pings).
    EventStream,
}

pub struct RelayBody {
    /// `None` once the body has ended (cleanly or not).
    upstream: Option<Body>,
    mode: Mode,
    timers: Timers,
    account: Accounting,
}

/// What the relay does with the upstream's bytes.
enum Mode {
    /// An event stream, read for its usage and its end (boxed: a
    /// translator's state is the largest of the modes).
    Events(Box<Events>),
    /// A non-SSE body, kept to read its usage at the end.
    Json(Json),
    /// Bytes relayed unread: an event or a body too large to inspect.
    Opaque,
}

/// What a mode makes of one upstream chunk.
enum Step {
    /// The chunk goes to the client as is.
    Pass,
    /// The client gets this instead (empty: nothing yet, read on).
    Replace(Bytes),
    /// Too large to inspect: this chunk and the rest go as they are, unread.
    Unread,
    /// The body cannot go on.
    Fail(Failure),
}

/// The provider's idle and total limits on the body.
struct Timers {
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
}

/// What the relay accounts for, whatever its mode.
struct Accounting {
    target: Arc<Provider>,
    /// Counts the target's outstanding request; told of mid-stream failures.
    guard: AttemptGuard,
    model_label: Arc<str>,
    record: Arc<Record>,
    /// The client's wire format (how failures are reported).
    client_api: Api,
    /// When the upstream call began (the total limit counts from it).
    started: Instant,
    last_chunk: Option<Instant>,
    span: tracing::Span,
}

impl RelayBody {
    /// The one way a relay starts: the upstream's status and headers (an
    /// event stream's marked `no-cache`, `x-h3gate-target` added) around its
    /// body, read as `prepared`'s API and handed to the client in its own.
    fn start(attempted: Attempted, client: ClientEnd, framing: Framing) -> http::Response<Self> {
        let Attempted {
            target,
            response: up,
            prepared,
            started,
            guard,
        } = attempted;
        let content_type = up
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Bedrock's binary event stream, translated to the client's SSE.
        let aws_events = content_type.starts_with(crate::provider::bedrock::EVENT_STREAM);
        let sse = match framing {
            Framing::EventStream => true,
            Framing::Upstream => content_type.starts_with("text/event-stream") || aws_events,
        };
        let provider = target.provider.clone();
        client.record.served(provider.name(), &prepared.model);
        let body = RelayBody {
            upstream: Some(up.body),
            mode: Mode::new(sse, aws_events, &prepared),
            timers: Timers::new(&provider, started),
            account: Accounting {
                target: provider,
                guard,
                model_label: client.model_label,
                record: client.record,
                client_api: client.api,
                started,
                last_chunk: None,
                span: tracing::Span::current(),
            },
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = up.status;
        *resp.headers_mut() = up.headers;
        if sse {
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        if aws_events {
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&target.name) {
            resp.headers_mut().insert("x-h3gate-target", v);
        }
        resp
    }

    /// The upstream ended cleanly: what the mode still owes the client.
    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.owed() {
            Ok(owed) => {
                self.upstream = None;
                Poll::Ready(owed.map(|out| Ok(Frame::data(out))))
            }
            Err(failure) => self.fail(failure),
        }
    }

    /// At a clean end: the usage read, and what a converted body or a
    /// translated stream still owes the client.
    fn owed(&mut self) -> Result<Option<Bytes>, Failure> {
        match &mut self.mode {
            Mode::Events(events) => events.finish(),
            Mode::Json(json) => Ok(json.finish(&self.account)),
            Mode::Opaque => Ok(None),
        }
    }

    /// A body passed through whose upstream has delivered its exact size:
    /// ends it now (its usage read), since the client may not poll again —
    /// HTTP/1.1 stops at the `Content-Length` and drops the body.
    fn end_if_delivered(&mut self) {
        let delivered = self.upstream.as_ref().is_some_and(|b| b.is_end_stream());
        if delivered && self.mode.passes_through() {
            // Nothing is owed to a body passed through: only its usage.
            let _ = self.owed();
            self.upstream = None;
        }
    }

    fn fail(&mut self, failure: Failure) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.upstream = None;
        self.account.failed(&failure);
        match std::mem::replace(&mut self.mode, Mode::Opaque) {
            Mode::Events(_) => Poll::Ready(Some(Ok(Frame::data(
                failure.event(self.account.client_api),
            )))),
            Mode::Json(_) | Mode::Opaque => Poll::Ready(Some(Err(Box::new(failure)))),
        }
    }
}

impl Mode {
    /// `aws_events`: the body is an AWS event stream (Bedrock's).
    fn new(sse: bool, aws_events: bool, prepared: &Prepared) -> Self {
        let upstream = prepared.upstream_api();
        if sse {
            let translator = Translator::new(prepared.conversion, &prepared.model);
            Mode::Events(Box::new(if aws_events {
                Events::aws(translator)
            } else {
                Events::new(upstream, translator)
            }))
        } else {
            // A stored response's usage was counted when it was made.
            let usage = !prepared.endpoint.is_stored();
            Mode::Json(Json::new(
                upstream,
                prepared.conversion,
                &prepared.model,
                usage,
            ))
        }
    }

    /// Whether the client gets the upstream's bytes unchanged, with nothing
    /// added at the end (so the upstream's exact size is the client's).
    fn passes_through(&self) -> bool {
        match self {
            // A failed stream still gains an error event.
            Mode::Events(_) => false,
            Mode::Json(json) => json.passes_through(),
            Mode::Opaque => true,
        }
    }
}

impl Timers {
    fn new(target: &Provider, started: Instant) -> Self {
        let timeouts = target.timeouts();
        let idle = timeouts.idle.get();
        Timers {
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            deadline: Box::pin(tokio::time::sleep_until(started + timeouts.total.get())),
        }
    }

    /// The upstream sent something: the idle limit starts over.
    fn heard(&mut self) {
        let next = Instant::now() + self.idle;
        self.idle_timer.as_mut().reset(next);
    }

    /// The limit that ran out, if one did (registers for the next one).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Failure> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Some(Failure::Total);
        }
        if self.idle_timer.as_mut().poll(cx).is_ready() {
            return Some(Failure::Idle(self.idle));
        }
        None
    }
}

impl Accounting {
    fn tokens(&self, t: Tokens) {
        self.record.set_usage(t.prompt, t.completion);
        self.record.set_cache(t.cached, t.cache_write);
        self.target
            .metrics()
            .tokens(&self.model_label, t.prompt, t.completion);
    }

    /// A data chunk arrived: time to first token, or the gap since the last.
    fn chunk_arrived(&mut self) {
        let now = Instant::now();
        let m = self.target.metrics();
        match self.last_chunk {
            None => {
                m.first_token.record((now - self.started).as_secs_f64());
                self.record.first_token(now);
            }
            Some(prev) => m.chunk_gap.record((now - prev).as_secs_f64()),
        }
        self.last_chunk = Some(now);
    }

    /// The response failed after its headers: the request's outcome, the
    /// provider's metrics, its breaker and the log all learn of it.
    fn failed(&self, failure: &Failure) {
        self.record.mark_upstream_failure();
        self.target.metrics().stream_error(failure.reason());
        self.guard.failed_mid_stream();
        let _span = self.span.enter();
        tracing::warn!(target = self.target.name(), error = %failure, "upstream response failed mid-stream");
    }
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
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.timers.heard();
                    match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.fail(Failure::Upstream(e)),
                Poll::Ready(None) => return this.end(),
                Poll::Pending => {
                    return match this.timers.expired(cx) {
                        Some(failure) => this.fail(failure),
                        None => Poll::Pending,
                    }
                }
            };
            this.account.chunk_arrived();
            let step = match &mut this.mode {
                Mode::Events(events) => events.chunk(&data, &this.account),
                Mode::Json(json) => json.chunk(&data),
                Mode::Opaque => Step::Pass,
            };
            match step {
                Step::Pass => {}
                Step::Unread => this.mode = Mode::Opaque,
                // Translated to nothing (yet): read on.
                Step::Replace(out) if out.is_empty() => continue,
                Step::Replace(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Step::Fail(failure) => return this.fail(failure),
            }
            this.end_if_delivered();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        // Polled to the end always: a stream that ends without the
        // upstream's own end still owes an error event, a JSON body its usage.
        self.upstream.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.upstream {
            // A stream may gain an error event, a converted body changes
            // size: no exact size then.
            Some(b) if self.mode.passes_through() => b.size_hint(),
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(0),
        }
    }
}
