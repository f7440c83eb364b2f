//! The failover loop: each candidate target in turn is admitted (or passed
//! over, for a [`Skip`] reason), sent the request, and its outcome
//! classified (done, retry, stop). Every attempt that does not serve the
//! request goes in the request's [`Ledger`]; when none succeeds, the
//! client's error is built from it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{retry, AttemptGuard, Attempted, Forwarded, Probe, Route, Target};
use crate::admission::Permit;
use crate::config::RetryConfig;
use crate::error::{FailureClass, GatewayError, Ledger, Skip};
use crate::metrics::{self as m, Attempt};
use crate::provider::{PrepareError, Prepared, UpstreamCall, UpstreamError, UpstreamResponse};
use crate::trace::AttemptOutcome;
use crate::translate::Conversion;

/// Tries the route's targets until one answers with a success, a
/// non-retryable error, or the attempts or deadline run out.
pub async fn forward(route: &Route, call: &UpstreamCall, retry: &RetryConfig) -> Forwarded {
    let mut run = Failover::new(route, retry);
    // The upstream's own error answer, when the last attempt sent got one.
    let mut answer = None;
    while let Some(target) = run.next_target() {
        let mut admitted = match run.admit(&target, call).await {
            Admission::Go(admitted) => admitted,
            Admission::Skip(why) => {
                run.pass_over(&target, why);
                continue;
            }
            Admission::Defer => {
                run.defer(&target);
                continue;
            }
            Admission::Invalid(e) => return run.end(Err(e), Some(&target)),
            Admission::OutOfTime => break,
        };
        let guard = AttemptGuard::new(target.state.clone(), admitted.permit);
        let span = run.attempt_span(&target, call, &mut admitted.prepared);
        let started = Instant::now();
        let (sent, elapsed) = run.send(&target, call, &admitted.prepared, started).await;
        let verdict = classify(sent);
        if let Some(span) = span {
            span.outcome(match &verdict {
                Verdict::Done(up) => AttemptOutcome::Served(up.status.as_u16()),
                Verdict::Retry(f) | Verdict::Stop(f) => {
                    let status = match f {
                        Failed::Answer(up) => Some(up.status.as_u16()),
                        _ => None,
                    };
                    AttemptOutcome::Failed(f.class().to_string(), status)
                }
            });
        }
        match verdict {
            Verdict::Done(response) => {
                run.succeeded(&target, elapsed);
                let mut prepared = admitted.prepared;
                // A response id says which of the pool's keys made it.
                if let Conversion::TagResponse(tag) = &mut prepared.conversion {
                    tag.key = target.provider.key_tag(response.key);
                }
                let done = Attempted {
                    target,
                    response,
                    prepared,
                    started,
                    guard,
                };
                return run.end(Ok(done), None);
            }
            Verdict::Retry(failed) => answer = run.failed(&target, failed).await,
            Verdict::Stop(failed) => match run.failed(&target, failed).await {
                // The upstream's answer goes back to the client as it is.
                Some(answer) => return run.end(Err(answer), Some(&target)),
                // The deadline passed: the error comes from the ledger.
                None => break,
            },
        }
        // The attempt guard and any breaker probe go here, after the outcome
        // was recorded.
    }
    let error = exhausted(&run.ledger, answer);
    run.end(Err(error), None)
}

/// What came of one attempt sent: `None` when the request's deadline passed
/// before response headers.
pub(super) type Sent = Option<Result<UpstreamResponse, UpstreamError>>;

/// What an attempt's outcome means for the loop.
pub(super) enum Verdict {
    /// A success: relay it.
    Done(UpstreamResponse),
    /// A failure another attempt may mend (this target again, or the next).
    Retry(Failed),
    /// A failure that ends the loop.
    Stop(Failed),
}

/// An attempt that failed.
pub(super) enum Failed {
    /// An error status, with the upstream's headers and body.
    Answer(UpstreamResponse),
    /// No response.
    Error(UpstreamError),
    /// No response before the request's deadline.
    Deadline,
}

impl Failed {
    pub(super) fn class(&self) -> FailureClass {
        match self {
            Failed::Answer(up) => FailureClass::Status(up.status.as_u16()),
            Failed::Error(UpstreamError::Connect(_)) => FailureClass::Connect,
            Failed::Error(UpstreamError::Timeout(_)) => FailureClass::Timeout,
            Failed::Error(UpstreamError::Failed(_)) => FailureClass::Invalid,
            Failed::Deadline => FailureClass::Deadline,
        }
    }
}

