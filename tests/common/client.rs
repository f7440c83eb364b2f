//! Real clients for every protocol: HTTP/3 with h3 + h3-quinn, HTTP/2 and
//! HTTP/1.1 with reqwest (hyper) over TLS. One interface, so each test case
//! runs unchanged over all three.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
    H3,
}

impl Proto {
    /// `h1`, `h2`, `h3`: for names that must differ per protocol.
    pub fn tag(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// A request body: whole (with Content-Length) or streamed in chunks without one.
pub enum TestBody {
    Empty,
    Json(Value),
    Bytes(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
    /// Chunks sent this far apart.
    Slow(Vec<Vec<u8>>, std::time::Duration),
}

pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    rx: mpsc::Receiver<Result<Bytes, String>>,
}

impl TestResponse {
    /// The next body chunk; `Some(Err)` if the stream failed (reset, cut).
    pub async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("no body chunk within 10 s")
    }

    /// The whole body; panics if the stream failed.
    pub async fn text(mut self) -> String {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            out.extend_from_slice(&c.expect("body stream failed"));
        }
        String::from_utf8(out).expect("utf-8 body")
    }

    /// The whole body and how it ended (`Err` if the stream failed).
    pub async fn text_and_end(mut self) -> (String, Result<(), String>) {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            match c {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (String::from_utf8_lossy(&out).into_owned(), Err(e)),
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), Ok(()))
    }

    pub async fn json(self) -> Value {
        let text = self.text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Client {
    pub proto: Proto,
    inner: Inner,
}

enum Inner {
    Reqwest {
        client: reqwest::Client,
        base: String,
    },
    H3 {
        send: tokio::sync::Mutex<h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>>,
        authority: String,
        _endpoint: quinn::Endpoint,
    },
}

fn roots(ca_pem: &[u8]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// An HTTP/3 client's TLS configuration trusting `ca_pem` (TLS 1.3, ALPN
/// h3), sending early data on resumption when `early_data`.
pub fn h3_tls_config(ca_pem: &[u8], early_data: bool) -> rustls::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots(ca_pem))
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    tls
}

/// [`h3_tls_config`] as a QUIC client configuration.
pub fn h3_client_config(ca_pem: &[u8], early_data: bool) -> quinn::ClientConfig {
    quic_client_config(h3_tls_config(ca_pem, early_data))
}

