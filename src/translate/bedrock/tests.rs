//! Requests and complete responses, both client surfaces ↔ Converse.

use serde_json::{json, Value};

use super::request::{chat_to_converse_body, messages_to_converse_body};
use super::response::{converse_to_chat, converse_to_message};
use crate::translate::{Options, TranslateError};

fn chat(body: Value) -> Result<Value, TranslateError> {
    chat_to_converse_body(body.to_string().as_bytes(), &Options::default())
        .map(|b| serde_json::from_slice(&b).unwrap())
}

fn messages(body: Value, drop: bool) -> Result<Value, TranslateError> {
    let opts = Options {
        drop_unsupported: drop,
        ..Options::default()
    };
    messages_to_converse_body(body.to_string().as_bytes(), &opts)
        .map(|b| serde_json::from_slice(&b).unwrap())
}

#[test]
fn openai_chat_becomes_converse() {
    let c = chat(json!({
        "model": "gpt-x", "stream": true, "temperature": 0.2, "top_p": 0.9, "stop": "END",
        "max_tokens": 50, "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
        ],
        "tools": [{"type": "function", "function": {"name": "look", "description": "Looks",
            "parameters": {"type": "object", "properties": {"q": {"type": "integer"}}}}}],
        "tool_choice": "required"
    }))
    .unwrap();
    assert_eq!(c["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        c["inferenceConfig"],
        json!({"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
    );
    let m = c["messages"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m[0]["role"], "user");
    assert_eq!(m[0]["content"][0], json!({"text": "What is this?"}));
    assert_eq!(
        m[0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    assert_eq!(
        m[1]["content"][0],
        json!({"toolUse": {"toolUseId": "call_1", "name": "look", "input": {"q": 1}}})
    );
    assert_eq!(
        m[2]["content"][0],
        json!({"toolResult": {"toolUseId": "call_1", "content": [{"text": "a cat"}]}})
    );
    assert_eq!(
        c["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "look", "description": "Looks",
            "inputSchema": {"json": {"type": "object", "properties": {"q": {"type": "integer"}}}}}}],
            "toolChoice": {"any": {}}})
    );
    for absent in ["model", "stream", "stream_options", "max_tokens"] {
        assert!(c.get(absent).is_none(), "{absent}");
    }
    // No max_tokens given: none sent (models' limits differ).
    let c = chat(json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})).unwrap();
    assert!(c.get("inferenceConfig").is_none(), "{c}");
}

#[test]
fn unsupported_parameters_name_the_converse_api() {
    let e = chat(
        json!({"model": "m", "logit_bias": {}, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .unwrap_err();
    assert_eq!(
        e,
        TranslateError::Unsupported {
            param: "logit_bias".into(),
            api: super::API
        }
    );
    let body = json!({"model": "m", "max_tokens": 5, "top_k": 3, "tool_choice": {"type": "none"},
    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hi"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "document", "source": {}}
    ]}]});
    let e = messages(body.clone(), false).unwrap_err();
    assert!(e.to_string().contains("AWS Bedrock Converse"), "{e}");
    // Dropped instead, when the route says so.
    let c = messages(body, true).unwrap();
    assert_eq!(c["messages"][0]["content"], json!([{"text": "Hi"}]));
    assert!(c["toolConfig"].get("toolChoice").is_none());
    assert!(c.get("top_k").is_none());
    // Bad input is a clear 400, not a panic.
    assert!(matches!(
        messages(
            json!({"messages": [{"role": "system", "content": "x"}]}),
            false
        ),
        Err(TranslateError::Invalid(_))
    ));
    assert!(matches!(
        messages(json!({"messages": 5}), false),
        Err(TranslateError::Invalid(_))
    ));
}

#[test]
fn anthropic_messages_become_converse() {
    let c = messages(
        json!({"model": "claude", "max_tokens": 9, "stop_sequences": ["X"],
            "system": [{"type": "text", "text": "Sys", "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "tool", "name": "t"},
            "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
            "metadata": {"user_id": "u1"},
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "tu1", "name": "t", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "is_error": true,
                    "content": [{"type": "text", "text": "failed"}]}]}
            ]}),
        false,
    )
    .unwrap();
    assert_eq!(
        c["system"],
        json!([{"text": "Sys"}, {"cachePoint": {"type": "default"}}])
    );
    assert_eq!(
        c["inferenceConfig"],
        json!({"maxTokens": 9, "stopSequences": ["X"]})
    );
    assert_eq!(
        c["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "t"}})
    );
    assert_eq!(c["messages"][0]["content"], json!([{"text": "Hi"}]));
    assert_eq!(
        c["messages"][2]["content"][0]["toolResult"],
        json!({"toolUseId": "tu1", "content": [{"text": "failed"}], "status": "error"})
    );
}

fn converse_answer(stop: &str) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Let me look."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Paris"}}}
        ]}},
        "stopReason": stop,
        "usage": {"inputTokens": 10, "outputTokens": 7, "totalTokens": 22,
            "cacheReadInputTokens": 5, "cacheWriteInputTokens": 0},
        "metrics": {"latencyMs": 100}
    })
}

#[test]
fn converse_answers_become_the_clients() {
    let m = converse_to_message(&converse_answer("tool_use"), "claude-on-bedrock");
    assert_eq!(m["type"], "message");
    assert_eq!(m["model"], "claude-on-bedrock");
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(
        m["content"][0],
        json!({"type": "text", "text": "Let me look."})
    );
    assert_eq!(
        m["content"][1],
        json!({"type": "tool_use", "id": "tooluse_1", "name": "weather", "input": {"city": "Paris"}})
    );
    assert_eq!(m["usage"]["input_tokens"], 10);
    assert_eq!(m["usage"]["cache_read_input_tokens"], 5);
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));

    let c = converse_to_chat(&converse_answer("tool_use"), "m");
    assert_eq!(c["object"], "chat.completion");
    assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        c["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "weather"
    );
    assert_eq!(c["usage"]["prompt_tokens"], 15, "cached input counted in");
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(c["usage"]["completion_tokens"], 7);
}

#[test]
fn stop_reasons_map_to_both_apis() {
    for (bedrock, anthropic, openai) in [
        ("end_turn", "end_turn", "stop"),
        ("tool_use", "tool_use", "tool_calls"),
        ("max_tokens", "max_tokens", "length"),
        ("stop_sequence", "stop_sequence", "stop"),
        ("guardrail_intervened", "refusal", "content_filter"),
        ("content_filtered", "refusal", "content_filter"),
    ] {
        let a = converse_answer(bedrock);
        assert_eq!(
            converse_to_message(&a, "m")["stop_reason"],
            anthropic,
            "{bedrock}"
        );
        assert_eq!(
            converse_to_chat(&a, "m")["choices"][0]["finish_reason"],
            openai,
            "{bedrock}"
        );
    }
    // Whatever a peer sends, the answer is JSON.
    for junk in [json!(null), json!([]), json!({"output": 5, "usage": "x"})] {
        let _ = converse_to_chat(&junk, "m").to_string();
        let _ = converse_to_message(&junk, "m").to_string();
    }
}
