//! Golden request translations, both directions.

use serde_json::{json, Value};

use super::*;
use crate::translate::{Options, TranslateError};

fn to_messages(v: Value) -> Result<Value> {
    chat_to_messages(v.to_string().as_bytes(), &Options::default())
}

fn to_chat(v: Value) -> Result<Value> {
    messages_to_chat(v.to_string().as_bytes(), &Options::default())
}

#[test]
fn chat_request_to_messages_golden() {
    let got = to_messages(json!({
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "user", "content": "Thanks"}
        ],
        "max_completion_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-1",
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather by city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
        }}],
        "tool_choice": "required",
        "parallel_tool_calls": false
    }))
    .unwrap();
    assert_eq!(
        got,
        json!({
            "model": "claude-x",
            "max_tokens": 256,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "u-1"},
            "system": [
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Use metric units."}
            ],
            "tools": [{"name": "weather", "description": "Weather by city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "text", "text": "Thanks"}
                ]}
            ]
        })
    );
}

#[test]
fn max_tokens_defaults_from_config_and_tool_choice_maps() {
    let opts = Options {
        drop_unsupported: false,
        default_max_tokens: 1000,
    };
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "n": 1});
    let got = chat_to_messages(body.to_string().as_bytes(), &opts).unwrap();
    assert_eq!(got["max_tokens"], 1000);
    assert_eq!(got["tool_choice"], json!({"type": "tool", "name": "f"}));
    assert_eq!(
        got["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
    assert!(got.get("system").is_none());
}

#[test]
fn unsupported_parameters_are_named_or_dropped() {
    let body = json!({"model": "m", "messages": [], "logit_bias": {"1": 2}, "seed": null});
    let err = to_messages(body.clone()).unwrap_err();
    assert!(matches!(&err, TranslateError::Unsupported { param, .. } if param == "logit_bias"));
    assert!(err.to_string().contains("`logit_bias`"));
    let dropping = Options {
        drop_unsupported: true,
        ..Options::default()
    };
    let got = chat_to_messages(body.to_string().as_bytes(), &dropping).unwrap();
    assert!(got.get("logit_bias").is_none());

    let err = to_messages(json!({"model": "m", "messages": [], "n": 3})).unwrap_err();
    assert!(err.to_string().contains("`n`"));
    let err =
        to_chat(json!({"model": "m", "max_tokens": 5, "messages": [], "top_k": 5})).unwrap_err();
    assert!(err.to_string().contains("`top_k`"));
    let err = to_chat(json!({"model": "m", "max_tokens": 5, "messages": [],
        "thinking": {"type": "enabled", "budget_tokens": 1024}}))
    .unwrap_err();
    assert!(err.to_string().contains("`thinking`"));
}

#[test]
fn bad_shapes_are_clear_errors() {
    assert!(chat_to_messages(b"[1]", &Options::default()).is_err());
    assert!(chat_to_messages(b"{", &Options::default()).is_err());
    let err = to_messages(json!({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]}
    ]}))
    .unwrap_err();
    assert!(err.to_string().contains("arguments"));
    let err =
        to_messages(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}))
            .unwrap_err();
    assert!(err.to_string().contains("function"));
}

#[test]
fn messages_request_to_chat_golden() {
    let got = to_chat(json!({
        "model": "gpt-x",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/b.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-2C"}]},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_p": 0.8,
        "stream": true,
        "metadata": {"user_id": "u-9"},
        "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}
    }))
    .unwrap();
    assert_eq!(
        got,
        json!({
            "model": "gpt-x",
            "max_tokens": 300,
            "stop": ["\n\nHuman:"],
            "temperature": 0.2,
            "top_p": 0.8,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "u-9",
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief.\n\nBe kind."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}}
                ]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "-2C"},
                {"role": "user", "content": "And tomorrow?"}
            ]
        })
    );
}

#[test]
fn round_trip_keeps_the_conversation() {
    let chat = json!({"model": "m", "max_tokens": 10, "stop": ["x"], "messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"k\":[1,2]}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "R"}
    ]});
    let back = to_chat(to_messages(chat.clone()).unwrap()).unwrap();
    assert_eq!(back["messages"], chat["messages"]);
    assert_eq!(back["stop"], chat["stop"]);
    assert_eq!(back["max_tokens"], 10);
}

/// A conversation of `n` messages written as text (as a client sends it).
fn big_chat(n: usize) -> String {
    let mut s = String::from(r#"{"model":"claude-x","messages":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        // Two user messages, then one assistant message: the users merge.
        let role = if i % 3 == 2 { "assistant" } else { "user" };
        s.push_str(&format!(r#"{{"role":"{role}","content":"m{i} \"q\""}}"#));
    }
    s.push_str(r#"],"max_tokens":7,"messages_note":null}"#);
    s
}

#[test]
fn a_big_request_translates_message_by_message() {
    let n = 30_000;
    let body = big_chat(n);
    let out = chat_to_messages_body(body.as_bytes(), &Options::default(), Some("target")).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["model"], "target",
        "the target's model replaces the client's"
    );
    assert_eq!(v["max_tokens"], 7);
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        n / 3 * 2,
        "consecutive user messages merged"
    );
    assert_eq!(
        messages[0],
        json!({"role": "user", "content": [
            {"type": "text", "text": "m0 \"q\""}, {"type": "text", "text": "m1 \"q\""}
        ]})
    );
    assert_eq!(
        messages[n / 3 * 2 - 1],
        json!({"role": "assistant", "content": [{"type": "text", "text": format!("m{} \"q\"", n - 1)}]})
    );
    // The same through the other direction and back.
    let back = messages_to_chat_body(&out, &Options::default(), None).unwrap();
    let back: Value = serde_json::from_slice(&back).unwrap();
    let chat = back["messages"].as_array().unwrap();
    assert_eq!(chat.len(), n / 3 * 2);
    assert_eq!(chat[1], json!({"role": "assistant", "content": "m2 \"q\""}));
    assert_eq!(back["model"], "target");
}

#[test]
fn the_last_messages_key_counts_and_system_comes_first_wherever_it_is() {
    let body = r#"{"messages":[{"role":"user","content":"old"}],"model":"m","max_tokens":1,
        "messages":[{"role":"user","content":"new"}],"system":"S"}"#;
    let v = messages_to_chat(body.as_bytes(), &Options::default()).unwrap();
    assert_eq!(
        v["messages"],
        json!([{"role": "system", "content": "S"}, {"role": "user", "content": "new"}])
    );
    let body = body.replace(r#","system":"S""#, "");
    let v = chat_to_messages(body.as_bytes(), &Options::default()).unwrap();
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "new"}]}])
    );
    for bad in [
        r#"{"model":"m"}"#,
        r#"{"messages":null}"#,
        r#"{"messages":{}}"#,
    ] {
        let err = chat_to_messages(bad.as_bytes(), &Options::default()).unwrap_err();
        assert!(
            err.to_string().contains("`messages` must be an array"),
            "{bad}: {err}"
        );
    }
    let err = chat_to_messages(b"[]", &Options::default()).unwrap_err();
    assert!(err.to_string().contains("must be a JSON object"), "{err}");
    let err = chat_to_messages(b"{\"messages\":[]} x", &Options::default()).unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
}
