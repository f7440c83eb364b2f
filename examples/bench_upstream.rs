//! A minimal, fast OpenAI-compatible upstream for benchmarks (plain HTTP/1.1
//! and HTTP/2 cleartext on loopback):
//!
//! ```text
//! cargo run --release --example bench_upstream -- 127.0.0.1:18080 [CHUNKS] [INTERVAL_MS]
//! ```
//!
//! `POST /v1/chat/completions` answers a fixed chat completion at once, or,
//! with `"stream": true`, CHUNKS SSE chunks (default 20) INTERVAL_MS apart
//! (default 0) ending in `data: [DONE]`. Each streamed chunk carries the
//! microsecond timestamp at which it was sent, so a client can tell how long
//! the gateway held it. A non-streamed request for the model `bench-1mb`
//! gets a chat completion whose content is 1 MiB of text (the bulk
//! throughput check of `benches/streams.sh`).

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}"#;

/// A completion whose content is 1 MiB of text, built once.
fn big_completion() -> Bytes {
    static BIG: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BIG.get_or_init(|| {
        let content = "lorem ipsum dolor sit amet ".repeat((1 << 20) / 27 + 1);
        let content = &content[..1 << 20];
        Bytes::from(COMPLETION.replace("The quick brown fox jumps over the lazy dog.", content))
    })
    .clone()
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let chunks: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let interval = Duration::from_millis(args.next().map(|s| s.parse()).transpose()?.unwrap_or(0));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench upstream on {addr}: {chunks} chunks, {interval:?} apart");
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let has = |pat: &[u8]| body.windows(pat.len()).any(|w| w == pat);
                let stream = has(b"\"stream\":true") || has(b"\"stream\": true");
                let big = has(b"\"bench-1mb\"");
                let resp: hyper::Response<BoxBody> = if stream {
                    let s = futures_util::stream::unfold(0usize, move |i| async move {
                        if i > chunks {
                            return None;
                        }
                        if i > 0 && !interval.is_zero() {
                            tokio::time::sleep(interval).await;
                        }
                        let data = if i == chunks {
                            "data: [DONE]\n\n".to_string()
                        } else {
                            format!(
                                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"sent_us\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n",
                                now_us()
                            )
                        };
                        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(data))), i + 1))
                    });
                    hyper::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(BodyExt::boxed_unsync(StreamBody::new(s)))
                        .unwrap_or_default()
                } else {
                    let body = if big {
                        big_completion()
                    } else {
                        Bytes::from_static(COMPLETION.as_bytes())
                    };
                    hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(body).boxed_unsync())
                        .unwrap_or_default()
                };
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
