//! Upstream providers behind one enum. Each variant lives in its own file
//! under `provider/` and turns an [`UpstreamCall`] into an
//! [`UpstreamResponse`] whose body streams as the provider produces it.

pub mod mock;
pub mod openai;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{gauge, Gauge};

use crate::admission::{Gate, Permit};
use crate::config::{
    BreakerConfig, HealthCheckConfig, ProviderConfig, ProviderKind, ProviderTimeouts,
};
use crate::exchange::Body;
use crate::metrics::ProviderMetrics;

/// The OpenAI-style API operation a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path below the provider's base URL (which includes `/v1`).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    /// The public path this endpoint is served on.
    pub fn from_public_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }
}

/// One request to send upstream.
#[derive(Clone)]
pub struct UpstreamCall {
    pub endpoint: Endpoint,
    /// The client's JSON body, forwarded as is (unless a target renames the model).
    pub body: Bytes,
    pub stream: bool,
    pub request_id: Arc<str>,
    /// Forward `Early-Data: 1`: the request (or a proxy before us) used 0-RTT.
    pub early_data: bool,
}

/// The upstream's answer: status, the headers worth passing on, and the body
/// still streaming.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// Why an upstream attempt failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("no response headers within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Failed(String),
}

/// What every provider has, whatever its kind.
#[derive(Debug)]
pub struct Common {
    pub name: String,
    pub timeouts: ProviderTimeouts,
    /// Models this provider declares (for `/v1/models` under wildcard routes).
    pub models: Vec<String>,
    pub metrics: ProviderMetrics,
    pub breaker: BreakerConfig,
    pub health_check: Option<HealthCheckConfig>,
    healthy: AtomicBool,
    health_gauge: Gauge,
    /// `max_concurrent`: a full provider is skipped (failover); the
    /// gateway-wide admission queue does the waiting.
    gate: Option<Gate>,
}

impl Common {
    fn new(cfg: &ProviderConfig) -> Self {
        let health_gauge = gauge!("h3gate_provider_healthy", "provider" => cfg.name.clone());
        health_gauge.set(1.0);
        Common {
            name: cfg.name.clone(),
            timeouts: cfg.timeouts.clone(),
            models: cfg.models.clone(),
            metrics: ProviderMetrics::new(&cfg.name),
            breaker: cfg.breaker.clone(),
            health_check: cfg.health_check.clone(),
            healthy: AtomicBool::new(true),
            health_gauge,
            gate: (cfg.max_concurrent > 0).then(|| {
                Gate::new(
                    &cfg.name,
                    cfg.max_concurrent as usize,
                    0,
                    std::time::Duration::ZERO,
                )
            }),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.health_gauge.set(if healthy { 1.0 } else { 0.0 });
    }

    /// A slot for one request: `None` when the provider is at its cap,
    /// `Some(None)` when it has no cap.
    pub fn admit(&self) -> Option<Option<Permit>> {
        match &self.gate {
            None => Some(None),
            Some(g) => g.try_enter().map(Some),
        }
    }
}

#[derive(Debug)]
pub enum Provider {
    OpenAi(openai::OpenAi),
    Mock(mock::Mock),
}

impl Provider {
    /// Builds a provider from its configuration. `clients` shares one pooled
    /// HTTP client between providers with the same connect timeout.
    pub fn build(cfg: &ProviderConfig, clients: &mut HttpClients) -> Result<Provider, String> {
        Ok(match cfg.kind {
            ProviderKind::Openai => Provider::OpenAi(openai::OpenAi::new(
                Common::new(cfg),
                cfg,
                clients.get(cfg.timeouts.connect.get())?,
            )?),
            ProviderKind::Mock => Provider::Mock(mock::Mock::new(Common::new(cfg), cfg)),
        })
    }

    pub fn common(&self) -> &Common {
        match self {
            Provider::OpenAi(p) => &p.common,
            Provider::Mock(p) => &p.common,
        }
    }

    pub fn name(&self) -> &str {
        &self.common().name
    }

    pub fn timeouts(&self) -> &ProviderTimeouts {
        &self.common().timeouts
    }

    pub fn metrics(&self) -> &ProviderMetrics {
        &self.common().metrics
    }

    /// One active health check: a cheap GET below the base URL.
    pub async fn health_check(&self, path: &str) -> bool {
        match self {
            Provider::OpenAi(p) => p.health_check(path).await,
            Provider::Mock(_) => true,
        }
    }

    /// Sends the call; resolves when the response headers have arrived.
    pub async fn send(&self, call: &UpstreamCall) -> Result<UpstreamResponse, UpstreamError> {
        match self {
            Provider::OpenAi(p) => p.send(call).await,
            Provider::Mock(p) => p.send(call).await,
        }
    }
}

/// Pooled upstream HTTP clients (rustls, HTTP/1.1 and HTTP/2), one per
/// distinct connect timeout, so providers share connections where they can.
#[derive(Default)]
pub struct HttpClients {
    by_connect_timeout: HashMap<Duration, reqwest::Client>,
}

impl HttpClients {
    fn get(&mut self, connect_timeout: Duration) -> Result<reqwest::Client, String> {
        if let Some(c) = self.by_connect_timeout.get(&connect_timeout) {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .http2_adaptive_window(true)
            .user_agent(concat!("h3gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        self.by_connect_timeout
            .insert(connect_timeout, client.clone());
        Ok(client)
    }
}
