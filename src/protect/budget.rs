//! Budgets on the request path: the claims a request makes on its key's and
//! its team's budgets (in the same limiter batch as its rate limits), what
//! their decisions mean (a refusal, the remaining-budget headers, soft-limit
//! alerts, the teams' utilisation gauges), and what the request holds until
//! it ends (a reservation per budget, reconciled with the real cost).

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::KeyRecord;
use crate::error::{BudgetRefusal, GatewayError};
use crate::rate_limit::{Bucket, Claim, Decision, Kind, Limit, Subject, TokenReservation, Unit};
use crate::spend::{nanos, Level, Nanos, Period};
use crate::state::State;

/// What a request may cost at most, reserved from its budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// At the dearest price among its route's targets.
    pub cost: Nanos,
    /// Prompt (estimated) + completion (its cap) tokens.
    pub tokens: u64,
    /// Of `tokens`: the prompt's (estimated).
    pub prompt: u64,
}

impl Estimate {
    /// The usage the reservation stands for (what a request whose real
    /// usage never arrived is charged, in the history as in its budgets).
    pub fn usage(&self) -> crate::spend::Usage {
        let input = self.prompt.min(self.tokens);
        crate::spend::Usage {
            input,
            output: self.tokens - input,
            cached_input: 0,
            cache_write: 0,
        }
    }
}

/// Whose budget a claim is on.
#[derive(Debug, Clone)]
pub struct Whose {
    /// `key` or `team`.
    pub scope: &'static str,
    /// The key's or team's name.
    pub name: Arc<str>,
    pub unit: Unit,
    pub period: Period,
}

impl Whose {
    /// `key:NAME:usd`: the budget's name in alerts.
    fn label(&self) -> String {
        let unit = match self.unit {
            Unit::Usd => "usd",
            Unit::Tokens => "tokens",
        };
        format!("{}:{}:{unit}", self.scope, self.name)
    }
}

/// A budget the request holds a reservation on, until it ends.
#[derive(Debug)]
pub struct Held {
    pub unit: Unit,
    pub reservation: TokenReservation,
}

/// Whether `key` counts against any budget (its own, or its team's).
pub fn applies(state: &State, key: &KeyRecord) -> bool {
    key.own_budget().is_some()
        || key
            .team
            .as_ref()
            .is_some_and(|t| state.teams.get(t).is_some_and(|b| !b.is_empty()))
}

/// The budget claims for `key` (its own budget, its team's) at `now`.
pub fn claims(state: &State, key: &KeyRecord, estimate: Estimate, now: u64) -> Vec<(Claim, Whose)> {
    let mut out = Vec::new();
    let mut add = |subject: Subject, scope, name: &str, b: &crate::spend::Budget| {
        let amounts = [
            (Unit::Usd, b.usd.map(nanos), estimate.cost),
            (Unit::Tokens, b.tokens, estimate.tokens),
        ];
        for (unit, budget, cost) in amounts {
            let Some(budget) = budget else { continue };
            let claim = Claim {
                bucket: Bucket {
                    subject: subject.clone(),
                    kind: Kind::Budget(unit, b.period),
                },
                limit: Limit {
                    per_minute: 0,
                    burst: budget,
                },
                cost,
                lease: None,
                window: Some(b.period.window(now)),
            };
            let whose = Whose {
                scope,
                name: name.into(),
                unit,
                period: b.period,
            };
            out.push((claim, whose));
        }
    };
    if let Some(b) = key.own_budget() {
        add(
            Subject::Key(key.sha256.as_str().into()),
            "key",
            &key.name,
            &b,
        );
    }
    if let Some((team, b)) = key
        .team
        .as_ref()
        .and_then(|t| state.teams.get(t).map(|b| (t, b)))
    {
        add(Subject::Team(team.as_str().into()), "team", team, b);
    }
    out
}

/// The refusal for a budget claim that did not fit.
pub fn refusal(c: &Claim, whose: &Whose, d: &Decision) -> GatewayError {
    let now = c.window.map_or_else(crate::clock::now_secs, |w| w.now);
    GatewayError::BudgetExceeded(Box::new(BudgetRefusal {
        scope: whose.scope,
        name: whose.name.to_string(),
        unit: whose.unit,
        period: whose.period,
        budget: c.limit.burst,
        until: now + d.retry_after.as_secs().max(1),
    }))
}

/// After a decision on the request's budget claims: the teams' gauges, and
/// the soft-limit alerts (80% and 100%, once per budget and window here).
pub fn observe(
    state: &State,
    key: &KeyRecord,
    claims: &[(&Claim, &Whose, &Decision)],
    refused: bool,
) {
    for (c, whose, d) in claims {
        let budget = c.limit.burst.max(1);
        // Taken only when the whole batch fit.
        let used = d.limit.saturating_sub(d.remaining);
        if whose.scope == "team" {
            let unit = match whose.unit {
                Unit::Usd => "usd",
                Unit::Tokens => "tokens",
            };
            crate::metrics::BUDGET_UTILISATION
                .with([whose.name.to_string(), unit.to_string()])
                .set(used as f64 / budget as f64);
        }
        let this_refused = refused && !d.allowed;
        let Some(level) = Level::of(used, budget, this_refused) else {
            continue;
        };
        let slot = c.window.map_or(0, |w| w.slot);
        if !state.spend.first_alert(&whose.label(), slot, level) {
            continue;
        }
        let pct = level.percent().to_string();
        crate::metrics::BUDGET_ALERTS
            .with([whose.scope.to_string(), pct.clone()])
            .increment(1);
        let amount = |n: u64| match whose.unit {
            Unit::Usd => serde_json::json!(crate::spend::usd(n)),
            Unit::Tokens => serde_json::json!(n),
        };
        let resets = c.window.map(|w| crate::spend::period::rfc3339(w.ends));
        state.audit().record(crate::audit::Entry {
            action: "budget_alert",
            actor: &key.id,
            result: &pct,
            request_id: None,
            client_ip: None,
            key_id: Some(&key.id),
            details: serde_json::json!({
                "scope": whose.scope,
                "name": whose.name.as_ref(),
                "unit": whose.unit,
                "period": whose.period,
                "budget": amount(c.limit.burst),
                "spent": amount(used),
                "refused": this_refused,
                "current_slot_ends": resets,
            }),
        });
        tracing::warn!(
            scope = whose.scope,
            name = whose.name.as_ref(),
            level = level.percent(),
            "budget soft limit reached"
        );
    }
}

/// `x-h3gate-budget-remaining` (USD) and `x-h3gate-budget-remaining-tokens`:
/// the least left among the request's budgets, its reservation taken.
pub fn headers(h: &mut HeaderMap, claims: &[(&Claim, &Whose, &Decision)]) {
    let least = |unit: Unit| {
        claims
            .iter()
            .filter(|(_, w, _)| w.unit == unit)
            .map(|(_, _, d)| d.remaining)
            .min()
    };
    if let Some(n) = least(Unit::Usd) {
        if let Ok(v) = HeaderValue::try_from(format!("{:.6}", crate::spend::usd(n))) {
            h.insert(HeaderName::from_static("x-h3gate-budget-remaining"), v);
        }
    }
    if let Some(n) = least(Unit::Tokens) {
        h.insert(
            HeaderName::from_static("x-h3gate-budget-remaining-tokens"),
            HeaderValue::from(n),
        );
    }
}