/// A QUIC client configuration from a TLS one.
pub fn quic_client_config(tls: rustls::ClientConfig) -> quinn::ClientConfig {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

impl Client {
    /// Connects to the gateway: `tcp` for HTTP/1.1 and HTTP/2, `udp` for HTTP/3.
    pub async fn connect(proto: Proto, tcp: SocketAddr, udp: SocketAddr, ca_pem: &[u8]) -> Client {
        Self::connect_from(proto, tcp, udp, ca_pem, "127.0.0.1".parse().unwrap()).await
    }

    /// The same, from a chosen loopback source address (another "client").
    pub async fn connect_from(
        proto: Proto,
        tcp: SocketAddr,
        udp: SocketAddr,
        ca_pem: &[u8],
        source: std::net::IpAddr,
    ) -> Client {
        Self::try_connect_from(proto, tcp, udp, ca_pem, source)
            .await
            .expect("connect")
    }

    /// The same, with a refused connection (HTTP/3 handshake) as an error.
    pub async fn try_connect_from(
        proto: Proto,
        tcp: SocketAddr,
        udp: SocketAddr,
        ca_pem: &[u8],
        source: std::net::IpAddr,
    ) -> Result<Client, String> {
        Self::try_connect_named(proto, tcp, udp, ca_pem, source, "localhost").await
    }

    /// The same, asking for `host` (SNI and authority).
    pub async fn try_connect_named(
        proto: Proto,
        tcp: SocketAddr,
        udp: SocketAddr,
        ca_pem: &[u8],
        source: std::net::IpAddr,
        host: &str,
    ) -> Result<Client, String> {
        let inner = match proto {
            Proto::H1 | Proto::H2 => {
                let cert = reqwest::Certificate::from_pem(ca_pem).unwrap();
                let mut b = reqwest::Client::builder()
                    .tls_certs_only([cert])
                    .resolve(host, tcp)
                    .local_address(source)
                    .pool_max_idle_per_host(4);
                b = if proto == Proto::H1 {
                    b.http1_only()
                } else {
                    b.http2_prior_knowledge()
                };
                Inner::Reqwest {
                    client: b.build().unwrap(),
                    base: format!("https://{host}:{}", tcp.port()),
                }
            }
            Proto::H3 => {
                let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0)).unwrap();
                endpoint.set_default_client_config(h3_client_config(ca_pem, false));
                let conn = endpoint
                    .connect(udp, host)
                    .unwrap()
                    .await
                    .map_err(|e| format!("QUIC handshake: {e}"))?;
                let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                });
                Inner::H3 {
                    send: tokio::sync::Mutex::new(send),
                    authority: format!("{host}:{}", udp.port()),
                    _endpoint: endpoint,
                }
            }
        };
        Ok(Client { proto, inner })
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(Method::GET, path, &[], TestBody::Empty).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> TestResponse {
        self.request(Method::POST, path, &[], TestBody::Json(body))
            .await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> TestResponse {
        self.try_request(method, path, headers, body)
            .await
            .expect("request failed")
    }

    /// The same, with a client-side refusal (if any) as an error.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Result<TestResponse, String> {
        match &self.inner {
            Inner::Reqwest { client, base } => {
                let mut req = client.request(method, format!("{base}{path}"));
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                reqwest_send(reqwest_body(req, body)).await
            }
            Inner::H3 {
                send, authority, ..
            } => {
                let mut b = http::Request::builder()
                    .method(method)
                    .uri(format!("https://{authority}{path}"));
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                h3_send(send, b, body).await
            }
        }
    }
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type BodySender = mpsc::Sender<Result<Bytes, String>>;

/// A reqwest request with `body`.
fn reqwest_body(req: reqwest::RequestBuilder, body: TestBody) -> reqwest::RequestBuilder {
    match body {
        TestBody::Empty => req,
        TestBody::Json(v) => req
            .header("content-type", "application/json")
            .body(v.to_string()),
        TestBody::Bytes(b) => req.body(b),
        TestBody::Chunked(chunks) => {
            let s = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
            req.body(reqwest::Body::wrap_stream(s))
        }
        TestBody::Slow(chunks, gap) => {
            let s = futures_util::stream::unfold(chunks.into_iter(), move |mut it| async move {
                let c = it.next()?;
                // The slow client under test: its chunks this far apart.
                tokio::time::sleep(gap).await;
                Some((Ok::<_, std::io::Error>(c), it))
            });
            req.body(reqwest::Body::wrap_stream(s))
        }
    }
}

/// Sends a reqwest request; a task reads the response body into the
/// [`TestResponse`]'s channel.
async fn reqwest_send(req: reqwest::RequestBuilder) -> Result<TestResponse, String> {
    let (tx, rx) = mpsc::channel(64);
    let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    tokio::spawn(async move {
        let mut resp = resp;
        loop {
            let item = match resp.chunk().await {
                Ok(Some(b)) => Ok(b),
                Ok(None) => break,
                Err(e) => Err(format!("{e:?}")),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break; // reader gone: dropping `resp` cancels the request
            }
        }
    });
    Ok(TestResponse {
        status,
        headers,
        rx,
    })
}

