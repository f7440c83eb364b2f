//! CORS from an allowlist. No configured origin = same-origin only (no CORS
//! headers at all). Preflights are answered here, before auth; `*` is never
//! sent together with credentials.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::config::CorsConfig;
use crate::exchange::{empty, Response};

/// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
fn allowed(cfg: &CorsConfig, origin: &str) -> Option<HeaderValue> {
    if cfg.allowed_origins.iter().any(|o| o == origin) {
        return HeaderValue::from_str(origin).ok();
    }
    if cfg.allowed_origins.iter().any(|o| o == "*") && !cfg.allow_credentials {
        return Some(HeaderValue::from_static("*"));
    }
    None
}

/// Answers a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`),
/// or `None` when the request is not one.
pub fn preflight(cfg: &CorsConfig, method: &Method, headers: &HeaderMap) -> Option<Response> {
    if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut resp = http::Response::new(empty());
    let Some(allow) = allowed(cfg, origin) else {
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return Some(resp);
    };
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    if let Ok(v) = HeaderValue::from_str(&cfg.allowed_methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cfg.allowed_headers.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cfg.max_age.get().as_secs()),
    );
    if cfg.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    Some(resp)
}

/// Adds the CORS headers to an actual response from an allowed origin.
pub fn decorate(cfg: &CorsConfig, request_origin: Option<&HeaderValue>, resp: &mut Response) {
    let Some(origin) = request_origin.and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some(allow) = allowed(cfg, origin) else {
        return;
    };
    let allow_timing = allow.clone();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    if cfg.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    // The page may read the protocol (`nextHopProtocol`) and timings.
    h.insert(HeaderName::from_static("timing-allow-origin"), allow_timing);
    let varies = h
        .get_all(header::VARY)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"origin"));
    if !varies {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Response headers a page may read: the request ids of both API surfaces
/// (Anthropic's SDKs read `request-id`), the routing target, the rate-limit
/// state, the budget left, `Retry-After`, `x-should-retry` and
/// `Server-Timing`.
const EXPOSED: &str = "x-request-id, request-id, x-h3gate-target, \
    x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
    x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, \
    x-h3gate-budget-remaining, x-h3gate-budget-remaining-tokens, \
    retry-after, x-should-retry, server-timing, traceresponse";
