//! HTTPS on TCP: TLS (tokio-rustls, ALPN h2 + http/1.1) and hyper-util's
//! auto builder for HTTP/1.1 and HTTP/2. Translates hyper requests to the
//! pipeline's request and back, and advertises HTTP/3 with `Alt-Svc`.
//!
//! Every connection is bounded in time and count: caps per address and in
//! total before any TLS work; `header_read_timeout` from accept to the first
//! request's headers; `idle_timeout` while no request is in progress;
//! `write_timeout` when the client stops reading (its requests end and their
//! upstream requests are dropped); HTTP/2 PINGs find dead peers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

mod stall;

use stall::{StreamExecutor, StreamProgress, WriteTimeout};

use super::caps::ConnCounts;
use crate::config::HttpConfig;
use crate::exchange::{self, Body, BodyError, GatewayRequest, Protocol, Response};
use crate::metrics;
use crate::pipeline;
use crate::shutdown::Shutdown;
use crate::state::{SharedState, State};

/// How long a connection closed for idleness may take to say goodbye
/// (HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Everything a TCP connection task needs.
#[derive(Clone)]
pub struct HttpListener {
    pub tls: Arc<rustls::ServerConfig>,
    pub state: SharedState,
    /// The UDP port HTTP/3 is served on, advertised with `Alt-Svc`.
    pub h3_port: Option<u16>,
    pub shutdown: Shutdown,
    /// Open connections, in total and per address (`[http] max_connections*`).
    pub conns: Arc<ConnCounts>,
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
                    let (max, per_ip) = {
                        let http = &self.state.load().config.http;
                        (http.max_connections, http.max_connections_per_ip)
                    };
                    // Before any TLS work: a refused connection costs a close.
                    let slot = match self.conns.admit(peer.ip(), max as usize, per_ip as usize) {
                        Ok(slot) => slot,
                        Err(reason) => {
                            metrics::tcp::refused(reason);
                            tracing::debug!(remote = %peer, reason, "connection refused");
                            drop(tcp);
                            continue;
                        }
                    };
                    let this = self.clone();
                    self.shutdown.spawn(async move {
                        this.connection(tcp, peer).await;
                        drop(slot);
                    });
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
        let span = tracing::info_span!("conn", transport = "tcp", remote = %peer);
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
        // Everything up to the first request's headers shares one deadline.
        let first_request_by = Instant::now() + config.header_read_timeout.get();
        let Some(tls) = self.tls_handshake(tcp, first_request_by).await else {
            return;
        };

        let activity = Arc::new(Activity::default());
        let state = self.state.clone();
        let alt_svc = self.h3_port.and_then(|port| alt_svc(port, alt_max_age));
        let span = tracing::Span::current();
        let requests = activity.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let in_progress = requests.begin();
            let state = state.load_full();
            let alt_svc = alt_svc.clone();
            let span = span.clone();
            async move {
                let resp = handle_request(&state, req, peer, alt_svc, span).await;
                Ok::<_, Infallible>(resp.map(|body| InProgress {
                    body,
                    _guard: in_progress,
                }))
            }
        });

        let builder = self.builder(&config);
        let io = TokioIo::new(WriteTimeout::new(tls, config.write_timeout.get()));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = activity.idle(first_request_by, config.idle_timeout.get());
        tokio::pin!(idle);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = &mut idle => {
                tracing::debug!("closing a connection without a request in progress");
                // HTTP/2 GOAWAY; an idle HTTP/1.1 connection closes at once.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = tokio::time::sleep(CLOSE_GRACE) => Ok(()),
                    _ = self.shutdown.forced() => Ok(()),
                }
            }
            _ = self.shutdown.draining() => {
                // HTTP/2 GOAWAY, or close after the current HTTP/1.1 response.
                conn.as_mut().graceful_shutdown();
                // Without a request in progress, a client that does not
                // close its end (nor answer GOAWAY's PING) is not waited for.
                let done = Instant::now() + CLOSE_GRACE;
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = activity.idle(done, CLOSE_GRACE) => Ok(()),
                    _ = self.shutdown.forced() => return,
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// The TLS handshake, bounded by the first-request deadline; `None`
    /// when it fails, times out or the drain starts first.
    async fn tls_handshake(
        &self,
        tcp: TcpStream,
        first_request_by: Instant,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let handshake = TlsAcceptor::from(self.tls.clone()).accept(tcp);
        tokio::select! {
            _ = self.shutdown.draining() => None,
            r = tokio::time::timeout_at(first_request_by, handshake) => match r {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    metrics::tcp::handshake_failed();
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    metrics::tcp::handshake_failed();
                    tracing::debug!("TLS handshake timed out");
                    None
                }
            },
        }
    }

    /// hyper's HTTP/1.1 and HTTP/2 settings from `[http]`.
    fn builder(&self, config: &HttpConfig) -> auto::Builder<StreamExecutor> {
        let mut builder = auto::Builder::new(StreamExecutor {
            tracker: self.shutdown.tracker().clone(),
            write_timeout: config.write_timeout.get(),
        });
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout.get())
            .max_buf_size(config.max_header_bytes.as_usize().max(8192))
            .keep_alive(config.keep_alive);
        let ping = config.keep_alive_interval.get();
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes.get()).unwrap_or(u32::MAX))
            .keep_alive_interval((!ping.is_zero()).then_some(ping))
            .keep_alive_timeout(ping);
        builder
    }
}

