//! Request errors: one enum, one exhaustive match to a status and an
//! OpenAI-style JSON body `{"error":{"message","type","code"}}`.
//!
//! Messages are written for the client: they never carry internal details,
//! upstream addresses or secrets.

use http::StatusCode;
use serde::Serialize;

use crate::admission::Shed;
use crate::api::{anthropic_error_type, Api};
use crate::exchange::{json, Response};

pub mod ledger;

pub use ledger::{AttemptFailure, FailureClass, Ledger, Skip};

/// ` (attempts: a: timeout; b: status 503)`, or nothing.
fn attempts(ledger: &Ledger) -> String {
    if ledger.is_empty() {
        String::new()
    } else {
        format!(" (attempts: {ledger})")
    }
}

/// Which budget refused a request, and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRefusal {
    /// `key` or `team`.
    pub scope: &'static str,
    /// The key's or team's name.
    pub name: String,
    pub unit: crate::rate_limit::Unit,
    pub period: crate::spend::Period,
    /// The budget (nano-USD or tokens).
    pub budget: u64,
    /// When this request would fit again (Unix seconds): the period's end
    /// for a calendar period, when enough spend leaves a rolling window.
    pub until: u64,
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::rate_limit::Unit;
        let whose = match self.scope {
            "team" => format!("team {:?}", self.name),
            _ => format!("key {:?}", self.name),
        };
        let amount = match self.unit {
            Unit::Usd => format!("${:.2}", crate::spend::usd(self.budget)),
            Unit::Tokens => format!("{} tokens", self.budget),
        };
        let period = match self.period {
            crate::spend::Period::Day => "per day (UTC)".to_string(),
            crate::spend::Period::Month => "per month (UTC)".to_string(),
            p => format!("per rolling {p}"),
        };
        let when = crate::spend::period::rfc3339(self.until);
        let again = if self.period.is_calendar() {
            format!("it resets at {when}")
        } else {
            format!("enough of it is free again at {when}")
        };
        write!(
            f,
            "the budget of {whose} ({amount} {period}) is used up; {again}"
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {0} is not allowed on this path")]
    MethodNotAllowed(String),
    #[error("the model `{0}` does not exist or is not served by this gateway")]
    ModelNotFound(String),
    #[error("No response found with id '{0}'.")]
    ResponseNotFound(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("the request body could not be read completely")]
    BodyIncomplete,
    /// The client went away before its request could be served (seen
    /// while it waited for admission). Nobody reads the answer: the
    /// request ends as cancelled.
    #[error("the client closed the request")]
    ClientClosed,
    /// The failover errors carry the [`Ledger`] of the request's attempts
    /// (each target and what it came to) and list it.
    #[error("the upstream provider could not be reached{}", attempts(.0))]
    UpstreamUnreachable(Ledger),
    #[error("the upstream provider did not answer in time{}", attempts(.0))]
    UpstreamTimeout(Ledger),
    #[error("the gateway's credentials were refused by the upstream provider")]
    UpstreamAuth,
    #[error("the upstream provider returned an invalid response{}", attempts(.0))]
    UpstreamInvalid(Ledger),
    #[error("no upstream target can take this request now{}", attempts(.0))]
    NoTarget(Ledger),
    /// No target on the route has the request's endpoint (a 400: no
    /// attempt could serve it).
    #[error("no provider on this model's route serves this endpoint ({0})")]
    EndpointUnserved(Ledger),
    #[error("the gateway is at capacity; retry shortly")]
    Overloaded(Shed),
    #[error("a valid API key is required (Authorization: Bearer, or x-api-key)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit reached for {scope}; retry after {retry_after_secs}s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    /// A key's or team's budget is spent for its period (429, OpenAI's
    /// `insufficient_quota`; `x-should-retry: false`, so the official SDKs
    /// do not retry a refusal that lasts until the period ends).
    #[error("{0}")]
    BudgetExceeded(Box<BudgetRefusal>),
    /// The shared limiter (Redis) cannot answer and `[cluster] on_redis_error = "deny"`.
    #[error("rate limits cannot be checked now; retry shortly")]
    RateLimiterUnavailable,
    #[error("this host is not served here")]
    Misdirected,
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("this request was sent as early data; retry it after the handshake")]
    TooEarly,
    #[error("too many concurrent requests from this client")]
    ClientLimit,
    /// An error status from the provider, passed through with a sanitised
    /// message (and its `Retry-After`, on a 429 or 503), and the attempts
    /// of the request when it was retried.
    #[error("{message}{}", attempts(.ledger))]
    Upstream {
        status: StatusCode,
        message: String,
        kind: String,
        code: Option<String>,
        retry_after: Option<std::time::Duration>,
        ledger: Ledger,
    },
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::EndpointUnserved(_)
            | GatewayError::BodyIncomplete => StatusCode::BAD_REQUEST,
            // nginx's "client closed request", as the access log writes it.
            GatewayError::ClientClosed => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            GatewayError::NotFound { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::ResponseNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamAuth
            | GatewayError::UpstreamInvalid(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::NoTarget(_)
            | GatewayError::Overloaded(_)
            | GatewayError::RateLimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ClientLimit
            | GatewayError::RateLimited { .. }
            | GatewayError::BudgetExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::TooEarly => StatusCode::TOO_EARLY,
            GatewayError::Upstream { status, .. } => *status,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error `type`.
    pub fn kind(&self) -> &str {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::EndpointUnserved(_)
            | GatewayError::BodyIncomplete
            | GatewayError::ClientClosed
            | GatewayError::NotFound { .. }
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::ModelNotFound(_)
            | GatewayError::ResponseNotFound(_)
            | GatewayError::PayloadTooLarge { .. } => "invalid_request_error",
            GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::UpstreamAuth
            | GatewayError::UpstreamInvalid(_)
            | GatewayError::NoTarget(_) => "upstream_error",
            GatewayError::Overloaded(_) | GatewayError::RateLimiterUnavailable => {
                "service_unavailable"
            }
            GatewayError::ClientLimit | GatewayError::RateLimited { .. } => "rate_limit_error",
            GatewayError::BudgetExceeded(_) => "insufficient_quota",
            GatewayError::Unauthorized => "authentication_error",
            GatewayError::Forbidden(_) => "permission_error",
            GatewayError::Misdirected | GatewayError::RequestTimeout | GatewayError::TooEarly => {
                "invalid_request_error"
            }
            GatewayError::Upstream { kind, .. } => kind,
            GatewayError::Internal => "server_error",
        }
    }

    /// The OpenAI error `code`: a stable, machine-readable name.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            GatewayError::InvalidJson(_) => "invalid_json",
            // The code it had as an `InvalidRequest`, for clients that match on it.
            GatewayError::InvalidRequest(_) | GatewayError::EndpointUnserved(_) => {
                "invalid_request"
            }
            GatewayError::BodyIncomplete => "body_incomplete",
            GatewayError::ClientClosed => "client_closed_request",
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::ResponseNotFound(_) => "response_not_found",
            GatewayError::PayloadTooLarge { .. } => "request_too_large",
            GatewayError::UpstreamUnreachable(_) => "upstream_unreachable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamAuth => "upstream_auth_failed",
            GatewayError::UpstreamInvalid(_) => "upstream_invalid_response",
            GatewayError::NoTarget(_) => "no_available_target",
            GatewayError::Overloaded(_) => "overloaded",
            GatewayError::ClientLimit => "too_many_concurrent_requests",
            GatewayError::Unauthorized => "invalid_api_key",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
            GatewayError::BudgetExceeded(_) => "insufficient_quota",
            GatewayError::RateLimiterUnavailable => "rate_limiter_unavailable",
            GatewayError::Misdirected => "misdirected_request",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::TooEarly => "too_early",
            GatewayError::Upstream { code, .. } => return code.as_deref(),
            GatewayError::Internal => "internal_error",
        })
    }

    /// The JSON body: `{"error":{"message","type","code","request_id"}}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            code: Option<&'a str>,
            request_id: &'a str,
        }
        let outer = Outer {
            error: Inner {
                message: self.to_string(),
                kind: self.kind(),
                code: self.code(),
                request_id,
            },
        };
        serde_json::to_vec(&outer).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }

    /// Anthropic's error shape:
    /// `{"type":"error","error":{"type","message"},"request_id"}`.
    pub fn anthropic_body(&self, request_id: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "type": "error",
            "error": {
                "type": anthropic_error_type(self.status().as_u16()),
                "message": self.to_string(),
            },
            "request_id": request_id,
        });
        body.to_string().into_bytes()
    }

    /// The status a client of `api` gets: Anthropic's overloaded status 529
    /// is 503 for OpenAI clients, and an upstream 503 is 529 for Anthropic's.
    fn status_for(&self, api: Api) -> StatusCode {
        let status = self.status();
        let upstream = matches!(self, GatewayError::Upstream { .. });
        match (api, status.as_u16()) {
            (Api::OpenAi | Api::Responses | Api::Gemini, 529) => StatusCode::SERVICE_UNAVAILABLE,
            (Api::Anthropic, 503) if upstream => StatusCode::from_u16(529).unwrap_or(status),
            _ => status,
        }
    }

    /// The response for a client of `api`, in that API's error shape.
    pub fn into_response_for(self, api: Api, request_id: &str) -> Response {
        match api {
            Api::OpenAi | Api::Responses | Api::Gemini => self.into_response(request_id),
            Api::Anthropic => {
                let body = self.anthropic_body(request_id);
                let status = self.status_for(api);
                let mut resp = self.into_response(request_id);
                *resp.status_mut() = status;
                *resp.body_mut() = crate::exchange::full(body);
                resp
            }
        }
    }

    pub fn into_response(self, request_id: &str) -> Response {
        let mut resp = json(self.status_for(Api::OpenAi), self.body(request_id));
        let retry_after = match &self {
            GatewayError::Overloaded(_)
            | GatewayError::NoTarget(_)
            | GatewayError::ClientLimit
            | GatewayError::RateLimiterUnavailable => Some(1),
            GatewayError::RateLimited {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            // The provider's own wait, on the statuses that mean "later".
            GatewayError::Upstream {
                status,
                retry_after: Some(d),
                ..
            } if matches!(status.as_u16(), 429 | 503 | 529) => {
                Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if matches!(self, GatewayError::BudgetExceeded(_)) {
            resp.headers_mut().insert(
                http::HeaderName::from_static("x-should-retry"),
                http::HeaderValue::from_static("false"),
            );
        }
        if matches!(self, GatewayError::Unauthorized) {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }

    /// The error as the SSE event that ends a stream already committed.
    pub fn sse_event(&self, api: Api) -> String {
        match api {
            Api::OpenAi | Api::Gemini => {
                let body = serde_json::json!({"error": {"message": self.to_string(), "type": self.kind(), "code": self.code()}});
                crate::sse::encode(None, &body.to_string())
            }
            Api::Anthropic => {
                crate::api::anthropic_error_event(self.status().as_u16(), &self.to_string())
            }
            Api::Responses => {
                crate::api::responses_error_event(self.code().unwrap_or("error"), &self.to_string())
            }
        }
    }

    /// The same upstream error carrying the request's attempts, which its
    /// message then lists (an upstream error only).
    pub fn with_attempts(mut self, attempts: Ledger) -> GatewayError {
        if let GatewayError::Upstream { ledger, .. } = &mut self {
            *ledger = attempts;
        }
        self
    }

    /// The same error carrying the upstream's `Retry-After` (an upstream
    /// error only; it reaches the client on a 429 or 503).
    pub fn with_retry_after(mut self, wait: Option<std::time::Duration>) -> GatewayError {
        if let GatewayError::Upstream { retry_after, .. } = &mut self {
            *retry_after = wait.or(*retry_after);
        }
        self
    }
}

/// Longest upstream error message passed on to the client.
const MAX_UPSTREAM_MESSAGE: usize = 512;

impl GatewayError {
    /// Maps an upstream error status and body to the client's error: the
    /// provider's message, type and code survive (sanitised: anything that
    /// looks like a credential is masked, long text cut); a refused gateway
    /// credential (401/403) becomes a 502, since the client cannot fix it.
    pub fn from_upstream(status: StatusCode, body: &[u8]) -> GatewayError {
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return GatewayError::UpstreamAuth;
        }
        #[derive(serde::Deserialize)]
        struct Outer {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            message: Option<String>,
            #[serde(rename = "type")]
            kind: Option<String>,
            code: Option<serde_json::Value>,
            /// Google's (Gemini) error name, e.g. `RESOURCE_EXHAUSTED`:
            /// the type when there is no `type`.
            status: Option<String>,
        }
        let parsed = serde_json::from_slice::<Outer>(body).ok().map(|o| o.error);
        let message = parsed
            .as_ref()
            .and_then(|e| e.message.as_deref())
            .map(scrub)
            .unwrap_or_else(|| {
                format!(
                    "the upstream provider answered with status {}",
                    status.as_u16()
                )
            });
        let ident = |s: &str| {
            (!s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'))
            .then(|| s.to_string())
        };
        let kind = parsed
            .as_ref()
            .and_then(|e| e.kind.as_deref().or(e.status.as_deref()))
            .and_then(ident)
            .unwrap_or_else(|| "upstream_error".into());
        let code = parsed.and_then(|e| match e.code {
            Some(serde_json::Value::String(s)) => ident(&s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
        GatewayError::Upstream {
            status,
            message,
            kind,
            code,
            retry_after: None,
            ledger: Ledger::default(),
        }
    }
}

/// Masks credential-looking words (`sk-…`, `h3g_…`, `Bearer …`, long opaque
/// tokens) and caps the length.
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_UPSTREAM_MESSAGE));
    let mut after_bearer = false;
    for (i, word) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let bare = word
            .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-' && c != '*');
        let opaque = bare.len() >= 24
            && bare.bytes().any(|b| b.is_ascii_digit())
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'*');
        let secret = after_bearer
            || bare.starts_with("sk-")
            || bare.starts_with("sk_")
            || bare.starts_with("h3g_")
            || opaque;
        after_bearer = bare.eq_ignore_ascii_case("bearer");
        out.push_str(if secret { "[redacted]" } else { word });
        if out.len() > MAX_UPSTREAM_MESSAGE {
            let mut cut = MAX_UPSTREAM_MESSAGE;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_are_sanitised() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-abc123. Bearer xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let e = GatewayError::from_upstream(StatusCode::BAD_REQUEST, body);
        let msg = e.to_string();
        assert!(!msg.contains("sk-proj") && !msg.contains("xyz"), "{msg}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.kind(), "invalid_request_error");
        assert_eq!(e.code(), Some("invalid_api_key"));

        let e = GatewayError::from_upstream(StatusCode::UNAUTHORIZED, body);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);

        let e = GatewayError::from_upstream(StatusCode::SERVICE_UNAVAILABLE, b"<html>oops</html>");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("503"));

        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "word ".repeat(500));
        assert!(
            GatewayError::from_upstream(StatusCode::BAD_REQUEST, long.as_bytes())
                .to_string()
                .len()
                < 600
        );
    }

    #[test]
    fn upstream_retry_after_passes_through_on_429_and_503() {
        let wait = Some(std::time::Duration::from_millis(14_200));
        for (status, expected) in [(429, Some("15")), (503, Some("15")), (500, None)] {
            let status = StatusCode::from_u16(status).unwrap();
            let resp = GatewayError::from_upstream(status, b"{}")
                .with_retry_after(wait)
                .with_attempts(
                    [AttemptFailure {
                        target: "up".into(),
                        class: FailureClass::Status(status.as_u16()),
                    }]
                    .into_iter()
                    .collect(),
                )
                .into_response_for(Api::Anthropic, "req-1");
            let got = resp.headers().get(http::header::RETRY_AFTER);
            assert_eq!(got.and_then(|v| v.to_str().ok()), expected, "{status}");
        }
        let resp = GatewayError::from_upstream(StatusCode::TOO_MANY_REQUESTS, b"{}")
            .into_response("req-2");
        assert!(resp.headers().get(http::header::RETRY_AFTER).is_none());
    }

    #[test]
    fn failover_errors_list_their_attempts() {
        let ledger = |attempts: &[(&str, FailureClass)]| -> Ledger {
            let attempt = |(target, class): &(&str, FailureClass)| AttemptFailure {
                target: target.to_string(),
                class: *class,
            };
            attempts.iter().map(attempt).collect()
        };
        let tried = ledger(&[
            ("a", FailureClass::Connect),
            ("b", FailureClass::Status(503)),
        ]);
        let e = GatewayError::from_upstream(StatusCode::SERVICE_UNAVAILABLE, b"{}")
            .with_attempts(tried);
        assert_eq!(
            e.to_string(),
            "the upstream provider answered with status 503 \
             (attempts: a: connect error; b: status 503)"
        );
        let unserved = ledger(&[("a", FailureClass::Skipped(Skip::Unsupported))]);
        let e = GatewayError::EndpointUnserved(unserved);
        assert_eq!(
            e.to_string(),
            "no provider on this model's route serves this endpoint \
             (a: does not serve this endpoint)"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), Some("invalid_request"));
        let e = GatewayError::NoTarget(Ledger::default());
        assert_eq!(
            e.to_string(),
            "no upstream target can take this request now"
        );
    }

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::ModelNotFound("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body("req-1")).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["request_id"], "req-1");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }
}
