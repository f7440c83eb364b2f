//! `GET /v1/models`: the models the caller may use, in the shape of the API
//! it speaks.

use http::StatusCode;

use super::Ctx;
use crate::api::Api;
use crate::auth::{self, KeyRecord};
use crate::error::GatewayError;
use crate::exchange::{json, Response};
use crate::protect;
use crate::state::State;

/// Authorized for the models scope and held to the address's request limit
/// (not the key's: listing models, as SDKs and probes do, spends nothing of
/// a key's budget and works when it is used up), then listed.
pub async fn list_models(ctx: &mut Ctx<'_>) -> Result<Response, GatewayError> {
    protect::authorize(ctx.key(), auth::scope_of(None), None)?;
    let headers = &mut ctx.end.facts.rate_headers;
    protect::rate_limit(ctx.state, ctx.client, None, None, None, headers).await?;
    Ok(models(ctx.state, ctx.key(), ctx.api))
}

/// The models the caller may use: the routes' names, filtered by the key,
/// in OpenAI's list shape or Anthropic's.
fn models(state: &State, key: Option<&KeyRecord>, api: Api) -> Response {
    let mut names = state.router.model_names();
    if let Some(k) = key {
        names.retain(|m| k.allows_model(m));
    }
    let body = match api {
        Api::Anthropic => {
            let data: Vec<serde_json::Value> = names
                .iter()
                .map(|id| serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
                .collect();
            serde_json::json!({
                "data": data, "has_more": false,
                "first_id": names.first(), "last_id": names.last(),
            })
        }
        Api::OpenAi | Api::Responses | Api::Gemini => {
            let data: Vec<serde_json::Value> = names
                .iter()
                .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "h3gate"}))
                .collect();
            serde_json::json!({"object": "list", "data": data})
        }
    };
    json(StatusCode::OK, body.to_string())
}
