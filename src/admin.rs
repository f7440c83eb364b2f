//! The admin API: plain HTTP/1.1 on its own address (loopback by default),
//! never on the public port; `listener::admin` serves it.
//!
//! - `GET /health`: the process is alive.
//! - `GET /ready`: whether it should receive traffic: 503 from the first
//!   moment of a shutdown until exit, or when no route can be served at
//!   all; otherwise 200, with `"status": "degraded"` and the reasons when
//!   some route or provider cannot serve.
//! - `GET /metrics`: Prometheus exposition; needs the admin token when one
//!   is set (required off loopback).
//! - `POST /admin/reload`: re-read the configuration file.
//! - `GET /admin/keys`, `POST /admin/keys` (create; the key is in the answer
//!   once), `PATCH /admin/keys/NAME` (scopes, models, expires, rpm, tpm,
//!   max_concurrent, team, budget, budget_tokens, budget_period; `null`
//!   clears), `DELETE /admin/keys/NAME` (revoke). A key may name a team
//!   that `[[teams]]` lacks (its spend is still recorded by team): the
//!   answer then carries a `warning`.
//! - `GET /admin/denylist`, `DELETE /admin/denylist/ADDRESS` (lift a deny).
//! - `GET /admin/usage?key=&team=&from=&to=&group_by=model|key|team|day`:
//!   the usage history; `GET /admin/budgets`: every budget and how full it
//!   is (see [`crate::usage::report`]).
//! - `GET /ui/usage`: the usage page (static; it asks `/admin/usage` and
//!   `/admin/budgets` with the token typed into it).
//!
//! In a cluster, keys and denies are changed in Redis and so on every
//! replica; an answer says `"sharing": "shared"`. While Redis is
//! unreachable a change applies on the replica that took it and reaches
//! the others when Redis answers again: `202` with `"sharing": "pending"`.
//!
//! `/admin/*` needs the admin token (without one configured it is off);
//! every admin action is audited. `[network] admin_allow`/`admin_deny`
//! filter who may connect at all.

mod ui;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cluster::sync::Sharing;
use crate::config::Secret;
use crate::exchange::{full, json, Body, Response};
use crate::reload::Reloader;
use crate::shutdown::Shutdown;
use crate::state::{SharedState, State};

mod denylist;
mod usage;

#[derive(Clone)]
pub struct Admin {
    pub state: SharedState,
    /// `None` when metrics are off.
    pub prometheus: Option<PrometheusHandle>,
    /// Present when the gateway was started from a configuration file.
    pub reloader: Option<Arc<Reloader>>,
    pub shutdown: Shutdown,
}

