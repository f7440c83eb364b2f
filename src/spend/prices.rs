//! The price of a model's tokens, in USD per million: input, output, cached
//! input (read from a prompt cache) and cache write.
//!
//! The table is the bundled one (`prices.json`, taken from a published
//! price map: its source, version and date are in the file) under the
//! configuration's `[[prices]]`, which override and extend it. A model is
//! matched like a route: the configuration's exact names, then its globs
//! (the more specific first), then the bundled names. A model without a
//! price costs 0 and is counted (`h3gate_cost_unpriced_total`); `h3gate
//! check` names the routes' models that have none.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::glob::glob_match;

/// `[[prices]]`: one model's (or glob's) prices in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// An exact name or a glob (`gpt-4o*`), matched like routes.
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Default: `input`.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Default: `input`.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// A model's prices in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens read from the provider's cache.
    pub cached_input: f64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: f64,
}

/// A response's tokens, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Every prompt token, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Of `input`: read from the prompt cache.
    pub cached_input: u64,
    /// Of `input`: written to the prompt cache.
    pub cache_write: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// Nano-USD (10⁻⁹ USD): costs and budgets are counted in these, exactly.
pub type Nanos = u64;

/// Nano-USD per token for one USD per million tokens.
const NANOS_PER_USD_PER_MTOK: f64 = 1_000.0;

pub fn nanos(usd: f64) -> Nanos {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as Nanos
    } else {
        0
    }
}

pub fn usd(n: Nanos) -> f64 {
    n as f64 / 1e9
}

impl Price {
    /// What `usage` costs.
    pub fn cost(&self, u: &Usage) -> Nanos {
        let cached = u.cached_input.min(u.input);
        let written = u.cache_write.min(u.input - cached);
        let plain = u.input - cached - written;
        let f = |tokens: u64, price: f64| tokens as f64 * price * NANOS_PER_USD_PER_MTOK;
        let total = f(plain, self.input)
            + f(cached, self.cached_input)
            + f(written, self.cache_write)
            + f(u.output, self.output);
        total.round().max(0.0) as Nanos
    }

    /// The most a request of `input` and `output` tokens can cost (for a
    /// reservation): every prompt token at the dearest of the input prices.
    pub fn most(&self, input: u64, output: u64) -> Nanos {
        let dearest_in = self.input.max(self.cache_write).max(self.cached_input);
        let f = |tokens: u64, price: f64| tokens as f64 * price * NANOS_PER_USD_PER_MTOK;
        (f(input, dearest_in) + f(output, self.output)).round() as Nanos
    }

    fn from_config(p: &PriceConfig) -> Price {
        Price {
            input: p.input,
            output: p.output,
            cached_input: p.cached_input.unwrap_or(p.input),
            cache_write: p.cache_write.unwrap_or(p.input),
        }
    }
}

/// The bundled price map (see the module documentation).
#[derive(Debug, Deserialize)]
struct Bundled {
    source: String,
    models: HashMap<String, Price>,
}

const BUNDLED: &str = include_str!("prices.json");

/// Where the bundled prices come from (for `h3gate check` and the README).
pub fn bundled_source() -> String {
    serde_json::from_str::<Bundled>(BUNDLED)
        .map(|b| b.source)
        .unwrap_or_default()
}

/// Every price the gateway knows: see the module documentation.
#[derive(Debug, Default)]
pub struct PriceTable {
    exact: HashMap<String, Price>,
    /// The configuration's globs, the more specific first.
    globs: Vec<(String, Price)>,
    bundled: HashMap<String, Price>,
}

impl PriceTable {
    /// The bundled table under `configured`.
    pub fn new(configured: &[PriceConfig]) -> PriceTable {
        let bundled = serde_json::from_str::<Bundled>(BUNDLED)
            .map(|b| b.models)
            .unwrap_or_default();
        let mut table = PriceTable {
            bundled,
            ..PriceTable::default()
        };
        for p in configured {
            let price = Price::from_config(p);
            if p.model.contains('*') {
                table.globs.push((p.model.clone(), price));
            } else {
                table.exact.insert(p.model.clone(), price);
            }
        }
        // Stable: among equally specific globs, the first written wins.
        table
            .globs
            .sort_by_key(|(g, _)| std::cmp::Reverse(g.chars().filter(|c| *c != '*').count()));
        table
    }

