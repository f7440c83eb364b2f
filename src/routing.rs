//! Model → ordered targets. A route's model is an exact name, a glob with
//! `*` (e.g. `gpt-*`) or `*` alone. Exact names win; among globs the more
//! specific (more literal characters) wins, then the one written first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::RouteConfig;
use crate::metrics::RouteMetrics;
use crate::provider::Provider;

#[derive(Debug)]
pub struct Route {
    /// The route's model pattern as configured (a metrics label).
    pub pattern: String,
    /// Targets in priority order.
    pub targets: Vec<Arc<Provider>>,
    pub metrics: RouteMetrics,
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
    pub fn new(routes: &[RouteConfig], providers: &HashMap<String, Arc<Provider>>) -> Router {
        let mut router = Router::default();
        for rc in routes {
            let route = Arc::new(Route {
                pattern: rc.model.clone(),
                targets: rc
                    .targets
                    .iter()
                    .filter_map(|t| providers.get(t).cloned())
                    .collect(),
                metrics: RouteMetrics::new(&rc.model),
            });
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

    /// A bounded label for `model` on `route`: the model itself when the
    /// gateway knows it, else the route pattern (clients choose model names).
    pub fn model_label<'a>(&self, model: &'a str, route: &'a Route) -> &'a str {
        if self.known.contains(model) {
            model
        } else {
            &route.pattern
        }
    }

    pub fn resolve(&self, model: &str) -> Option<&Arc<Route>> {
        self.exact
            .get(model)
            .or_else(|| self.globs.iter().find(|r| glob_match(&r.pattern, model)))
    }

    /// The model names a client can ask for: exact routes, plus the models
    /// providers declare that a wildcard route sends to them.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exact.keys().cloned().collect();
        for route in &self.globs {
            for target in &route.targets {
                for m in &target.common().models {
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

/// `*` matches any run of characters (including none); everything else is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty(); // no `*` at all: exact
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderConfig, ProviderKind};

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(!glob_match("gpt-*", "claude"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn exact_then_most_specific_glob() {
        let mut providers = HashMap::new();
        for name in ["a", "b", "c"] {
            let cfg = ProviderConfig {
                name: name.into(),
                kind: ProviderKind::Mock,
                models: vec!["gpt-4o".into(), "llama".into()],
                ..Default::default()
            };
            let mut clients = crate::provider::HttpClients::default();
            let provider = Provider::build(&cfg, &mut clients).unwrap();
            providers.insert(name.to_string(), Arc::new(provider));
        }
        let routes = [
            RouteConfig {
                model: "*".into(),
                targets: vec!["a".into()],
            },
            RouteConfig {
                model: "gpt-*".into(),
                targets: vec!["b".into()],
            },
            RouteConfig {
                model: "gpt-4o-mini".into(),
                targets: vec!["c".into(), "a".into()],
            },
        ];
        let r = Router::new(&routes, &providers);
        assert_eq!(r.resolve("gpt-4o-mini").unwrap().targets.len(), 2);
        assert_eq!(r.resolve("gpt-4o").unwrap().pattern, "gpt-*");
        assert_eq!(r.resolve("llama").unwrap().pattern, "*");
        assert_eq!(r.model_names(), ["gpt-4o", "gpt-4o-mini", "llama"]);
    }
}