impl Admin {
    /// Answers one admin request (the listener is `listener::admin`).
    pub async fn route(&self, req: http::Request<Body>) -> Response {
        let token = self.state.load().config.admin.token.clone();
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/health") => json(StatusCode::OK, r#"{"status":"ok"}"#),
            (&Method::GET | &Method::HEAD, "/ready") => self.ready(),
            (&Method::GET, p) if p.starts_with("/ui/") => ui::serve(p)
                .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "not_found", "not found")),
            (&Method::GET, "/metrics") => {
                let Some(prometheus) = &self.prometheus else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "metrics_disabled",
                        "metrics are off ([admin] metrics = false)",
                    );
                };
                if !authorized(req.headers(), &token) {
                    return unauthorized();
                }
                let mut text = prometheus.render();
                crate::spend::meter::render_into(&mut text);
                let mut resp = http::Response::new(full(text));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (_, p) if p.starts_with("/admin/") => {
                if token.is_empty() {
                    return error(
                        StatusCode::FORBIDDEN,
                        "admin_disabled",
                        "the admin API is off: set admin.token to use it (or send SIGHUP to reload)",
                    );
                }
                if !authorized(req.headers(), &token) {
                    return unauthorized();
                }
                let method = req.method().clone();
                let path = p.to_string();
                let query = req.uri().query().map(str::to_string);
                // Ties the answer to its audit line.
                let id = format!("adm_{:016x}", fastrand::u64(..));
                let mut resp = self
                    .admin_api(method.clone(), &path, query.as_deref(), req.into_body())
                    .await;
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                self.state.load().audit().record(crate::audit::Entry {
                    action: "admin",
                    actor: "admin-api",
                    result: if resp.status().is_success() { "ok" } else { "refused" },
                    request_id: Some(&id),
                    client_ip: None,
                    key_id: None,
                    details: serde_json::json!({"method": method.as_str(), "path": path, "status": resp.status().as_u16()}),
                });
                resp
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "not found"),
        }
    }

    /// Ready unless shutting down or no route has a usable target. A
    /// degraded node (some routes without a target, unhealthy providers)
    /// still serves, so it stays 200 and says why. Lists each provider's
    /// health and each target's breaker either way.
    fn ready(&self) -> Response {
        let s = self.state.load();
        let mut reasons = Vec::new();
        let providers: serde_json::Map<String, serde_json::Value> = s
            .providers
            .iter()
            .map(|(name, p)| {
                let healthy = p.common().is_healthy();
                if !healthy {
                    reasons.push(format!("provider {name} is unhealthy"));
                }
                (name.clone(), serde_json::json!({"healthy": healthy}))
            })
            .collect();
        let mut targets = serde_json::Map::new();
        let mut unroutable = Vec::new();
        let mut routes = 0usize;
        for route in s.router.routes() {
            routes += 1;
            for t in &route.targets {
                targets.insert(
                    t.name.clone(),
                    serde_json::json!({"breaker": t.state.breaker_state().as_str()}),
                );
            }
            if !route.usable() {
                unroutable.push(route.pattern.clone());
            }
        }
        unroutable.sort();
        let cluster = s.cluster.as_ref().map(|c| {
            if !c.is_up() {
                reasons.push(format!(
                    "redis unreachable: on_redis_error = {:?} applies",
                    c.policy()
                ));
            }
            serde_json::json!({"redis": if c.is_up() { "up" } else { "down" }})
        });
        if s.usage.file_failing() {
            reasons.push(
                "the spend file cannot be written (see the log); spend is kept in memory".into(),
            );
        }
        reasons.sort();
        for r in &unroutable {
            reasons.push(format!("route {r} has no usable target"));
        }
        let draining = self.shutdown.is_signalled();
        let nothing_served = routes > 0 && unroutable.len() == routes;
        let (status, word) = if draining {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else if nothing_served {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        } else if !reasons.is_empty() {
            (StatusCode::OK, "degraded")
        } else {
            (StatusCode::OK, "ready")
        };
        if draining {
            reasons.insert(0, "shutting down".to_string());
        }
        let body = serde_json::json!({
            "status": word,
            "reasons": reasons,
            "routes_without_target": unroutable,
            "providers": providers,
            "targets": targets,
            "admission": {"available": s.admission.available(), "queued": s.admission.depth()},
            "cluster": cluster,
        });
        json(status, body.to_string())
    }

    /// The `/admin/*` endpoints, behind the token check in `route`.
    async fn admin_api(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: Body,
    ) -> Response {
        let state = self.state.load();
        match (method, path) {
            (Method::GET, "/admin/usage") => usage::usage(&state, query).await,
            (Method::GET, "/admin/budgets") => usage::budgets(&state).await,
            (Method::POST, "/admin/reload") => self.reload().await,
            (Method::GET, "/admin/keys") => list_keys(&state).await,
            (Method::POST, "/admin/keys") => create_key(&state, body).await,
            (Method::DELETE, p) if p.starts_with("/admin/keys/") => {
                revoke_key(&state, &p["/admin/keys/".len()..]).await
            }
            (Method::PATCH, p) if p.starts_with("/admin/keys/") => {
                edit_key(&state, &p["/admin/keys/".len()..], body).await
            }
            (Method::GET, "/admin/denylist") => denylist::list(&state).await,
            (Method::DELETE, p) if p.starts_with("/admin/denylist/") => {
                denylist::lift(&state, &p["/admin/denylist/".len()..]).await
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "not found"),
        }
    }

    async fn reload(&self) -> Response {
        let Some(reloader) = &self.reloader else {
            return error(
                StatusCode::CONFLICT,
                "no_config_file",
                "this gateway was not started from a configuration file",
            );
        };
        match reloader.reload().await {
            Ok(report) => {
                let body = serde_json::json!({"status": "reloaded", "restart_required": report.restart_required});
                json(StatusCode::OK, body.to_string())
            }
            Err(e) => {
                let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
                let body = serde_json::json!({"error": {
                    "message": "configuration rejected; the running configuration stays",
                    "type": "invalid_request_error",
                    "code": "invalid_config",
                    "problems": problems,
                }});
                json(StatusCode::UNPROCESSABLE_ENTITY, body.to_string())
            }
        }
    }
}

