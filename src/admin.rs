//! The admin listener: plain HTTP/1.1 on its own address (loopback by
//! default), never on the public port.
//!
//! - `GET /health`: the process is alive.
//! - `GET /ready`: it should receive traffic (not while draining).
//! - `GET /metrics`: Prometheus exposition; needs the admin token when one
//!   is set (required off loopback).
//! - `POST /admin/reload`: re-read the configuration file; needs the admin
//!   token (without one configured the admin API is off).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::Secret;
use crate::exchange::{full, json, Response};
use crate::listener::SharedState;
use crate::reload::Reloader;
use crate::shutdown::Shutdown;

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
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.draining() => break,
                a = listener.accept() => a,
            };
            let Ok((tcp, _peer)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let this = self.clone();
            self.shutdown.spawn(async move {
                let handler = this.clone();
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.route(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = this.shutdown.draining() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }

    async fn route(&self, req: hyper::Request<Incoming>) -> Response {
        let token = self.state.load().config.admin.token.clone();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => json(StatusCode::OK, r#"{"status":"ok"}"#),
            (&Method::GET, "/ready") => self.ready(),
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
                let mut resp = http::Response::new(full(prometheus.render()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (&Method::POST, "/admin/reload") => {
                if token.is_empty() {
                    return error(
                        StatusCode::FORBIDDEN,
                        "admin_disabled",
                        "the admin API is off: set admin.token to use it (or send SIGHUP)",
                    );
                }
                if !authorized(req.headers(), &token) {
                    return unauthorized();
                }
                self.reload().await
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "not found"),
        }
    }

    /// Ready unless draining or some route has no usable target; lists
    /// each provider's health and each target's breaker either way.
    fn ready(&self) -> Response {
        let s = self.state.load();
        let providers: serde_json::Map<String, serde_json::Value> = s
            .providers
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    serde_json::json!({"healthy": p.common().is_healthy()}),
                )
            })
            .collect();
        let mut targets = serde_json::Map::new();
        let mut unroutable = Vec::new();
        for route in s.router.routes() {
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
        let draining = self.shutdown.is_draining();
        let ready = !draining && unroutable.is_empty();
        let body = serde_json::json!({
            "status": if draining { "draining" } else if ready { "ready" } else { "degraded" },
            "routes_without_target": unroutable,
            "providers": providers,
            "targets": targets,
            "admission": {"available": s.admission.available(), "queued": s.admission.depth()},
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, body.to_string())
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
