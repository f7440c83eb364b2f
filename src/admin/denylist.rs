//! `GET /admin/denylist` and `DELETE /admin/denylist/ADDRESS`.

use http::StatusCode;

use super::{changed, error};
use crate::exchange::{json, Response};
use crate::state::State;

/// `GET /admin/denylist`: the denied addresses and the seconds each has
/// left; in a cluster, every replica's (after a sync with Redis).
pub(super) async fn list(state: &State) -> Response {
    let (denied, sharing) = state.abuse.list_everywhere().await;
    let list: Vec<_> = denied
        .into_iter()
        .map(|(ip, secs)| serde_json::json!({"address": ip.to_string(), "seconds_left": secs}))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({"denied": list, "sharing": sharing.as_str()}).to_string(),
    )
}

/// `DELETE /admin/denylist/ADDRESS`: lifts the deny on one address,
/// on every replica in a cluster.
pub(super) async fn lift(state: &State, address: &str) -> Response {
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            "not an IP address",
        );
    };
    match state.abuse.lift_everywhere(ip).await {
        (true, sharing) => changed(
            StatusCode::OK,
            sharing,
            serde_json::json!({"lifted": ip.to_string()}),
        ),
        (false, _) => error(
            StatusCode::NOT_FOUND,
            "not_denied",
            "that address is not denied",
        ),
    }
}
