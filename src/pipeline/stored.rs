//! Stored responses of OpenAI's Responses API: `GET`/`DELETE
//! /v1/responses/{id}`, `GET …/input_items`, `POST …/cancel`, and a new
//! response's `previous_response_id`, each reaching the provider and key
//! that made the response — read from the tagged id itself (see
//! `translate::responses`), so it works after a restart and on every replica.

use super::intake::{self, Intake};
use super::{forward, owner, Ctx};
use crate::auth;
use crate::error::GatewayError;
use crate::exchange::{GatewayRequest, Response};
use crate::protect;
use crate::provider::{Endpoint, UpstreamCall};
use crate::routing::Route;
use crate::translate::responses::{self, ResponseTag};

/// One stored response's call, sent to the provider that made it.
pub(super) async fn serve(
    ctx: &mut Ctx<'_>,
    req: GatewayRequest,
    endpoint: Endpoint,
) -> Result<Response, GatewayError> {
    let endpoint = match (&req.method, endpoint) {
        (&http::Method::DELETE, Endpoint::StoredResponse) => Endpoint::DeleteResponse,
        (m, e) if *m == e.method() => e,
        (m, _) => return Err(GatewayError::MethodNotAllowed(m.to_string())),
    };
    protect::authorize(ctx.key(), auth::scope_of(Some(endpoint)), None)?;
    let id = Endpoint::response_id(req.uri.path()).to_string();
    let not_found = || GatewayError::ResponseNotFound(id.chars().take(128).collect());
    let safe = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let (upstream, tag) = ResponseTag::split(&id)
        .filter(|_| safe)
        .ok_or_else(not_found)?;
    // Another client's response is not found, whatever the id.
    if tag.owner != owner(ctx) {
        return Err(not_found());
    }
    let route = ctx
        .state
        .router
        .stored_route(tag.provider)
        .ok_or_else(not_found)?;
    let early = req.headers.get("early-data").is_some_and(|v| v == "1");
    let headers = super::forwarded_headers(&ctx.state.forwardable, &req.headers);
    intake::drain(ctx, req).await?;
    ctx.end.facts.route = Some(route.clone());
    let call = UpstreamCall {
        endpoint,
        model: upstream.into(),
        body: bytes::Bytes::new(),
        stream: false,
        include_usage: false,
        request_id: ctx.request_id.clone(),
        early_data: ctx.end.facts.early || early,
        drop_unsupported: false,
        trace: ctx.end.facts.trace.clone(),
        headers,
        pin: Some(tag),
        owner: tag.owner,
    };
    forward(ctx, route, call).await
}

/// A new response's `previous_response_id`: the upstream's id put back in
/// the body, and the pin to where it lives. A 400 for an id the gateway did
/// not give out, one of another client's, or one made through a provider
/// this model's route does not reach.
pub(super) fn previous_response(
    ctx: &Ctx<'_>,
    intake: &mut Intake,
    route: Option<&Route>,
) -> Result<Option<ResponseTag>, GatewayError> {
    let invalid = |m: String| GatewayError::InvalidRequest(m);
    let Some((body, tag)) = responses::previous_response(&intake.body).map_err(invalid)? else {
        return Ok(None);
    };
    if tag.owner != owner(ctx) {
        return Err(invalid(
            "previous_response_id: no response found with this id".into(),
        ));
    }
    if let Some(route) = route {
        if !route
            .targets
            .iter()
            .any(|t| t.provider.common().tag == tag.provider)
        {
            return Err(invalid(format!(
                "previous_response_id was created through a provider the route of `{}` does not reach",
                intake.model
            )));
        }
    }
    intake.body = body.into();
    Ok(Some(tag))
}
