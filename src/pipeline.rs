//! The one request pipeline every protocol feeds. Its steps, in order, each
//! a function below or in a submodule, all given the request's [`Ctx`]:
//!
//! ```text
//! begin (request id, client address, the request's end)
//!   → edge checks (network filter, 0-RTT policy, host) → CORS preflight → /health
//!   → endpoint by path → authenticate
//!   → GET /v1/models: authorize → rate limits → list            (listing.rs)
//!   → authorize the endpoint → admission (client share, gateway slot)
//!   → take in the body (bounded, counted) and its model/stream/max_tokens (intake.rs)
//!   → authorize the model → rate limits (one decision, tokens reserved)
//!   → route (model → ordered targets) → forward with failover (before the first byte)
//!   → relay the answer back → answer (headers on every response) → the end (context.rs)
//! ```
//!
//! Each step returns early with a [`GatewayError`]; [`Ctx::answer`] turns it
//! into the JSON error response in the client's API. Nothing here knows which
//! protocol carried the request. Everything a step claims goes into the
//! request's end (`ctx.end.claims`), which gives it back and writes the
//! access line once, however the request ends (the client may go away at
//! any `.await`).

mod context;
mod intake;
mod listing;
mod stored;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use http::{Method, StatusCode};
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::Api;
use crate::auth;
use crate::cors;
use crate::error::GatewayError;
use crate::exchange::{json, GatewayRequest, Handshake, Response};
use crate::protect;
use crate::provider::{Endpoint, UpstreamCall};
use crate::relay::{relay, KeepAliveBody};
use crate::routing::{self, Forwarded, Route};
use crate::state::State;
pub use context::Ctx;
use intake::Intake;

/// Handles one request from any listener and returns the response to send.
///
/// The steps' future is large (every step's state, the upstream call's
/// included) and lives on the heap: listeners spawn a task per request, and
/// a task's future is moved several times while it is spawned, so a pointer
/// here saves copying tens of kilobytes per request.
pub async fn handle(state: &State, req: GatewayRequest) -> Response {
    Box::pin(steps(state, req)).await
}

async fn steps(state: &State, req: GatewayRequest) -> Response {
    let mut ctx = Ctx::begin(state, &req);
    let result = guarded(&mut ctx, req).await;
    ctx.answer(result)
}

/// [`dispatch`], where a panic in one request's handling becomes a 500 for
/// that request only.
async fn guarded(ctx: &mut Ctx<'_>, req: GatewayRequest) -> Result<Response, GatewayError> {
    let request_id = ctx.request_id.clone();
    let span = tracing::info_span!("request", request_id = %request_id);
    AssertUnwindSafe(dispatch(ctx, req))
        .catch_unwind()
        .instrument(span)
        .await
        .unwrap_or_else(|_| {
            crate::metrics::PANICS.get().increment(1);
            tracing::error!(request_id = %request_id, "request handling panicked; answered 500");
            Err(GatewayError::Internal)
        })
}

async fn dispatch(ctx: &mut Ctx<'_>, req: GatewayRequest) -> Result<Response, GatewayError> {
    let handshake = req.handshake.clone().filter(|h| !h.is_complete());
    edge_checks(ctx, &req.method, &req.uri, &req.headers, handshake).await?;
    let state = ctx.state;
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
        return Err(GatewayError::NotFound {
            method: req.method.to_string(),
            path: path.chars().take(256).collect(),
        });
    }
    ctx.end.facts.key = protect::authenticate(state, &req.headers)?;
    match (&req.method, endpoint) {
        (&Method::GET | &Method::HEAD, None) => listing::list_models(ctx).await,
        (_, Some(endpoint)) if endpoint.is_stored() => stored::serve(ctx, req, endpoint).await,
        (m, Some(endpoint)) if *m == endpoint.method() => proxy(ctx, req, endpoint).await,
        (m, _) => Err(GatewayError::MethodNotAllowed(m.to_string())),
    }
}

/// Before anything is parsed: the network filter, RFC 8470's policy for a
/// request that arrived as 0-RTT early data, and the `Host`.
async fn edge_checks(
    ctx: &mut Ctx<'_>,
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    pending_handshake: Option<Arc<dyn Handshake>>,
) -> Result<(), GatewayError> {
    protect::network(ctx.state, ctx.client)?;
    if let Some(h) = pending_handshake {
        ctx.end.facts.early = protect::early_data(ctx.state, method, headers, &*h).await?;
    }
    protect::host(ctx.state, uri, headers)
}

/// The API endpoints that reach a provider.
async fn proxy(
    ctx: &mut Ctx<'_>,
    mut req: GatewayRequest,
    endpoint: Endpoint,
) -> Result<Response, GatewayError> {
    let scope = auth::scope_of(Some(endpoint));
    protect::authorize(ctx.key(), scope, None)?;
    // RFC 8470: an intermediary forwarding early data says so (and keeps an
    // incoming `Early-Data: 1`).
    let early = req.headers.get("early-data").is_some_and(|v| v == "1");
    let forwarded = forwarded_headers(&ctx.state.forwardable, &req.headers);
    let ahead = intake::admit(ctx, &mut req.body).await?;
    let mut intake = intake::take_in(ctx, req, endpoint, ahead).await?;
    protect::authorize(ctx.key(), scope, Some(&intake.model))?;
    let route = ctx.state.router.resolve(&intake.model).cloned();
    let pin = match endpoint {
        Endpoint::Responses => stored::previous_response(ctx, &mut intake, route.as_deref())?,
        _ => None,
    };
    limit(ctx, &intake, route.as_deref()).await?;
    let route = route.ok_or_else(|| GatewayError::ModelNotFound(intake.model.clone()))?;
    ctx.end.facts.route = Some(route.clone());
    let mut call = upstream_call(ctx, intake, endpoint, &route, early);
    call.headers = forwarded;
    call.pin = pin;
    forward(ctx, route, call).await
}

