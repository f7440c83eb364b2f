//! The answers of `GET /admin/usage` and `GET /admin/budgets`, and of
//! `h3gate usage` (the same JSON, or a table).
//!
//! `/admin/budgets` lists every budget of the keys and the `[[teams]]`,
//! one entry per unit (USD, tokens): its period, budget, what is spent in
//! the current window and what remains (in the unit), both units' spend
//! (`spent_usd`, `spent_tokens`), and when the window's current slot ends
//! (`resets_at`: a calendar period starts over then; a rolling window lets
//! its oldest slot go). A team without a budget is left out (its usage is
//! in `/admin/usage?group_by=team`).
//! What is spent in a unit that has a budget is what the budget is decided
//! on: on one node the in-memory limiter's counters (reservations of
//! requests in flight included); with `[cluster]` (whose counters are in
//! Redis, in the limiter's script) the usage history's sums over the
//! window, which count finished requests only. A unit without a budget is
//! always the history's.

use std::collections::HashMap;

use serde::Serialize;

use super::Source;
use crate::auth::KeyRecord;
use crate::cluster::ClusterError;
use crate::rate_limit::{BudgetCounter, Unit};
use crate::spend::history::{summarise, BucketKey, GroupBy, Query, Row, Sums};
use crate::spend::period::{month_start, parse_time, rfc3339, year_month};
use crate::spend::{nanos, usd, Budget, Period};

/// A parameter of a usage query that is not right: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct BadParam {
    pub param: String,
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> BadParam {
    BadParam {
        param: param.to_string(),
        message: message.into(),
    }
}

/// A usage query as given (the API's parameters, the command's options).
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub key: Option<String>,
    pub team: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: Option<String>,
}

impl Params {
    /// From a query string (`key=…&from=…`); an unknown or repeated
    /// parameter is refused.
    pub fn from_query(query: &str) -> Result<Params, BadParam> {
        let mut p = Params::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*name {
                "key" => &mut p.key,
                "team" => &mut p.team,
                "from" => &mut p.from,
                "to" => &mut p.to,
                "group_by" => &mut p.group_by,
                other => {
                    return Err(bad(
                        other,
                        "unknown parameter (use key, team, from, to, group_by)",
                    ))
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad(&name, "given twice"));
            }
        }
        Ok(p)
    }

    /// The query: `to` defaults to now (what was recorded up to this
    /// second), `from` to the start of the UTC month `to` is in (this
    /// month's, unless `to` says otherwise).
    pub fn query(&self, now: u64) -> Result<Query, BadParam> {
        let time = |param: &str, v: &Option<String>| -> Result<Option<u64>, BadParam> {
            v.as_deref()
                .map(|s| {
                    parse_time(s).ok_or_else(|| {
                        bad(param, format!("{s:?} is not a time: use RFC 3339 (2026-12-01T10:00:00Z) or a date (2026-12-01)"))
                    })
                })
                .transpose()
        };
        let to = time("to", &self.to)?.unwrap_or(now + 1);
        let (y, m) = year_month(to.saturating_sub(1));
        let from = time("from", &self.from)?.unwrap_or_else(|| month_start(y, m));
        if from >= to {
            return Err(bad("from", "must be before to"));
        }
        let group_by = match self.group_by.as_deref() {
            None => GroupBy::default(),
            Some(g) => GroupBy::parse(g)
                .ok_or_else(|| bad("group_by", format!("{g:?}: use model, key, team or day")))?,
        };
        let name = |param: &str, v: &Option<String>| match v.as_deref() {
            Some("") => Err(bad(param, "empty")),
            _ => Ok(v.clone()),
        };
        Ok(Query {
            key: name("key", &self.key)?,
            team: name("team", &self.team)?,
            from,
            to,
            group_by,
        })
    }
}

/// The sums of every row.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Total {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
}

