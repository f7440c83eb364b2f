//! The admin listener: plain HTTP/1.1 on its own address (loopback by
//! default), never on the public port. `/health` says the process is alive;
//! `/ready` says it should receive traffic (not while draining).

use std::convert::Infallible;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::exchange::{json, Response};
use crate::listener::SharedState;
use crate::shutdown::Shutdown;

pub async fn serve(listener: TcpListener, state: SharedState, shutdown: Shutdown) {
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
        shutdown.spawn(async move {
            let sd2 = sd.clone();
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let resp = route(&req, &state, &sd2);
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

fn route(req: &hyper::Request<Incoming>, state: &SharedState, shutdown: &Shutdown) -> Response {
    match (req.method(), req.uri().path()) {
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
