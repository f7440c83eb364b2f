//! The one request pipeline every protocol feeds. Read it top to bottom:
//!
//! ```text
//! request id (the request's end begins) → route by path → authenticate
//!   → admission (client share, gateway slot) → read body (bounded, counted)
//!   → parse `model`/`stream` → rate limits (one decision) → route (model → ordered targets)
//!   → forward with failover (only before the first byte) → stream back → the end
//! ```
//!
//! Each step returns early with a [`GatewayError`]; [`handle`] turns it into
//! the JSON error response. Nothing here knows which protocol carried the
//! request. Everything a step claims goes into the request's [`Ending`],
//! which gives it back and writes the access line once, however the request
//! ends (the client may go away at any `.await`).

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access::{Ending, Facts, Record};
use crate::auth::{self, KeyRecord};
use crate::error::GatewayError;
use crate::exchange::{json, Body, GatewayRequest, Response};
use crate::protect;
use crate::provider::{Endpoint, UpstreamCall};
use crate::relay::{relay, KeepAliveBody};
use crate::routing::{self, Forwarded};
use crate::state::State;
use crate::api::Api;
use crate::{audit, cors, ip_filter};

/// Handles one request from any listener and returns the response to send.
pub async fn handle(state: &State, req: GatewayRequest) -> Response {
    let client = ip_filter::client_ip(
        req.peer,
        &req.headers,
        &state.config.network.trusted_proxies,
    );
    let origin = req.headers.get(header::ORIGIN).cloned();
    let api = client_api(&req);
    // From here on the request ends exactly once, whatever happens.
    let mut end = Ending::begin(
        request_id(&req.headers),
        req.protocol,
        req.method.clone(),
        req.uri.path().to_owned(),
        client,
        state.metrics.clone(),
    );
    let shared_id: Arc<str> = end.request_id().into();
    let span = tracing::info_span!("request", request_id = %shared_id);
    let record = end.record().clone();
    // A panic in one request's handling becomes a 500 for that request only.
    let dispatched = AssertUnwindSafe(dispatch(
        state,
        req,
        api,
        &shared_id,
        client,
        &record,
        &mut end.facts,
    ))
    .catch_unwind()
    .instrument(span)
    .await
    .unwrap_or_else(|_| {
        crate::metrics::PANICS.get().increment(1);
        tracing::error!(request_id = %shared_id, "request handling panicked; answered 500");
        Err(GatewayError::Internal)
    });
    if matches!(dispatched, Err(GatewayError::ClientClosed)) {
        // No one to answer: the request ends as cancelled (`end` drops).
        return GatewayError::ClientClosed.into_response_for(api, &shared_id);
    }
    let facts = &end.facts;
    let mut resp = match dispatched {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(request_id = %shared_id, error = %e, "request failed");
            after_error(state, &e, client, &shared_id, facts.key.as_deref());
            e.into_response_for(api, &shared_id)
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&shared_id) {
        if api == Api::Anthropic {
            // Anthropic's SDKs read their own name for it.
            h.insert("request-id", v.clone());
        }
        h.insert("x-request-id", v);
    }
    for (name, value) in facts.rate_headers.iter() {
        h.insert(name, value.clone());
    }
    protect::security_headers(&mut resp);
    cors::decorate(&state.config.cors, origin.as_ref(), &mut resp);
    // The latency the gateway adds: everything but waiting on upstreams.
    let overhead = end.started().elapsed().saturating_sub(facts.upstream_wait);
    state.metrics.overhead(end.protocol(), overhead);
    if state.config.server.server_timing {
        let timing = format!(
            "gateway;dur={:.3}, upstream;dur={:.3}",
            overhead.as_secs_f64() * 1000.0,
            facts.upstream_wait.as_secs_f64() * 1000.0
        );
        if let Ok(v) = HeaderValue::from_str(&timing) {
            resp.headers_mut().insert("server-timing", v);
        }
    }
    // The response body carries the end from here.
    end.respond(resp)
}

