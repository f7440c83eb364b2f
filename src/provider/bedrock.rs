//! AWS Bedrock through its Converse API: `POST /model/{modelId}/converse`
//! (JSON) and `/converse-stream` (an AWS event stream, see
//! [`eventstream`]), each request signed with SigV4 ([`sigv4`]) for the
//! provider's region. OpenAI chat and Anthropic messages requests are
//! translated to Converse (`translate::bedrock`); answers come back in the
//! client's API. Bedrock's error answers (`{"message"}` with an
//! `x-amzn-ErrorType` header) are rewritten in OpenAI's error shape, which
//! the gateway's error mapping reads, so they reach the client in its own
//! API with their status.

pub mod eventstream;
pub mod sigv4;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};

use super::transport::HttpClient;
use super::{
    Common, Endpoint, HttpClients, PrepareError, Prepared, UpstreamCall, UpstreamError,
    UpstreamResponse,
};
use crate::config::ProviderConfig;
use crate::exchange::full;
use crate::translate::bedrock::request as converse;
use crate::translate::{Conversion, Options};
use sigv4::{CredentialSource, Scope};

/// The signing name of Bedrock's runtime API.
const SERVICE: &str = "bedrock";
/// Content type of a ConverseStream answer.
pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// Longest error body read to build the client's error.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct Bedrock {
    pub common: Common,
    client: HttpClient,
    /// Without a trailing slash.
    base_url: String,
    /// `host[:port]` of `base_url`, as the request's `Host` says it.
    host: String,
    region: String,
    credentials: CredentialSource,
    /// The provider's extra headers (not signed).
    headers: HeaderMap,
    first_byte: Duration,
}

impl std::fmt::Debug for Bedrock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bedrock")
            .field("base_url", &self.base_url)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The region: the config's, else `AWS_REGION`, else `AWS_DEFAULT_REGION`.
pub fn region(cfg: &ProviderConfig) -> Option<String> {
    let env = |n| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    let region = (!cfg.region.is_empty())
        .then(|| cfg.region.clone())
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))?;
    let valid = region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some(region)
}

/// Whether credentials are there to sign with: the config's keys, or the
/// environment's at this moment (an `optional` provider without either is
/// left out).
pub fn has_credentials(cfg: &ProviderConfig) -> bool {
    CredentialSource::new(
        &cfg.access_key_id,
        &cfg.secret_access_key,
        &cfg.session_token,
    )
    .current()
    .is_some()
}

/// `base_url`, or `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn base_url(cfg: &ProviderConfig, region: &str) -> String {
    if cfg.base_url.is_empty() {
        format!("https://bedrock-runtime.{region}.amazonaws.com")
    } else {
        cfg.base_url.trim_end_matches('/').to_string()
    }
}