    /// The price of `model`, if it has one.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(*p);
        }
        if let Some((_, p)) = self.globs.iter().find(|(g, _)| glob_match(g, model)) {
            return Some(*p);
        }
        self.bundled.get(model).copied()
    }

    /// Bundled models (for tests and `h3gate check`).
    pub fn bundled_len(&self) -> usize {
        self.bundled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, input: f64, output: f64) -> PriceConfig {
        PriceConfig {
            model: model.into(),
            input,
            output,
            cached_input: None,
            cache_write: None,
        }
    }

    #[test]
    fn configured_prices_override_and_extend_the_bundled_ones_like_routes() {
        let t = PriceTable::new(&[
            price("gpt-4o*", 1.0, 2.0),
            price("gpt-4o-mini*", 0.5, 1.0),
            price("my-model", 3.0, 4.0),
        ]);
        assert_eq!(t.lookup("my-model").unwrap().input, 3.0);
        assert_eq!(
            t.lookup("gpt-4o-mini-2024").unwrap().input,
            0.5,
            "the more specific glob"
        );
        assert_eq!(t.lookup("gpt-4o").unwrap().output, 2.0);
        assert_eq!(t.lookup("unknown-model"), None);
        let cfg = t.lookup("my-model").unwrap();
        assert_eq!(
            (cfg.cached_input, cfg.cache_write),
            (3.0, 3.0),
            "default to input"
        );
    }

    fn usd_per_mtok(input: f64, output: f64, cached_input: f64, cache_write: f64) -> Price {
        Price {
            input,
            output,
            cached_input,
            cache_write,
        }
    }

    /// The bundled table is the one `scripts/update-prices.py` wrote from
    /// litellm's price map: these are that map's numbers (USD per token
    /// × 10⁶), read from the file, not remembered.
    #[test]
    fn the_bundled_table_loads_with_the_published_prices() {
        let source = bundled_source();
        assert!(
            source.starts_with("litellm ") && source.contains("(PyPI, released "),
            "{source}"
        );
        let t = PriceTable::new(&[]);
        assert!(t.bundled_len() >= 30, "{} bundled models", t.bundled_len());
        let want = [
            ("gpt-4o", usd_per_mtok(2.5, 10.0, 1.25, 2.5)),
            ("gpt-4o-mini", usd_per_mtok(0.15, 0.6, 0.075, 0.15)),
            ("claude-sonnet-4-5", usd_per_mtok(3.0, 15.0, 0.3, 3.75)),
            ("claude-haiku-4-5", usd_per_mtok(1.0, 5.0, 0.1, 1.25)),
            (
                "text-embedding-3-small",
                usd_per_mtok(0.02, 0.0, 0.02, 0.02),
            ),
        ];
        for (model, price) in want {
            assert_eq!(t.lookup(model), Some(price), "{model}");
        }
        // Providers' own names: no litellm prefixes, no fine-tune templates.
        assert!(t
            .bundled
            .keys()
            .all(|m| !m.contains('/') && !m.starts_with("ft:")));
    }

    #[test]
    fn configured_prices_win_over_the_bundled_ones() {
        let bundled = PriceTable::new(&[]);
        assert_eq!(bundled.lookup("gpt-4o").map(|p| p.input), Some(2.5));
        let t = PriceTable::new(&[price("gpt-4o", 1.0, 2.0), price("claude-*", 7.0, 8.0)]);
        assert_eq!(t.lookup("gpt-4o"), Some(usd_per_mtok(1.0, 2.0, 1.0, 1.0)));
        assert_eq!(
            t.lookup("claude-sonnet-4-5"),
            Some(usd_per_mtok(7.0, 8.0, 7.0, 7.0)),
            "a configured glob beats a bundled exact name"
        );
        assert_eq!(t.lookup("gpt-4o-mini"), bundled.lookup("gpt-4o-mini"));
    }

    #[test]
    fn costs_count_cached_and_written_prompt_tokens_at_their_prices() {
        let p = Price {
            input: 3.0,
            output: 15.0,
            cached_input: 0.3,
            cache_write: 3.75,
        };
        // 1,000 prompt tokens of which 600 cached and 100 written; 200 out.
        let u = Usage {
            input: 1000,
            output: 200,
            cached_input: 600,
            cache_write: 100,
        };
        // 300·3 + 600·0.3 + 100·3.75 + 200·15 = 900+180+375+3000 = 4455 µUSD.
        assert_eq!(p.cost(&u), 4_455_000);
        assert_eq!(usd(p.cost(&u)), 0.004455);
        assert_eq!(p.most(1000, 200), 3_750_000 + 3_000_000);
        assert_eq!(nanos(5.0), 5_000_000_000);
        assert_eq!(nanos(-1.0), 0);
    }
}
