//! The TCP edge under hostile timing: connections silent after TLS or after
//! the HTTP/2 preface, idle keep-alive connections, an HTTP/2 peer that
//! does not answer pings, and clients (HTTP/1.1 and HTTP/2) that stop
//! reading their answer.

mod common;

use common::raw_tls::{read_until_closed, tls, BOUND, H2_PREFACE, H2_SETTINGS, SHORT};
use common::{chat, Gateway};
use h3gate::config::Duration as Dur;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

// ---- 2. a client that stops reading ------------------------------------------

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
