//! The TCP edge under hostile timing: silent and idle connections, caps per
//! address, a client that stops reading, HEAD, `Expect: 100-continue`, and
//! a drain that load balancers can see on `/ready`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{chat, Gateway, Proto, TestBody};
use h3gate::config::Duration as Dur;
use http::Method;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Longest a test waits for something that should happen at once or after
/// a short configured timeout.
const BOUND: Duration = Duration::from_secs(10);
const SHORT: Dur = Dur::millis(300);

fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(tls)
}

/// A TCP connection from `source` to `addr`.
async fn tcp_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn try_tls(
    gw: &Gateway,
    source: IpAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(gw.tcp, source).await;
    let connector = tokio_rustls::TlsConnector::from(tls_config(&gw.ca, alpn));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(BOUND, connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake hung")))
}

async fn tls(gw: &Gateway, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    try_tls(gw, [127, 0, 0, 1].into(), alpn)
        .await
        .expect("TLS handshake")
}

/// Reads until the server closes the connection (EOF or an error), within
/// `BOUND`; returns what was read, or `None` if it stayed open.
async fn read_until_closed(s: &mut TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.ok().map(|()| out)
}

/// The HTTP/2 frame types in `bytes` (after the server's part of the preface).
fn h2_frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    types
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const GOAWAY: u8 = 7;

// ---- 1. silent and idle connections ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_after_tls_is_closed() {
    let gw = Gateway::start_with(|c| c.http.header_read_timeout = SHORT).await;
    // No ALPN: the server has to sniff HTTP/1.1 or HTTP/2 from the bytes.
    let mut s = tls(&gw, &[]).await;
    assert!(
        read_until_closed(&mut s).await.is_some(),
        "a connection that sends nothing after TLS is closed"
    );
    let mut s = tls(&gw, &[b"h2"]).await;
    assert!(
        read_until_closed(&mut s).await.is_some(),
        "also when ALPN chose h2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_silent_after_its_preface_is_closed() {
    let gw = Gateway::start_with(|c| c.http.header_read_timeout = SHORT).await;
    let mut s = tls(&gw, &[b"h2"]).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(H2_SETTINGS).await.unwrap();
    s.flush().await.unwrap();
    let got = read_until_closed(&mut s)
        .await
        .expect("an HTTP/2 connection with only its preface is closed");
    assert!(
        h2_frame_types(&got).contains(&GOAWAY),
        "with a GOAWAY: {:?}",
        h2_frame_types(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let gw = Gateway::start_with(|c| {
        c.http.header_read_timeout = Dur::secs(60);
        c.http.idle_timeout = SHORT;
    })
    .await;
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s)
        .await
        .expect("an HTTP/1.1 connection idle after its answer is closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    let mut s = tls(&gw, &[b"h2"]).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(H2_SETTINGS).await.unwrap();
    // HEADERS (END_STREAM | END_HEADERS) for GET /health, HPACK literals.
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.extend_from_slice(&[0x04, 7]); // :path, literal without indexing
    block.extend_from_slice(b"/health");
    block.extend_from_slice(&[0x01, 9]); // :authority
    block.extend_from_slice(b"localhost");
    let len = block.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[1, 0x05, 0, 0, 0, 1]);
    frame.extend_from_slice(&block);
    s.write_all(&frame).await.unwrap();
    let got = read_until_closed(&mut s)
        .await
        .expect("an HTTP/2 connection with no open stream is closed");
    let types = h2_frame_types(&got);
    assert!(types.contains(&1), "the request was answered: {types:?}");
    assert!(types.contains(&GOAWAY), "then GOAWAY: {types:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_peer_that_does_not_answer_pings_is_closed() {
    let gw = Gateway::start_with(|c| {
        c.http.header_read_timeout = Dur::secs(60);
        c.http.idle_timeout = Dur::secs(60);
        c.http.keep_alive_interval = SHORT;
    })
    .await;
    let mut s = tls(&gw, &[b"h2"]).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(H2_SETTINGS).await.unwrap();
    let got = read_until_closed(&mut s)
        .await
        .expect("a peer that never answers a PING is closed");
    assert!(
        h2_frame_types(&got).contains(&6),
        "after a PING: {:?}",
        h2_frame_types(&got)
    );
}

// ---- 2. connection caps ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_before_tls() {
    let gw = Gateway::start_with(|c| {
        c.http.header_read_timeout = Dur::secs(60);
        c.http.max_connections_per_ip = 2;
    })
    .await;
    let one: IpAddr = [127, 0, 0, 1].into();
    let two: IpAddr = [127, 0, 0, 2].into();
    let a = try_tls(&gw, one, &[b"h2"]).await.expect("first");
    let _b = try_tls(&gw, one, &[b"h2"]).await.expect("second");
    assert!(
        try_tls(&gw, one, &[b"h2"]).await.is_err(),
        "a third connection from the same address is refused"
    );
    let _c = try_tls(&gw, two, &[b"h2"])
        .await
        .expect("another address is accepted");
    assert!(
        gw.metric("h3gate_tcp_connections_refused_total{reason=\"max_connections_per_ip\"}")
            .await
            >= 1.0
    );

    drop(a);
    let mut accepted = false;
    for _ in 0..100 {
        if try_tls(&gw, one, &[b"h2"]).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "a closed connection gives its place back");
}

// ---- 3. a client that stops reading ------------------------------------------

/// A client with a tiny receive window and MSS (so its window is full after
/// a few kilobytes) that sends argv[4] and prints the status line, then
/// stops reading, keeping the connection open until its stdin closes.
/// Python's standard library only: it can set `TCP_MAXSEG`.
const STALLED_CLIENT: &str = r#"
import socket, ssl, sys
host, port, ca, request = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 256)
s.connect((host, port))
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname="localhost")
t.sendall(request.encode())
got = b""
while b"\r\n" not in got:
    got += t.recv(256)
