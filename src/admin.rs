//! The admin listener: plain HTTP/1.1 on its own address (loopback by
//! default), never on the public port. `/health` says the process is alive;
//! `/ready` says it should receive traffic (not while draining); `/metrics`
//! is the Prometheus exposition, behind the admin token when one is set
//! (required off loopback).

use std::convert::Infallible;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::Secret;
use crate::exchange::{full, json, Response};
use crate::listener::SharedState;
use crate::shutdown::Shutdown;

pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    prometheus: PrometheusHandle,
    shutdown: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.draining() => break,
            a = listener.accept() => a,
        };
        let Ok((tcp, _peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let sd = shutdown.clone();
        let prometheus = prometheus.clone();
        shutdown.spawn(async move {
            let sd2 = sd.clone();
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let resp = route(&req, &state, &prometheus, &sd2);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = sd.draining() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn route(
    req: &hyper::Request<Incoming>,
    state: &SharedState,
    prometheus: &PrometheusHandle,
    shutdown: &Shutdown,
) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            if !authorized(req.headers(), &state.load().config.admin.token) {
                let mut resp = json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":{"message":"a valid admin bearer token is required","type":"authentication_error","code":"unauthorized"}}"#,
                );
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return resp;
            }
            let mut resp = http::Response::new(full(prometheus.render()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/health") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET, "/ready") => {
            if shutdown.is_draining() {
                json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
            } else {
                let s = state.load();
                let body = serde_json::json!({
                    "status": "ready",
                    "routes": s.config.routes.len(),
                    "providers": s.providers.len(),
                });
                json(StatusCode::OK, body.to_string())
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"not found","type":"invalid_request_error","code":"not_found"}}"#,
        ),
    }
}

/// Whether the request carries the admin token (compared in constant time).
/// Without a configured token (loopback only, see config validation) it is open.
fn authorized(headers: &http::HeaderMap, token: &Secret) -> bool {
    if token.is_empty() {
        return true;
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
    let got = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    // Hashing first makes the comparison length-independent too.
    subtle::ConstantTimeEq::ct_eq(expected.as_ref(), got.as_ref()).into()
}
