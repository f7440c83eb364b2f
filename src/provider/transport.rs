//! The upstream HTTP client: hyper-util's pooled client over rustls, without
//! reqwest's layers. reqwest turned each request's URI back into a string
//! and re-parsed it as a `Url` in its redirect layer (even with redirects
//! off), went through a retry layer, and parsed a `Url` again for the
//! response: 6–9% of the gateway's CPU per request (BENCHMARKS.md). What it
//! gave that users rely on is kept here:
//! - certificate verification by the platform (`rustls-platform-verifier`:
//!   the system's roots, as reqwest did), ring as the crypto provider;
//! - HTTP/2 when the upstream offers it over ALPN, HTTP/1.1 otherwise;
//! - the `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY`
//!   environment proxies (curl's rules, read when the client is built, at
//!   start-up and on every reload): `https://` upstreams through a `CONNECT`
//!   tunnel, `http://` ones as absolute-form requests to the proxy, with
//!   the proxy URL's `user:password` as `Proxy-Authorization`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::Uri;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::UpstreamError;
use crate::exchange::{Body as ResponseBody, BodyError};

type Https = hyper_rustls::HttpsConnector<ProxyConnector>;

/// One pooled upstream client (cheap to clone: the pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Https, Full<Bytes>>,
    proxies: Arc<Matcher>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    pub fn new(connect_timeout: Duration) -> Result<HttpClient, String> {
        HttpClient::with_proxies(connect_timeout, Matcher::from_env())
    }

    pub fn with_proxies(connect_timeout: Duration, proxies: Matcher) -> Result<HttpClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
            .map_err(|e| format!("cannot load the platform's certificate roots: {e}"))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot build the upstream TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let proxies = Arc::new(proxies);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(ProxyConnector {
                http,
                proxies: proxies.clone(),
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_adaptive_window(true)
            .build(https);
        Ok(HttpClient { client, proxies })
    }

    /// `Proxy-Authorization` for a plain-HTTP upstream sent through a
    /// proxy with credentials (a tunnel carries its own, in `CONNECT`).
    pub fn forward_proxy_auth(&self, uri: &Uri) -> Option<HeaderValue> {
        if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            return None;
        }
        self.proxies.intercept(uri)?.basic_auth().cloned()
    }

    /// Sends one request; the error keeps only what kind of failure it was.
    pub async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Response, UpstreamError> {
        self.client.request(req).await.map_err(|e| {
            // The innermost cause is the useful part ("Connection refused");
            // hyper-util's outer messages name no URL, nor does this.
            let cause = innermost(&e);
            if e.is_connect() {
                UpstreamError::Connect(cause)
            } else {
                UpstreamError::Failed(cause)
            }
        })
    }
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An upstream response, its body still streaming.
pub type Response = http::Response<Incoming>;

/// An upstream response body as the relay reads it: its data frames (an
/// upstream's trailers stay behind, as with reqwest), errors boxed.
pub fn body(resp: Response) -> ResponseBody {
    DataOnly(resp.into_body()).boxed_unsync()
}

struct DataOnly(Incoming);

impl Body for DataOnly {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            return match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if !frame.is_data() => continue,
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// TCP to the upstream, or to the proxy that the environment names for it.
#[derive(Clone)]
struct ProxyConnector {
    http: HttpConnector,
    proxies: Arc<Matcher>,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, BodyError>> + Send>>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = Conn;
    type Error = BodyError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> ConnectFuture {
        let mut http = self.http.clone();
        let proxy = self.proxies.intercept(&dst);
        Box::pin(async move {
            let Some(proxy) = proxy else {
                let io = http.call(dst).await?;
                return Ok(Conn { io, forward: false });
            };
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.call(dst).await?;
                Ok(Conn { io, forward: false })
            } else {
                let io = http.call(proxy.uri().clone()).await?;
                Ok(Conn { io, forward: true })
            }
        })
    }
}

/// A TCP connection; `forward`: to a proxy that takes absolute-form
/// requests (hyper then writes the whole URL in the request line).
struct Conn {
    io: TokioIo<tokio::net::TcpStream>,
    forward: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forward)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
