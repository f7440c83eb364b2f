//! `[[providers]]`: an upstream, its kind, credentials and timeouts.

use serde::{Deserialize, Serialize};

use super::{BreakerConfig, Duration, HealthCheckConfig, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI, or any OpenAI-compatible server (vLLM, Groq, LM Studio …) via `base_url`.
    Openai,
    /// Anthropic's Messages API (`x-api-key`, `anthropic-version`).
    Anthropic,
    /// Ollama through its OpenAI-compatible `/v1` (no key needed).
    Ollama,
    /// Azure OpenAI: `base_url` is the resource's endpoint
    /// (`https://NAME.openai.azure.com`), the target's model names the
    /// deployment, `api_version` goes in every URL, the key in `api-key`
    /// (or a bearer token from `token_file`).
    Azure,
    /// Google's Gemini API (`generateContent`, `x-goog-api-key`), reached
    /// from OpenAI and Anthropic clients through translation.
    Gemini,
    /// Built-in mock that answers like OpenAI or Anthropic, in-process.
    Mock,
    /// AWS Bedrock's Converse API (SigV4-signed; see `region`).
    Bedrock,
}

impl ProviderKind {
    /// The base URL used when the provider sets none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
            ProviderKind::Ollama => "http://127.0.0.1:11434/v1",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com/v1beta",
            // Bedrock's depends on the region (`provider::bedrock::base_url`).
            ProviderKind::Azure | ProviderKind::Mock | ProviderKind::Bedrock => "",
        }
    }
}

/// `[[providers]]`: an upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL including the API version path. Default by kind:
    /// `https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `http://127.0.0.1:11434/v1` (ollama),
    /// `https://generativelanguage.googleapis.com/v1beta` (gemini).
    pub base_url: String,
    /// Sent as `Authorization: Bearer` (Anthropic: `x-api-key`, Gemini:
    /// `x-goog-api-key`, Azure: `api-key`). Use `${OPENAI_API_KEY}`.
    pub api_key: Secret,
    /// More keys for the same provider: requests are spread over `api_key`
    /// and these; a key answered 429 rests for its `Retry-After`, one
    /// answered 401/403 until reload, while the others serve.
    pub api_keys: Vec<Secret>,
    /// A file holding a bearer token (sent as `Authorization: Bearer`),
    /// read again when it changes: Azure workload identity, or any
    /// OpenAI-compatible server behind a token-checking proxy. Instead of
    /// `api_key`.
    pub token_file: Option<std::path::PathBuf>,
    /// Azure's `api-version` query parameter (kind = "azure"; required there).
    pub api_version: String,
    /// Client request headers passed on to this provider, besides its
    /// kind's own (`anthropic-beta` to Anthropic, `openai-beta` to OpenAI,
    /// Azure and OpenAI-compatible servers). Every other client header
    /// stays behind. E.g. `["OpenAI-Organization", "OpenAI-Project"]`.
    pub forward_headers: Vec<String>,
    /// Left out while `api_key` is empty (e.g. `"${ANTHROPIC_API_KEY:-}"`
    /// with the variable unset): routes skip it, and a route left without
    /// targets is dropped. For example configurations where only some
    /// provider keys are present. Default false (an empty key is sent as none).
    pub optional: bool,
    /// Extra headers sent with every request to this provider (values may
    /// hold secrets: they are never logged).
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// `anthropic-version` sent to Anthropic providers. Default `2023-06-01`.
    pub anthropic_version: String,
    /// `max_tokens` sent to an Anthropic provider when an OpenAI-style
    /// request sets none (Anthropic requires it). Default 4096.
    pub default_max_tokens: u32,
    /// Models this provider serves, listed by `/v1/models` for wildcard routes.
    pub models: Vec<String>,
    pub timeouts: ProviderTimeouts,
    /// Requests in flight to this provider at once; 0 = no cap. Default 0.
    pub max_concurrent: u32,
    pub breaker: BreakerConfig,
    /// Active health checks; off unless set.
    pub health_check: Option<HealthCheckConfig>,
    /// Behaviour of the built-in mock (kind = "mock" only).
    pub mock: MockConfig,
    /// Send the attempt's W3C `traceparent`/`tracestate` upstream (with
    /// `[tracing]` on), so the trace continues into the server. Default
    /// true, except for `openai` and `anthropic` at their public URLs.
    pub propagate_trace: Option<bool>,
    /// Bedrock: the region (else `AWS_REGION`, `AWS_DEFAULT_REGION`), and keys
    /// winning over `AWS_ACCESS_KEY_ID` … (those are read at every request).
    pub region: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Secret,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: String::new(),
            kind: ProviderKind::Openai,
            base_url: String::new(),
            api_key: Secret::default(),
            api_keys: Vec::new(),
            token_file: None,
            api_version: String::new(),
            forward_headers: Vec::new(),
            optional: false,
            headers: Default::default(),
            anthropic_version: "2023-06-01".into(),
            default_max_tokens: 4096,
            models: Vec::new(),
            timeouts: ProviderTimeouts::default(),
            max_concurrent: 0,
            breaker: BreakerConfig::default(),
            health_check: None,
            mock: MockConfig::default(),
            propagate_trace: None,
            region: String::new(),
            access_key_id: Secret::default(),
            secret_access_key: Secret::default(),
            session_token: Secret::default(),
        }
    }
}