/// Done on a success status; retry on a retryable status (see
/// [`retry::retryable`]) or a failed connection, timeout or response; stop
/// on any other status (the client's fault: it goes back as it is) or the
/// request's deadline.
pub(super) fn classify(sent: Sent) -> Verdict {
    match sent {
        Some(Ok(up)) if up.status.is_success() => Verdict::Done(up),
        Some(Ok(up)) if retry::retryable(up.status) => Verdict::Retry(Failed::Answer(up)),
        Some(Ok(up)) => Verdict::Stop(Failed::Answer(up)),
        Some(Err(e)) => Verdict::Retry(Failed::Error(e)),
        None => Verdict::Stop(Failed::Deadline),
    }
}

/// Whether a target can be sent the request now.
enum Admission {
    Go(Admitted),
    /// Pass it over, for this reason.
    Skip(Skip),
    /// Pass over a cooling target while another can serve now (it may still
    /// be waited for, if they cannot after all).
    Defer,
    /// The request cannot be translated for this target (the client's fault).
    Invalid(GatewayError),
    /// A retry's backoff would outlast the request's deadline.
    OutOfTime,
}

/// What an admitted attempt holds until its outcome is recorded.
struct Admitted {
    prepared: Prepared,
    /// The provider's admission slot (none when it has no cap).
    permit: Option<Permit>,
    /// A half-open breaker's one probe: dropped with a cancelled request,
    /// it is given back.
    _probe: Option<Probe>,
}

/// One request's way through its route's targets.
struct Failover<'a> {
    /// The route's pattern (a metrics label).
    pattern: &'a str,
    retry: &'a RetryConfig,
    deadline: Instant,
    order: Vec<Arc<Target>>,
    ledger: Ledger,
    /// Time spent waiting on upstreams (headers, backoff, `Retry-After`).
    waited: Duration,
    /// Backoffs taken so far.
    retries: u32,
    /// Where the next target comes from in `order` (wrapping around).
    position: usize,
    /// Targets passed over in a row: a whole round of them ends the loop.
    passed: usize,
}

impl<'a> Failover<'a> {
    fn new(route: &'a Route, retry: &'a RetryConfig) -> Self {
        Failover {
            pattern: &route.pattern,
            retry,
            deadline: Instant::now() + retry.deadline.get(),
            order: route.order(),
            ledger: Ledger::default(),
            waited: Duration::ZERO,
            retries: 0,
            position: 0,
            passed: 0,
        }
    }

    /// The next target to try, while attempts remain and the last round
    /// did not pass over every target.
    fn next_target(&mut self) -> Option<Arc<Target>> {
        let more = self.ledger.sent() < self.retry.max_attempts && self.passed < self.order.len();
        let target = more.then(|| self.order[self.position % self.order.len()].clone());
        self.position += 1;
        target
    }

    /// Admits `target`, or says why not: it must be usable, serve the
    /// endpoint, not be cooling down (unless it is worth waiting for), have
    /// capacity and pass its breaker. A cooldown or a retry's backoff is
    /// waited out before the capacity and breaker are claimed.
    async fn admit(&mut self, target: &Arc<Target>, call: &UpstreamCall) -> Admission {
        if let Some(why) = target.unusable() {
            return Admission::Skip(why);
        }
        let prepared = match target.provider.prepare(call, target.model.as_deref()) {
            Ok(prepared) => prepared,
            Err(PrepareError::Unsupported) => return Admission::Skip(Skip::Unsupported),
            Err(PrepareError::Invalid(e)) => {
                return Admission::Invalid(GatewayError::InvalidRequest(e.to_string()))
            }
        };
        if let Err(refused) = self.wait_turn(target).await {
            return refused;
        }
        let Some(permit) = target.provider.common().admit() else {
            return Admission::Skip(Skip::Busy);
        };
        let Some(probe) = target.state.pass() else {
            return Admission::Skip(Skip::BreakerRefused);
        };
        Admission::Go(Admitted {
            prepared,
            permit,
            _probe: probe,
        })
    }

