//! `GET /admin/usage` and `GET /admin/budgets` (see [`crate::usage::report`]).

use http::StatusCode;

use super::error;
use crate::exchange::{json, Response};
use crate::state::State;
use crate::usage::report::{self, Params};

/// `GET /admin/usage?key=&team=&from=&to=&group_by=`: the usage history's
/// rows and their total; 400 naming a parameter that is not right.
pub(super) async fn usage(state: &State, query: Option<&str>) -> Response {
    let now = crate::clock::now_secs();
    let q = match Params::from_query(query.unwrap_or("")).and_then(|p| p.query(now)) {
        Ok(q) => q,
        Err(e) => return bad_param(&e),
    };
    match report::usage(&state.usage.source(&state.spend.history), &q).await {
        Ok(answer) => json(StatusCode::OK, to_json(&answer)),
        Err(e) => unavailable(&e),
    }
}

/// `GET /admin/budgets`: every key with a budget and every team.
pub(super) async fn budgets(state: &State) -> Response {
    let now = crate::clock::now_secs();
    let keys = match &state.keys {
        Some(k) => k.current().await.0,
        None => Vec::new(),
    };
    let source = state.usage.source(&state.spend.history);
    // The in-memory limiter decides the budgets only on one node.
    let counters = match source {
        crate::usage::Source::Memory(_) => state.limiter.memory().map(|m| m.budget_counters()),
        crate::usage::Source::Redis { .. } => None,
    };
    match report::budgets(&keys, &state.teams, counters.as_deref(), &source, now).await {
        Ok(list) => {
            let body = serde_json::json!({"budgets": list, "counted_by": if counters.is_some() { "limiter" } else { "history" }});
            json(StatusCode::OK, body.to_string())
        }
        Err(e) => unavailable(&e),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn bad_param(e: &report::BadParam) -> Response {
    let body = serde_json::json!({"error": {
        "message": e.to_string(),
        "type": "invalid_request_error",
        "code": "invalid_parameter",
        "param": e.param,
    }});
    json(StatusCode::BAD_REQUEST, body.to_string())
}

fn unavailable(e: &crate::cluster::ClusterError) -> Response {
    tracing::warn!(error = %e, "admin: the usage history could not be read from redis");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis_unavailable",
        "the usage history is in redis, which did not answer; try again",
    )
}
