//! Spend: what requests cost, who spent it, and the budgets that cap it.
//!
//! - **Prices** ([`prices`]): USD per million tokens per model, bundled and
//!   configured (`[[prices]]`); a request's cost is computed at its end from
//!   the usage the provider reported (cached prompt tokens at their own
//!   price), at the price of the target that served it. Failed attempts and
//!   answered errors cost nothing.
//! - **Budgets** (per key, per team: [`Budget`]): claims in the same limiter
//!   batch as the rate limits ([`crate::rate_limit::Kind::Budget`]),
//!   reserved from the request's estimate at the dearest price among its
//!   route's targets and reconciled with the real cost when it ends. In
//!   memory on one node (saved in `[spend] file`), in Redis with
//!   `[cluster]`.
//! - **Usage** ([`history`]): hourly buckets per key, team and model, kept
//!   for `[spend] retention`, queried by `GET /admin/usage` and
//!   `h3gate usage` (see [`crate::usage`], which also keeps them beyond
//!   the process: in the spend file on one node, in Redis with
//!   `[cluster]`).
//! - **Soft limits**: crossing 80% and 100% of a budget is an audit event
//!   and `h3gate_budget_alerts_total{scope,level}`, once per budget and
//!   window on each replica.

pub mod history;
pub mod meter;
pub mod period;
pub mod prices;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use history::History;
pub use period::{Period, Window};
pub use prices::{nanos, usd, Nanos, Price, PriceTable, Usage};

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Nano-USD (see [`crate::spend::Nanos`]).
    Usd,
    /// Prompt + completion tokens.
    Tokens,
}

/// Whether `name` is a valid key or team name: letters, digits, '-', '_'
/// or '.' (it is part of storage keys, metrics never see it).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A key's or a team's budget: USD and/or tokens per period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub usd: Option<f64>,
    pub tokens: Option<u64>,
    pub period: Period,
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.usd.is_none() && self.tokens.is_none()
    }
}

/// One request's spend, recorded when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    /// When it ended (Unix seconds).
    pub at: u64,
    /// The key's name (none without a key).
    pub key: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    /// The model priced: the one the serving target was asked for.
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub usage: Usage,
    pub cost: Nanos,
}

/// The running spend state, kept across reloads (its history with it).
#[derive(Debug, Default)]
pub struct Spend {
    pub history: History,
    /// Soft-limit alerts already raised: (budget, window slot, level).
    alerted: Mutex<HashSet<(String, u64, u8)>>,
}

/// A budget's level after a decision, for its soft-limit alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// 80% or more spent (reserved included).
    Warning,
    /// Spent: a request was refused, or the real cost went past it.
    Exhausted,
}

impl Level {
    pub fn percent(self) -> u8 {
        match self {
            Level::Warning => 80,
            Level::Exhausted => 100,
        }
    }

    /// The level `used` of `budget` is at, if it is at one.
    pub fn of(used: u64, budget: u64, refused: bool) -> Option<Level> {
        if refused || used >= budget {
            Some(Level::Exhausted)
        } else if used.saturating_mul(5) >= budget.saturating_mul(4) {
            Some(Level::Warning)
        } else {
            None
        }
    }
}

impl Spend {
    /// Whether this alert is new (it is then remembered). `budget` names the
    /// budget (`key:NAME:usd`, `team:NAME:tokens`); the window's slot
    /// makes the next period's alerts new again.
    pub fn first_alert(&self, budget: &str, slot: u64, level: Level) -> bool {
        let mut seen = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            seen.clear();
        }
        seen.insert((budget.to_string(), slot, level.percent()))
    }
}
