//! The Gemini translators in-process: requests from both surfaces,
//! responses, streams (tool calls in their own chunks, usage, finish
//! reasons), unsupported parameters.

use serde_json::{json, Value};

use super::request::{chat_to_gemini, messages_to_gemini};
use super::response::{to_chat, to_message};
use crate::sse::Parser;
use crate::translate::stream::Translator;
use crate::translate::{Conversion, Options, TranslateError};

fn chat(body: Value) -> Result<Value, TranslateError> {
    chat_to_gemini(body.to_string().as_bytes(), &Options::default())
        .map(|b| serde_json::from_slice(&b).unwrap())
}

fn messages(body: Value) -> Result<Value, TranslateError> {
    messages_to_gemini(body.to_string().as_bytes(), &Options::default())
        .map(|b| serde_json::from_slice(&b).unwrap())
}

#[test]
fn an_openai_request_becomes_gemini() {
    let g = chat(json!({
        "model": "gemini-x", "stream": true, "stream_options": {"include_usage": true},
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": "END", "n": 1, "seed": 3,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"x\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "feel", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"seen\":\"cat\"}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "soft"},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "description": "Looks.",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
    }))
    .unwrap();
    assert_eq!(
        g["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        g["generationConfig"],
        json!({"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50,
            "stopSequences": ["END"], "seed": 3})
    );
    let c = g["contents"].as_array().unwrap();
    assert_eq!(c.len(), 3, "the two tool results share one turn: {c:?}");
    assert_eq!(c[0]["role"], "user");
    assert_eq!(
        c[0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
    );
    assert_eq!(c[1]["role"], "model");
    assert_eq!(
        c[1]["parts"],
        json!([{"functionCall": {"name": "look", "args": {"x": 1}}},
            {"functionCall": {"name": "feel", "args": {}}}])
    );
    assert_eq!(
        c[2]["parts"],
        json!([{"functionResponse": {"name": "look", "response": {"seen": "cat"}}},
            {"functionResponse": {"name": "feel", "response": {"content": "soft"}}}])
    );
    assert_eq!(
        g["tools"],
        json!([{"functionDeclarations": [{"name": "look", "description": "Looks.",
            "parametersJsonSchema": {"type": "object", "properties": {"x": {"type": "integer"}}}}]}])
    );
    assert_eq!(
        g["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["look"]}})
    );
    assert!(g.get("model").is_none() && g.get("stream").is_none());
}

#[test]
fn an_anthropic_request_becomes_gemini() {
    let g = messages(json!({
        "model": "gemini-x", "max_tokens": 20, "top_k": 4, "stop_sequences": ["X"],
        "system": [{"type": "text", "text": "Be brief."}],
        "metadata": {"user_id": "u1"},
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "BBBB"}}
            ]}
        ],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
    }))
    .unwrap();
    assert_eq!(g["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(
        g["generationConfig"],
        json!({"maxOutputTokens": 20, "topK": 4, "stopSequences": ["X"]})
    );
    let c = &g["contents"];
    assert_eq!(
        c[0],
        json!({"role": "user", "parts": [{"text": "Weather?"}]})
    );
    assert_eq!(
        c[1],
        json!({"role": "model", "parts": [{"text": "Looking."},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]})
    );
    assert_eq!(
        c[2]["parts"][0],
        json!({"functionResponse": {"name": "weather", "response": {"content": "sunny"}}})
    );
    assert_eq!(c[2]["parts"][1]["inlineData"]["mimeType"], "image/jpeg");
    assert_eq!(g["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
    assert_eq!(g["tools"][0]["functionDeclarations"][0]["name"], "weather");
}

#[test]
fn unsupported_parameters_are_named_unless_dropped() {
    let base = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]});
    for (param, value) in [
        ("logit_bias", json!({"1": 2})),
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("parallel_tool_calls", json!(false)),
    ] {
        let mut body = base.clone();
        body[param] = value;
        match chat(body.clone()) {
            Err(TranslateError::Unsupported { param: p, .. }) => assert_eq!(p, param),
            other => panic!("{param}: {other:?}"),
        }
        let lenient = Options {
            drop_unsupported: true,
            ..Options::default()
        };
        let out = chat_to_gemini(body.to_string().as_bytes(), &lenient).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out, chat(base.clone()).unwrap(), "{param} dropped");
    }
    let mut body =
        json!({"model": "g", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 10});
    assert!(
        matches!(messages(body), Err(TranslateError::Unsupported { param, .. }) if param == "thinking")
    );
    // Not translatable at all: invalid, whatever the route says.
    let url_image = json!({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]});
    assert!(matches!(chat(url_image), Err(TranslateError::Invalid(_))));
    let orphan =
        json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]});
    assert!(matches!(chat(orphan), Err(TranslateError::Invalid(m)) if m.contains("`x`")));
    assert!(chat(json!({"model": "g"})).is_err());
    assert!(chat_to_gemini(b"[1]", &Options::default()).is_err());
}

