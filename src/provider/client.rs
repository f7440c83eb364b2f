//! What the HTTP providers (OpenAI, Anthropic, Ollama) share: pooled
//! upstream clients, and sending one prepared call with the provider's
//! headers, first-byte timeout and a streamed response body.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, StreamBody};

use super::{Endpoint, Prepared, UpstreamCall, UpstreamError, UpstreamResponse};
use crate::config::ProviderConfig;
use crate::exchange::BodyError;

/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
];

/// Pooled upstream HTTP clients (rustls, HTTP/1.1 and HTTP/2), one per
/// distinct connect timeout, so providers share connections where they can.
#[derive(Default)]
pub struct HttpClients {
    by_connect_timeout: HashMap<Duration, reqwest::Client>,
}

impl HttpClients {
    pub(super) fn get(&mut self, connect_timeout: Duration) -> Result<reqwest::Client, String> {
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

/// One HTTP upstream: base URL, the headers every request carries
/// (credentials marked sensitive), the pooled client.
pub struct Upstream {
    base_url: String,
    /// `base_url` + each fixed endpoint path, parsed once (not per request).
    urls: Vec<(Endpoint, reqwest::Url)>,
    headers: HeaderMap,
    client: reqwest::Client,
    first_byte: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Upstream {
    /// `auth`: the credential header (name, value), if the provider has a key.
    pub fn new(
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
        auth: Option<(HeaderName, String)>,
        fixed: &[(&'static str, &str)],
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
        if let Some((name, value)) = auth {
            let mut v = HeaderValue::try_from(value).map_err(|_| bad("api_key"))?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        let base_url = cfg.base_url().trim_end_matches('/').to_string();
        let urls = [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
            Endpoint::Messages,
            Endpoint::CountTokens,
        ]
        .into_iter()
        .filter_map(|e| {
            Some((
                e,
                reqwest::Url::parse(&format!("{base_url}{}", e.path())).ok()?,
            ))
        })
        .collect();
        Ok(Upstream {
            urls,
            base_url,
            headers,
            client: clients.get(cfg.timeouts.connect.get())?,
            first_byte: cfg.timeouts.first_byte.get(),
        })
    }

    /// An upstream authenticated with `Authorization: Bearer <api_key>`
    /// (when the provider has a key): OpenAI and every compatible server.
    pub fn bearer(cfg: &ProviderConfig, clients: &mut HttpClients) -> Result<Upstream, String> {
        let auth = (!cfg.api_key.is_empty()).then(|| {
            (
                header::AUTHORIZATION,
                format!("Bearer {}", cfg.api_key.expose()),
            )
        });
        Upstream::new(cfg, clients, auth, &[])
    }

    pub async fn send(
        &self,
        call: &UpstreamCall,
        prepared: &Prepared,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = match self.urls.iter().find(|(e, _)| *e == prepared.endpoint) {
            Some((_, url)) => url.clone(),
            None => {
                let url = format!(
                    "{}{}{}",
                    self.base_url,
                    prepared.endpoint.path(),
                    prepared.model
                );
                reqwest::Url::parse(&url).map_err(|e| UpstreamError::Failed(e.to_string()))?
            }
        };
        let accept = if prepared.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut req = self
            .client
            .request(prepared.endpoint.method(), url)
            .headers(self.headers.clone())
            .header(header::ACCEPT, accept)
            .header("x-request-id", &*call.request_id);
        if prepared.endpoint.method() == http::Method::POST {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(prepared.body.clone());
        }
        if call.early_data {
            req = req.header("early-data", "1");
        }
        if let Some((parent, state)) = &prepared.trace_context {
            req = req.header("traceparent", parent);
            if let Some(state) = state {
                req = req.header("tracestate", state);
            }
        }
        let resp = match tokio::time::timeout(self.first_byte, req.send()).await {
            Err(_) => return Err(UpstreamError::Timeout(self.first_byte)),
            Ok(Err(e)) => return Err(classify(e, self.first_byte)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let mut headers = HeaderMap::new();
        for name in PASSED_HEADERS {
            if let Some(v) = resp.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let stream = resp
            .bytes_stream()
            .map_ok(http_body::Frame::data)
            .map_err(|e| -> BodyError { Box::new(e) });
        Ok(UpstreamResponse {
            status,
            headers,
            body: StreamBody::new(stream).boxed_unsync(),
        })
    }

    /// One active health check: a GET below the base URL, 2xx is healthy.
    pub async fn health_check(&self, path: &str) -> bool {
        self.client
            .get(format!("{}{path}", self.base_url))
            .headers(self.headers.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

fn classify(e: reqwest::Error, first_byte: Duration) -> UpstreamError {
    // reqwest's messages name the URL; keep only the kind of failure.
    if e.is_connect() {
        UpstreamError::Connect(error_chain(&e))
    } else if e.is_timeout() {
        UpstreamError::Timeout(first_byte)
    } else {
        UpstreamError::Failed(error_chain(&e))
    }
}

/// The innermost cause of an error: the useful part (e.g. "Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