/// Abuse counting and auditing of refused requests. The gateway's own
/// limits (429) never count as abuse.
fn after_error(
    state: &State,
    e: &GatewayError,
    client: IpAddr,
    request_id: &str,
    key: Option<&KeyRecord>,
) {
    let abusive = matches!(
        e,
        GatewayError::Unauthorized | GatewayError::InvalidJson(_) | GatewayError::BodyIncomplete
    );
    if abusive && state.abuse.failure(client) {
        state.audit().record(audit::Event {
            action: "deny_list_add",
            actor: "abuse-control",
            result: "denied",
            request_id: Some(request_id),
            client_ip: Some(client.to_string()),
            key_id: None,
            details: serde_json::json!({"ttl_seconds": state.config.abuse.deny_for.get().as_secs()}),
        });
    }
    if matches!(e, GatewayError::Unauthorized | GatewayError::Forbidden(_)) {
        let reason = if matches!(e, GatewayError::Unauthorized) {
            "unauthorized"
        } else {
            "forbidden"
        };
        crate::metrics::AUTH_FAILURES.with([reason]).increment(1);
        state.audit().record(audit::Event {
            action: "authentication",
            actor: key.map_or("anonymous", |k| k.id.as_str()),
            result: e.code().unwrap_or("failed"),
            request_id: Some(request_id),
            client_ip: Some(client.to_string()),
            key_id: key.map(|k| k.id.as_str()),
            details: serde_json::Value::Null,
        });
    }
}

/// The API the client speaks, from the path (and for the shared
/// `/v1/models`, from Anthropic's `anthropic-version` header).
fn client_api(req: &GatewayRequest) -> Api {
    match Endpoint::from_public_path(req.uri.path()) {
        Some(e) => e.api(),
        None if req.headers.contains_key("anthropic-version") => Api::Anthropic,
        None => Api::OpenAi,
    }
}

