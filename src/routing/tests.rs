use super::*;
use crate::config::{ProviderConfig, ProviderKind, TargetConfig};
use crate::provider::rewrite_model;
use crate::provider::HttpClients;

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

fn providers(names: &[&str]) -> HashMap<String, Arc<Provider>> {
    let mut clients = HttpClients::default();
    names
        .iter()
        .map(|name| {
            let cfg = ProviderConfig {
                name: name.to_string(),
                kind: ProviderKind::Mock,
                models: vec!["gpt-4o".into(), "llama".into()],
                ..Default::default()
            };
            (
                name.to_string(),
                Arc::new(Provider::build(&cfg, &mut clients).unwrap()),
            )
        })
        .collect()
}

fn route(model: &str, targets: &[&str]) -> RouteConfig {
    RouteConfig {
        model: model.into(),
        targets: targets.iter().map(|t| TargetConfig::from(*t)).collect(),
        ..Default::default()
    }
}

#[test]
fn exact_then_most_specific_glob() {
    let config = Config {
        routes: vec![
            route("*", &["a"]),
            route("gpt-*", &["b"]),
            route("gpt-4o-mini", &["c", "a"]),
        ],
        ..Default::default()
    };
    let r = Router::new(&config, &providers(&["a", "b", "c"]));
    assert_eq!(r.resolve("gpt-4o-mini").unwrap().targets.len(), 2);
    assert_eq!(r.resolve("gpt-4o").unwrap().pattern, "gpt-*");
    assert_eq!(r.resolve("llama").unwrap().pattern, "*");
    assert_eq!(r.model_names(), ["gpt-4o", "gpt-4o-mini", "llama"]);
}

#[test]
fn weighted_order_follows_the_weights() {
    let mut rc = route("w", &[]);
    rc.strategy = Strategy::Weighted;
    rc.targets = vec![
        TargetConfig {
            provider: "a".into(),
            model: None,
            weight: 3,
        },
        TargetConfig {
            provider: "b".into(),
            model: None,
            weight: 1,
        },
    ];
    let config = Config {
        routes: vec![rc],
        ..Default::default()
    };
    let r = Router::new(&config, &providers(&["a", "b"]));
    let route = r.resolve("w").unwrap();
    let n = 20_000;
    let firsts = (0..n).filter(|_| route.order()[0].name == "a").count();
    let share = firsts as f64 / n as f64;
    assert!((share - 0.75).abs() < 0.02, "a first in {share}");
    assert_eq!(route.order().len(), 2, "every target stays as a fallback");
}

#[test]
fn least_loaded_prefers_the_cheaper_target() {
    let mut rc = route("l", &["fast", "slow"]);
    rc.strategy = Strategy::LeastLoaded;
    let config = Config {
        routes: vec![rc],
        ..Default::default()
    };
    let r = Router::new(&config, &providers(&["fast", "slow"]));
    let route = r.resolve("l").unwrap();
    route.targets[0]
        .state
        .record(true, Some(Duration::from_millis(5)));
    route.targets[1]
        .state
        .record(true, Some(Duration::from_millis(200)));
    // With two targets, power of two choices always compares both.
    assert!((0..100).all(|_| route.order()[0].name == "fast"));
    // Load shifts the choice: 60 outstanding × 5 ms > 1 × 200 ms.
    for _ in 0..60 {
        route.targets[0]
            .state
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
    }
    assert!((0..100).all(|_| route.order()[0].name == "slow"));
}

#[test]
fn model_rewrite_only_when_asked() {
    let body = Bytes::from_static(br#"{"model":"fast","messages":[]}"#);
    assert_eq!(rewrite_model(&body, None), body);
    let v: serde_json::Value =
        serde_json::from_slice(&rewrite_model(&body, Some("llama3.1:8b"))).unwrap();
    assert_eq!(v["model"], "llama3.1:8b");
    assert_eq!(v["messages"], serde_json::json!([]));
}