fn gemini_answer(parts: Value, finish: &str) -> Value {
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5,
            "thoughtsTokenCount": 3, "cachedContentTokenCount": 8, "totalTokenCount": 28},
        "modelVersion": "gemini-x-001", "responseId": "r1",
    })
}

#[test]
fn a_response_becomes_the_clients() {
    let r = gemini_answer(
        json!([{"text": "thinking…", "thought": true}, {"text": "Hello"},
            {"functionCall": {"name": "f", "args": {"a": 1}}}]),
        "STOP",
    );
    let c = to_chat(&r);
    assert_eq!(c["id"], "chatcmpl-r1");
    assert_eq!(c["model"], "gemini-x-001");
    let choice = &c["choices"][0];
    assert_eq!(choice["message"]["content"], "Hello");
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["arguments"], r#"{"a":1}"#);
    assert_eq!(
        c["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28,
            "prompt_tokens_details": {"cached_tokens": 8},
            "completion_tokens_details": {"reasoning_tokens": 3}})
    );
    let m = to_message(&r);
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["content"][0], json!({"type": "text", "text": "Hello"}));
    assert_eq!(m["content"][1]["input"], json!({"a": 1}));
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 12, "cache_read_input_tokens": 8, "output_tokens": 8})
    );
}

#[test]
fn finish_reasons_map_to_both_apis() {
    for (gemini, openai, anthropic) in [
        ("STOP", "stop", "end_turn"),
        ("MAX_TOKENS", "length", "max_tokens"),
        ("SAFETY", "content_filter", "refusal"),
        ("RECITATION", "content_filter", "refusal"),
        ("PROHIBITED_CONTENT", "content_filter", "refusal"),
        ("MALFORMED_FUNCTION_CALL", "stop", "end_turn"),
        ("OTHER", "stop", "end_turn"),
    ] {
        let r = gemini_answer(json!([{"text": "x"}]), gemini);
        assert_eq!(
            to_chat(&r)["choices"][0]["finish_reason"],
            openai,
            "{gemini}"
        );
        assert_eq!(to_message(&r)["stop_reason"], anthropic, "{gemini}");
    }
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}});
    assert_eq!(
        to_chat(&blocked)["choices"][0]["finish_reason"],
        "content_filter"
    );
    assert_eq!(to_chat(&blocked)["choices"][0]["message"]["content"], "");
}

/// Runs `chunks` (Gemini response bodies) through a stream translator:
/// the client's events, `(name, data)`.
fn translate(conv: Conversion, chunks: &[Value]) -> Vec<(Option<String>, String)> {
    let mut t = Translator::new(conv, "asked").unwrap();
    let mut out = String::new();
    for c in chunks {
        let ev = crate::sse::Event {
            event: None,
            data: c.to_string(),
            id: None,
        };
        t.event(&ev, &mut out);
    }
    t.finish(&mut out);
    let mut p = Parser::new(1 << 20);
    p.push(out.as_bytes()).unwrap();
    let mut events = Vec::new();
    while let Some(ev) = p.next_event().unwrap() {
        events.push((ev.event, ev.data));
    }
    events
}

fn chunk(parts: Value, finish: Option<&str>, output: u64) -> Value {
    let mut c = json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": output},
        "modelVersion": "gemini-x-001", "responseId": "r9",
    });
    if let Some(f) = finish {
        c["candidates"][0]["finishReason"] = json!(f);
    }
    c
}