impl ProviderConfig {
    /// Whether trace context goes to this provider (see `propagate_trace`).
    pub fn propagates_trace(&self) -> bool {
        let public = !matches!(self.kind, ProviderKind::Ollama | ProviderKind::Mock)
            && self.base_url.is_empty();
        self.propagate_trace.unwrap_or(!public)
    }

    /// Whether it has any credential (`api_key`, `api_keys`, `token_file`).
    pub fn has_credentials(&self) -> bool {
        !self.api_key.is_empty()
            || self.api_keys.iter().any(|k| !k.is_empty())
            || self.token_file.is_some()
    }

    /// `api_key` and `api_keys`, as one pool.
    pub fn keys(&self) -> impl Iterator<Item = Secret> + '_ {
        std::iter::once(self.api_key.clone()).chain(self.api_keys.iter().cloned())
    }

    /// The client headers its kind passes on, plus `forward_headers`
    /// (lowercase).
    pub fn forwarded_headers(&self) -> Vec<String> {
        let own: &[&str] = match self.kind {
            ProviderKind::Anthropic => &["anthropic-beta"],
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Ollama => &["openai-beta"],
            ProviderKind::Mock => &["openai-beta", "anthropic-beta"],
            ProviderKind::Gemini | ProviderKind::Bedrock => &[],
        };
        let mut all: Vec<String> = own.iter().map(|s| s.to_string()).collect();
        for h in &self.forward_headers {
            let h = h.to_ascii_lowercase();
            if !all.contains(&h) {
                all.push(h);
            }
        }
        all
    }

    /// `base_url`, or the kind's default when unset.
    pub fn base_url(&self) -> &str {
        if self.base_url.is_empty() {
            self.kind.default_base_url()
        } else {
            &self.base_url
        }
    }
}

/// `[providers.timeouts]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderTimeouts {
    /// TCP + TLS connect. Default 5s.
    pub connect: Duration,
    /// From sending the request to the response headers. Default 60s.
    pub first_byte: Duration,
    /// Longest silence between two chunks of a response body. Default 60s.
    pub idle: Duration,
    /// Whole exchange, streaming included. Default 10m.
    pub total: Duration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        ProviderTimeouts {
            connect: Duration::secs(5),
            first_byte: Duration::secs(60),
            idle: Duration::secs(60),
            total: Duration::secs(600),
        }
    }
}

/// `[providers.mock]`: how the built-in mock answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MockConfig {
    /// Delay before the first token (or the whole non-streaming answer). Default 0s.
    pub first_token_latency: Duration,
    /// Streaming speed after the first token; 0 = as fast as possible. Default 0.
    pub tokens_per_second: u32,
    /// Tokens in an answer when the request sets no `max_tokens`. Default 16.
    pub completion_tokens: u32,
    /// Speak Bedrock's Converse API (JSON and event stream). Default false.
    pub converse: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            first_token_latency: Duration::secs(0),
            tokens_per_second: 0,
            completion_tokens: 16,
            converse: false,
        }
    }
}
