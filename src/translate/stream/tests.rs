//! Stream translations: the concatenated text and the assembled tool-call
//! arguments on the client's side equal the upstream's.

use serde_json::{json, Value};

use super::*;
use crate::sse::Parser;

fn events(raw: &str) -> Vec<Event> {
    let mut p = Parser::new(1 << 20);
    p.push(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    while let Some(ev) = p.next_event().unwrap() {
        out.push(ev);
    }
    out
}

/// Feeds the upstream events one at a time, as they would arrive.
fn translate(conversion: Conversion, upstream: &[String]) -> Vec<Event> {
    let mut t = Translator::new(conversion, "asked-model").expect("a converting stream");
    let mut out = String::new();
    for raw in upstream {
        for ev in events(raw) {
            t.event(&ev, &mut out);
        }
    }
    t.finish(&mut out);
    events(&out)
}

fn anthropic(name: &str, body: Value) -> String {
    encode(Some(name), &body.to_string())
}

fn openai(body: Value) -> String {
    encode(None, &body.to_string())
}

/// An Anthropic stream: text "Hello world", then a tool call whose
/// arguments arrive in three pieces.
fn anthropic_stream() -> Vec<String> {
    vec![
        anthropic(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        anthropic("ping", json!({"type": "ping"})),
        anthropic(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        anthropic(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        ),
        anthropic(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        anthropic(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
        ),
        anthropic(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
        ),
        anthropic(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\": \"Par"}}),
        ),
        anthropic(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
        ),
        anthropic(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        anthropic(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        anthropic("message_stop", json!({"type": "message_stop"})),
    ]
}

#[test]
fn anthropic_stream_to_openai_chunks() {
    let out = translate(
        Conversion::MessagesToChat {
            include_usage: true,
        },
        &anthropic_stream(),
    );
    assert_eq!(out.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = out[..out.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["model"] == "claude-x"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut args = String::new();
    let mut finish = None;
    for c in &chunks {
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            if let Some(id) = call["id"].as_str() {
                assert_eq!(id, "toolu_1");
                assert_eq!(call["function"]["name"], "weather");
            }
            args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(text, "Hello world");
    assert_eq!(args, "{\"city\": \"Paris\"}");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["completion_tokens"], 9);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));

    // Without include_usage there is no usage chunk.
    let out = translate(
        Conversion::MessagesToChat {
            include_usage: false,
        },
        &anthropic_stream(),
    );
    assert!(out.iter().all(|e| !e.data.contains("\"usage\"")));
}

#[test]
fn anthropic_error_event_becomes_openai_error() {
    let mut s = anthropic_stream()[..4].to_vec();
    s.push(anthropic(
        "error",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let out = translate(
        Conversion::MessagesToChat {
            include_usage: false,
        },
        &s,
    );
    let last: Value = serde_json::from_str(&out.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["message"], "Overloaded");
    assert_eq!(last["error"]["code"], "overloaded_error");
    assert!(out.iter().all(|e| e.data != "[DONE]"));
}

/// An OpenAI stream: text "Hi there", two parallel tool calls with
/// arguments in pieces, the finish chunk, the usage chunk, [DONE].
fn openai_stream() -> Vec<String> {
    let c = |delta: Value, finish: Value| {
        openai(
            json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    vec![
        c(json!({"role": "assistant", "content": ""}), Value::Null),
        c(json!({"content": "Hi"}), Value::Null),
        c(json!({"content": " there"}), Value::Null),
        c(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
            Value::Null,
        ),
        c(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}),
            Value::Null,
        ),
        c(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            Value::Null,
        ),
        c(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
            Value::Null,
        ),
        c(json!({}), json!("tool_calls")),
        openai(
            json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x", "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}),
        ),
        "data: [DONE]\n\n".to_string(),
    ]
}

#[test]
fn openai_stream_to_anthropic_events() {
    let out = translate(Conversion::ChatToMessages, &openai_stream());
    let names: Vec<&str> = out.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let bodies: Vec<Value> = out
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    for (name, body) in names.iter().zip(&bodies) {
        assert_eq!(body["type"], *name, "event name and type agree");
    }
    assert_eq!(bodies[0]["message"]["model"], "gpt-x");
    // Blocks: text 0, tool 1, tool 2 — each started, deltas, stopped.
    let mut text = String::new();
    let mut args: HashMap<u64, String> = HashMap::new();
    let mut open: Vec<u64> = Vec::new();
    for b in &bodies {
        match b["type"].as_str().unwrap() {
            "content_block_start" => {
                assert!(open.is_empty(), "one block at a time");
                open.push(b["index"].as_u64().unwrap());
            }
            "content_block_stop" => assert_eq!(open.pop(), b["index"].as_u64()),
            "content_block_delta" => {
                let i = b["index"].as_u64().unwrap();
                assert_eq!(open, [i]);
                match b["delta"]["type"].as_str().unwrap() {
                    "text_delta" => text.push_str(b["delta"]["text"].as_str().unwrap()),
                    "input_json_delta" => args
                        .entry(i)
                        .or_default()
                        .push_str(b["delta"]["partial_json"].as_str().unwrap()),
                    other => panic!("{other}"),
                }
            }
            _ => {}
        }
    }
    assert!(open.is_empty());
    assert_eq!(text, "Hi there");
    assert_eq!(args[&1], "{\"x\":1}");
    assert_eq!(args[&2], "{}");
    let starts: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "content_block_start")
        .collect();
    assert_eq!(
        starts[1]["content_block"],
        json!({"type": "tool_use", "id": "call_a", "name": "f", "input": {}})
    );
    let delta = &bodies[bodies.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["input_tokens"], 20);
    assert_eq!(delta["usage"]["output_tokens"], 8);
}

#[test]
fn openai_error_event_becomes_anthropic_error() {
    let mut s = openai_stream()[..2].to_vec();
    s.push(openai(
        json!({"error": {"message": "boom", "type": "server_error"}}),
    ));
    let out = translate(Conversion::ChatToMessages, &s);
    let last = out.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert!(out
        .iter()
        .all(|e| e.event.as_deref() != Some("message_stop")));
}

#[test]
fn both_directions_round_trip_the_text() {
    // OpenAI → Anthropic → OpenAI keeps text and arguments.
    let anth: Vec<String> = translate(Conversion::ChatToMessages, &openai_stream())
        .iter()
        .map(|e| encode(e.event.as_deref(), &e.data))
        .collect();
    let back = translate(
        Conversion::MessagesToChat {
            include_usage: true,
        },
        &anth,
    );
    let mut text = String::new();
    for e in &back[..back.len() - 1] {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(text, "Hi there");
    assert_eq!(back.last().unwrap().data, "[DONE]");
}

#[test]
fn strip_usage_removes_only_the_usage_chunk() {
    let out = translate(Conversion::StripUsage, &openai_stream());
    assert_eq!(out.len(), openai_stream().len() - 1);
    assert!(out.iter().all(|e| !e.data.contains("\"usage\"")));
    assert_eq!(out.last().unwrap().data, "[DONE]");
}