/// One hyper request through the pipeline, and its response with `Alt-Svc`
/// (and without a body for HEAD).
async fn handle_request(
    state: &State,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    alt_svc: Option<HeaderValue>,
    span: tracing::Span,
) -> Response {
    let protocol = if req.version() == http::Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let (parts, body) = req.into_parts();
    let head = parts.method == http::Method::HEAD;
    let body = if refuse_before_continue(&parts.headers, &state.config) {
        // Never polled, so hyper never invites the body with
        // `100 Continue`; the pipeline refuses on the length.
        exchange::empty()
    } else {
        body.map_err(|e| -> BodyError { Box::new(e) })
            .boxed_unsync()
    };
    let request = GatewayRequest {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        protocol,
        peer,
        handshake: None,
        connection: None,
    };
    let mut resp = pipeline::handle(state, request).instrument(span).await;
    if let Some(v) = alt_svc {
        resp.headers_mut().insert(http::header::ALT_SVC, v);
    }
    if head {
        resp = without_body(resp);
    }
    resp
}

/// Whether a request asks to be invited to send a body (`Expect:
/// 100-continue`) that its declared length already puts over
/// `server.max_request_body`: then it is refused without the invitation.
fn refuse_before_continue(headers: &http::HeaderMap, config: &crate::config::Config) -> bool {
    let expects = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    expects
        && headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > config.server.max_request_body.get())
}

/// The answer to a HEAD request: GET's status and headers, no body (hyper
/// sends none on HTTP/1.1 but would on HTTP/2). A known length stays in
/// `Content-Length`; dropping the body releases whatever produced it.
fn without_body(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    Response::from_parts(parts, exchange::empty())
}

/// Requests in progress on one connection, to tell when it is idle.
#[derive(Debug, Default)]
struct Activity {
    open: AtomicUsize,
    /// Whether a first request has arrived (until then, the first-request
    /// deadline applies instead of the idle timeout).
    started: AtomicBool,
    changed: Notify,
}

/// One request in progress; its response body carries it to the end.
struct RequestGuard(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.started.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        RequestGuard(self.clone())
    }

    /// Resolves once no request has been in progress for `idle` (or, before
    /// the first request, at `first_by`).
    async fn idle(&self, first_by: Instant, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) == 0 {
                let until = if self.started.load(Ordering::Relaxed) {
                    Instant::now() + idle
                } else {
                    first_by
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => return,
                    _ = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress until
/// hyper is done with it (sent, or dropped with the connection).
struct InProgress {
    body: Body,
    _guard: RequestGuard,
}

impl HttpBody for InProgress {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        StreamProgress::observe(&poll);
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `Alt-Svc: h3=":PORT"; ma=SECONDS`.
pub fn alt_svc(udp_port: u16, max_age: std::time::Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("h3=\":{udp_port}\"; ma={}", max_age.as_secs())).ok()
}
