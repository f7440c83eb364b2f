//! What the Gemini translators cost, per request and per streamed chunk:
//! `cargo bench --bench gemini`. Set against `hot_path`'s OpenAI ↔
//! Anthropic figures (`translate: …`), which do the same work.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use h3gate::provider::{mock::Answer, Endpoint};
use h3gate::translate::gemini::{request, response};
use h3gate::translate::{stream::Translator, Conversion, Options};

fn event(raw: &str) -> h3gate::sse::Event {
    let mut p = h3gate::sse::Parser::new(1 << 20);
    p.push(raw.as_bytes()).unwrap();
    p.next_event().unwrap().unwrap()
}

fn gemini(c: &mut Criterion) {
    let opts = Options::default();
    let chat = br#"{"model":"gemini-x","stream":true,"max_tokens":64,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    c.bench_function("gemini: chat request -> generateContent", |b| {
        b.iter(|| black_box(request::chat_to_gemini(black_box(chat), &opts).unwrap()))
    });
    let messages = br#"{"model":"gemini-x","stream":true,"max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    c.bench_function("gemini: messages request -> generateContent", |b| {
        b.iter(|| black_box(request::messages_to_gemini(black_box(messages), &opts).unwrap()))
    });
    let answer = Answer::new("gemini-x", Endpoint::GenerateContent, 10, 3);
    // A chunk from the middle of the stream (no finish reason: the
    // translator keeps going).
    let chunk = event(&answer.gemini_events()[1]);
    c.bench_function("gemini: one stream chunk -> OpenAI chunk", |b| {
        let conv = Conversion::GeminiToChat {
            include_usage: true,
        };
        let mut t = Translator::new(conv, "m").expect("a converting stream");
        let mut out = String::with_capacity(512);
        b.iter(|| {
            out.clear();
            t.event(black_box(&chunk), &mut out);
            black_box(out.len())
        })
    });
    c.bench_function("gemini: one stream chunk -> Anthropic events", |b| {
        let mut t =
            Translator::new(Conversion::GeminiToMessages, "m").expect("a converting stream");
        let mut out = String::with_capacity(512);
        b.iter(|| {
            out.clear();
            t.event(black_box(&chunk), &mut out);
            black_box(out.len())
        })
    });
    let whole = answer.gemini_response();
    c.bench_function("gemini: response -> chat completion", |b| {
        b.iter(|| black_box(response::to_chat(black_box(&whole)).to_string()))
    });
    c.bench_function("gemini: response -> Anthropic message", |b| {
        b.iter(|| black_box(response::to_message(black_box(&whole)).to_string()))
    });
}

criterion_group!(benches, gemini);
criterion_main!(benches);
