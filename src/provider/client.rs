//! What the HTTP providers (OpenAI, Anthropic, Ollama) share: pooled
//! upstream clients, and sending one prepared call with the provider's
//! headers, first-byte timeout and a streamed response body.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use http_body_util::Full;

use super::keys::{Credentials, Pick};
use super::transport::HttpClient;
use super::{Endpoint, Prepared, UpstreamCall, UpstreamError, UpstreamResponse};
use crate::config::ProviderConfig;

/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
];

/// Pooled upstream HTTP clients (src/provider/transport.rs), one per distinct
/// connect timeout, so providers share connections where they can.
#[derive(Default)]
pub struct HttpClients {
    by_connect_timeout: HashMap<Duration, HttpClient>,
}

impl HttpClients {
    pub(super) fn get(&mut self, connect_timeout: Duration) -> Result<HttpClient, String> {
        if let Some(c) = self.by_connect_timeout.get(&connect_timeout) {
            return Ok(c.clone());
        }
        let client = HttpClient::new(connect_timeout)?;
        self.by_connect_timeout
            .insert(connect_timeout, client.clone());
        Ok(client)
    }
}

/// The `User-Agent` of every upstream request.
pub const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("h3gate/", env!("CARGO_PKG_VERSION")));

/// Where a kind's endpoints are below its base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    /// `{base_url}{endpoint path}` (the base URL holds the version, `/v1`).
    Versioned,
    /// Azure OpenAI: `{base_url}/openai/deployments/{deployment}{endpoint
    /// path}?api-version={version}`, the target's model naming the deployment.
    Azure { api_version: String },
}

