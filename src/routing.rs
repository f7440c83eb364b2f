//! Model → targets, and the failover loop.
//!
//! A route's model is an exact name, a glob with `*` (e.g. `gpt-*`) or `*`
//! alone; exact names win, then the more specific glob (more literal
//! characters), then the one written first. A target is a provider plus an
//! optional upstream model name. [`forward`] tries a route's targets in the
//! order its strategy gives, skipping unhealthy and open-breaker ones,
//! passing over a target cooling down after a `Retry-After` while another
//! can serve (waiting it out only when none can), retrying retryable
//! failures with backoff — always before the first byte reaches the client
//! (the loop: `routing/failover.rs`). What each attempt came to goes in a
//! [`Ledger`], which the client's error carries and lists.

pub mod breaker;
mod failover;
pub mod health;
mod ledger;
pub mod retry;
mod target;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::Permit;
use crate::config::{Config, RouteConfig, Strategy};
use crate::error::GatewayError;
pub use crate::error::{AttemptFailure, FailureClass, Ledger, Skip};
use crate::glob::glob_match;
use crate::metrics::RouteMetrics;
use crate::provider::{Prepared, Provider, UpstreamResponse};
use breaker::BreakerState;
pub use failover::forward;
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
    fn unusable(&self) -> Option<Skip> {
        if !self.provider.common().is_healthy() {
            Some(Skip::Unhealthy)
        } else if self.state.breaker_state() == BreakerState::Open {
            Some(Skip::BreakerOpen)
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
    /// A one-target route per provider, by its response-id tag: where a
    /// stored response's calls go.
    stored: HashMap<u32, Arc<Route>>,
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
        for (name, provider) in providers {
            let rc = RouteConfig {
                model: "(stored responses)".into(),
                targets: vec![name.as_str().into()],
                ..RouteConfig::default()
            };
            let route = Arc::new(build_route(&rc, providers, &mut states));
            router.stored.insert(provider.common().tag, route);
        }
        router
    }

    /// The route to the provider whose response ids carry `tag`.
    pub fn stored_route(&self, tag: u32) -> Option<Arc<Route>> {
        self.stored.get(&tag).cloned()
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
    /// The attempts that did not serve the request, in order (on an error,
    /// the same list the error carries).
    pub ledger: Ledger,
}

#[cfg(test)]
mod tests;