async fn dispatch(
    state: &State,
    req: GatewayRequest,
    api: Api,
    request_id: &Arc<str>,
    client: IpAddr,
    record: &Arc<Record>,
    facts: &mut Facts,
) -> Result<Response, GatewayError> {
    protect::network(state, client)?;
    if let Some(h) = req.handshake.clone().filter(|h| !h.is_complete()) {
        facts.early = protect::early_data(state, &req.method, &req.headers, &*h).await?;
    }
    protect::host(state, &req.uri, &req.headers)?;
    if let Some(preflight) = cors::preflight(&state.config.cors, &req.method, &req.headers) {
        return Ok(preflight);
    }
    let path = req.uri.path();
    if path == "/health" {
        return match req.method {
            Method::GET | Method::HEAD => Ok(json(StatusCode::OK, r#"{"status":"ok"}"#)),
            ref m => Err(GatewayError::MethodNotAllowed(m.to_string())),
        };
    }
    let endpoint = Endpoint::from_public_path(path);
    if endpoint.is_none() && path != "/v1/models" {
        return Err(not_found(&req));
    }
    facts.key = protect::authenticate(state, &req.headers)?;
    match (&req.method, endpoint) {
        (&Method::GET | &Method::HEAD, None) => {
            protect::authorize(facts.key.as_deref(), auth::scope_of(None), None)?;
            let key = facts.key.as_deref();
            protect::rate_limit(state, client, key, None, &mut facts.rate_headers).await?;
            Ok(models(state, key, api))
        }
        (m, Some(endpoint)) if *m == endpoint.method() => {
            proxy(state, req, endpoint, request_id, client, record, facts).await
        }
        (m, _) => Err(GatewayError::MethodNotAllowed(m.to_string())),
    }
}

fn not_found(req: &GatewayRequest) -> GatewayError {
    GatewayError::NotFound {
        method: req.method.to_string(),
        path: req.uri.path().chars().take(256).collect(),
    }
}

/// The fields routing and limits need; the rest of the body is forwarded
/// untouched (unless the target speaks another API).
#[derive(Deserialize, Default)]
struct Routing {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

async fn proxy(
    state: &State,
    req: GatewayRequest,
    endpoint: Endpoint,
    request_id: &Arc<str>,
    client: IpAddr,
    record: &Arc<Record>,
    facts: &mut Facts,
) -> Result<Response, GatewayError> {
    protect::authorize(facts.key.as_deref(), auth::scope_of(Some(endpoint)), None)?;
    let mut req = req;
    let ahead = admit(state, client, facts, &mut req.body).await?;
    let (body, routing) = if endpoint == Endpoint::Model {
        // `GET /v1/models/{model}`: the model is in the path.
        let model = req.uri.path()["/v1/models/".len()..].to_string();
        if !safe_model_path(&model) {
            return Err(GatewayError::InvalidRequest(
                "the model name in the path has characters or segments that are not allowed".into(),
            ));
        }
        let routing = Routing {
            model: Some(model),
            max_tokens: Some(0),
            ..Routing::default()
        };
        (Bytes::new(), routing)
    } else {
        let limit = state.config.server.max_request_body.get();
        let body = tokio::time::timeout(
            state.config.server.request_timeout.get(),
            read_body(ahead, req.body, &req.headers, limit),
        )
        .await
        .map_err(|_| GatewayError::RequestTimeout)??;
        facts.request_bytes = body.len() as u64;
        let routing: Routing = serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                GatewayError::InvalidRequest(format!("invalid request: {e}"))
            }
            _ => GatewayError::InvalidJson(e.to_string()),
        })?;
        (body, routing)
    };
    let model = routing.model.filter(|m| !m.is_empty()).ok_or_else(|| {
        GatewayError::InvalidRequest("you must provide a `model` parameter".into())
    })?;
    facts.model = Some(model.clone());
    protect::authorize(
        facts.key.as_deref(),
        auth::scope_of(Some(endpoint)),
        Some(&model),
    )?;
    // Every limit is known now: one decision. The tokens are reserved from
    // an estimate; the real usage corrects it at the end.
    let completion = routing
        .max_completion_tokens
        .or(routing.max_tokens)
        .unwrap_or(u64::from(state.config.rate_limit.default_max_tokens));
    let estimate = Some(completion + body.len() as u64 / 4);
    let key = facts.key.as_deref();
    facts.tokens =
        protect::rate_limit(state, client, key, estimate, &mut facts.rate_headers).await?;
    let route = state
        .router
        .resolve(&model)
        .ok_or_else(|| GatewayError::ModelNotFound(model.clone()))?
        .clone();
    facts.route = Some(route.clone());
    let model_label: Arc<str> = state.router.model_label(&model, &route).into();

    let call = UpstreamCall {
        endpoint,
        model: model.as_str().into(),
        body,
        stream: routing.stream && endpoint.streams(),
        include_usage: routing.stream_options.is_some_and(|o| o.include_usage),
        drop_unsupported: route.drop_unsupported,
        request_id: request_id.clone(),
        // RFC 8470: an intermediary forwarding early data says so (and keeps
        // an incoming `Early-Data: 1`).
        early_data: facts.early || req.headers.get("early-data").is_some_and(|v| v == "1"),
    };
    let retry = state.config.retry.clone();
    if let (true, Some(every)) = (call.stream, route.stream_keepalive) {
        // Race the upstream against the first ping: a fast answer goes the
        // normal way; a slow one commits a 200 stream that pings meanwhile.
        let started = Instant::now();
        let (r, c) = (route.clone(), call.clone());
        let mut fwd = Box::pin(async move { routing::forward(&r, &c, &retry).await });
        tokio::select! {
            done = &mut fwd => return respond(done, &model_label, record, facts, endpoint.api()),
            _ = tokio::time::sleep(every) => {}
        }
        facts.upstream_wait = started.elapsed();
        facts.target = Some("(pending: keep-alive stream)".into());
        return Ok(KeepAliveBody::response(
            fwd,
            every,
            model_label,
            record.clone(),
            endpoint.api(),
        ));
    }
    let done = routing::forward(&route, &call, &retry).await;
    respond(done, &model_label, record, facts, endpoint.api())
}

