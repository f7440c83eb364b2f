//! HTTPS on TCP: TLS (tokio-rustls, ALPN h2 + http/1.1) and hyper-util's
//! auto builder for HTTP/1.1 and HTTP/2. Translates hyper requests to the
//! pipeline's request and back, and advertises HTTP/3 with `Alt-Svc`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::SharedState;
use crate::exchange::{BodyError, GatewayRequest, Protocol};
use crate::metrics;
use crate::pipeline;
use crate::shutdown::{Shutdown, TrackedExecutor};

/// Everything a TCP connection task needs.
#[derive(Clone)]
pub struct HttpListener {
    pub tls: Arc<rustls::ServerConfig>,
    pub state: SharedState,
    /// The UDP port HTTP/3 is served on, advertised with `Alt-Svc`.
    pub h3_port: Option<u16>,
    pub shutdown: Shutdown,
}

impl HttpListener {
    /// Accepts connections until the drain starts.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.draining() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let this = self.clone();
                    self.shutdown
                        .spawn(async move { this.connection(tcp, peer).await });
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!("tcp listener stopped accepting");
    }

    async fn connection(self, tcp: TcpStream, peer: SocketAddr) {
        metrics::tcp::opened();
        let span = tracing::info_span!("conn", protocol = "tcp", remote = %peer);
        self.serve_connection(tcp, peer).instrument(span).await;
        metrics::tcp::closed();
    }

    async fn serve_connection(self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        // Settings as of the connection's start (a reload applies to new connections).
        let (config, alt_max_age) = {
            let state = self.state.load();
            (
                state.config.http.clone(),
                state.config.quic.alt_svc_max_age.get(),
            )
        };
        let handshake = TlsAcceptor::from(self.tls.clone()).accept(tcp);
        let tls = tokio::select! {
            _ = self.shutdown.draining() => return,
            r = tokio::time::timeout(config.header_read_timeout.get(), handshake) => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics::tcp::handshake_failed();
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::tcp::handshake_failed();
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
        };

        let state = self.state.clone();
        let alt_svc = self.h3_port.and_then(|port| alt_svc(port, alt_max_age));
        let span = tracing::Span::current();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let state = state.load_full();
            let alt_svc = alt_svc.clone();
            let span = span.clone();
            async move {
                let protocol = if req.version() == http::Version::HTTP_2 {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                let (parts, body) = req.into_parts();
                let request = GatewayRequest {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    body: body
                        .map_err(|e| -> BodyError { Box::new(e) })
                        .boxed_unsync(),
                    protocol,
                    peer,
                    handshake: None,
                };
                let mut resp = pipeline::handle(&state, request).instrument(span).await;
                if let Some(v) = alt_svc {
                    resp.headers_mut().insert(http::header::ALT_SVC, v);
                }
                Ok::<_, Infallible>(resp)
            }
        });

        let mut builder = auto::Builder::new(TrackedExecutor(self.shutdown.tracker().clone()));
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout.get())
            .max_buf_size(config.max_header_bytes.as_usize().max(8192))
            .keep_alive(config.keep_alive);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes.get()).unwrap_or(u32::MAX));
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.shutdown.draining() => {
                // HTTP/2 GOAWAY, or close after the current HTTP/1.1 response.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = self.shutdown.forced() => return,
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// `Alt-Svc: h3=":PORT"; ma=SECONDS`.
pub fn alt_svc(udp_port: u16, max_age: std::time::Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("h3=\":{udp_port}\"; ma={}", max_age.as_secs())).ok()
}
