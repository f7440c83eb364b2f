//! The `pipeline` fuzz target's harness, shared with `tests/fuzz_seeds.rs`
//! (which runs every committed seed through it in the normal test suite).
//!
//! Input: byte 0 picks the protocol and where the body is split into two
//! frames; then an HTTP/1-like head — `METHOD PATH` on the first line,
//! `name: value` lines — a blank line, and the body. Lines that do not make
//! a valid method, URI or header are skipped, so every input is a request.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, StreamBody};

use h3gate::config::Config;
use h3gate::exchange::{Body, BodyError, GatewayRequest, Protocol};
use h3gate::state::State;

/// Everything the pipeline can reach without a network: OpenAI and
/// Anthropic endpoints, auth optional, a small body limit, no abuse
/// denies (the fuzzer is one address sending malformed requests).
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
max_request_body = "64KB"

[tls]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"
generate_dev_cert = true

[auth]
required = false

[rate_limit]
per_ip_rpm = 0

[abuse]
enabled = false

[[providers]]
name = "mock"
kind = "mock"
models = ["mock-1", "claude-mock"]

[[routes]]
model = "*"
targets = ["mock"]
"#;

struct Harness {
    runtime: tokio::runtime::Runtime,
    state: State,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let config = Config::from_toml(CONFIG, std::path::Path::new("/nonexistent"), &|_| None)
            .unwrap_or_else(|e| panic!("fuzz config: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let state = State::build(config).unwrap_or_else(|e| panic!("state: {e}"));
        Harness { runtime, state }
    })
}

fn request(data: &[u8]) -> GatewayRequest {
    let (ctl, rest) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    let protocol = match ctl % 3 {
        0 => Protocol::Http1,
        1 => Protocol::Http2,
        _ => Protocol::Http3,
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |b| *b == b' ');
    let method = parts
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::GET);
    let uri = parts
        .next()
        .and_then(|u| Uri::try_from(u).ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    // The body arrives as two frames, split where byte 0 says.
    let split = (usize::from(ctl / 3) * 37).min(body.len());
    let frames: Vec<Result<http_body::Frame<Bytes>, BodyError>> = [&body[..split], &body[split..]]
        .into_iter()
        .filter(|b| !b.is_empty())
        .map(|b| Ok(http_body::Frame::data(Bytes::copy_from_slice(b))))
        .collect();
    let body: Body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    GatewayRequest {
        method,
        uri,
        headers,
        body,
        protocol,
        peer: "192.0.2.1:40000".parse().unwrap_or_else(|_| unreachable!()),
        handshake: None,
        connection: None,
    }
}

/// One input through the pipeline: never panics, always a final status,
/// and the response body ends without an error.
pub fn run(data: &[u8]) {
    let h = harness();
    let req = request(data);
    h.runtime.block_on(async {
        let resp = h3gate::pipeline::handle(&h.state, req).await;
        let status = resp.status();
        assert!(status.as_u16() >= 200, "a final status: {status}");
        // Every body ends (the mock answers at once) without an error.
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            resp.into_body().collect(),
        )
        .await
        .unwrap_or_else(|_| panic!("the response body did not end ({status})"));
        if let Err(e) = body {
            panic!("the response body failed ({status}): {e}");
        }
    });
}
