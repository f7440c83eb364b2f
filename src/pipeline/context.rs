//! The per-request context every step of the pipeline receives, and the
//! last step that turns a step's result into the response sent (whatever
//! the result: a response, a refusal, a panic).

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};

use crate::access::{Ending, Record};
use crate::api::Api;
use crate::auth::KeyRecord;
use crate::error::GatewayError;
use crate::exchange::{GatewayRequest, Response};
use crate::state::State;
use crate::{audit, cors, ip_filter, protect};

/// One request on its way through the pipeline.
pub struct Ctx<'a> {
    pub state: &'a State,
    /// The API the client speaks: the shape of its errors.
    pub api: Api,
    /// The client's address (from a trusted proxy's header when configured).
    pub client: IpAddr,
    pub request_id: Arc<str>,
    /// What the response body learns (usage, upstream failure).
    pub record: Arc<Record>,
    /// The request's one end. It owns what the steps learn
    /// (`end.facts`) and what they claim (`end.claims`), gives the claims
    /// back and writes the access line once, however the request ends.
    pub end: Ending,
    origin: Option<HeaderValue>,
}

impl<'a> Ctx<'a> {
    /// The request arrives: its id, client and API are decided, and its end
    /// begins (counted in flight from here).
    pub fn begin(state: &'a State, req: &GatewayRequest) -> Self {
        let client = ip_filter::client_ip(
            req.peer,
            &req.headers,
            &state.config.network.trusted_proxies,
        );
        let mut end = Ending::begin(
            request_id(&req.headers),
            req.protocol,
            req.method.clone(),
            req.uri.path().to_owned(),
            client,
            state.metrics.clone(),
        );
        if let Some(tracer) = &state.tracer {
            let trusted = ip_filter::trusted_peer(req.peer, &state.config.network.trusted_proxies);
            end.traced(tracer.begin(&req.headers, trusted));
            end.facts.connection = req.connection.clone();
        }
        Ctx {
            state,
            api: super::client_api(req),
            client,
            request_id: end.request_id().into(),
            record: end.record().clone(),
            end,
            origin: req.headers.get(header::ORIGIN).cloned(),
        }
    }

    /// The key the request authenticated with, if any.
    pub fn key(&self) -> Option<&KeyRecord> {
        self.end.facts.key.as_deref()
    }

    /// The last step: the response for `result`, with the headers every
    /// response carries; its body carries the request's end from here.
    pub fn answer(self, result: Result<Response, GatewayError>) -> Response {
        let mut resp = match result {
            Ok(resp) => resp,
            // No one to answer: the request ends as cancelled (`end` drops).
            Err(GatewayError::ClientClosed) => {
                return GatewayError::ClientClosed.into_response_for(self.api, &self.request_id);
            }
            Err(e) => {
                tracing::debug!(request_id = %self.request_id, error = %e, "request failed");
                self.after_refusal(&e);
                e.into_response_for(self.api, &self.request_id)
            }
        };
        self.decorate(&mut resp);
        self.time(&mut resp);
        self.end.respond(resp)
    }

    /// Request ids, rate-limit, security and CORS headers.
    fn decorate(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            match self.api {
                // Anthropic's SDKs read their own name for it.
                Api::Anthropic => h.insert("request-id", v.clone()),
                Api::OpenAi | Api::Responses | Api::Gemini => None,
            };
            h.insert("x-request-id", v);
        }
        if let Some(trace) = &self.end.facts.trace {
            h.insert("traceresponse", trace.response_header());
        }
        for (name, value) in self.end.facts.rate_headers.iter() {
            h.insert(name, value.clone());
        }
        protect::security_headers(resp);
        cors::decorate(&self.state.config.cors, self.origin.as_ref(), resp);
    }

    /// The latency the gateway adds (everything but waiting on upstreams):
    /// recorded, and sent as `Server-Timing` when configured.
    fn time(&self, resp: &mut Response) {
        let upstream = self.end.facts.upstream_wait;
        let overhead = self.end.started().elapsed().saturating_sub(upstream);
        self.state.metrics.overhead(self.end.protocol(), overhead);
        if !self.state.config.server.server_timing {
            return;
        }
        let timing = format!(
            "gateway;dur={:.3}, upstream;dur={:.3}",
            overhead.as_secs_f64() * 1000.0,
            upstream.as_secs_f64() * 1000.0
        );
        if let Ok(v) = HeaderValue::from_str(&timing) {
            resp.headers_mut().insert("server-timing", v);
        }
    }

    /// Abuse counting and auditing of refused requests. The gateway's own
    /// limits (429) never count as abuse.
    fn after_refusal(&self, e: &GatewayError) {
        let (state, client, key) = (self.state, self.client, self.key());
        let abusive = matches!(
            e,
            GatewayError::Unauthorized
                | GatewayError::InvalidJson(_)
                | GatewayError::BodyIncomplete
        );
        if abusive && state.abuse.failure(client) {
            state.audit().record(audit::Entry {
                action: "deny_list_add",
                actor: "abuse-control",
                result: "denied",
                request_id: Some(&self.request_id),
                client_ip: Some(client.to_string()),
                key_id: None,
                details: serde_json::json!({"ttl_seconds": state.config.abuse.deny_for.get().as_secs()}),
            });
        }
        let reason = match e {
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            _ => return,
        };
        crate::metrics::AUTH_FAILURES.with([reason]).increment(1);
        state.audit().record(audit::Entry {
            action: "authentication",
            actor: key.map_or("anonymous", |k| k.id.as_str()),
            result: e.code().unwrap_or("failed"),
            request_id: Some(&self.request_id),
            client_ip: Some(client.to_string()),
            key_id: key.map(|k| k.id.as_str()),
            details: serde_json::Value::Null,
        });
    }
}

/// Reuses a sane incoming `x-request-id` (1–128 characters of `[A-Za-z0-9._:-]`),
/// otherwise makes a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").map(|v| v.as_bytes()) {
        if (1..=128).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
        {
            // Checked ASCII above.
            return String::from_utf8_lossy(v).into_owned();
        }
    }
    new_request_id()
}

/// `req_` + 96 random bits (a fast per-thread generator: ids must be
/// unique, not secret).
fn new_request_id() -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(28);
    s.push_str("req_");
    let _ = write!(s, "{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..));
    s
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn request_ids() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", "bad id with spaces".parse().unwrap());
        let generated = request_id(&h);
        assert!(generated.starts_with("req_") && generated.len() == 28);
        assert_ne!(generated, request_id(&h));
    }
}
