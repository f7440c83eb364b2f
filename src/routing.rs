//! Model → targets, and the failover loop.
//!
//! A route's model is an exact name, a glob with `*` (e.g. `gpt-*`) or `*`
//! alone; exact names win, then the more specific glob (more literal
//! characters), then the one written first. A target is a provider plus an
//! optional upstream model name. [`forward`] tries a route's targets in the
//! order its strategy gives, skipping unhealthy and open-breaker ones,
//! passing over a target cooling down after a `Retry-After` while another
//! can serve (waiting it out only when none can), retrying retryable
//! failures with backoff — always before the first byte reaches the client.

pub mod breaker;
pub mod health;
pub mod retry;
mod target;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::admission::Permit;
use crate::config::{Config, RetryConfig, RouteConfig, Strategy};
use crate::error::GatewayError;
use crate::glob::glob_match;
use crate::metrics::{self as m, Attempt, RouteMetrics};
use crate::provider::{
    PrepareError, Prepared, Provider, UpstreamCall, UpstreamError, UpstreamResponse,
};
use breaker::BreakerState;
pub use target::{Probe, TargetState};

#[derive(Debug)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream, if it differs from the client's.
    pub model: Option<String>,
    pub weight: u32,
    /// `provider` or `provider/model`: the target's name in logs and metrics.
    pub name: String,
    pub state: Arc<TargetState>,
}

impl Target {
    /// Why this target cannot take a request now, if it cannot.
    fn unusable(&self) -> Option<&'static str> {
        if !self.provider.common().is_healthy() {
            Some("unhealthy")
        } else if self.state.breaker_state() == BreakerState::Open {
            Some("breaker_open")
        } else {
            None
        }
    }
}

#[derive(Debug)]
pub struct Route {
    /// The route's model pattern as configured (a metrics label).
    pub pattern: String,
    pub strategy: Strategy,
    pub targets: Vec<Arc<Target>>,
    pub stream_keepalive: Option<Duration>,
    /// Translations drop parameters the target API lacks (instead of a 400).
    pub drop_unsupported: bool,
    pub metrics: RouteMetrics,
}

impl Route {
    /// The targets in the order this request should try them.
    fn order(&self) -> Vec<Arc<Target>> {
        let mut order: Vec<Arc<Target>> = self.targets.clone();
        match self.strategy {
            Strategy::Priority => {}
            Strategy::Weighted => {
                // Weighted sampling without replacement.
                let mut rest = std::mem::take(&mut order);
                while !rest.is_empty() {
                    let total: u64 = rest.iter().map(|t| u64::from(t.weight)).sum();
                    let mut pick = fastrand::u64(0..total.max(1));
                    let i = rest
                        .iter()
                        .position(|t| {
                            let w = u64::from(t.weight);
                            if pick < w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0);
                    order.push(rest.remove(i));
                }
            }
            Strategy::LeastLoaded if order.len() >= 2 => {
                // Power of two choices; the rest keep their order as fallbacks.
                let a = fastrand::usize(0..order.len());
                let mut b = fastrand::usize(0..order.len() - 1);
                if b >= a {
                    b += 1;
                }
                let best = if order[b].state.cost() < order[a].state.cost() {
                    b
                } else {
                    a
                };
                let first = order.remove(best);
                order.insert(0, first);
            }
            Strategy::LeastLoaded => {}
        }
        order
    }

    /// Whether any target could take a request now (for `/ready`).
    pub fn usable(&self) -> bool {
        self.targets.iter().any(|t| t.unusable().is_none())
    }
}

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Arc<Route>>,
    /// Most specific first.
    globs: Vec<Arc<Route>>,
    /// Names of [`Router::model_names`]: safe as metric labels.
    known: HashSet<String>,
}

impl Router {
    /// Builds the router; `providers` must hold every target name (validated config).
    pub fn new(config: &Config, providers: &HashMap<String, Arc<Provider>>) -> Router {
        let mut states: HashMap<String, Arc<TargetState>> = HashMap::new();
        let mut router = Router::default();
        for rc in &config.routes {
            let route = Arc::new(build_route(rc, providers, &mut states));
            if rc.model.contains('*') {
                router.globs.push(route);
            } else {
                router.exact.insert(rc.model.clone(), route);
            }
        }
        // Stable sort keeps file order among equally specific globs.
        router
            .globs
            .sort_by_key(|r| std::cmp::Reverse(r.pattern.chars().filter(|c| *c != '*').count()));
        router.known = router.model_names().into_iter().collect();
        router
    }

    pub fn resolve(&self, model: &str) -> Option<&Arc<Route>> {
        self.exact
            .get(model)
            .or_else(|| self.globs.iter().find(|r| glob_match(&r.pattern, model)))
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact.values().chain(self.globs.iter())
    }

