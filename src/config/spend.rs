//! Spend: `[[prices]]` (override and extend the bundled price table),
//! `[[teams]]` (teams' budgets) and `[spend]` (where spend and its history
//! are kept).

use serde::{Deserialize, Serialize};

use super::Duration;
pub use crate::spend::prices::PriceConfig;
use crate::spend::Period;

/// `[[teams]]`: a team's budget, shared by its keys (`keys create --team`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub name: String,
    /// USD per period.
    #[serde(default)]
    pub budget: Option<f64>,
    /// Tokens (prompt + completion) per period.
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    /// `1d` (calendar day, UTC), `month` (calendar month, UTC) or a rolling
    /// `Nd`/`Nh`. Default `month`.
    #[serde(default = "month")]
    pub budget_period: Period,
}

fn month() -> Period {
    Period::Month
}

/// `[spend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpendConfig {
    /// Without `[cluster]`: the file spend and its history are kept in
    /// (relative to the config file), written off the request path and
    /// atomically; unset, they are kept in memory only (lost at exit). With
    /// `[cluster]` they are in Redis.
    pub file: Option<std::path::PathBuf>,
    /// How long the hourly usage history is kept. Default 400d.
    pub retention: Duration,
}

impl Default for SpendConfig {
    fn default() -> Self {
        SpendConfig {
            file: None,
            retention: Duration::secs(400 * 86_400),
        }
    }
}
