//! Micro-benchmarks of the Bedrock path: `cargo bench --bench bedrock`.
//! The event-stream decoder (per frame, fed in network-sized chunks), a
//! ConverseStream event translated for each client surface, the Converse
//! request translators, and SigV4 signing of one request.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use h3gate::config::Secret;
use h3gate::provider::bedrock::eventstream::{self, Decoder, MAX_FRAME};
use h3gate::provider::bedrock::sigv4::{self, Credentials, Scope};
use h3gate::provider::mock::Answer;
use h3gate::provider::Endpoint;
use h3gate::translate::bedrock::request;
use h3gate::translate::stream::Translator;
use h3gate::translate::{Conversion, Options};

/// A 100-token ConverseStream answer as one byte string (104 frames).
fn stream_bytes() -> (Vec<u8>, usize) {
    let frames = Answer::new("m", Endpoint::Messages, 10, 100).converse_frames();
    let n = frames.len();
    (frames.iter().flat_map(|f| f.to_vec()).collect(), n)
}

fn decoding(c: &mut Criterion) {
    let (bytes, frames) = stream_bytes();
    let mut g = c.benchmark_group("eventstream");
    g.throughput(Throughput::Elements(frames as u64));
    g.bench_function(
        "decode a 100-token stream in 1 KiB chunks (per frame)",
        |b| {
            b.iter(|| {
                let mut d = Decoder::new(MAX_FRAME);
                let mut n = 0;
                for chunk in bytes.chunks(1024) {
                    d.push(black_box(chunk));
                    while let Ok(Some(m)) = d.next_message() {
                        n += eventstream::to_event(&m).map_or(0, |e| e.data.len());
                    }
                }
                black_box(n)
            })
        },
    );
    for (name, conv) in [
        (
            "decode + translate to OpenAI chunks (per frame)",
            Conversion::ConverseToChat {
                include_usage: true,
            },
        ),
        (
            "decode + translate to Anthropic events (per frame)",
            Conversion::ConverseToMessages,
        ),
    ] {
        g.bench_function(name, |b| {
            let mut out = String::with_capacity(64 << 10);
            b.iter(|| {
                out.clear();
                let mut t = Translator::new(conv, "m").expect("a converting stream");
                let mut d = Decoder::new(MAX_FRAME);
                for chunk in bytes.chunks(1024) {
                    d.push(black_box(chunk));
                    while let Ok(Some(m)) = d.next_message() {
                        if let Some(ev) = eventstream::to_event(&m) {
                            t.event(&ev, &mut out);
                        }
                    }
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    let opts = Options::default();
    let chat = br#"{"model":"br-claude","stream":true,"max_tokens":64,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    c.bench_function("converse: chat request -> Converse", |b| {
        b.iter(|| black_box(request::chat_to_converse_body(black_box(chat), &opts).unwrap()))
    });
    let messages = br#"{"model":"br-claude","stream":true,"max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    c.bench_function("converse: messages request -> Converse", |b| {
        b.iter(|| {
            black_box(request::messages_to_converse_body(black_box(messages), &opts).unwrap())
        })
    });
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("bench-secret-not-real"),
        session_token: Some(Secret::new("bench-session-token-not-real")),
    };
    let body = request::messages_to_converse_body(messages, &opts).unwrap();
    let url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
    let headers = [
        ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
        ("accept", "application/vnd.amazon.eventstream"),
        ("content-type", "application/json"),
    ];
    c.bench_function("sigv4: sign one Converse request", |b| {
        b.iter(|| {
            let scope = Scope {
                region: "us-east-1",
                service: "bedrock",
                time: SystemTime::now(),
                content_sha256: false,
            };
            black_box(sigv4::sign_headers("POST", url, &headers, &body, &creds, &scope).unwrap())
        })
    });
}

criterion_group!(benches, decoding, requests);
criterion_main!(benches);