/// `GET /admin/keys`: every key (revoked ones included), without the
/// secrets; in a cluster, Redis' set (`"sharing": "pending"` when Redis is
/// unreachable and this replica's copy is shown).
async fn list_keys(state: &State) -> Response {
    let Some(keys) = &state.keys else {
        return no_keys();
    };
    let (records, sharing) = keys.current().await;
    let list: Vec<_> = records.iter().map(|k| key_view(k)).collect();
    json(
        StatusCode::OK,
        serde_json::json!({"keys": list, "sharing": sharing.as_str()}).to_string(),
    )
}

/// A key's record as the API shows it (never the key, nor its hash).
fn key_view(k: &crate::auth::KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "name": k.name, "id": k.id, "scopes": k.scopes, "models": k.models,
        "created_at": k.created_at, "expires_at": k.expires_at, "revoked_at": k.revoked_at,
        "rpm": k.rpm, "tpm": k.tpm, "max_concurrent": k.max_concurrent,
        "team": k.team, "budget": k.budget, "budget_tokens": k.budget_tokens,
        "budget_period": k.budget_period,
        "revision": k.revision, "updated_at": k.updated_at,
    })
}

/// Adds the unknown-team warning to an answer's body, when due.
fn warn_team(state: &State, team: Option<&str>, body: &mut serde_json::Value) {
    if let Some(w) = crate::auth::unknown_team_warning(team, |t| state.teams.contains_key(t)) {
        body["warning"] = w.into();
    }
}

/// 200 (201 for a creation) once the change is in the store; 202 when it
/// applies on this replica only until Redis answers again.
fn changed(ok: StatusCode, sharing: Sharing, mut body: serde_json::Value) -> Response {
    body["sharing"] = sharing.as_str().into();
    if sharing == Sharing::Pending {
        body["message"] = "applied on this replica; redis is unreachable, the other replicas get the change when it answers again".into();
        return json(StatusCode::ACCEPTED, body.to_string());
    }
    json(ok, body.to_string())
}

/// `POST /admin/keys`: creates a key; the answer carries it, once.
async fn create_key(state: &State, body: Body) -> Response {
    let Some(keys) = &state.keys else {
        return no_keys();
    };
    let new = match read_new_key(body).await {
        Ok(new) => new,
        Err(resp) => return resp,
    };
    match keys.create(new).await {
        Ok(c) => {
            let mut body =
                serde_json::json!({"name": c.record.name, "id": c.record.id, "key": c.key});
            warn_team(state, c.record.team.as_deref(), &mut body);
            changed(StatusCode::CREATED, c.sharing, body)
        }
        Err(e) => key_error(&e),
    }
}

/// The body of a request, or the 400 to send.
async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Response> {
    let Some(bytes) = read_limited(body, 64 * 1024).await else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body could not be read",
        ));
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()))
}

/// A lifetime like "90d", or the 400 to send.
fn parse_expires(text: &str) -> Result<std::time::Duration, Box<Response>> {
    humantime::parse_duration(text).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_expires",
            &e.to_string(),
        ))
    })
}

/// A budget period like "1d", "month" or "30d", or the 400 to send.
fn parse_period(text: &str) -> Result<crate::spend::Period, Box<Response>> {
    crate::spend::Period::parse(text)
        .map_err(|e| Box::new(key_error(&crate::auth::KeysError::Invalid(e))))
}

/// The body of `POST /admin/keys` as an `auth::NewKey`, or the 400 to send.
async fn read_new_key(body: Body) -> Result<crate::auth::NewKey, Response> {
    let req: NewKeyRequest = read_json(body).await?;
    Ok(crate::auth::NewKey {
        team: req.team,
        budget: req.budget,
        budget_tokens: req.budget_tokens,
        budget_period: req
            .budget_period
            .as_deref()
            .map(parse_period)
            .transpose()
            .map_err(|r| *r)?,
        name: req.name,
        scopes: req.scopes,
        models: req.models,
        expires_in: req
            .expires
            .as_deref()
            .map(parse_expires)
            .transpose()
            .map_err(|r| *r)?,
        rpm: req.rpm,
        tpm: req.tpm,
        max_concurrent: req.max_concurrent,
    })
}

