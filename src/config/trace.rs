//! `[tracing]`: OpenTelemetry traces exported over OTLP/HTTP (protobuf).
//! Off unless an endpoint is set here or in the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Duration, Secret};

/// Whose incoming `traceparent` the gateway continues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustIncoming {
    /// Every client's.
    Always,
    /// Only from a peer in `network.trusted_proxies` (default): a client
    /// on the internet cannot choose the gateway's trace ids or sampling.
    #[default]
    TrustedProxies,
    /// Nobody's: every request starts a trace.
    Never,
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP endpoint: a base URL
    /// (`http://collector:4318`, `/v1/traces` appended) or the full traces
    /// URL. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; none of them: tracing is off.
    pub endpoint: Option<String>,
    /// Headers sent with every export (e.g. `authorization =
    /// "Bearer ${OTLP_TOKEN}"`; never logged). `OTEL_EXPORTER_OTLP_HEADERS`
    /// adds to them.
    pub headers: BTreeMap<String, Secret>,
    /// The share of new traces recorded, 0.0–1.0 (by trace id). A continued
    /// trace follows its parent's sampled flag. Default 1.0, or
    /// `OTEL_TRACES_SAMPLER_ARG` with a ratio sampler.
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans. Default `OTEL_SERVICE_NAME` or `h3gate`.
    pub service_name: Option<String>,
    /// Whose incoming `traceparent` is continued. Default `trusted_proxies`.
    pub trust_incoming: TrustIncoming,
    /// Record the client's address (`client.address`). Default false.
    pub record_client_address: bool,
    /// Spans waiting for export; beyond it they are dropped and counted
    /// (`h3gate_trace_spans_total{result="dropped"}`). Default 4096.
    pub queue_size: usize,
    /// Spans per export request. Default 512.
    pub batch_size: usize,
    /// How often queued spans are sent. Default 1s.
    pub export_interval: Duration,
    /// One export's time limit. Default 10s.
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: None,
            headers: BTreeMap::new(),
            sample_ratio: None,
            service_name: None,
            trust_incoming: TrustIncoming::default(),
            record_client_address: false,
            queue_size: 4096,
            batch_size: 512,
            export_interval: Duration::secs(1),
            export_timeout: Duration::secs(10),
        }
    }
}

/// `[tracing]` with the standard environment variables applied.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The traces URL, when set by the file (else the exporter reads the
    /// environment itself).
    pub endpoint: Option<String>,
    pub sample_ratio: f64,
    pub service_name: String,
}

impl TracingConfig {
    /// Whether tracing is on, and its settings, reading the environment
    /// through `env` (the file's settings win over the variables).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Option<Resolved> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let from_env = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        let endpoint = self.endpoint.as_deref().map(traces_url);
        if endpoint.is_none() && !from_env {
            return None;
        }
        let sample_ratio = self.sample_ratio.unwrap_or_else(|| env_ratio(&set));
        Some(Resolved {
            endpoint,
            sample_ratio: sample_ratio.clamp(0.0, 1.0),
            service_name: self
                .service_name
                .clone()
                .or_else(|| set("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| "h3gate".into()),
        })
    }

    /// Problems, by TOML path.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(r) = self.sample_ratio.filter(|r| !(0.0..=1.0).contains(r)) {
            out.push((
                "tracing.sample_ratio".into(),
                format!("must be between 0.0 and 1.0, not {r}"),
            ));
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://"))
                || e.parse::<http::Uri>().is_err()
            {
                out.push((
                    "tracing.endpoint".into(),
                    "must be an http:// or https:// URL".into(),
                ));
            }
        }
        if self.queue_size == 0 || self.batch_size == 0 {
            out.push((
                "tracing.queue_size".into(),
                "queue_size and batch_size must be at least 1".into(),
            ));
        }
        out
    }
}

/// A base URL gets the traces path (as `OTEL_EXPORTER_OTLP_ENDPOINT` does);
/// a URL with a path is used as it is.
fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        endpoint.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// The ratio from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
fn env_ratio(set: &impl Fn(&str) -> Option<String>) -> f64 {
    let arg = || {
        set("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|a| a.trim().parse::<f64>().ok())
            .unwrap_or(1.0)
    };
    match set("OTEL_TRACES_SAMPLER").as_deref() {
        Some("always_off" | "parentbased_always_off") => 0.0,
        Some("traceidratio" | "parentbased_traceidratio") => arg(),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        let cfg = TracingConfig::default();
        assert!(cfg.resolve(env(&[])).is_none());
        let on = cfg
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]))
            .unwrap();
        assert_eq!(on.endpoint, None, "the exporter reads the variable itself");
        assert_eq!((on.sample_ratio, on.service_name.as_str()), (0.25, "edge"));
        let off = cfg.resolve(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]));
        assert!(off.is_none());
    }

    #[test]
    fn the_file_wins_and_a_base_url_gets_the_traces_path() {
        let cfg = TracingConfig {
            endpoint: Some("http://c:4318".into()),
            sample_ratio: Some(0.5),
            service_name: Some("gw".into()),
            ..Default::default()
        };
        let r = cfg
            .resolve(env(&[
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ]))
            .unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!((r.sample_ratio, r.service_name.as_str()), (0.5, "gw"));
        assert_eq!(
            traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    }

    #[test]
    fn a_config_file_with_a_tracing_section_loads() {
        let text = "[tracing]\nendpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.5\n\
                    trust_incoming = \"never\"\nheaders = { authorization = \"Bearer ${T}\" }\n";
        let env = |name: &str| (name == "T").then(|| "x".to_string());
        let (c, problems) = super::super::load::decode_text(text, std::path::Path::new("."), &env)
            .expect("[tracing] is a known section");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.tracing.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(c.tracing.sample_ratio, Some(0.5));
        assert_eq!(c.tracing.trust_incoming, TrustIncoming::Never);
        assert_eq!(c.tracing.headers["authorization"].expose(), "Bearer x");
    }
}