/// An h3 request's body as chunks, the gap between them (slow bodies), and
/// the headers it implies.
fn h3_body(
    mut b: http::request::Builder,
    body: TestBody,
) -> (http::request::Builder, Vec<Vec<u8>>, Option<Duration>) {
    let mut gap = None;
    let chunks: Vec<Vec<u8>> = match body {
        TestBody::Slow(c, g) => {
            gap = Some(g);
            c
        }
        TestBody::Empty => vec![],
        TestBody::Json(v) => {
            b = b.header("content-type", "application/json");
            vec![v.to_string().into_bytes()]
        }
        TestBody::Bytes(bytes) => {
            b = b.header("content-length", bytes.len());
            vec![bytes]
        }
        TestBody::Chunked(c) => c,
    };
    (b, chunks, gap)
}

/// Sends an h3 request and its body; a task reads the response body into
/// the [`TestResponse`]'s channel.
async fn h3_send(
    send: &tokio::sync::Mutex<H3Send>,
    b: http::request::Builder,
    body: TestBody,
) -> Result<TestResponse, String> {
    let (tx, rx) = mpsc::channel(64);
    let (b, chunks, gap) = h3_body(b, body);
    // The reader keeps a handle: h3 closes the connection when the last one goes.
    let keep_alive = send.lock().await.clone();
    let sent = send.lock().await.send_request(b.body(()).unwrap()).await;
    let mut stream = match sent {
        Ok(s) => s,
        Err(e) => return Err(format!("{e:?}")),
    };
    for c in chunks {
        if let Some(g) = gap {
            // The slow client under test: its chunks this far apart.
            tokio::time::sleep(g).await;
        }
        if stream.send_data(Bytes::from(c)).await.is_err() {
            break; // the server may stop reading (413): its answer still comes
        }
    }
    let _ = stream.finish().await;
    let resp = stream.recv_response().await.expect("h3 response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    tokio::spawn(read_h3_body(stream, keep_alive, tx));
    Ok(TestResponse {
        status,
        headers,
        rx,
    })
}

/// Forwards an h3 response body to `tx` until it ends, fails, or the reader goes.
async fn read_h3_body(mut stream: H3Stream, keep_alive: H3Send, tx: BodySender) {
    let _keep_alive = keep_alive;
    loop {
        let item = match stream.recv_data().await {
            Ok(Some(mut buf)) => Ok(buf.copy_to_bytes(buf.remaining())),
            Ok(None) => break,
            Err(e) => Err(format!("{e}")),
        };
        let failed = item.is_err();
        let gone = tx.send(item).await.is_err();
        if failed {
            break;
        }
        if gone {
            // Reader gone: dropping the stream stops it (quinn
            // sends STOP_SENDING), like a browser tab closing.
            // Not `stop_sending`: h3-quinn panics on it while
            // h3 has a read of the next frame in flight.
            break;
        }
    }
}

impl Client {
    /// Sends a `POST` whose `Content-Length` says `declared` bytes but that
    /// delivers only `part` and then stalls, and waits for the response's
    /// status (HTTP/2 and HTTP/3 let it arrive while the upload is unfinished).
    pub async fn post_unfinished(
        &self,
        path: &str,
        declared: usize,
        part: Vec<u8>,
    ) -> Result<u16, String> {
        use futures_util::StreamExt;
        match &self.inner {
            Inner::Reqwest { client, base } => {
                let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(part) })
                    .chain(futures_util::stream::pending());
                let resp = client
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .header("content-length", declared)
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                Ok(resp.status().as_u16())
            }
            Inner::H3 {
                send, authority, ..
            } => {
                let req = http::Request::builder()
                    .method(Method::POST)
                    .uri(format!("https://{authority}{path}"))
                    .header("content-type", "application/json")
                    .header("content-length", declared)
                    .body(())
                    .map_err(|e| e.to_string())?;
                let mut stream = send
                    .lock()
                    .await
                    .send_request(req)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                stream
                    .send_data(Bytes::from(part))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let resp = stream.recv_response().await.map_err(|e| format!("{e:?}"))?;
                Ok(resp.status().as_u16())
            }
        }
    }
}