print(got.split(b"\r\n")[0].decode(), flush=True)
sys.stdin.read()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_releases_its_upstream() {
    use tokio::io::AsyncBufReadExt;
    let gw = Gateway::start_with(|c| c.http.write_timeout = SHORT).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.ca).unwrap();
    let body = chat("endless", true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut client = tokio::process::Command::new("python3")
        .args(["-c", STALLED_CLIENT, "127.0.0.1"])
        .arg(gw.tcp.port().to_string())
        .arg(&ca)
        .arg(request)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let stdout = client.stdout.take().unwrap();
    let mut status = String::new();
    tokio::time::timeout(
        BOUND,
        tokio::io::BufReader::new(stdout).read_line(&mut status),
    )
    .await
    .expect("the client got its answer's status line")
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // It stopped reading and keeps the connection open: the window fills,
    // the gateway's writes stall.
    let mut dropped = false;
    for _ in 0..3 {
        if gw.upstream.wait_dropped().await {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stalled stream ended and dropped its upstream");
    let _ = client.kill().await;
}

/// An HTTP/2 client that reads everything and answers SETTINGS and PING,
/// but gives the stream it opened a 1000-byte window and never opens it
/// further: its connection is healthy, the stream is stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_its_client_stopped_reading_releases_its_upstream() {
    let gw = Gateway::start_with(|c| c.http.write_timeout = SHORT).await;
    let s = tls(&gw, &[b"h2"]).await;
    let (mut rd, mut wr) = tokio::io::split(s);
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut out = H2_PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 1000.
    out.extend(frame(4, 0, 0, &[0, 4, 0, 0, 0x03, 0xe8]));
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
    for (index, value) in [(4u8, "/v1/chat/completions"), (1, "localhost")] {
        block.push(index); // literal without indexing, indexed name
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block.extend_from_slice(&[0x0f, 0x10, 16]); // content-type (index 31)
    block.extend_from_slice(b"application/json");
    out.extend(frame(1, 0x04, 1, &block)); // HEADERS, END_HEADERS
    let body = chat("endless", true).to_string();
    out.extend(frame(0, 0x01, 1, body.as_bytes())); // DATA, END_STREAM
    wr.write_all(&out).await.unwrap();

    let (status_tx, mut status_rx) = tokio::sync::mpsc::channel::<u8>(16);
    let reader = tokio::spawn(async move {
        let mut head = [0u8; 9];
        while rd.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            match (kind, flags & 1) {
                (4, 0) => wr.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
                (6, 0) => wr.write_all(&frame(6, 1, 0, &payload)).await.unwrap(),
                _ => {}
            }
            if status_tx.send(kind).await.is_err() {
                break;
            }
        }
    });
    let mut kinds = Vec::new();
    while !kinds.contains(&1) {
        let kind = tokio::time::timeout(BOUND, status_rx.recv())
            .await
            .expect("the response headers")
            .expect("the connection stays open");
        kinds.push(kind);
    }
    assert!(
        gw.upstream.wait_dropped().await,
        "the stalled stream ended and dropped its upstream"
    );
    // The connection itself lives on.
    assert!(!reader.is_finished(), "only the stream ended");
    reader.abort();
}

// ---- 4. HEAD -----------------------------------------------------------------

async fn head_has_no_body(proto: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(proto).await;
    for path in ["/health", "/v1/models"] {
        let resp = c
            .try_request(Method::HEAD, path, &[], TestBody::Empty)
            .await
            .unwrap_or_else(|e| panic!("HEAD {path} over {proto:?}: {e}"));
        assert_eq!(resp.status, 200, "HEAD {path}");
        assert!(
            resp.header("content-type").is_some(),
            "HEAD {path} says what GET would send"
        );
        let (body, end) = resp.text_and_end().await;
        assert_eq!(end, Ok(()), "HEAD {path} ends cleanly");
        assert_eq!(body, "", "HEAD {path} has no body");
    }
    // The connection still serves a GET afterwards.
    let resp = c.get("/v1/models").await;
    assert_eq!(resp.status, 200);
    assert!(resp.json().await["data"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_no_body_over_h2() {
    head_has_no_body(Proto::H2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_no_body_over_http1() {
    head_has_no_body(Proto::H1).await
}

// ---- 5. Expect: 100-continue -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_body_over_the_limit_is_refused_without_100_continue() {
    let gw = Gateway::start().await;
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // Within the limit, the body is invited and served.
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    let body = chat("gpt-4o-mini", false).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));
    s.write_all(body.as_bytes()).await.unwrap();
    let rest = read_until_closed(&mut s).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));
}

// ---- 6. drain and /ready -----------------------------------------------------

async fn ready(gw: &Gateway) -> Result<(u16, Value), String> {
    let resp = reqwest::get(format!("http://{}/ready", gw.admin))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((
        status,
        serde_json::from_str(&text).map_err(|e| e.to_string())?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_draining() {
    let mut gw = Gateway::start().await;
    assert_eq!(ready(&gw).await.unwrap().0, 200);
    let c = gw.client(Proto::H2).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    resp.chunk().await.unwrap().unwrap();

    gw.begin_shutdown();
    let (status, body) = ready(&gw)
        .await
        .expect("the admin listener still answers while draining");
    assert_eq!(status, 503);
    assert_eq!(body["status"], "draining");
    let health = reqwest::get(format!("http://{}/health", gw.admin))
        .await
        .expect("/health still answers while draining");
    assert_eq!(health.status(), 200);

    gw.upstream.release();
    let (_, end) = resp.text_and_end().await;
    assert_eq!(end, Ok(()), "the in-flight stream finished");
    gw.stopped().await.expect("a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_accepting_while_not_ready() {
    let mut gw = Gateway::start_with(|c| c.server.drain_delay = Dur::secs(3)).await;
    gw.begin_shutdown();
    assert_eq!(ready(&gw).await.unwrap().0, 503);
    // New connections are still served during the delay.
    let c = gw.client(Proto::H1).await;
    let resp = c.get("/v1/models").await;
    assert_eq!(resp.status, 200);
    drop(c);
    gw.stopped().await.expect("a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_is_an_error() {
    let mut gw = Gateway::start_with(|c| c.server.shutdown_timeout = SHORT).await;
    let c = gw.client(Proto::H1).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("endless", true))
        .await;
    resp.chunk().await.unwrap().unwrap();
    gw.begin_shutdown();
    let result = gw.stopped().await;
    assert!(
        result.is_err(),
        "streams cut at the deadline make the run fail: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_node_that_still_serves_is_ready() {
    let gw = Gateway::start_with(|c| {
        c.retry.max_attempts = 1;
        for p in &mut c.providers {
            p.breaker.consecutive_failures = 1;
        }
    })
    .await;
    let c = gw.client(Proto::H1).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("dead", false))
        .await;
    assert!(resp.status >= 500);
    let (status, body) = ready(&gw).await.unwrap();
    assert_eq!(status, 200, "other routes still serve: {body}");
    assert_eq!(body["status"], "degraded");
    assert!(
        body["routes_without_target"]
            .as_array()
            .unwrap()
            .contains(&Value::from("dead")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_idle_h2_client_does_not_hold_the_drain() {
    let mut gw = Gateway::start_with(|c| c.http.header_read_timeout = Dur::secs(60)).await;
    // Preface and SETTINGS only: it never answers GOAWAY's PING nor closes.
    let mut s = tls(&gw, &[b"h2"]).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(H2_SETTINGS).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf).await.unwrap(); // the server's SETTINGS
    gw.begin_shutdown();
    gw.stopped()
        .await
        .expect("a clean drain: an idle connection is not waited for");
    drop(s);
}

/// An HTTP/1.1 client that goes away mid-upload while its request waits for
/// admission gives its queue place back at once (HTTP/1.1 has no other sign
/// of it than the body failing: the gateway reads a little ahead while
/// queued), and the request ends as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_http1_client_that_goes_away_gives_its_place_back() {
    let gw = Gateway::start_with(|c| {
        c.admission.max_concurrent = 1;
        c.admission.max_queue = 1;
        c.admission.max_wait = Dur::secs(60);
    })
    .await;
    let c = gw.client(Proto::H1).await;
    let held = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    assert_eq!(held.status, 200, "the one slot is taken");

    let depth = "h3gate_admission_queue_depth{scope=\"gateway\"}";
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n\
                content-type: application/json\r\ncontent-length: 100000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b' '; 1000]).await.unwrap();
    s.flush().await.unwrap();
    let until = |want: f64| {
        let gw = &gw;
        async move {
            tokio::time::timeout(BOUND, async {
                while gw.metric(depth).await != want {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(until(1.0).await, "the upload waits in the queue");
    drop(s); // the client gives up mid-upload
    assert!(until(0.0).await, "its queue place came back");
    let cancelled = gw
        .metric("h3gate_request_outcomes_total{protocol=\"http/1.1\",outcome=\"cancelled\"}")
        .await;
    assert_eq!(cancelled, 1.0);
    gw.upstream.release();
    assert!(held.text().await.contains("[DONE]"));
}