/// One HTTP upstream: base URL, the headers every request carries, its
/// credentials (a key pool or a token file), the client headers it takes,
/// the pooled client.
pub struct Upstream {
    base_url: String,
    /// `base_url` parsed once: the start of every per-call URL.
    base: Option<reqwest::Url>,
    paths: Paths,
    /// `base_url` + each fixed endpoint path, parsed once (not per request).
    urls: Vec<(Endpoint, Uri)>,
    /// The headers every request carries (the fixed ones, the configured
    /// ones, `User-Agent`, a forward proxy's `Proxy-Authorization`).
    headers: HeaderMap,
    credentials: Credentials,
    /// Client request headers passed on (lowercase names).
    forwarded: Vec<HeaderName>,
    client: HttpClient,
    first_byte: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl Upstream {
    /// `auth`: the header the provider's keys go in, and the prefix before
    /// each key (`Bearer `, or none).
    pub fn new(
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
        auth: (HeaderName, &'static str),
        fixed: &[(&'static str, &str)],
    ) -> Result<Upstream, String> {
        Upstream::with_paths(cfg, clients, auth, fixed, Paths::Versioned)
    }

    pub fn with_paths(
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
        auth: (HeaderName, &'static str),
        fixed: &[(&'static str, &str)],
        paths: Paths,
    ) -> Result<Upstream, String> {
        let bad = |what: &str| format!("provider {}: {what} contains invalid characters", cfg.name);
        let mut headers = HeaderMap::new();
        for (name, value) in fixed {
            let v = HeaderValue::from_str(value).map_err(|_| bad(name))?;
            headers.insert(HeaderName::from_static(name), v);
        }
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("a header name"))?;
            let mut v = HeaderValue::from_str(value.expose()).map_err(|_| bad("a header value"))?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        let credentials = Credentials::new(
            &cfg.name,
            auth.0,
            auth.1,
            cfg.keys(),
            cfg.token_file.as_deref(),
        )?;
        let forwarded = cfg
            .forwarded_headers()
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let base_url = cfg.base_url().trim_end_matches('/').to_string();
        let urls = match paths {
            Paths::Versioned => [
                Endpoint::ChatCompletions,
                Endpoint::Completions,
                Endpoint::Embeddings,
                Endpoint::Messages,
                Endpoint::CountTokens,
                Endpoint::Responses,
            ]
            .into_iter()
            .filter_map(|e| {
                let url = reqwest::Url::parse(&format!("{base_url}{}", e.path())).ok()?;
                Some((e, Uri::try_from(url.as_str()).ok()?))
            })
            .collect(),
            Paths::Azure { .. } => Vec::new(),
        };
        let client = clients.get(cfg.timeouts.connect.get())?;
        headers.insert(header::USER_AGENT, USER_AGENT);
        if let Some(auth) = Uri::try_from(&base_url)
            .ok()
            .and_then(|uri| client.forward_proxy_auth(&uri))
        {
            headers.insert(header::PROXY_AUTHORIZATION, auth);
        }
        Ok(Upstream {
            urls,
            base: reqwest::Url::parse(&base_url).ok(),
            base_url,
            paths,
            headers,
            credentials,
            forwarded,
            client,
            first_byte: cfg.timeouts.first_byte.get(),
        })
    }

    /// An upstream authenticated with `Authorization: Bearer <key>` (when
    /// the provider has keys): OpenAI and every compatible server.
    pub fn bearer(cfg: &ProviderConfig, clients: &mut HttpClients) -> Result<Upstream, String> {
        Upstream::new(cfg, clients, (header::AUTHORIZATION, "Bearer "), &[])
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The URL of a prepared call.
    fn url(&self, prepared: &Prepared) -> Result<Uri, UpstreamError> {
        if let Some((_, url)) = self.urls.iter().find(|(e, _)| *e == prepared.endpoint) {
            return Ok(url.clone());
        }
        let url = self.built_url(prepared)?;
        Uri::try_from(url.as_str()).map_err(|e| UpstreamError::Failed(e.to_string()))
    }

    /// The URL of a call whose path depends on it (the model in the path,
    /// Azure's deployments and `api-version`).
    fn built_url(&self, prepared: &Prepared) -> Result<reqwest::Url, UpstreamError> {
        let e = prepared.endpoint;
        let mut url = self
            .base
            .clone()
            .ok_or_else(|| UpstreamError::Failed("the base URL is not a valid URL".into()))?;
        match &self.paths {
            // Gemini's method follows the model in its segment:
            // `models/{model}:generateContent`, a stream with `?alt=sse`.
            Paths::Versioned if e == Endpoint::GenerateContent => {
                let method = e.suffix(prepared.stream);
                let (method, query) = method.split_once('?').unwrap_or((method, ""));
                push_path(&mut url, e.path(), &format!("{}{method}", prepared.model));
                if !query.is_empty() {
                    url.set_query(Some(query));
                }
            }
            Paths::Versioned => {
                push_path(&mut url, e.path(), &prepared.model);
                push_path(&mut url, e.suffix(prepared.stream), "");
            }
            Paths::Azure { api_version } => {
                if e == Endpoint::Responses {
                    // The deployment is the body's `model`.
                    push_path(&mut url, "/openai/responses", "");
                } else if e.is_stored() {
                    push_path(&mut url, "/openai/responses/", &prepared.model);
                    push_path(&mut url, e.suffix(false), "");
                } else {
                    push_path(&mut url, "/openai/deployments/", &prepared.model);
                    push_path(&mut url, e.path(), "");
                }
                url.query_pairs_mut()
                    .append_pair("api-version", api_version);
            }
        }
        Ok(url)
    }

    /// Sends one attempt with the next key of the pool; a key answered
    /// 429 or 401/403 is rested and the next one tried, while one is left.
    pub async fn send(
        &self,
        call: &UpstreamCall,
        prepared: &Prepared,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = self.url(prepared)?;
        let tries = self.credentials.pool_size().max(1);
        for attempt in 0..tries {
            let pick = match prepared.key {
                Some(index) => self
                    .credentials
                    .pinned(index)
                    .map_or(Pick::Refused, |v| Pick::Key(index, v)),
                None => self.credentials.pick(),
            };
            let (index, auth) =
                match pick {
                    Pick::Anonymous => (None, None),
                    Pick::Key(index, value) => (Some(index), Some(value)),
                    Pick::Resting(wait) => return Ok(all_resting(wait)),
                    Pick::Refused => return Err(UpstreamError::Failed(
                        "every API key of this provider was refused (401/403): fix them and reload"
                            .into(),
                    )),
                };
            let resp = self.send_once(call, prepared, url.clone(), auth).await?;
            let another = prepared.key.is_none()
                && index.is_some_and(|i| self.credentials.answered(i, resp.status, &resp.headers));
            if another && attempt + 1 < tries {
                continue;
            }
            return Ok(UpstreamResponse { key: index, ..resp });
        }
        Err(UpstreamError::Failed(
            "no API key of this provider could serve".into(),
        ))
    }

    async fn send_once(
        &self,
        call: &UpstreamCall,
        prepared: &Prepared,
        url: Uri,
        auth: Option<HeaderValue>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let accept = if prepared.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let method = prepared.endpoint.method();
        let mut headers = self.headers.clone();
        for name in &self.forwarded {
            for v in call.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        if let Some(auth) = auth {
            headers.insert(self.credentials.header().clone(), auth);
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        if let Ok(id) = HeaderValue::from_str(&call.request_id) {
            headers.insert(X_REQUEST_ID, id);
        }
        let body = if method == http::Method::POST && !prepared.body.is_empty() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            prepared.body.clone()
        } else {
            Bytes::new()
        };
        if call.early_data {
            headers.insert(EARLY_DATA, HeaderValue::from_static("1"));
        }
        trace_headers(&mut headers, prepared);
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = url;
        *req.headers_mut() = headers;
        let resp = match tokio::time::timeout(self.first_byte, self.client.send(req)).await {
            Err(_) => return Err(UpstreamError::Timeout(self.first_byte)),
            Ok(result) => result?,
        };
        let status = resp.status();
        let mut headers = HeaderMap::new();
        for name in PASSED_HEADERS {
            if let Some(v) = resp.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body: super::transport::body(resp),
            key: None,
        })
    }

    /// One active health check: a GET below the base URL, 2xx is healthy.
    pub async fn health_check(&self, path: &str) -> bool {
        let Ok(uri) = Uri::try_from(format!("{}{path}", self.base_url)) else {
            return false;
        };
        let mut req = http::Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers.clone();
        self.client
            .send(req)
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// `traceparent` / `tracestate` of a call that propagates its trace.
pub(super) fn trace_headers(headers: &mut HeaderMap, prepared: &Prepared) {
    let Some((parent, state)) = &prepared.trace_context else {
        return;
    };
    headers.insert(HeaderName::from_static("traceparent"), parent.clone());
    if let Some(state) = state {
        headers.insert(HeaderName::from_static("tracestate"), state.clone());
    }
}

/// `url` with `path` (and `then`, one segment, when not empty) appended
/// below its own path, each segment percent-encoded as needed.
fn push_path(url: &mut reqwest::Url, path: &str, then: &str) {
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            segments.push(part);
        }
        if !then.is_empty() {
            segments.push(then);
        }
    }
}

/// The answer when every key of the pool is resting after a 429: a 429
/// in OpenAI's shape with the soonest key's wait (routing cools the target
/// down for it and fails over meanwhile).
fn all_resting(wait: Duration) -> UpstreamResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    let body = r#"{"error":{"message":"every API key of this provider is resting after a rate limit","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#;
    UpstreamResponse {
        status: http::StatusCode::TOO_MANY_REQUESTS,
        headers,
        body: crate::exchange::full(bytes::Bytes::from_static(body.as_bytes())),
        key: None,
    }
}
