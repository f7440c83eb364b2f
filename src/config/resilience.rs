//! Configuration of routing resilience: route targets and strategies,
//! retries, circuit breakers, active health checks and the admission queue.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::Duration;

/// How a route orders its targets for each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In the order written; fail over down the list.
    #[default]
    Priority,
    /// Weighted random (`weight` per target), then the rest as fallbacks.
    Weighted,
    /// Power of two choices over outstanding requests × EWMA latency.
    LeastLoaded,
}

/// A route target: a provider, optionally with the model name to send it
/// (`"openai"` or `{ provider = "ollama", model = "llama3.1:8b", weight = 2 }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetConfig {
    pub provider: String,
    /// The upstream's name for the model; the request's `model` is rewritten to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Share of traffic under the `weighted` strategy. Default 1.
    pub weight: u32,
}

impl From<&str> for TargetConfig {
    fn from(provider: &str) -> Self {
        TargetConfig {
            provider: provider.to_string(),
            model: None,
            weight: 1,
        }
    }
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            provider: String,
            #[serde(default)]
            model: Option<String>,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a provider name or { provider, model, weight }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetConfig, E> {
                Ok(TargetConfig::from(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetConfig, A::Error> {
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetConfig {
                    provider: f.provider,
                    model: f.model,
                    weight: f.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[retry]`: attempts before the first byte reaches the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts per request, across targets. Default 3.
    pub max_attempts: u32,
    /// First backoff step before retrying a target already tried. Default 100ms.
    pub backoff_base: Duration,
    /// Largest backoff (full jitter below it). Default 2s.
    pub backoff_max: Duration,
    /// All attempts of a request end by then (each also bounded by its
    /// provider's `first_byte` timeout). Default 60s.
    pub deadline: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff_base: Duration::millis(100),
            backoff_max: Duration::secs(2),
            deadline: Duration::secs(60),
        }
    }
}

/// `[providers.breaker]`: the circuit breaker of each of the provider's targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Open after this many failures in a row. Default 5.
    pub consecutive_failures: u32,
    /// Or when this share of requests in `window` failed… Default 0.5.
    pub error_ratio: f64,
    /// …out of at least this many. Default 20.
    pub min_requests: u32,
    /// Default 30s.
    pub window: Duration,
    /// How long an open breaker stays open before one probe. Default 30s.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_ratio: 0.5,
            min_requests: 20,
            window: Duration::secs(30),
            cooldown: Duration::secs(30),
        }
    }
}

/// `[providers.health_check]`: optional active checks (off when absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheckConfig {
    /// Below the provider's base URL. Default `/models`.
    pub path: String,
    /// Default 10s.
    pub interval: Duration,
    /// Default 2s.
    pub timeout: Duration,
    /// Failed checks in a row that mark the provider unhealthy. Default 3.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that mark it healthy again. Default 2.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/models".into(),
            interval: Duration::secs(10),
            timeout: Duration::secs(2),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// `[admission]`: bounded concurrency with a bounded FIFO wait queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmissionConfig {
    /// Requests forwarded at once, gateway-wide. Default 1024.
    pub max_concurrent: u32,
    /// Requests waiting for a slot; beyond it, 503 at once. Default 1024.
    pub max_queue: u32,
    /// Longest wait for a slot before 503. Default 5s.
    pub max_wait: Duration,
    /// Requests one client (key, else address) may have admitted or queued
    /// at once; beyond it, 429 — one client cannot fill the queue. 0 = no cap.
    /// Default 64.
    pub max_per_client: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_concurrent: 1024,
            max_queue: 1024,
            max_wait: Duration::secs(5),
            max_per_client: 64,
        }
    }
}