/// `GET /admin/usage`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Usage {
    pub from: String,
    pub to: String,
    pub group_by: GroupBy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub rows: Vec<Row>,
    pub total: Total,
}

/// Asks `source` for `q`'s rows.
pub async fn usage(source: &Source<'_>, q: &Query) -> Result<Usage, ClusterError> {
    let rows = source.query(q).await?;
    let mut total = Total {
        requests: 0,
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        cost_usd: 0.0,
    };
    let mut cost = 0u64;
    for r in &rows {
        total.requests += r.requests;
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.cached_input_tokens += r.cached_input_tokens;
        total.cache_write_tokens += r.cache_write_tokens;
        // Exact: each row's cost is a whole number of nano-USD.
        cost += nanos(r.cost_usd);
    }
    total.cost_usd = usd(cost);
    Ok(Usage {
        from: rfc3339(q.from),
        to: rfc3339(q.to),
        group_by: q.group_by,
        key: q.key.clone(),
        team: q.team.clone(),
        rows,
        total,
    })
}

/// `h3gate usage`'s table.
pub fn table(u: &Usage) -> String {
    let head = match u.group_by {
        GroupBy::Model => "MODEL",
        GroupBy::Key => "KEY",
        GroupBy::Team => "TEAM",
        GroupBy::Day => "DAY",
    };
    let line = |group: &str, r: (u64, u64, u64, u64, u64, f64)| {
        format!(
            "{group:<32} {:>10} {:>14} {:>14} {:>14} {:>14} {:>14.6}\n",
            r.0, r.1, r.2, r.3, r.4, r.5
        )
    };
    let mut out = format!("usage from {} to {}\n", u.from, u.to);
    out.push_str(&format!(
        "{head:<32} {:>10} {:>14} {:>14} {:>14} {:>14} {:>14}\n",
        "REQUESTS", "INPUT", "OUTPUT", "CACHED_INPUT", "CACHE_WRITE", "COST_USD"
    ));
    for r in &u.rows {
        let group = if r.group.is_empty() { "-" } else { &r.group };
        out.push_str(&line(
            group,
            (
                r.requests,
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.cache_write_tokens,
                r.cost_usd,
            ),
        ));
    }
    let t = &u.total;
    out.push_str(&line(
        "TOTAL",
        (
            t.requests,
            t.input_tokens,
            t.output_tokens,
            t.cached_input_tokens,
            t.cache_write_tokens,
            t.cost_usd,
        ),
    ));
    out
}

/// One budget in one unit (`GET /admin/budgets`): a key or team with a
/// USD and a token budget has two.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetState {
    /// `key` or `team`.
    pub scope: &'static str,
    pub name: String,
    /// A key's team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub unit: Unit,
    pub period: Period,
    /// In the unit: USD, or tokens.
    pub budget: Amount,
    pub spent: Amount,
    pub remaining: Amount,
    /// The window's start, and when its current slot ends.
    pub window_from: String,
    pub resets_at: String,
    /// What the owner spent in the window in both units (the other unit's
    /// from the history).
    pub spent_usd: f64,
    pub spent_tokens: u64,
}

/// USD or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Amount {
    Tokens(u64),
    Usd(f64),
}

/// When `period`'s window at `now` starts.
pub fn window_start(period: Period, now: u64) -> u64 {
    let w = period.window(now);
    match period {
        Period::Day => w.slot * 86_400,
        Period::Month => {
            let (y, m) = year_month(now);
            month_start(y, m)
        }
        Period::Rolling { .. } => w.first() * w.step,
    }
}

/// Whose budget, and the limiter counters' name for it.
struct Owner<'a> {
    scope: &'static str,
    name: &'a str,
    team: Option<&'a str>,
    /// `key:<sha256>` or `team:<name>` (see [`BudgetCounter`]).
    subject: String,
    budget: Budget,
}