fn tool_stream() -> Vec<Value> {
    vec![
        chunk(json!([{"text": "Let me "}]), None, 1),
        chunk(
            json!([{"text": "check."}, {"functionCall": {"name": "a", "args": {"x": 1}}}]),
            None,
            2,
        ),
        chunk(
            json!([{"functionCall": {"name": "b", "args": {}}}]),
            Some("STOP"),
            3,
        ),
        // After the end: ignored.
        chunk(json!([{"text": "late"}]), Some("STOP"), 4),
    ]
}

#[test]
fn a_stream_becomes_openai_chunks() {
    let ev = translate(
        Conversion::GeminiToChat {
            include_usage: true,
        },
        &tool_stream(),
    );
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    let v: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(v[0]["id"], "chatcmpl-r9");
    assert_eq!(v[0]["model"], "gemini-x-001");
    let text: String = v
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Let me check.");
    let calls: Vec<&Value> = v
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0]["index"].as_u64(), calls[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(calls[0]["function"]["name"], "a");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"x":1}"#);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    let n = v.len();
    assert_eq!(v[n - 2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v[n - 1]["choices"], json!([]));
    assert_eq!(v[n - 1]["usage"]["prompt_tokens"], 7);
    assert_eq!(v[n - 1]["usage"]["completion_tokens"], 3);
    assert!(!text.contains("late"));
    // Without include_usage: no usage chunk.
    let ev = translate(
        Conversion::GeminiToChat {
            include_usage: false,
        },
        &tool_stream(),
    );
    assert!(ev.iter().all(|(_, d)| !d.contains("\"usage\"")));
}

#[test]
fn a_stream_becomes_anthropic_events() {
    let ev = translate(Conversion::GeminiToMessages, &tool_stream());
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
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
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let v: Vec<Value> = ev
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(v[0]["message"]["usage"]["input_tokens"], 7);
    assert_eq!(v[5]["content_block"]["name"], "a");
    assert_eq!(v[5]["index"], 1);
    assert_eq!(v[6]["delta"]["partial_json"], r#"{"x":1}"#);
    assert_eq!(v[8]["index"], 2);
    assert_eq!(v[11]["delta"]["stop_reason"], "tool_use");
    assert_eq!(v[11]["usage"]["output_tokens"], 3);
    assert_eq!(v[11]["usage"]["input_tokens"], 7);
}

#[test]
fn an_error_chunk_becomes_the_clients_error_event() {
    let err = json!({"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}});
    let chunks = [chunk(json!([{"text": "Hi"}]), None, 1), err];
    let ev = translate(
        Conversion::GeminiToChat {
            include_usage: true,
        },
        &chunks,
    );
    let last: Value = serde_json::from_str(&ev.last().unwrap().1).unwrap();
    assert_eq!(last["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(last["error"]["message"], "Resource exhausted");
    assert!(ev.iter().all(|(_, d)| d != "[DONE]"));
    let ev = translate(Conversion::GeminiToMessages, &chunks);
    let (name, data) = ev.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"));
    let last: Value = serde_json::from_str(data).unwrap();
    assert_eq!(last["error"]["type"], "rate_limit_error");
    assert!(ev.iter().all(|(n, _)| n.as_deref() != Some("message_stop")));
}

#[test]
fn fuzz_property_on_samples() {
    let samples: &[&str] = &[
        "",
        "null",
        r#"{"messages": [{"role": "tool"}]}"#,
        r#"{"messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}], "max_tokens": 1}"#,
        r#"{"candidates": [{"content": {"parts": [{"functionCall": 5}, {"text": 3}]}}], "usageMetadata": {"promptTokenCount": 1, "cachedContentTokenCount": 99}}"#,
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":1,\"args\":[]}}]},\"finishReason\":7}]}\n\n",
        "data: {\"error\": {\"code\": 99999999999}}\n\ndata: {\"error\": 5}\n\n",
        "data: {\"promptFeedback\": {\"blockReason\": \"OTHER\"}}\n\n",
    ];
    for s in samples {
        super::fuzz_check(s.as_bytes());
    }
}
