//! The edge-protection steps of the pipeline, each a plain function the
//! pipeline calls in order: network filter → host → per-address rate limit
//! → authentication → authorization → per-key rate limits. Plus the
//! security headers every response carries.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};

use crate::auth::KeyRecord;
use crate::error::GatewayError;
use crate::exchange::Response;
use crate::rate_limit::{self, Decision, Limit};
use crate::state::State;

/// Denied networks, addresses under an abuse deny, or outside the allow list.
pub fn network(state: &State, client: IpAddr) -> Result<(), GatewayError> {
    if !state.ip_filter.permits(client) || state.abuse.is_denied(client) {
        crate::metrics::NETWORK_DENIED.get().increment(1);
        return Err(GatewayError::Forbidden(
            "access from this address is not allowed".into(),
        ));
    }
    Ok(())
}

/// `Host` (HTTP/1.1) or `:authority` (HTTP/2, HTTP/3) must be a configured
/// host when any are configured; the port is ignored.
pub fn host(state: &State, uri: &http::Uri, headers: &HeaderMap) -> Result<(), GatewayError> {
    let hosts = &state.config.network.hosts;
    if hosts.is_empty() {
        return Ok(());
    }
    let authority = uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = headers.get(header::HOST)?.to_str().ok()?;
            Some(h.parse::<http::uri::Authority>().ok()?.host().to_string())
        })
        .unwrap_or_default();
    let name = authority.trim_start_matches('[').trim_end_matches(']');
    if hosts.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        Ok(())
    } else {
        Err(GatewayError::Misdirected)
    }
}

/// Requests per minute per client address — before auth, so a flood of bad
/// keys is cheap to refuse.
pub fn per_ip(state: &State, client: IpAddr) -> Result<(), GatewayError> {
    let rl = &state.config.rate_limit;
    if rl.per_ip_rpm == 0 {
        return Ok(());
    }
    let limit = Limit {
        per_minute: u64::from(rl.per_ip_rpm),
        burst: u64::from(rl.per_ip_burst),
    };
    let d = state.limiter.take(&format!("ip:{client}"), limit, 1);
    refused(d, "ip")
}

fn refused(d: Decision, scope: &'static str) -> Result<(), GatewayError> {
    if d.allowed {
        return Ok(());
    }
    crate::metrics::RATE_LIMITED.with([scope]).increment(1);
    Err(GatewayError::RateLimited {
        scope,
        retry_after_secs: d.retry_after.as_secs_f64().ceil() as u64,
    })
}

/// The caller's key, when auth is on (401 without a valid one).
pub fn authenticate(
    state: &State,
    headers: &HeaderMap,
) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
    match &state.keys {
        Some(keys) if state.config.auth.required => keys.authenticate(headers).map(Some),
        // Auth off: a key is still recognised (for its limits), never required.
        Some(keys) => Ok(keys.authenticate(headers).ok()),
        None => Ok(None),
    }
}

/// 403 unless the key has the endpoint's scope (and may use `model`).
pub fn authorize(
    key: Option<&KeyRecord>,
    scope: &str,
    model: Option<&str>,
) -> Result<(), GatewayError> {
    let Some(key) = key else { return Ok(()) };
    if !key.allows_scope(scope) {
        return Err(GatewayError::Forbidden(format!(
            "this key does not have the `{scope}` scope"
        )));
    }
    if let Some(m) = model {
        if !key.allows_model(m) {
            return Err(GatewayError::Forbidden(format!(
                "this key may not use the model `{m}`"
            )));
        }
    }
    Ok(())
}

/// A key's reservation of tokens, reconciled with the real usage at the end.
pub struct TokenReservation {
    limiter: Arc<dyn rate_limit::Limiter>,
    bucket: String,
    limit: Limit,
    reserved: u64,
}

impl TokenReservation {
    /// Corrects the reservation to what the response really used.
    pub fn reconcile(self, used: Option<u64>) {
        if let Some(used) = used {
            let delta = used as i64 - self.reserved as i64;
            self.limiter.adjust(&self.bucket, self.limit, delta);
        }
    }
}

/// The key's requests and tokens per minute: 429 beyond them. Returns the
/// headers to send (on success too) and the token reservation.
pub fn per_key(
    state: &State,
    key: &KeyRecord,
    estimated_tokens: u64,
    headers: &mut HeaderMap,
) -> Result<Option<TokenReservation>, GatewayError> {
    let rl = &state.config.rate_limit;
    let rpm = key.rpm.unwrap_or(rl.key_rpm);
    if rpm > 0 {
        let limit = Limit {
            per_minute: u64::from(rpm),
            burst: u64::from(rpm),
        };
        let d = state.limiter.take(&format!("rpm:{}", key.sha256), limit, 1);
        rate_limit::headers(headers, rate_limit::Limited::Requests, &d);
        refused(d, "key_requests")?;
    }
    let tpm = key.tpm.unwrap_or(rl.key_tpm);
    if tpm == 0 {
        return Ok(None);
    }
    let limit = Limit {
        per_minute: u64::from(tpm),
        burst: u64::from(tpm),
    };
    let bucket = format!("tpm:{}", key.sha256);
    let cost = estimated_tokens.min(u64::from(tpm));
    let d = state.limiter.take(&bucket, limit, cost);
    rate_limit::headers(headers, rate_limit::Limited::Tokens, &d);
    refused(d, "key_tokens")?;
    Ok(Some(TokenReservation {
        limiter: state.limiter.clone(),
        bucket,
        limit,
        reserved: cost,
    }))
}

/// RFC 8470 for requests that arrived as 0-RTT early data (which an
/// attacker could replay): safe methods with small bodies are served at once
/// (returns true: still early); anything else waits for the handshake — a
/// replayed flight never completes it, so it is never forwarded — or, with
/// `early_unsafe = "reject"`, gets 425 Too Early.
pub async fn early_data(
    state: &State,
    method: &http::Method,
    headers: &HeaderMap,
    handshake: &dyn crate::exchange::Handshake,
) -> Result<bool, GatewayError> {
    use crate::config::EarlyUnsafe;
    let q = &state.config.quic;
    let safe = matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n <= q.max_early_data.get());
    if safe && small {
        crate::metrics::quic::early_request("served");
        return Ok(true);
    }
    if !safe && q.early_unsafe == EarlyUnsafe::Reject {
        crate::metrics::quic::early_request("rejected");
        return Err(GatewayError::TooEarly);
    }
    crate::metrics::quic::early_request("held");
    match tokio::time::timeout(q.handshake_timeout.get(), handshake.completed()).await {
        Ok(()) => Ok(false),
        Err(_) => Err(GatewayError::TooEarly),
    }
}

/// On every response: no sniffing, no framing, no referrer, no caching of
/// API answers, HSTS, and a CSP that allows nothing.
pub fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.remove(header::SERVER);
}