/// Every budget of the keys (revoked ones left out) and the teams, one per
/// unit, as `source` and (on one node) the limiter's `counters` say at
/// `now`.
pub async fn budgets(
    keys: &[std::sync::Arc<KeyRecord>],
    teams: &HashMap<String, Budget>,
    counters: Option<&[BudgetCounter]>,
    source: &Source<'_>,
    now: u64,
) -> Result<Vec<BudgetState>, ClusterError> {
    let mut owners: Vec<Owner<'_>> = keys
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .filter_map(|k| {
            Some(Owner {
                scope: "key",
                name: &k.name,
                team: k.team.as_deref(),
                subject: format!("key:{}", k.sha256),
                budget: k.own_budget()?,
            })
        })
        .collect();
    let mut team_names: Vec<&String> = teams.keys().collect();
    team_names.sort();
    owners.extend(
        team_names
            .into_iter()
            .filter(|t| !teams[*t].is_empty())
            .map(|t| Owner {
                scope: "team",
                name: t,
                team: None,
                subject: format!("team:{t}"),
                budget: teams[t].clone(),
            }),
    );
    let Some(earliest) = owners
        .iter()
        .map(|o| window_start(o.budget.period, now))
        .min()
    else {
        return Ok(Vec::new());
    };
    let buckets = source.buckets(earliest, now + 1).await?;
    Ok(owners
        .iter()
        .flat_map(|o| states_of(o, &buckets, counters, now))
        .collect())
}

fn states_of(
    o: &Owner<'_>,
    buckets: &[(BucketKey, Sums)],
    counters: Option<&[BudgetCounter]>,
    now: u64,
) -> Vec<BudgetState> {
    let period = o.budget.period;
    let w = period.window(now);
    let from = window_start(period, now);
    let q = Query {
        key: (o.scope == "key").then(|| o.name.to_string()),
        team: (o.scope == "team").then(|| o.name.to_string()),
        from,
        to: now + 1,
        group_by: GroupBy::Key,
    };
    let rows = summarise(buckets.iter().map(|(k, v)| (k, v)), &q);
    let cost: u64 = rows.iter().map(|r| nanos(r.cost_usd)).sum();
    let tokens: u64 = rows.iter().map(|r| r.input_tokens + r.output_tokens).sum();
    // The limiter's count, for a unit with a budget (one node).
    let counted = |unit: Unit| {
        let c = counters?
            .iter()
            .find(|c| c.subject == o.subject && c.unit == unit && c.period == period);
        Some(c.map_or(0, |c| {
            c.slots
                .iter()
                .filter(|(s, _)| *s >= w.first())
                .map(|(_, u)| u)
                .sum()
        }))
    };
    let spent_nanos = o
        .budget
        .usd
        .and_then(|_| counted(Unit::Usd))
        .unwrap_or(cost);
    let spent_tokens = o
        .budget
        .tokens
        .and_then(|_| counted(Unit::Tokens))
        .unwrap_or(tokens);
    let state = |unit, budget, spent, remaining| BudgetState {
        scope: o.scope,
        name: o.name.to_string(),
        team: o.team.map(str::to_string),
        unit,
        period,
        budget,
        spent,
        remaining,
        window_from: rfc3339(from),
        resets_at: rfc3339(w.ends),
        spent_usd: usd(spent_nanos),
        spent_tokens,
    };
    let mut out = Vec::new();
    if let Some(b) = o.budget.usd {
        let left = usd(nanos(b).saturating_sub(spent_nanos));
        out.push(state(
            Unit::Usd,
            Amount::Usd(b),
            Amount::Usd(usd(spent_nanos)),
            Amount::Usd(left),
        ));
    }
    if let Some(b) = o.budget.tokens {
        let left = b.saturating_sub(spent_tokens);
        out.push(state(
            Unit::Tokens,
            Amount::Tokens(b),
            Amount::Tokens(spent_tokens),
            Amount::Tokens(left),
        ));
    }
    out
}

#[cfg(test)]
mod tests;