    /// Waits for `target`'s turn: out its `Retry-After` when no other
    /// target can serve now and it ends before the deadline, or a retry's
    /// backoff (failing over to a target not tried yet does not back off).
    async fn wait_turn(&mut self, target: &Arc<Target>) -> Result<(), Admission> {
        let until = if let Some(until) = target.state.cooling_until() {
            if self.another_can_serve(target) {
                return Err(Admission::Defer);
            }
            if until >= self.deadline {
                return Err(Admission::Skip(Skip::Cooling));
            }
            until
        } else if self.ledger.sent_to(&target.name) {
            let (base, max) = (self.retry.backoff_base.get(), self.retry.backoff_max.get());
            let until = Instant::now() + retry::backoff(self.retries, base, max);
            if until >= self.deadline {
                return Err(Admission::OutOfTime);
            }
            self.retries += 1;
            until
        } else {
            return Ok(());
        };
        let t0 = Instant::now();
        tokio::time::sleep_until(until).await;
        self.waited += t0.elapsed();
        Ok(())
    }

    /// Whether a target other than `target` could be sent the request now.
    fn another_can_serve(&self, target: &Arc<Target>) -> bool {
        self.order.iter().any(|t| {
            !Arc::ptr_eq(t, target)
                && t.unusable().is_none()
                && t.state.cooling_until().is_none()
                && !self.ledger.refused(&t.name)
        })
    }

    /// Sends the request to an admitted target (a failover, unless it is
    /// the first attempt), within the deadline. It ends the round of
    /// targets passed over.
    async fn send(
        &mut self,
        target: &Target,
        call: &UpstreamCall,
        prepared: &Prepared,
        started: Instant,
    ) -> (Sent, Duration) {
        if self.ledger.sent() > 0 {
            m::failover(self.pattern);
        }
        self.passed = 0;
        let send = target.provider.send(call, prepared);
        let sent = tokio::time::timeout_at(self.deadline, send).await.ok();
        let elapsed = started.elapsed();
        self.waited += elapsed;
        (sent, elapsed)
    }

    /// The attempt's span, when the request is traced; its context goes in
    /// the request to a provider that takes it.
    fn attempt_span(
        &self,
        target: &Target,
        call: &UpstreamCall,
        prepared: &mut Prepared,
    ) -> Option<crate::trace::Attempt> {
        use opentelemetry::KeyValue;
        let trace = call.trace.as_ref()?;
        let common = target.provider.common();
        let n = self.ledger.sent() + 1;
        let mut attributes = Vec::new();
        if trace.sampled() {
            attributes.extend([
                KeyValue::new("gen_ai.system", common.system),
                KeyValue::new("gen_ai.provider.name", common.system),
                KeyValue::new("gen_ai.operation.name", call.endpoint.operation()),
                KeyValue::new("gen_ai.request.model", prepared.model.clone()),
                KeyValue::new("h3gate.provider", common.name.clone()),
                KeyValue::new("h3gate.target", target.name.clone()),
                KeyValue::new("h3gate.attempt", i64::from(n)),
                KeyValue::new("http.request.method", call.endpoint.method().to_string()),
            ]);
            if let Some(last) = self.ledger.last_sent() {
                let why = if last.target == target.name {
                    "retry"
                } else {
                    "failover"
                };
                attributes.push(KeyValue::new("h3gate.attempt.kind", why));
                attributes.push(KeyValue::new(
                    "h3gate.attempt.reason",
                    last.class.to_string(),
                ));
            }
        }
        // An unsampled span is never exported: no name to build.
        let name = if trace.sampled() {
            format!("{} {}", call.endpoint.operation(), prepared.model)
        } else {
            String::new()
        };
        let span = trace.attempt(attributes, name);
        if common.propagate_trace {
            prepared.trace_context = Some((span.traceparent(), span.tracestate()));
        }
        Some(span)
    }

    fn pass_over(&mut self, target: &Target, why: Skip) {
        self.ledger.skip(&target.name, why);
        self.passed += 1;
    }

    /// Passes over a cooling target without ending the round.
    fn defer(&mut self, target: &Target) {
        self.ledger.skip(&target.name, Skip::Cooling);
    }

    fn succeeded(&self, target: &Target, elapsed: Duration) {
        let metrics = target.provider.metrics();
        metrics.attempt(Attempt::Success);
        metrics.first_byte.record(elapsed.as_secs_f64());
        target.state.record(true, Some(elapsed));
        let attempt = self.ledger.sent() + 1;
        tracing::debug!(target = %target.name, attempt, "upstream answered");
    }

