//! Reading the SSE bodies the gateway streams back, with the gateway's own
//! parser: one reader for every test binary.

use serde_json::{json, Value};

/// The data of every complete event of a body, as text.
pub fn data(body: &str) -> Vec<String> {
    let mut p = h3gate::sse::Parser::new(1 << 20);
    p.push(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    while let Some(ev) = p.next_event().unwrap() {
        out.push(ev.data);
    }
    out
}

/// The events of a body: (event name, JSON data or the string `[DONE]`).
pub fn events(body: &str) -> Vec<(Option<String>, Value)> {
    let mut p = h3gate::sse::Parser::new(1 << 20);
    p.push(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    while let Some(ev) = p.next_event().unwrap() {
        let v = if ev.data == "[DONE]" {
            json!("[DONE]")
        } else {
            serde_json::from_str(&ev.data)
                .unwrap_or_else(|e| panic!("an SSE event is not JSON ({e}): {}", ev.data))
        };
        out.push((ev.event, v));
    }
    out
}

/// The concatenated `delta.content` of an OpenAI stream, and whether it
/// ended with `[DONE]`. An error event fails the test.
pub fn openai_text(body: &str) -> (String, bool) {
    let (mut text, mut done) = (String::new(), false);
    for (_, v) in events(body) {
        if v == "[DONE]" {
            done = true;
            continue;
        }
        assert!(v.get("error").is_none(), "unexpected error event: {v}");
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    (text, done)
}

/// Text, tool-call arguments and the finish reason assembled from OpenAI
/// chat chunks.
pub fn assemble_openai(ev: &[(Option<String>, Value)]) -> (String, String, Option<String>) {
    let (mut text, mut args, mut finish) = (String::new(), String::new(), None);
    for (_, v) in ev {
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
        for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, args, finish)
}
