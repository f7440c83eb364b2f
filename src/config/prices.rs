//! What `h3gate check` says about prices: where the bundled ones come from,
//! and every route target whose model has none (its requests would count as
//! costing 0, and in `h3gate_cost_unpriced_requests_total`).
//!
//! The model priced for a target is the target's upstream `model`, or the
//! route's model when that is an exact name. A glob route's target without
//! a `model` forwards the client's model, which cannot be priced in advance:
//! one note says so. Targets on a mock provider (`kind = "mock"`) are not
//! reported: mock answers cost nothing.

use crate::config::{Config, ProviderKind};

use crate::spend::prices::{bundled_source, PriceTable};

/// The lines `h3gate check` prints about prices (`warning: …` for each
/// unpriced target, `note: …` otherwise), in the configuration's order.
pub fn report(config: &Config, prices: &PriceTable) -> Vec<String> {
    let mut lines = vec![format!(
        "note: prices: {} bundled models from {}; {} configured ([[prices]])",
        prices.bundled_len(),
        bundled_source(),
        config.prices.len()
    )];
    let mock = |provider: &str| {
        config
            .providers
            .iter()
            .any(|p| p.name == provider && p.kind == ProviderKind::Mock)
    };
    let mut unpriced: Vec<(&str, &str, &str)> = Vec::new();
    let mut client_models: Vec<&str> = Vec::new();
    for route in &config.routes {
        for target in route.targets.iter().filter(|t| !mock(&t.provider)) {
            let model = match &target.model {
                Some(m) => m.as_str(),
                None if route.model.contains('*') => {
                    if !client_models.contains(&route.model.as_str()) {
                        client_models.push(&route.model);
                    }
                    continue;
                }
                None => &route.model,
            };
            let entry = (model, route.model.as_str(), target.provider.as_str());
            if prices.lookup(model).is_none() && !unpriced.contains(&entry) {
                unpriced.push(entry);
            }
        }
    }
    for (model, route, provider) in unpriced {
        lines.push(format!(
            "warning: no price for model {model:?} (route {route:?}, provider {provider:?}): \
             its requests count as costing 0; add [[prices]]"
        ));
    }
    if !client_models.is_empty() {
        let routes: Vec<String> = client_models.iter().map(|r| format!("{r:?}")).collect();
        lines.push(format!(
            "note: route{s} {routes} forward{verb} the client's model, which cannot be priced \
             in advance: a model without a price counts as costing 0 (and in {metric})",
            s = if routes.len() == 1 { "" } else { "s" },
            verb = if routes.len() == 1 { "s" } else { "" },
            routes = routes.join(", "),
            metric = crate::metrics::COST_UNPRICED.name,
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, std::path::Path::new("."), &|_| None).unwrap()
    }

    const PROVIDERS: &str = r#"
[tls]
generate_dev_cert = true
[auth]
required = false
[[providers]]
name = "local"
kind = "ollama"
[[providers]]
name = "oa"
kind = "openai"
[[providers]]
name = "m"
kind = "mock"
"#;

    fn report_of(routes: &str) -> Vec<String> {
        let c = config(&format!("{PROVIDERS}{routes}"));
        report(&c, &PriceTable::new(&c.prices))
    }

    #[test]
    fn every_unpriced_target_is_named_once() {
        let lines = report_of(
            r#"
[[routes]]
model = "llama*"
targets = [{ provider = "local", model = "llama3" }, "m"]
[[routes]]
model = "gpt-4o"
targets = ["oa", { provider = "local", model = "llama3" }]
[[routes]]
model = "my-model"
targets = ["oa", "oa"]
"#,
        );
        let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(
            warnings,
            [
                r#"warning: no price for model "llama3" (route "llama*", provider "local"): its requests count as costing 0; add [[prices]]"#,
                r#"warning: no price for model "llama3" (route "gpt-4o", provider "local"): its requests count as costing 0; add [[prices]]"#,
                r#"warning: no price for model "my-model" (route "my-model", provider "oa"): its requests count as costing 0; add [[prices]]"#,
            ],
            "{lines:#?}"
        );
        assert!(lines[0].starts_with("note: prices: ") && lines[0].contains("litellm "));
    }

    #[test]
    fn configured_prices_silence_the_warning_and_globs_get_one_note() {
        let lines = report_of(
            r#"
[[prices]]
model = "llama*"
input = 0.1
output = 0.2
[[routes]]
model = "llama*"
targets = [{ provider = "local", model = "llama3" }]
[[routes]]
model = "gpt-*"
targets = ["oa"]
[[routes]]
model = "*"
targets = ["oa", "m"]
[[routes]]
model = "mock-*"
targets = ["m"]
"#,
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("warning:")),
            "{lines:#?}"
        );
        let notes: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("client's model"))
            .collect();
        assert_eq!(notes.len(), 1, "{lines:#?}");
        assert!(
            notes[0].starts_with(r#"note: routes "gpt-*", "*" forward the client's model"#),
            "{}",
            notes[0]
        );
        assert!(
            lines[0].ends_with("; 1 configured ([[prices]])"),
            "{}",
            lines[0]
        );
    }
}