/// `PATCH /admin/keys/NAME`: changes scopes, models, expiry or limits.
async fn edit_key(state: &State, name: &str, body: Body) -> Response {
    let Some(keys) = &state.keys else {
        return no_keys();
    };
    let req: EditKeyRequest = match read_json(body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let expires_in = match req.expires {
        Some(Some(text)) => match parse_expires(&text) {
            Ok(d) => Some(Some(d)),
            Err(resp) => return *resp,
        },
        Some(None) => Some(None),
        None => None,
    };
    let budget_period = match req.budget_period {
        Some(Some(text)) => match parse_period(&text) {
            Ok(p) => Some(Some(p)),
            Err(resp) => return *resp,
        },
        Some(None) => Some(None),
        None => None,
    };
    let edit = crate::auth::KeyEdit {
        team: req.team,
        budget: req.budget,
        budget_tokens: req.budget_tokens,
        budget_period,
        scopes: req.scopes,
        models: req.models,
        expires_in,
        rpm: req.rpm,
        tpm: req.tpm,
        max_concurrent: req.max_concurrent,
    };
    match keys.edit(name, edit).await {
        Ok(c) => {
            let list: Vec<_> = c.records.iter().map(key_view).collect();
            let mut body = serde_json::json!({"edited": name, "keys": list});
            let team = c.records.first().and_then(|r| r.team.as_deref());
            warn_team(state, team, &mut body);
            changed(StatusCode::OK, c.sharing, body)
        }
        Err(e) => key_error(&e),
    }
}

/// `DELETE /admin/keys/NAME`: revokes the key.
async fn revoke_key(state: &State, name: &str) -> Response {
    let Some(keys) = &state.keys else {
        return no_keys();
    };
    match keys.revoke(name).await {
        Ok(c) => {
            let ids: Vec<&str> = c.records.iter().map(|r| r.id.as_str()).collect();
            changed(
                StatusCode::OK,
                c.sharing,
                serde_json::json!({"revoked": name, "id": ids.first(), "ids": ids}),
            )
        }
        Err(e) => key_error(&e),
    }
}

/// The answer to a refused key change.
fn key_error(e: &crate::auth::KeysError) -> Response {
    use crate::auth::KeysError as E;
    let (status, code) = match e {
        E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_key_request"),
        E::NoSuchKey(_) => (StatusCode::NOT_FOUND, "no_such_key"),
        E::Taken(_) => (StatusCode::CONFLICT, "key_exists"),
        E::Conflict(_) => (StatusCode::CONFLICT, "edit_conflict"),
        E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable"),
        E::Read(..) | E::Parse(..) | E::Write(..) => {
            tracing::error!(error = %e, "admin: the keys file failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "keys_file_error",
                "the keys file could not be read or written (see the gateway's log)",
            );
        }
    };
    error(status, code, &e.to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyRequest {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    /// e.g. "90d"
    expires: Option<String>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrent: Option<u32>,
    team: Option<String>,
    /// USD per period.
    budget: Option<f64>,
    budget_tokens: Option<u64>,
    /// "1d", "month", "30d"… (default "month").
    budget_period: Option<String>,
}

/// `PATCH /admin/keys/NAME`: a field left out stays; `null` clears it
/// (no expiry, the configured default limit).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EditKeyRequest {
    scopes: Option<Vec<String>>,
    models: Option<Vec<String>>,
    /// From now, e.g. "30d"; `null`: never expires.
    #[serde(default, deserialize_with = "present")]
    expires: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    tpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    max_concurrent: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    team: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    budget_tokens: Option<Option<u64>>,
    /// `null`: the default ("month").
    #[serde(default, deserialize_with = "present")]
    budget_period: Option<Option<String>>,
}

/// A field that is present: `Some(None)` for `null`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

fn no_keys() -> Response {
    error(
        StatusCode::CONFLICT,
        "no_keys_file",
        "no auth.keys_file is configured",
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code}});
    json(status, Bytes::from(body.to_string()))
}

fn unauthorized() -> Response {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid admin bearer token is required",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Whether the request carries the admin token (compared in constant time).
/// Without a configured token (loopback only, see config validation) it is open.
fn authorized(headers: &http::HeaderMap, token: &Secret) -> bool {
    if token.is_empty() {
        return true;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
    let got = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    // Hashing first makes the comparison length-independent too.
    subtle::ConstantTimeEq::ct_eq(expected.as_ref(), got.as_ref()).into()
}

/// The whole body, or `None` when it fails or passes `limit` bytes.
async fn read_limited(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buf.len() + data.len() > limit {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}
