//! HTTP/3 request streams as an independent peer may send them. An HTTP/3
//! client that goes away cancels its request, exactly as a dropped
//! HTTP/1.1 or HTTP/2 request does: the upstream call is dropped and the
//! admission slot comes back. Driven with a raw quinn + h3 client so the test
//! controls what goes on the wire (CONNECTION_CLOSE, STOP_SENDING +
//! RESET_STREAM), against an upstream that never answers and reports when
//! the gateway hangs up on it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{chat, Gateway, Proto};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// An upstream that reads a request and never answers; counts the requests
/// it got and the connections the gateway closed.
#[derive(Clone, Default)]
struct Hang {
    got: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

impl Hang {
    async fn start() -> (SocketAddr, Hang) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Hang::default();
        let h = hang.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut counted = false;
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) if !counted => {
                                counted = true;
                                h.got.fetch_add(1, Ordering::SeqCst);
                                h.notify.notify_waiters();
                            }
                            Ok(_) => {}
                        }
                    }
                    if counted {
                        h.closed.fetch_add(1, Ordering::SeqCst);
                        h.notify.notify_waiters();
                    }
                });
            }
        });
        (addr, hang)
    }

    /// Waits (bounded, generously) until `f` holds.
    async fn until(&self, what: &str, f: impl Fn(&Hang) -> bool) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if f(self) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 15 s"));
    }
}

