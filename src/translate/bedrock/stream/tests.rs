use serde_json::{json, Value};

use super::{ToChat, ToMessages};
use crate::sse::{Event, Parser};

fn ev(name: &str, data: Value) -> Event {
    Event {
        event: Some(name.into()),
        data: data.to_string(),
        id: None,
    }
}

fn text_stream() -> Vec<Event> {
    vec![
        ev("messageStart", json!({"role": "assistant"})),
        ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        ),
        ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": " world"}}),
        ),
        ev("contentBlockStop", json!({"contentBlockIndex": 0})),
        ev(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu_1", "name": "f"}}}),
        ),
        ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
        ),
        ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
        ),
        ev("contentBlockStop", json!({"contentBlockIndex": 1})),
        ev("messageStop", json!({"stopReason": "tool_use"})),
        ev(
            "metadata",
            json!({"usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 16,
            "cacheReadInputTokens": 2}, "metrics": {"latencyMs": 5}}),
        ),
    ]
}

fn parse(out: &str) -> Vec<(Option<String>, String)> {
    let mut p = Parser::new(1 << 20);
    p.push(out.as_bytes()).unwrap();
    let mut v = Vec::new();
    while let Some(e) = p.next_event().unwrap() {
        v.push((e.event, e.data));
    }
    v
}

#[test]
fn converse_stream_to_openai_chunks() {
    for include_usage in [true, false] {
        let mut t = ToChat::new("m", include_usage);
        let mut out = String::new();
        for e in text_stream() {
            t.event(&e, &mut out);
        }
        t.finish(&mut out);
        let events = parse(&out);
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello world");
        let call = chunks
            .iter()
            .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str());
        assert_eq!(call, Some("f"));
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"a\":1}");
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"));
        let usage = chunks.iter().find(|c| c["usage"].is_object());
        assert_eq!(usage.is_some(), include_usage);
        if let Some(u) = usage {
            assert_eq!(u["usage"]["prompt_tokens"], 12);
            assert_eq!(u["usage"]["completion_tokens"], 4);
            assert_eq!(u["choices"], json!([]));
        }
    }
}

#[test]
fn converse_stream_to_anthropic_events() {
    let mut t = ToMessages::new("claude");
    let mut out = String::new();
    for e in text_stream() {
        t.event(&e, &mut out);
    }
    t.finish(&mut out);
    let events = parse(&out);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let v: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(v[0]["message"]["model"], "claude");
    assert_eq!(v[1]["content_block"]["type"], "text");
    assert_eq!(
        v[5]["content_block"],
        json!({"type": "tool_use", "id": "tu_1", "name": "f", "input": {}})
    );
    assert_eq!(v[6]["index"], 1);
    assert_eq!(
        v[6]["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"a\":"})
    );
    assert_eq!(v[9]["delta"]["stop_reason"], "tool_use");
    assert_eq!(v[9]["usage"]["output_tokens"], 4);
    assert_eq!(v[9]["usage"]["input_tokens"], 10);
    assert_eq!(v[9]["usage"]["cache_read_input_tokens"], 2);
}

#[test]
fn a_stream_without_metadata_is_still_finished() {
    let events: Vec<Event> = text_stream().into_iter().take(9).collect();
    let mut chat = ToChat::new("m", true);
    let mut messages = ToMessages::new("m");
    let (mut a, mut b) = (String::new(), String::new());
    for e in &events {
        chat.event(e, &mut a);
        messages.event(e, &mut b);
    }
    chat.finish(&mut a);
    messages.finish(&mut b);
    assert!(a.ends_with("data: [DONE]\n\n"));
    assert_eq!(parse(&b).last().unwrap().0.as_deref(), Some("message_stop"));
    // Not stopped at all: nothing invented (the relay reports the cut).
    let mut chat = ToChat::new("m", true);
    let mut out = String::new();
    chat.event(&events[0], &mut out);
    chat.finish(&mut out);
    assert!(!out.contains("[DONE]"));
}

#[test]
fn a_mid_stream_exception_is_the_clients_error_event() {
    let exception = ev(
        "exception",
        json!({"type": "throttlingException", "message": "Too many tokens, slow down"}),
    );
    let mut chat = ToChat::new("m", true);
    let mut out = String::new();
    chat.event(&text_stream()[0], &mut out);
    chat.event(&exception, &mut out);
    chat.event(&text_stream()[1], &mut out);
    let last: Value = serde_json::from_str(&parse(&out).last().unwrap().1).unwrap();
    assert_eq!(last["error"]["code"], "throttlingException");
    assert_eq!(last["error"]["type"], "rate_limit_error");
    assert_eq!(last["error"]["message"], "Too many tokens, slow down");

    let mut messages = ToMessages::new("m");
    let mut out = String::new();
    messages.event(&text_stream()[0], &mut out);
    messages.event(&exception, &mut out);
    let (name, data) = parse(&out).pop().unwrap();
    assert_eq!(name.as_deref(), Some("error"));
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let e = ev(
        "exception",
        json!({"type": "modelStreamErrorException", "message": "boom"}),
    );
    let mut messages = ToMessages::new("m");
    let mut out = String::new();
    messages.event(&e, &mut out);
    let v: Value = serde_json::from_str(&parse(&out).pop().unwrap().1).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
}