/// Admission, decided before the body is read (a shed request costs no
/// buffer): this client's share (its key's cap, else its address's), then a
/// gateway slot or a bounded wait for one. Both are held in `facts` until
/// the request ends. (Per-provider gates and token reservations need the
/// body's `model` and `max_tokens`: they come later.)
async fn admit(
    state: &State,
    client: IpAddr,
    facts: &mut Facts,
    body: &mut Body,
) -> Result<ReadAhead, GatewayError> {
    let (who, cap) = match &facts.key {
        Some(k) => (k.sha256.clone(), k.max_concurrent.map(|c| c as usize)),
        None => (client.to_string(), None),
    };
    facts.client_slot = state
        .clients
        .enter(&who, cap)
        .map_err(|_| GatewayError::ClientLimit)?;
    // While queued, read a little of the body: a client that goes away
    // shows as the body failing (HTTP/1.1 has no other sign of it while its
    // request waits), and its place is given back at once. Bounded, so a
    // queued request still costs almost no buffer.
    let mut ahead = ReadAhead::default();
    let enter = state.admission.enter();
    tokio::pin!(enter);
    let permit = loop {
        tokio::select! {
            biased;
            permit = &mut enter => break permit.map_err(GatewayError::Overloaded)?,
            frame = body.frame(), if !ahead.ended && ahead.bytes.len() < READ_AHEAD => match frame {
                None => ahead.ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        ahead.bytes.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Err(GatewayError::ClientClosed),
            },
        }
    };
    facts.permit = Some(permit);
    Ok(ahead)
}

/// What was read of a body while its request waited for admission.
#[derive(Default)]
struct ReadAhead {
    bytes: BytesMut,
    /// The body ended within it.
    ended: bool,
}

/// How much of a queued request's body is read ahead.
const READ_AHEAD: usize = 16 * 1024;

fn respond(
    done: Forwarded,
    model_label: &Arc<str>,
    record: &Arc<Record>,
    facts: &mut Facts,
    api: Api,
) -> Result<Response, GatewayError> {
    facts.upstream_wait += done.upstream_wait;
    facts.target = done.target;
    Ok(relay(
        done.result?,
        model_label.clone(),
        record.clone(),
        api,
    ))
}

/// Reads the request body, refusing it as soon as it is known to exceed
/// `limit`: from `Content-Length`, or while counting the streamed bytes.
async fn read_body(
    ahead: ReadAhead,
    mut body: Body,
    headers: &http::HeaderMap,
    limit: u64,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || GatewayError::PayloadTooLarge { limit };
    if declared.is_some_and(|n| n > limit) {
        discard(body).await;
        return Err(too_large());
    }
    if ahead.bytes.len() as u64 > limit {
        discard(body).await;
        return Err(too_large());
    }
    let capacity = declared.unwrap_or(0).min(limit);
    let mut buf = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    buf.extend_from_slice(&ahead.bytes);
    if ahead.ended {
        return Ok(buf.freeze());
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BodyIncomplete)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                discard(body).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a refused body, within bounds, so the
/// client receives the error response instead of a reset (HTTP/1.1 closes
/// the connection, HTTP/3 streams end cleanly). A larger or slower body is
/// abandoned.
async fn discard(mut body: Body) {
    const MAX_BYTES: u64 = 1 << 20;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(MAX_TIME, drain).await;
}

/// The models the caller may use: the routes' names, filtered by the key,
/// in OpenAI's list shape or Anthropic's.
fn models(state: &State, key: Option<&KeyRecord>, api: Api) -> Response {
    #[derive(serde::Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    let mut names = state.router.model_names();
    if let Some(k) = key {
        names.retain(|m| k.allows_model(m));
    }
    if api == Api::Anthropic {
        let data: Vec<serde_json::Value> = names
            .iter()
            .map(|id| serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        let body = serde_json::json!({
            "data": data, "has_more": false,
            "first_id": names.first(), "last_id": names.last(),
        });
        return json(StatusCode::OK, body.to_string());
    }
    let data: Vec<Model> = names
        .iter()
        .map(|id| Model {
            id,
            object: "model",
            created: 0,
            owned_by: "h3gate",
        })
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    json(StatusCode::OK, body.to_string())
}

/// A model name taken from the path goes into the upstream's URL: only
/// `[A-Za-z0-9._:@/-]`, and no empty, `.` or `..` segment (no way to reach
/// another upstream path with the provider's credentials).
fn safe_model_path(model: &str) -> bool {
    model.len() <= 256
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b))
        && model
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
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
    use super::*;

    #[test]
    fn model_names_in_paths() {
        for ok in [
            "gpt-4o-mini",
            "llama3.1:8b",
            "meta-llama/Llama-3.1-8B",
            "a@b",
        ] {
            assert!(safe_model_path(ok), "{ok}");
        }
        for bad in [
            "../admin", "a/../b", "a//b", ".", "a/", "a%2F..", "a?b", "a b", "",
        ] {
            assert!(!safe_model_path(bad), "{bad}");
        }
    }

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
