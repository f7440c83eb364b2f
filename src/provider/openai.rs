//! OpenAI and any OpenAI-compatible server (vLLM, Groq, Together, LM Studio,
//! Ollama's `/v1` …): the body is forwarded untouched, the response streamed.

use std::time::Duration;

use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, StreamBody};

use super::{Common, UpstreamCall, UpstreamError, UpstreamResponse};
use crate::config::ProviderConfig;
use crate::exchange::BodyError;

/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
];

pub struct OpenAi {
    pub common: Common,
    base_url: String,
    auth: Option<HeaderValue>,
    client: reqwest::Client,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("name", &self.common.name)
            .field("base_url", &self.base_url)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl OpenAi {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        client: reqwest::Client,
    ) -> Result<Self, String> {
        let auth = if cfg.api_key.is_empty() {
            None
        } else {
            let mut v = HeaderValue::try_from(format!("Bearer {}", cfg.api_key.expose())).map_err(
                |_| format!("provider {}: api_key contains invalid characters", cfg.name),
            )?;
            v.set_sensitive(true);
            Some(v)
        };
        Ok(OpenAi {
            common,
            base_url: cfg.base_url.trim_end_matches('/').to_string(),
            auth,
            client,
        })
    }

    pub async fn send(&self, call: &UpstreamCall) -> Result<UpstreamResponse, UpstreamError> {
        let url = format!("{}{}", self.base_url, call.endpoint.path());
        let accept = if call.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut req = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept)
            .header("x-request-id", &*call.request_id)
            .body(call.body.clone());
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        if call.early_data {
            req = req.header("early-data", "1");
        }
        let first_byte = self.common.timeouts.first_byte.get();
        let resp = match tokio::time::timeout(first_byte, req.send()).await {
            Err(_) => return Err(UpstreamError::Timeout(first_byte)),
            Ok(Err(e)) => return Err(classify(e, first_byte)),
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
}

impl OpenAi {
    pub async fn health_check(&self, path: &str) -> bool {
        let mut req = self.client.get(format!("{}{path}", self.base_url));
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        req.send().await.is_ok_and(|r| r.status().is_success())
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
