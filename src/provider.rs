//! Upstream providers behind one enum. Each variant lives in its own file
//! under `provider/` and turns an [`UpstreamCall`] into an
//! [`UpstreamResponse`] whose body streams as the provider produces it.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod client;
mod endpoint;
pub mod gemini;
pub mod keys;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use std::sync::atomic::{AtomicBool, Ordering};

use metrics::Gauge;

use crate::admission::{Gate, Permit};
use crate::api::Api;
use crate::config::{
    BreakerConfig, HealthCheckConfig, ProviderConfig, ProviderKind, ProviderTimeouts,
};
use crate::exchange::Body;
use crate::metrics::ProviderMetrics;
use crate::translate::responses::ResponseTag;
use crate::translate::{self, Conversion, TranslateError};
pub use client::HttpClients;
pub use endpoint::Endpoint;
pub use keys::retry_after;

/// One request to send upstream, in the client's API.
#[derive(Clone)]
pub struct UpstreamCall {
    pub endpoint: Endpoint,
    /// The model the client asked for.
    pub model: Arc<str>,
    /// The client's JSON body (empty for a GET).
    pub body: Bytes,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    pub request_id: Arc<str>,
    /// Forward `Early-Data: 1`: the request (or a proxy before us) used 0-RTT.
    pub early_data: bool,
    /// The route drops parameters a translation cannot carry.
    pub drop_unsupported: bool,
    /// The request's trace (each attempt a span of it), with `[tracing]` on.
    pub trace: Option<Arc<crate::trace::RequestTrace>>,
    /// The client's headers some provider passes on (`forward_headers`,
    /// `anthropic-beta`, `openai-beta`); each provider sends its own.
    pub headers: HeaderMap,
    /// A Responses call that must reach where a stored response lives
    /// (`previous_response_id`, or a stored response's own path).
    pub pin: Option<ResponseTag>,
    /// The client's gateway key, as response ids carry it (0: none).
    pub owner: u32,
}

/// One attempt's request, in the provider's API: what [`Provider::prepare`]
/// makes of an [`UpstreamCall`] for one target.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub endpoint: Endpoint,
    /// The model sent upstream (the target's, or the client's).
    pub model: String,
    pub body: Bytes,
    pub stream: bool,
    /// How the response body becomes the client's.
    pub conversion: Conversion,
    /// This attempt's `traceparent` (and the caller's `tracestate`), for a
    /// provider trace context is sent to.
    pub trace_context: Option<(http::HeaderValue, Option<http::HeaderValue>)>,
    /// The pool key it must go with (a stored response's), else the next.
    pub key: Option<usize>,
}

impl Prepared {
    /// The wire format of the upstream's response.
    pub fn upstream_api(&self) -> Api {
        self.endpoint.api()
    }
}

/// Why a target cannot take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareError {
    /// This provider has no such endpoint (e.g. embeddings from Anthropic):
    /// another target may.
    Unsupported,
    /// The request cannot be translated: the client's fault (400).
    Invalid(TranslateError),
}

/// The upstream's answer: status, the headers worth passing on, and the body
/// still streaming.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    /// The pool key that was sent (its index), if any.
    pub key: Option<usize>,
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
    /// [`ResponseTag::hash`] of the name: what its response ids carry.
    pub tag: u32,
    /// `gen_ai.system` of its spans (`openai`, `anthropic`, `ollama`,
    /// `az.ai.openai`, `gcp.gemini`, `mock`).
    pub system: &'static str,
    /// Trace context is sent to it (`propagate_trace`).
    pub propagate_trace: bool,
    pub timeouts: ProviderTimeouts,
    /// Models this provider declares (for `/v1/models` under wildcard routes).
    pub models: Vec<String>,
    /// `max_tokens` for translated requests that set none.
    pub default_max_tokens: u32,
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
        let health_gauge = crate::metrics::PROVIDER_HEALTHY.with([cfg.name.clone()]);
        health_gauge.set(1.0);
        Common {
            name: cfg.name.clone(),
            tag: ResponseTag::hash(&cfg.name),
            system: match cfg.kind {
                ProviderKind::Openai => "openai",
                ProviderKind::Anthropic => "anthropic",
                ProviderKind::Ollama => "ollama",
                ProviderKind::Azure => "az.ai.openai",
                // The semantic conventions' value for the Gemini API (AI Studio).
                ProviderKind::Gemini => "gcp.gemini",
                ProviderKind::Mock => "mock",
                ProviderKind::Bedrock => "aws.bedrock",
            },
            propagate_trace: cfg.propagates_trace(),
            timeouts: cfg.timeouts.clone(),
            models: cfg.models.clone(),
            default_max_tokens: cfg.default_max_tokens,
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
    Anthropic(anthropic::Anthropic),
    Ollama(ollama::Ollama),
    Azure(azure::Azure),
    Gemini(gemini::Gemini),
    Mock(mock::Mock),
    Bedrock(bedrock::Bedrock),
}