/// Every limit is known now: one decision. The tokens are reserved from an
/// estimate (the completion's cap and a quarter of the body's bytes), and
/// so are the key's and its team's budgets (that estimate at the dearest
/// price among the route's targets); the real usage corrects them at the
/// end. On a cluster the key's concurrency slot is leased here too, in the
/// same call (admission, before the body, holds this replica's share).
async fn limit(
    ctx: &mut Ctx<'_>,
    intake: &Intake,
    route: Option<&Route>,
) -> Result<(), GatewayError> {
    let f = &intake.fields;
    let state = ctx.state;
    let completion = f
        .max_completion_tokens
        .or(f.max_tokens)
        .unwrap_or(u64::from(state.config.rate_limit.default_max_tokens));
    let prompt = intake.body.len() as u64 / 4;
    // The cap is the client's: saturated, never wrapped to a small one.
    let estimate = Some(completion.saturating_add(prompt));
    let key = ctx.end.facts.key.clone();
    let spend = key
        .as_deref()
        .filter(|k| crate::protect::budget::applies(state, k))
        .map(|_| crate::protect::budget::Estimate {
            cost: route.map_or(0, |r| dearest(state, r, &intake.model, prompt, completion)),
            tokens: completion.saturating_add(prompt),
            prompt,
        });
    ctx.end.facts.charge = Some(crate::access::Charge {
        spend: state.spend.clone(),
        prices: state.prices.clone(),
        estimate: spend.unwrap_or_default(),
        model_label: None,
        requested: None,
    });
    let headers = &mut ctx.end.facts.rate_headers;
    let granted =
        protect::rate_limit(state, ctx.client, key.as_deref(), estimate, spend, headers).await?;
    ctx.end.claims.tokens = granted.tokens;
    ctx.end.claims.lease = granted.lease;
    ctx.end.claims.budgets = granted.budgets;
    Ok(())
}

/// The most a request can cost on `route`: at the dearest of its targets'
/// prices (a target without one costs 0).
fn dearest(state: &State, route: &Route, model: &str, prompt: u64, completion: u64) -> u64 {
    route
        .targets
        .iter()
        .filter_map(|t| state.prices.lookup(t.model.as_deref().unwrap_or(model)))
        .map(|p| p.most(prompt, completion))
        .max()
        .unwrap_or(0)
}

fn upstream_call(
    ctx: &Ctx<'_>,
    intake: Intake,
    endpoint: Endpoint,
    route: &Route,
    early: bool,
) -> UpstreamCall {
    let f = intake.fields;
    UpstreamCall {
        endpoint,
        model: intake.model.as_str().into(),
        body: intake.body,
        stream: f.stream && endpoint.streams(),
        include_usage: f.stream_options.is_some_and(|o| o.include_usage),
        drop_unsupported: route.drop_unsupported,
        request_id: ctx.request_id.clone(),
        early_data: ctx.end.facts.early || early,
        trace: ctx.end.facts.trace.clone(),
        headers: http::HeaderMap::new(),
        pin: None,
        owner: owner(ctx),
    }
}

/// The client's gateway key as response ids carry it (0: none).
fn owner(ctx: &Ctx<'_>) -> u32 {
    ctx.key().map_or(0, |k| {
        crate::translate::responses::ResponseTag::from_hex(&k.sha256)
    })
}

/// The client's headers that some provider takes (each sends its own
/// allowlist's); none, without allocating, when the client sent none.
fn forwarded_headers(names: &[http::HeaderName], headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for name in names {
        for v in headers.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Forwards with failover, and relays the answer. A streamed request on a
/// route with `stream_keepalive` races the upstream against the first ping:
/// a fast answer goes the normal way; a slow one commits a 200 stream that
/// pings meanwhile.
async fn forward(
    ctx: &mut Ctx<'_>,
    route: Arc<Route>,
    call: UpstreamCall,
) -> Result<Response, GatewayError> {
    let model_label: Arc<str> = ctx.state.router.model_label(&call.model, &route).into();
    if let Some(charge) = &mut ctx.end.facts.charge {
        charge.model_label = Some(model_label.clone());
        charge.requested = Some(call.model.clone());
    }
    let api = call.endpoint.api();
    let retry = ctx.state.config.retry.clone();
    let Some(every) = route.stream_keepalive.filter(|_| call.stream) else {
        let done = routing::forward(&route, &call, &retry).await;
        return respond(ctx, done, model_label, api);
    };
    let started = Instant::now();
    let mut fwd = Box::pin(async move { routing::forward(&route, &call, &retry).await });
    tokio::select! {
        done = &mut fwd => return respond(ctx, done, model_label, api),
        _ = tokio::time::sleep(every) => {}
    }
    let facts = &mut ctx.end.facts;
    facts.upstream_wait = started.elapsed();
    facts.target = Some("(pending: keep-alive stream)".into());
    Ok(KeepAliveBody::response(
        fwd,
        every,
        model_label,
        ctx.record.clone(),
        api,
    ))
}

fn respond(
    ctx: &mut Ctx<'_>,
    done: Forwarded,
    model_label: Arc<str>,
    api: Api,
) -> Result<Response, GatewayError> {
    ctx.end.facts.upstream_wait += done.upstream_wait;
    ctx.end.facts.target = done.target;
    Ok(relay(done.result?, model_label, ctx.record.clone(), api))
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