    /// A bounded label for `model` on `route`: the model itself when the
    /// gateway knows it, else the route pattern (clients choose model names).
    pub fn model_label<'a>(&self, model: &'a str, route: &'a Route) -> &'a str {
        if self.known.contains(model) {
            model
        } else {
            &route.pattern
        }
    }

    /// The model names a client can ask for: exact routes, plus the models
    /// providers declare that a wildcard route sends to them.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exact.keys().cloned().collect();
        for route in &self.globs {
            for target in &route.targets {
                for m in &target.provider.common().models {
                    if glob_match(&route.pattern, m)
                        && self.resolve(m).is_some_and(|r| Arc::ptr_eq(r, route))
                    {
                        names.push(m.clone());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

fn build_route(
    rc: &RouteConfig,
    providers: &HashMap<String, Arc<Provider>>,
    states: &mut HashMap<String, Arc<TargetState>>,
) -> Route {
    let targets = rc
        .targets
        .iter()
        .filter_map(|tc| {
            let provider = providers.get(&tc.provider)?.clone();
            let name = match &tc.model {
                Some(model) => format!("{}/{model}", tc.provider),
                None => tc.provider.clone(),
            };
            let state = states
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(TargetState::new(&name, provider.common().breaker.clone()))
                })
                .clone();
            Some(Arc::new(Target {
                provider,
                model: tc.model.clone(),
                weight: tc.weight,
                name,
                state,
            }))
        })
        .collect();
    Route {
        pattern: rc.model.clone(),
        strategy: rc.strategy,
        targets,
        stream_keepalive: rc.stream_keepalive.map(|d| d.get()),
        drop_unsupported: rc.drop_unsupported_params,
        metrics: RouteMetrics::new(&rc.model),
    }
}

/// An attempt that got response headers: the target and what it holds
/// until the response body ends.
pub struct Attempted {
    pub target: Arc<Target>,
    pub response: UpstreamResponse,
    /// The request as sent: its API and how its response is converted.
    pub prepared: Prepared,
    /// When the attempt started (the provider's total limit counts from it).
    pub started: Instant,
    pub guard: AttemptGuard,
}

/// Held while a response streams: counts the target's outstanding request
/// and keeps the provider's admission slot.
pub struct AttemptGuard {
    state: Arc<TargetState>,
    _permit: Option<Permit>,
}

impl AttemptGuard {
    fn new(state: Arc<TargetState>, permit: Option<Permit>) -> Self {
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        AttemptGuard {
            state,
            _permit: permit,
        }
    }

    /// The response failed after its headers (counts against the breaker).
    pub fn failed_mid_stream(&self) {
        self.state.record(false, None);
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The result of [`forward`], with what it cost in waiting.
pub struct Forwarded {
    pub result: Result<Attempted, GatewayError>,
    /// Time spent waiting on upstreams (headers and backoff).
    pub upstream_wait: Duration,
    /// The last target tried.
    pub target: Option<String>,
}

/// Tries the route's targets until one answers with a success, a
/// non-retryable error, or the attempts or deadline run out.
pub async fn forward(route: &Route, call: &UpstreamCall, retry: &RetryConfig) -> Forwarded {
    let deadline = Instant::now() + retry.deadline.get();
    let order = route.order();
    let mut failures: Vec<String> = Vec::new();
    let mut tried: HashSet<usize> = HashSet::new();
    let mut last: Option<GatewayError> = None;
    let mut waited = Duration::ZERO;
    let mut last_target = None;
    let mut unsupported: HashSet<usize> = HashSet::new();
    // Targets that refused this request (busy, breaker): not worth passing
    // over a cooling target for.
    let mut refused: HashSet<usize> = HashSet::new();
    let mut cooling_noted: HashSet<usize> = HashSet::new();
    let (mut attempts, mut retries, mut position, mut skipped) = (0u32, 0u32, 0usize, 0usize);

    while attempts < retry.max_attempts && skipped < order.len() {
        let i = position % order.len();
        position += 1;
        let target = &order[i];
        if let Some(reason) = target.unusable() {
            skipped += 1;
            if !tried.contains(&i) {
                failures.push(format!("{}: {reason}", target.name));
            }
            continue;
        }
        let prepared = match target.provider.prepare(call, target.model.as_deref()) {
            Ok(p) => p,
            Err(PrepareError::Unsupported) => {
                skipped += 1;
                if unsupported.insert(i) {
                    failures.push(format!("{}: does not serve this endpoint", target.name));
                }
                continue;
            }
            Err(PrepareError::Invalid(e)) => {
                return Forwarded {
                    result: Err(GatewayError::InvalidRequest(e.to_string())),
                    upstream_wait: waited,
                    target: Some(target.name.clone()),
                };
            }
        };
        // A Retry-After in force: pass over it while another target can
        // serve now; wait for it only if none can and the budget allows.
        if let Some(until) = target.state.cooling_until() {
            let another = order.iter().enumerate().any(|(j, t)| {
                j != i
                    && !unsupported.contains(&j)
                    && !refused.contains(&j)
                    && t.unusable().is_none()
                    && t.state.cooling_until().is_none()
            });
            if another || until >= deadline {
                if cooling_noted.insert(i) {
                    failures.push(format!("{}: cooling down (retry-after)", target.name));
                }
                if !another {
                    skipped += 1;
                }
                continue;
            }
            let t0 = Instant::now();
            tokio::time::sleep_until(until).await;
            waited += t0.elapsed();
        } else if tried.contains(&i) {
            // Retrying a target already tried: back off (failing over does not).
            let pause = retry::backoff(retries, retry.backoff_base.get(), retry.backoff_max.get());
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            waited += pause;
            retries += 1;
        }
        let Some(permit) = target.provider.common().admit() else {
            skipped += 1;
            refused.insert(i);
            failures.push(format!("{}: busy", target.name));
            continue;
        };
        // Held until the outcome is recorded: dropped with a cancelled
        // request, a half-open probe is given back.
        let Some(_probe) = target.state.pass() else {
            skipped += 1;
            refused.insert(i);
            failures.push(format!("{}: breaker_open", target.name));
            continue;
        };
        if attempts > 0 {
            m::failover(&route.pattern);
        }
        attempts += 1;
        skipped = 0;
        tried.insert(i);
        last_target = Some(target.name.clone());

        let guard = AttemptGuard::new(target.state.clone(), permit);
        let started = Instant::now();
        let sent = tokio::time::timeout_at(deadline, target.provider.send(call, &prepared)).await;
        let elapsed = started.elapsed();
        waited += elapsed;
        let metrics = target.provider.metrics();
        let failure = match sent {
            Ok(Ok(up)) if up.status.is_success() => {
                metrics.attempt(Attempt::Success);
                metrics.first_byte.record(elapsed.as_secs_f64());
                target.state.record(true, Some(elapsed));
                tracing::debug!(target = %target.name, attempt = attempts, "upstream answered");
                return Forwarded {
                    result: Ok(Attempted {
                        target: target.clone(),
                        response: up,
                        prepared,
                        started,
                        guard,
                    }),
                    upstream_wait: waited,
                    target: last_target,
                };
            }
            Ok(Ok(up)) => {
                metrics.attempt(Attempt::ErrorStatus);
                let status = up.status;
                target.state.record(!retry::breaker_failure(status), None);
                let retry_after = retry::retry_after(&up.headers);
                if let Some(d) = retry_after {
                    target.state.cool_down(d);
                }
                let body = read_error_body(up.body).await;
                let err = GatewayError::from_upstream(status, &body).with_retry_after(retry_after);
                tracing::warn!(target = %target.name, status = status.as_u16(), attempt = attempts, "upstream answered with an error");
                failures.push(format!("{}: status {}", target.name, status.as_u16()));
                if !retry::retryable(status) {
                    return Forwarded {
                        result: Err(err),
                        upstream_wait: waited,
                        target: last_target,
                    };
                }
                err
            }
            Ok(Err(e)) => {
                target.state.record(false, None);
                tracing::warn!(target = %target.name, error = %e, attempt = attempts, "upstream attempt failed");
                let (outcome, class, err) = match e {
                    UpstreamError::Timeout(_) => (
                        Attempt::Timeout,
                        "timeout",
                        GatewayError::UpstreamTimeout(String::new()),
                    ),
                    UpstreamError::Connect(_) => (
                        Attempt::ConnectError,
                        "connect error",
                        GatewayError::UpstreamUnreachable(String::new()),
                    ),
                    UpstreamError::Failed(_) => (
                        Attempt::Failed,
                        "invalid response",
                        GatewayError::UpstreamInvalid(String::new()),
                    ),
                };
                metrics.attempt(outcome);
                failures.push(format!("{}: {class}", target.name));
                err
            }
            Err(_deadline) => {
                target.state.record(false, None);
                metrics.attempt(Attempt::Timeout);
                failures.push(format!("{}: timeout (request deadline)", target.name));
                last = Some(GatewayError::UpstreamTimeout(String::new()));
                break;
            }
        };
        drop(guard);
        last = Some(failure);
    }

    let summary = failures.join("; ");
    let err = match last {
        Some(e) => e.with_attempts(&summary),
        None if !unsupported.is_empty() && attempts == 0 => GatewayError::InvalidRequest(format!(
            "no provider on this model's route serves this endpoint ({summary})"
        )),
        None => GatewayError::NoTarget(summary),
    };
    Forwarded {
        result: Err(err),
        upstream_wait: waited,
        target: last_target,
    }
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

#[cfg(test)]
mod tests;
