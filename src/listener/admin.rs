//! The admin listener: HTTP/1.1 over plain TCP, each request handed to
//! `handle` (the admin API, [`crate::admin::Admin::route`]).

use std::convert::Infallible;
use std::future::Future;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::exchange::{Body, BodyError, Response};
use crate::shutdown::Shutdown;
use crate::state::SharedState;

/// Serves until the process exits, not only until the drain: `/ready`
/// answers 503 through the whole drain (load balancers must see it) and
/// `/health` keeps answering. Spawn with [`Shutdown::spawn_until_exit`].
/// Addresses outside `[network] admin_allow`/`admin_deny` are dropped
/// unanswered.
pub async fn serve<F, Fut>(listener: TcpListener, state: SharedState, shutdown: Shutdown, handle: F)
where
    F: Fn(http::Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.exiting() => break,
            a = listener.accept() => a,
        };
        let Ok((tcp, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if !state.load().admin_filter.permits(peer.ip()) {
            continue; // dropped: not even an answer
        }
        let (handle, exiting) = (handle.clone(), shutdown.clone());
        shutdown.spawn_until_exit(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let req = req.map(|b| b.map_err(boxed).boxed_unsync());
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = exiting.exiting() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

fn boxed(e: hyper::Error) -> BodyError {
    Box::new(e)
}
