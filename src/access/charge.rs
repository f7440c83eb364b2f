//! A request's end, in money: its cost from the usage its provider
//! reported at the serving target's price, its budget reservations
//! reconciled with it, its hour's usage bucket, and the cost metric.
//!
//! - An answered error (any non-2xx) costs nothing: its reservations are
//!   given back.
//! - A request that ended before any response (the client left) keeps its
//!   reservations as they were (the upstream may have started work), as
//!   tokens per minute do; with budgets, the history has it too, charged
//!   its reservation (its model the route's label, no provider).
//! - A response whose usage never arrived (the client left mid-stream, an
//!   upstream that reports none) is charged its reservation: its cost and
//!   its tokens, in the history as in the budgets; one whose upstream
//!   failed mid-stream before reporting usage costs nothing (the provider's
//!   failure is not the client's spend).

use std::sync::Arc;

use http::StatusCode;

use super::Record;
use crate::auth::KeyRecord;
use crate::protect::budget::{Estimate, Held};
use crate::rate_limit::Unit;
use crate::spend::{PriceTable, Spend, Spent};

/// What a proxied request's end is accounted with.
#[derive(Debug)]
pub struct Charge {
    pub spend: Arc<Spend>,
    pub prices: Arc<PriceTable>,
    /// Its reservation (zero without budgets).
    pub estimate: Estimate,
    /// The bounded model label of `h3gate_tokens_total`, once routed.
    pub model_label: Option<Arc<str>>,
    /// The model the client asked for, once routed.
    pub requested: Option<Arc<str>>,
}

impl Charge {
    pub fn settle(
        self,
        record: &Record,
        status: Option<StatusCode>,
        held: Vec<Held>,
        key: Option<&KeyRecord>,
    ) -> Option<u64> {
        let reconcile = |held: Vec<Held>, usd: Option<u64>, tokens: Option<u64>| {
            for h in held {
                h.reservation.reconcile(match h.unit {
                    Unit::Usd => usd,
                    Unit::Tokens => tokens,
                });
            }
        };
        let spent = |model: Arc<str>, provider: Arc<str>, usage, cost| {
            self.spend.history.record(&Spent {
                at: crate::clock::now_secs(),
                key: key.map(|k| k.name.as_str().into()),
                team: key.and_then(|k| k.team.as_deref()).map(Arc::from),
                model,
                provider,
                usage,
                cost,
            });
        };
        let Some(status) = status else {
            if !held.is_empty() {
                let label = self.model_label.clone().unwrap_or_else(|| "".into());
                spent(label, "".into(), self.estimate.usage(), self.estimate.cost);
                return Some(self.estimate.cost);
            }
            return None;
        };
        let served = record.served_by().filter(|_| status.is_success());
        let Some((provider, model)) = served else {
            reconcile(held, Some(0), Some(0));
            return None;
        };
        let usage = record.usage();
        let price = self.prices.lookup(model);
        let cost = match usage {
            Some(u) => Some(price.map_or(0, |p| p.cost(&u))),
            None if record.upstream_failed() => Some(0),
            None => None,
        };
        let tokens = match usage {
            Some(u) => Some(u.total()),
            None => cost.map(|_| 0),
        };
        reconcile(held, cost, tokens);
        let charged = cost.unwrap_or(self.estimate.cost);
        let label = self.model_label.as_deref().unwrap_or(model);
        crate::spend::meter::cost(label, provider, charged, price.is_some());
        let usage = match usage {
            Some(u) => u,
            None if cost == Some(0) => Default::default(),
            None => self.estimate.usage(),
        };
        // The history's model is bounded as the metrics' label is: a name
        // the client chose (a wildcard route passing it through) goes
        // under its label; a target's own model is the configuration's.
        let chosen = self.requested.as_deref() == Some(&**model);
        let named = if chosen { label.into() } else { model.clone() };
        spent(named, provider.clone(), usage, charged);
        Some(charged)
    }
}