/// A model id as a path segment, percent-encoded as AWS's SDKs do
/// (everything but unreserved characters: an ARN's `:` and `/` too).
pub fn encode_model_id(model: &str) -> String {
    let mut out = String::with_capacity(model.len() + 16);
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Bedrock {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
    ) -> Result<Self, String> {
        let region = region(cfg).ok_or_else(|| {
            format!(
                "provider {}: set `region` (or AWS_REGION) to a region name such as us-east-1",
                cfg.name
            )
        })?;
        let base_url = base_url(cfg, &region);
        let url = reqwest::Url::parse(&base_url)
            .map_err(|e| format!("provider {}: base_url is not a valid URL: {e}", cfg.name))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(format!("provider {}: base_url has no host", cfg.name)),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let bad = || format!("provider {}: a header is invalid", cfg.name);
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let mut v = HeaderValue::from_str(value.expose()).map_err(|_| bad())?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        Ok(Bedrock {
            common,
            client: clients.get(cfg.timeouts.connect.get())?,
            base_url,
            host,
            region,
            credentials: CredentialSource::new(
                &cfg.access_key_id,
                &cfg.secret_access_key,
                &cfg.session_token,
            ),
            headers,
            first_byte: cfg.timeouts.first_byte.get(),
        })
    }

    /// The call as a Converse request for `model`.
    pub fn prepare(
        call: &UpstreamCall,
        model: String,
        opts: &Options,
    ) -> Result<Prepared, PrepareError> {
        let (body, conversion) = match call.endpoint {
            Endpoint::ChatCompletions => (
                converse::chat_to_converse_body(&call.body, opts),
                Conversion::ConverseToChat {
                    include_usage: call.include_usage,
                },
            ),
            Endpoint::Messages => (
                converse::messages_to_converse_body(&call.body, opts),
                Conversion::ConverseToMessages,
            ),
            _ => return Err(PrepareError::Unsupported),
        };
        Ok(Prepared {
            endpoint: call.endpoint,
            model,
            body: body.map(Bytes::from).map_err(PrepareError::Invalid)?,
            stream: call.stream,
            conversion,
            trace_context: None,
            key: None,
        })
    }

    fn url(&self, model: &str, stream: bool) -> String {
        let action = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        format!(
            "{}/model/{}/{action}",
            self.base_url,
            encode_model_id(model)
        )
    }

    /// The signed request's headers (the signature's and the signed ones).
    fn signed(
        &self,
        method: &str,
        url: &str,
        accept: &str,
        body: &[u8],
    ) -> Result<HeaderMap, UpstreamError> {
        let creds = self.credentials.current().ok_or_else(|| {
            UpstreamError::Failed(
                "no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY unset)".into(),
            )
        })?;
        let signed = [
            ("host", self.host.as_str()),
            ("accept", accept),
            ("content-type", "application/json"),
        ];
        let scope = Scope {
            region: &self.region,
            service: SERVICE,
            time: SystemTime::now(),
            content_sha256: false,
        };
        let added = sigv4::sign_headers(method, url, &signed, body, &creds, &scope)
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        let mut headers = self.headers.clone();
        for (name, value) in signed
            .iter()
            .skip(1)
            .map(|(n, v)| (*n, v.to_string()))
            .chain(added)
        {
            let mut v = HeaderValue::try_from(value)
                .map_err(|_| UpstreamError::Failed("a signed header is invalid".into()))?;
            v.set_sensitive(matches!(name, "authorization" | "x-amz-security-token"));
            headers.insert(HeaderName::from_static(name), v);
        }
        Ok(headers)
    }

    pub async fn send(
        &self,
        call: &UpstreamCall,
        prepared: &Prepared,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = self.url(&prepared.model, prepared.stream);
        let accept = if prepared.stream {
            EVENT_STREAM
        } else {
            "application/json"
        };
        let mut headers = self.signed("POST", &url, accept, &prepared.body)?;
        if let Ok(id) = HeaderValue::from_str(&call.request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), id);
        }
        super::client::trace_headers(&mut headers, prepared);
        let req = request(http::Method::POST, &url, headers, prepared.body.clone())?;
        let started = tokio::time::Instant::now();
        let resp = match tokio::time::timeout(self.first_byte, self.client.send(req)).await {
            Err(_) => return Err(UpstreamError::Timeout(self.first_byte)),
            Ok(result) => result?,
        };
        let status = resp.status();
        let mut headers = HeaderMap::new();
        for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
            if let Some(v) = resp.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
        if !status.is_success() {
            let kind = resp
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|t| t.split(':').next().unwrap_or_default().to_string());
            let left = self.first_byte.saturating_sub(started.elapsed());
            let body = tokio::time::timeout(left, read_bounded(resp))
                .await
                .unwrap_or_default();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(UpstreamResponse {
                status,
                headers,
                body: full(openai_error(status.as_u16(), kind.as_deref(), &body)),
                key: None,
            });
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body: super::transport::body(resp),
            key: None,
        })
    }

    /// One active health check: a signed GET below the base URL; any
    /// answer below 500 means the service is there (Bedrock's runtime
    /// has no cheap read to call).
    pub async fn health_check(&self, path: &str) -> bool {
        let url = format!("{}{path}", self.base_url);
        let Ok(headers) = self.signed("GET", &url, "application/json", b"") else {
            return false;
        };
        let Ok(req) = request(http::Method::GET, &url, headers, Bytes::new()) else {
            return false;
        };
        self.client
            .send(req)
            .await
            .is_ok_and(|r| r.status().as_u16() < 500)
    }
}

/// A request to `url` with `headers` (and the gateway's `User-Agent`).
fn request(
    method: http::Method,
    url: &str,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, UpstreamError> {
    let uri = http::Uri::try_from(url).map_err(|e| UpstreamError::Failed(e.to_string()))?;
    headers.insert(header::USER_AGENT, super::client::USER_AGENT);
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

async fn read_bounded(resp: super::transport::Response) -> Vec<u8> {
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(chunk) = frame.into_data() {
            buf.extend_from_slice(&chunk);
        }
        if buf.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    buf
}

/// A Bedrock error answer (`{"message"}`, its type in `x-amzn-ErrorType`)
/// in OpenAI's error shape.
pub fn openai_error(status: u16, kind: Option<&str>, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = v["message"]
        .as_str()
        .or(v["Message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("the upstream provider answered with status {status}"));
    let kind = kind
        .filter(|k| !k.is_empty())
        .or(v["__type"].as_str())
        .unwrap_or("upstream_error");
    serde_json::json!({"error": {"message": message, "type": kind, "code": kind}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_encoded_as_aws_does() {
        assert_eq!(
            encode_model_id("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(
            encode_model_id("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x"
        );
    }

    #[test]
    fn errors_are_rewritten_in_openai_shape() {
        let e = openai_error(
            429,
            Some("ThrottlingException"),
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["error"]["type"], "ThrottlingException");
        assert_eq!(
            v["error"]["message"],
            "Too many requests, please wait before trying again."
        );
        let v: serde_json::Value =
            serde_json::from_str(&openai_error(500, None, b"<html>")).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
    }

    #[test]
    fn the_region_comes_from_the_config_first() {
        let cfg = ProviderConfig {
            region: "eu-west-3".into(),
            ..Default::default()
        };
        assert_eq!(region(&cfg).as_deref(), Some("eu-west-3"));
        assert_eq!(
            base_url(&cfg, "eu-west-3"),
            "https://bedrock-runtime.eu-west-3.amazonaws.com"
        );
        let bad = ProviderConfig {
            region: "us-east-1/../x".into(),
            ..Default::default()
        };
        assert_eq!(region(&bad), None);
    }

    #[test]
    fn config_keys_are_credentials() {
        let cfg = ProviderConfig {
            access_key_id: crate::config::Secret::new("AKIDEXAMPLE"),
            secret_access_key: crate::config::Secret::new("fake-secret-not-real"),
            ..Default::default()
        };
        assert!(has_credentials(&cfg));
    }
}
