//! `h3gate_cost_usd_total{model,provider}`: what requests cost, in USD.
//!
//! The `metrics` crate's counters count whole numbers; a cost is a fraction
//! of a dollar. The family is kept here in nano-USD (one atomic per model
//! and provider) and rendered as a float counter after the recorder's
//! exposition on `/metrics` ([`render_into`]). Its name, help and labels are
//! in the metric table ([`crate::metrics::COST_USD`]). Like the recorder,
//! the meter is process-wide: a reload keeps the counts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use super::Nanos;
use crate::metrics::{COST_UNPRICED, COST_USD};

/// Series kept at most; past it, new models are counted under
/// [`OVERFLOW_MODEL`] (the caller's model label is bounded already: this
/// only caps a mistake).
const MAX_SERIES: usize = 4096;
/// The model label of costs past [`MAX_SERIES`].
pub const OVERFLOW_MODEL: &str = "other";

/// Nano-USD by provider, then model.
#[derive(Debug, Default)]
pub struct Meter {
    series: RwLock<HashMap<String, HashMap<String, Arc<AtomicU64>>>>,
}

static METER: LazyLock<Meter> = LazyLock::new(Meter::default);

/// Adds one request's cost (`priced`: its model has a price; otherwise it
/// counts as 0 and in `h3gate_cost_unpriced_requests_total`). `model` is
/// the bounded model label of `h3gate_tokens_total`, never client input.
pub fn cost(model: &str, provider: &str, nanos: Nanos, priced: bool) {
    if !priced {
        COST_UNPRICED
            .with([model, provider].map(str::to_string))
            .increment(1);
    }
    METER.add(model, provider, nanos);
}

/// Appends the family (`# HELP`, `# TYPE`, one sample per series) to a
/// Prometheus text exposition; nothing before the first cost.
pub fn render_into(out: &mut String) {
    METER.render_into(out);
}

impl Meter {
    /// Adds `nanos` to the series (registered on first use, even for 0: an
    /// unpriced model's series shows it was served).
    pub fn add(&self, model: &str, provider: &str, nanos: Nanos) {
        let counter = {
            let series = self.series.read().unwrap_or_else(|p| p.into_inner());
            series.get(provider).and_then(|m| m.get(model)).cloned()
        };
        let counter = match counter {
            Some(c) => c,
            None => self.register(model, provider),
        };
        counter.fetch_add(nanos, Ordering::Relaxed);
    }

    fn register(&self, model: &str, provider: &str) -> Arc<AtomicU64> {
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let count: usize = series.values().map(HashMap::len).sum();
        let models = series.entry(provider.to_string()).or_default();
        let model = if count >= MAX_SERIES && !models.contains_key(model) {
            OVERFLOW_MODEL
        } else {
            model
        };
        models.entry(model.to_string()).or_default().clone()
    }

    /// See [`render_into`]: series sorted by model, then provider.
    pub fn render_into(&self, out: &mut String) {
        let mut samples: Vec<(String, String, Nanos)> = {
            let series = self.series.read().unwrap_or_else(|p| p.into_inner());
            series
                .iter()
                .flat_map(|(provider, models)| {
                    models.iter().map(move |(model, n)| {
                        (model.clone(), provider.clone(), n.load(Ordering::Relaxed))
                    })
                })
                .collect()
        };
        if samples.is_empty() {
            return;
        }
        samples.sort_unstable();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let name = COST_USD.name;
        let _ = writeln!(out, "# HELP {name} {}", COST_USD.help);
        let _ = writeln!(out, "# TYPE {name} counter");
        for (model, provider, nanos) in samples {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",provider=\"{}\"}} {}",
                escape(&model),
                escape(&provider),
                super::usd(nanos)
            );
        }
    }
}

/// A label value as the text format writes it (`\`, `"` and newlines escaped).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Names come from the table: no metric name is written outside it.
    const NAME: &str = COST_USD.name;

    #[test]
    fn costs_render_as_a_float_counter_per_model_and_provider() {
        let m = Meter::default();
        let mut empty = String::new();
        m.render_into(&mut empty);
        assert_eq!(empty, "", "nothing before the first cost");

        m.add("gpt-4o", "openai", 4_455_000);
        m.add("gpt-4o", "openai", 1);
        m.add("claude-sonnet-4-5", "anthropic", 2_500_000_000);
        m.add("llama3", "local", 0);
        m.add("gpt-4o", "azure", 1_000);
        let mut text = String::from("up 1");
        m.render_into(&mut text);
        let help = COST_USD.help;
        assert_eq!(
            text,
            format!(
                "up 1\n\
                 # HELP {NAME} {help}\n\
                 # TYPE {NAME} counter\n\
                 {NAME}{{model=\"claude-sonnet-4-5\",provider=\"anthropic\"}} 2.5\n\
                 {NAME}{{model=\"gpt-4o\",provider=\"azure\"}} 0.000001\n\
                 {NAME}{{model=\"gpt-4o\",provider=\"openai\"}} 0.004455001\n\
                 {NAME}{{model=\"llama3\",provider=\"local\"}} 0\n"
            )
        );
        for line in text.lines().filter(|l| l.starts_with(NAME)) {
            let value = line.rsplit_once(' ').map(|(_, v)| v);
            assert!(value.is_some_and(|v| v.parse::<f64>().is_ok()), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Meter::default();
        m.add("a\"b\\c\nd", "p", 1);
        let mut text = String::new();
        m.render_into(&mut text);
        assert!(
            text.ends_with(&format!(
                "{NAME}{{model=\"a\\\"b\\\\c\\nd\",provider=\"p\"}} 0.000000001\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn series_are_bounded() {
        let m = Meter::default();
        for i in 0..MAX_SERIES + 10 {
            m.add(&format!("m{i}"), "p", 1);
        }
        m.add("m0", "p", 1); // an existing series still counts as itself
        let mut text = String::new();
        m.render_into(&mut text);
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, MAX_SERIES + 1, "one overflow series");
        let other = format!("{NAME}{{model=\"{OVERFLOW_MODEL}\",provider=\"p\"}} 0.00000001\n");
        assert!(text.contains(&other), "the 10 past the cap");
        assert!(text.contains(&format!(
            "{NAME}{{model=\"m0\",provider=\"p\"}} 0.000000002\n"
        )));
    }

    #[test]
    fn an_unpriced_cost_counts_in_the_unpriced_family() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            cost("llama3", "local", 0, false);
            cost("gpt-4o", "openai", 5, true);
        });
        let text = recorder.handle().render();
        let unpriced = COST_UNPRICED.name;
        assert!(
            text.contains(&format!(
                "{unpriced}{{model=\"llama3\",provider=\"local\"}} 1"
            )),
            "{text}"
        );
        assert!(
            !text.contains("gpt-4o"),
            "a priced cost is not unpriced: {text}"
        );
    }
}