/// A gateway whose `gpt-*` models go to the hanging upstream, with one
/// admission slot and no queue: a leaked slot shows as a 503.
async fn gateway() -> (Gateway, Hang) {
    let (addr, hang) = Hang::start().await;
    let gw = Gateway::start_with(|c| {
        let up = c.providers.iter_mut().find(|p| p.name == "up").unwrap();
        up.base_url = format!("http://{addr}/v1");
        up.timeouts.first_byte = h3gate::config::Duration::secs(60);
        up.timeouts.total = h3gate::config::Duration::secs(60);
        c.admission.max_concurrent = 1;
        c.admission.max_queue = 0;
    })
    .await;
    (gw, hang)
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// A raw HTTP/3 connection to the gateway.
async fn connect(gw: &Gateway) -> (quinn::Endpoint, quinn::Connection, H3Send) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(common::client::h3_client_config(&gw.ca, false));
    let conn = endpoint
        .connect(gw.udp, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    (endpoint, conn, send)
}

/// Sends a whole chat request and returns its stream (no response yet).
async fn post(
    send: &mut H3Send,
    gw: &Gateway,
) -> h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes> {
    let body = chat("gpt-4o-mini", false).to_string();
    let req = http::Request::post(format!(
        "https://localhost:{}/v1/chat/completions",
        gw.udp.port()
    ))
    .header("content-type", "application/json")
    .header("content-length", body.len())
    .body(())
    .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.send_data(Bytes::from(body)).await.unwrap();
    stream.finish().await.unwrap();
    stream
}

/// After the cancelled request, the one admission slot is free again.
async fn slot_is_free(gw: &Gateway) {
    let client = gw.client(Proto::H3).await;
    let resp = client
        .post_json("/v1/chat/completions", chat("mock-1", false))
        .await;
    assert_eq!(resp.status, 200, "the admission slot was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_cancels_the_upstream_call() {
    let (gw, hang) = gateway().await;
    let (_endpoint, conn, mut send) = connect(&gw).await;
    let _stream = post(&mut send, &gw).await;
    hang.until("the upstream got the request", |h| {
        h.got.load(Ordering::SeqCst) == 1
    })
    .await;
    conn.close(quinn::VarInt::from_u32(0x100), b"bye");
    let left = std::time::Instant::now();
    hang.until("the gateway dropped its upstream call", |h| {
        h.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    // Reported, not asserted (tests assert behaviour).
    eprintln!(
        "upstream call dropped {:?} after CONNECTION_CLOSE",
        left.elapsed()
    );
    slot_is_free(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sending_and_reset_cancel_the_upstream_call() {
    let (gw, hang) = gateway().await;
    let (_endpoint, conn, mut send) = connect(&gw).await;
    let mut stream = post(&mut send, &gw).await;
    hang.until("the upstream got the request", |h| {
        h.got.load(Ordering::SeqCst) == 1
    })
    .await;
    // What a browser does when a fetch is aborted: H3_REQUEST_CANCELLED both ways.
    stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
    let left = std::time::Instant::now();
    hang.until("the gateway dropped its upstream call", |h| {
        h.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    eprintln!(
        "upstream call dropped {:?} after STOP_SENDING + RESET_STREAM",
        left.elapsed()
    );
    slot_is_free(&gw).await;
    // The connection itself stays usable.
    let again = http::Request::get(format!("https://localhost:{}/health", gw.udp.port()))
        .body(())
        .unwrap();
    let mut s = send.send_request(again).await.unwrap();
    s.finish().await.unwrap();
    assert_eq!(s.recv_response().await.unwrap().status(), 200);
    drop(conn);
}

/// Sends `req` with `body` and returns the status, or how the stream failed.
async fn exchange(send: &mut H3Send, req: http::Request<()>, body: &[u8]) -> Result<u16, String> {
    let mut stream = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !body.is_empty() {
        let _ = stream.send_data(Bytes::copy_from_slice(body)).await;
    }
    let _ = stream.finish().await;
    let resp = tokio::time::timeout(Duration::from_secs(10), stream.recv_response())
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("stream failed: {e}"))?;
    Ok(resp.status().as_u16())
}

fn chat_request(gw: &Gateway, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::post(format!(
        "https://localhost:{}/v1/chat/completions",
        gw.udp.port()
    ))
    .header("content-type", "application/json");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// RFC 9114 §4.1.2, §4.2: as strict as hyper is with HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    let gw = Gateway::start().await;
    let (_endpoint, _conn, mut send) = connect(&gw).await;
    let body = chat("mock-1", false).to_string();
    let len = body.len().to_string();
    let ok = exchange(
        &mut send,
        chat_request(&gw, &[("content-length", &len)]),
        body.as_bytes(),
    )
    .await;
    assert_eq!(ok, Ok(200), "a well-formed request is served");

    let longer = (body.len() + 10).to_string();
    let shorter = (body.len() - 10).to_string();
    for (what, extra) in [
        (
            "content-length above the body",
            vec![("content-length", longer.as_str())],
        ),
        (
            "content-length below the body",
            vec![("content-length", shorter.as_str())],
        ),
        ("transfer-encoding", vec![("transfer-encoding", "chunked")]),
        ("connection", vec![("connection", "keep-alive")]),
        ("te other than trailers", vec![("te", "gzip")]),
    ] {
        let got = exchange(&mut send, chat_request(&gw, &extra), body.as_bytes()).await;
        assert!(
            !matches!(got, Ok(200)),
            "{what}: must not be served, got {got:?}"
        );
    }
    assert!(
        gw.metric("h3gate_quic_stream_errors_total{reason=\"malformed\"}")
            .await
            >= 3.0
    );
    // The connection survives stream errors.
    let again = exchange(
        &mut send,
        chat_request(&gw, &[("content-length", &len)]),
        body.as_bytes(),
    )
    .await;
    assert_eq!(again, Ok(200));
}

/// A stream that opens and never completes its header section is ended,
/// as `header_read_timeout` ends a silent TCP connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_request_stream_is_ended() {
    let gw = Gateway::start_with(|c| {
        c.http.header_read_timeout = h3gate::config::Duration::millis(300);
    })
    .await;
    let (_endpoint, conn, _send) = connect(&gw).await;
    // A raw request stream whose HEADERS frame announces 100 bytes and
    // never sends them.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&[0x01, 0x40, 0x64]).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(1024)).await;
    assert!(ended.is_ok(), "the gateway ended the silent stream");
    let refused = gw
        .metric("h3gate_quic_stream_errors_total{reason=\"header_timeout\"}")
        .await;
    assert_eq!(refused, 1.0);
}

/// The same malformed requests from an independent stack (aioquic sends
/// header bytes as given, uppercase names included): none is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_from_aioquic_are_refused() {
    let python = common::python::python();
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.ca).unwrap();
    let port = gw.udp.port().to_string();
    let out =
        common::python::run_script(&python, "h3_malformed.py", &[&port, ca.to_str().unwrap()])
            .await;
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["well_formed"], 200, "{v}");
    for case in [
        "uppercase_name",
        "connection",
        "transfer_encoding",
        "content_length_above",
        "content_length_below",
    ] {
        assert_ne!(v[case], 200, "{case} must not be served: {v}");
    }
}

/// A client that stops reading (its stream window stays full) does not
/// hold its upstream for ever: after `write_timeout` the stream is reset
/// and the upstream request dropped, as on the TCP listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_releases_its_upstream() {
    let gw = Gateway::start_with(|c| {
        c.http.write_timeout = h3gate::config::Duration::millis(500);
    })
    .await;
    let mut config = common::client::h3_client_config(&gw.ca, false);
    let mut transport = quinn::TransportConfig::default();
    // A 2 KB window: full after a few chunks, and never opened again.
    transport.stream_receive_window(quinn::VarInt::from_u32(2048));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(gw.udp, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let body = chat("endless", true).to_string();
    let req = http::Request::post(format!(
        "https://localhost:{}/v1/chat/completions",
        gw.udp.port()
    ))
    .header("content-type", "application/json")
    .body(())
    .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.send_data(Bytes::from(body)).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    // ...and never reads the body.
    assert!(
        gw.upstream.wait_dropped().await,
        "the gateway dropped the upstream stream of a client that stopped reading"
    );
    assert_eq!(
        gw.metric("h3gate_quic_stream_errors_total{reason=\"write_timeout\"}")
            .await,
        1.0
    );
    drop(stream);
}