    /// Records a failed attempt (metrics, breaker, ledger); returns the
    /// upstream's error answer, if it sent one.
    async fn failed(&mut self, target: &Target, failed: Failed) -> Option<GatewayError> {
        let metrics = target.provider.metrics();
        let attempt = self.ledger.sent() + 1;
        self.ledger.push(&target.name, failed.class());
        match failed {
            Failed::Answer(up) => {
                metrics.attempt(Attempt::ErrorStatus);
                return Some(error_answer(target, up, attempt).await);
            }
            Failed::Error(e) => {
                metrics.attempt(match e {
                    UpstreamError::Timeout(_) => Attempt::Timeout,
                    UpstreamError::Connect(_) => Attempt::ConnectError,
                    UpstreamError::Failed(_) => Attempt::Failed,
                });
                tracing::warn!(target = %target.name, error = %e, attempt, "upstream attempt failed");
            }
            Failed::Deadline => metrics.attempt(Attempt::Timeout),
        }
        target.state.record(false, None);
        None
    }

    /// The result, with what it cost in waiting and the target it is
    /// about (by default the last one sent the request).
    fn end(self, result: Result<Attempted, GatewayError>, target: Option<&Target>) -> Forwarded {
        let target = match (&result, target) {
            (Ok(done), _) => Some(&done.target.name),
            (Err(_), Some(t)) => Some(&t.name),
            (Err(_), None) => self.ledger.last_sent().map(|a| &a.target),
        };
        Forwarded {
            target: target.cloned(),
            result,
            upstream_wait: self.waited,
            ledger: self.ledger,
        }
    }
}

/// The client's error when no attempt succeeded. After the last attempt
/// sent: the upstream's own answer, or what its failure means; when none
/// was sent, why no target could take it. Either way it lists the ledger.
fn exhausted(ledger: &Ledger, answer: Option<GatewayError>) -> GatewayError {
    const UNSUPPORTED: FailureClass = FailureClass::Skipped(Skip::Unsupported);
    let ledger = ledger.clone();
    match (ledger.last_sent().map(|a| a.class), answer) {
        (Some(FailureClass::Status(_)), Some(answer)) => answer.with_attempts(ledger),
        (Some(FailureClass::Connect), _) => GatewayError::UpstreamUnreachable(ledger),
        (Some(FailureClass::Invalid), _) => GatewayError::UpstreamInvalid(ledger),
        // A timeout or the deadline (a status always comes with its answer).
        (Some(_), _) => GatewayError::UpstreamTimeout(ledger),
        (None, _) if ledger.iter().any(|a| a.class == UNSUPPORTED) => {
            GatewayError::EndpointUnserved(ledger)
        }
        (None, _) => GatewayError::NoTarget(ledger),
    }
}

/// An upstream's error answer as the client's error. The target's breaker
/// counts it (unless it is the request's fault or a rate limit); its
/// `Retry-After` cools the target down and goes on to the client.
async fn error_answer(target: &Target, up: UpstreamResponse, attempt: u32) -> GatewayError {
    let status = up.status;
    target.state.record(!retry::breaker_failure(status), None);
    let retry_after = retry::retry_after(&up.headers);
    if let Some(d) = retry_after {
        target.state.cool_down(d);
    }
    let body = read_error_body(up.body).await;
    tracing::warn!(target = %target.name, status = status.as_u16(), attempt, "upstream answered with an error");
    GatewayError::from_upstream(status, &body).with_retry_after(retry_after)
}

/// Upstream error bodies are read up to this size to build the client's error.
const MAX_UPSTREAM_ERROR_BODY: usize = 64 * 1024;

/// Reads at most [`MAX_UPSTREAM_ERROR_BODY`] bytes of an upstream error body.
async fn read_error_body(mut body: crate::exchange::Body) -> Bytes {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                buf.extend_from_slice(&d);
                if buf.len() >= MAX_UPSTREAM_ERROR_BODY {
                    break;
                }
            }
        }
    };
    // An error body that trickles is not worth waiting for.
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    buf.truncate(MAX_UPSTREAM_ERROR_BODY);
    buf.freeze()
}