impl Provider {
    /// Builds a provider from its configuration. `clients` shares one pooled
    /// HTTP client between providers with the same connect timeout.
    pub fn build(cfg: &ProviderConfig, clients: &mut HttpClients) -> Result<Provider, String> {
        let common = Common::new(cfg);
        Ok(match cfg.kind {
            ProviderKind::Openai => Provider::OpenAi(openai::OpenAi::new(common, cfg, clients)?),
            ProviderKind::Anthropic => {
                Provider::Anthropic(anthropic::Anthropic::new(common, cfg, clients)?)
            }
            ProviderKind::Ollama => Provider::Ollama(ollama::Ollama::new(common, cfg, clients)?),
            ProviderKind::Azure => Provider::Azure(azure::Azure::new(common, cfg, clients)?),
            ProviderKind::Gemini => Provider::Gemini(gemini::Gemini::new(common, cfg, clients)?),
            ProviderKind::Mock => Provider::Mock(mock::Mock::new(common, cfg)),
            ProviderKind::Bedrock => {
                Provider::Bedrock(bedrock::Bedrock::new(common, cfg, clients)?)
            }
        })
    }

    pub fn common(&self) -> &Common {
        match self {
            Provider::OpenAi(p) => &p.common,
            Provider::Anthropic(p) => &p.common,
            Provider::Ollama(p) => &p.common,
            Provider::Azure(p) => &p.common,
            Provider::Gemini(p) => &p.common,
            Provider::Mock(p) => &p.common,
            Provider::Bedrock(p) => &p.common,
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

    /// The API this provider speaks for `endpoint` (the mock speaks both).
    fn native_api(&self, endpoint: Endpoint) -> Api {
        match self {
            Provider::OpenAi(_) | Provider::Ollama(_) | Provider::Azure(_) => {
                match endpoint.api() {
                    Api::Responses => Api::Responses,
                    _ => Api::OpenAi,
                }
            }
            Provider::Anthropic(_) => Api::Anthropic,
            Provider::Gemini(_) => Api::Gemini,
            // (Bedrock's requests are prepared apart: `bedrock::Bedrock::prepare`.)
            Provider::Mock(_) | Provider::Bedrock(_) => endpoint.api(),
        }
    }

    /// A mock set to answer as Bedrock does (`[providers.mock] converse`).
    fn speaks_converse(&self) -> bool {
        matches!(self, Provider::Mock(m) if m.speaks_converse())
    }

    /// The credentials of an HTTP provider (the mock has none).
    pub fn credentials(&self) -> Option<&keys::Credentials> {
        match self {
            Provider::OpenAi(p) => Some(p.client.credentials()),
            Provider::Anthropic(p) => Some(p.client.credentials()),
            Provider::Ollama(p) => Some(p.client.credentials()),
            Provider::Azure(p) => Some(p.client.credentials()),
            Provider::Gemini(p) => Some(p.client.credentials()),
            Provider::Mock(_) | Provider::Bedrock(_) => None,
        }
    }

    /// Pool key `index` as a response id carries it (0: none).
    pub fn key_tag(&self, index: Option<usize>) -> u32 {
        match (self.credentials(), index) {
            (Some(c), Some(i)) => ResponseTag::from_hex(c.id(i).trim_start_matches("key-")),
            _ => 0,
        }
    }

    /// A Responses API call: passed through (model renamed) to an OpenAI-
    /// family provider, the answer's response id tagged with where it was
    /// made; one pinned to a stored response goes only to the provider and
    /// key that made it. Other families do not speak it (another target may).
    fn prepare_responses(
        &self,
        call: &UpstreamCall,
        target_model: Option<&str>,
    ) -> Result<Prepared, PrepareError> {
        if matches!(self, Provider::Bedrock(_)) || self.speaks_converse() {
            return Err(PrepareError::Unsupported);
        }
        match self.native_api(call.endpoint) {
            Api::Responses => {}
            Api::Anthropic if call.pin.is_none() && call.endpoint == Endpoint::Responses => {
                return self.responses_to_messages(call, target_model)
            }
            _ => return Err(PrepareError::Unsupported),
        }
        let mut key = None;
        if let Some(pin) = call.pin {
            if pin.provider != self.common().tag {
                return Err(PrepareError::Unsupported);
            }
            if pin.key != 0 {
                let credentials = self.credentials().ok_or(PrepareError::Unsupported)?;
                let found = (0..credentials.pool_size())
                    .find(|i| self.key_tag(Some(*i)) == pin.key)
                    .ok_or_else(|| {
                        PrepareError::Invalid(TranslateError::Invalid(
                            "the API key that created this response is no longer configured".into(),
                        ))
                    })?;
                key = Some(found);
            }
        }
        let stored = call.endpoint.is_stored();
        let (model, body) = if stored {
            (call.model.to_string(), Bytes::new())
        } else {
            let model = target_model.unwrap_or(&call.model).to_string();
            (model, rewrite_model(&call.body, target_model))
        };
        Ok(Prepared {
            endpoint: call.endpoint,
            model,
            body,
            stream: call.stream,
            conversion: Conversion::TagResponse(ResponseTag {
                provider: self.common().tag,
                key: 0,
                owner: call.owner,
            }),
            trace_context: None,
            key,
        })
    }

    /// A Responses API request to an Anthropic provider: through chat
    /// completions to messages, and the answer back the same way.
    fn responses_to_messages(
        &self,
        call: &UpstreamCall,
        target_model: Option<&str>,
    ) -> Result<Prepared, PrepareError> {
        let model = target_model.unwrap_or(&call.model).to_string();
        let opts = translate::Options {
            drop_unsupported: call.drop_unsupported,
            default_max_tokens: self.common().default_max_tokens,
        };
        let invalid = PrepareError::Invalid;
        let chat =
            translate::responses::chat::request_to_chat(&call.body, &opts).map_err(invalid)?;
        let chat = serde_json::to_vec(&chat)
            .map_err(|e| invalid(TranslateError::Invalid(e.to_string())))?;
        let body = translate::request::chat_to_messages_body(&chat, &opts, Some(&model))
            .map_err(invalid)?;
        Ok(Prepared {
            endpoint: Endpoint::Messages,
            model,
            body: Bytes::from(body),
            stream: call.stream,
            conversion: Conversion::MessagesToResponses,
            trace_context: None,
            key: None,
        })
    }

    /// One active health check: a cheap GET below the base URL.
    pub async fn health_check(&self, path: &str) -> bool {
        match self {
            Provider::OpenAi(p) => p.client.health_check(path).await,
            Provider::Anthropic(p) => p.client.health_check(path).await,
            Provider::Ollama(p) => p.client.health_check(path).await,
            Provider::Azure(p) => p.client.health_check(path).await,
            Provider::Gemini(p) => p.client.health_check(path).await,
            Provider::Mock(_) => true,
            Provider::Bedrock(p) => p.health_check(path).await,
        }
    }

    /// The call as this provider takes it: model renamed for the target,
    /// translated when the client's API is not the provider's, and (for an
    /// OpenAI stream) asking for the usage chunk the gateway accounts with.
    pub fn prepare(
        &self,
        call: &UpstreamCall,
        target_model: Option<&str>,
    ) -> Result<Prepared, PrepareError> {
        if call.endpoint.api() == Api::Responses {
            return self.prepare_responses(call, target_model);
        }
        let model = target_model.unwrap_or(&call.model).to_string();
        let opts = translate::Options {
            drop_unsupported: call.drop_unsupported,
            default_max_tokens: self.common().default_max_tokens,
        };
        if matches!(self, Provider::Bedrock(_)) || self.speaks_converse() {
            return bedrock::Bedrock::prepare(call, model, &opts);
        }
        let native = self.native_api(call.endpoint);
        // Translated straight to the body sent, with the target's model.
        let translated =
            |v: Result<Vec<u8>, TranslateError>| v.map(Bytes::from).map_err(PrepareError::Invalid);
        let (endpoint, body, conversion) = match (call.endpoint, native) {
            // Azure has deployments, not a model catalogue.
            (Endpoint::Model, _) if matches!(self, Provider::Azure(_)) => {
                return Err(PrepareError::Unsupported)
            }
            (Endpoint::Model, Api::OpenAi) => (Endpoint::Model, Bytes::new(), Conversion::None),
            (Endpoint::Model, Api::Anthropic) => {
                (Endpoint::Model, Bytes::new(), Conversion::ModelToOpenAi)
            }
            (e, n) if e.api() == n => {
                let body = rewrite_model(&call.body, target_model);
                if n == Api::OpenAi && call.stream && !call.include_usage {
                    (e, with_include_usage(body), Conversion::StripUsage)
                } else {
                    (e, body, Conversion::None)
                }
            }
            (Endpoint::ChatCompletions, Api::Anthropic) => (
                Endpoint::Messages,
                translated(translate::request::chat_to_messages_body(
                    &call.body,
                    &opts,
                    Some(&model),
                ))?,
                Conversion::MessagesToChat {
                    include_usage: call.include_usage,
                },
            ),
            (Endpoint::Messages, Api::OpenAi) => (
                Endpoint::ChatCompletions,
                translated(translate::request::messages_to_chat_body(
                    &call.body,
                    &opts,
                    Some(&model),
                ))?,
                Conversion::ChatToMessages,
            ),
            (e, Api::Gemini) => gemini::prepare(e, call, &model, &opts)?,
            _ => return Err(PrepareError::Unsupported),
        };
        Ok(Prepared {
            endpoint,
            model,
            body,
            stream: call.stream,
            conversion,
            trace_context: None,
            key: None,
        })
    }

    /// Sends one attempt; resolves when the response headers have arrived.
    pub async fn send(
        &self,
        call: &UpstreamCall,
        prepared: &Prepared,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match self {
            Provider::OpenAi(p) => p.client.send(call, prepared).await,
            Provider::Anthropic(p) => p.client.send(call, prepared).await,
            Provider::Ollama(p) => p.client.send(call, prepared).await,
            Provider::Azure(p) => p.client.send(call, prepared).await,
            Provider::Gemini(p) => p.client.send(call, prepared).await,
            Provider::Mock(p) => p.send(prepared).await,
            Provider::Bedrock(p) => p.send(call, prepared).await,
        }
    }
}

/// The request body with `model` replaced, when the target names another model.
pub fn rewrite_model(body: &Bytes, model: Option<&str>) -> Bytes {
    let Some(model) = model else {
        return body.clone();
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("model".into(), serde_json::Value::String(model.to_string()));
            serde_json::to_vec(&map)
                .map(Bytes::from)
                .unwrap_or_else(|_| body.clone())
        }
        _ => body.clone(),
    }
}

/// The body with `stream_options.include_usage = true`. Without an existing
/// `stream_options` this is a byte insertion after the opening brace (no
/// parse); otherwise the body is parsed and the flag set.
pub fn with_include_usage(body: Bytes) -> Bytes {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true}"#;
    let has_options = body.windows(16).any(|w| w == b"\"stream_options\"");
    let open = body.iter().position(|b| !b.is_ascii_whitespace());
    if !has_options && open.is_some_and(|i| body[i] == b'{') {
        let i = open.unwrap_or(0) + 1;
        let empty = body[i..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'}');
        let mut out = Vec::with_capacity(body.len() + FIELD.len() + 1);
        out.extend_from_slice(&body[..i]);
        out.extend_from_slice(FIELD);
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(&body[i..]);
        return Bytes::from(out);
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(mut v) if v.is_object() => {
            if !v["stream_options"].is_object() {
                v["stream_options"] = serde_json::json!({});
            }
            v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            Bytes::from(v.to_string())
        }
        _ => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_usage_is_added_without_breaking_the_body() {
        let cases: [&[u8]; 4] = [
            br#"{"model":"m","stream":true}"#,
            b"  {\n \"model\": \"m\" }",
            br#"{"model":"m","stream_options":{"include_usage":false}}"#,
            br#"{"model":"m","stream_options":null}"#,
        ];
        for body in cases {
            let out = with_include_usage(Bytes::copy_from_slice(body));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{out:?}");
            assert_eq!(v["model"], "m");
        }
        assert_eq!(
            with_include_usage(Bytes::from_static(b"{}")),
            &br#"{"stream_options":{"include_usage":true}}"#[..]
        );
    }
}
