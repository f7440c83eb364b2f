//! Complete (non-streaming) response bodies, both directions.

use serde_json::{json, Value};

use super::{finish_reason, stop_reason};

fn now_secs() -> u64 {
    crate::clock::now_secs()
}

/// OpenAI `usage` from Anthropic `usage`. Anthropic's `input_tokens`
/// excludes cached input; OpenAI's `prompt_tokens` includes it.
pub fn openai_usage(u: &Value) -> Value {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Anthropic `usage` from OpenAI `usage`.
pub fn anthropic_usage(u: &Value) -> Value {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    json!({
        "input_tokens": n("prompt_tokens").saturating_sub(cached),
        "cache_read_input_tokens": cached,
        "output_tokens": n("completion_tokens"),
    })
}

/// An Anthropic message as an OpenAI `chat.completion`.
pub fn message_to_chat(msg: &Value) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": msg["id"],
        "object": "chat.completion",
        "created": now_secs(),
        "model": msg["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(msg["stop_reason"].as_str().unwrap_or_default()),
        }],
        "usage": openai_usage(&msg["usage"]),
    })
}

/// An OpenAI `chat.completion` as an Anthropic message (its first choice).
pub fn chat_to_message(resp: &Value) -> Value {
    let choice = &resp["choices"][0];
    let m = &choice["message"];
    let mut content = Vec::new();
    let text = m["content"]
        .as_str()
        .or(m["refusal"].as_str())
        .unwrap_or_default();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in m["tool_calls"].as_array().into_iter().flatten() {
        let f = &call["function"];
        let args = f["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": f["name"],
            "input": input,
        }));
    }
    json!({
        "id": message_id(resp["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": resp["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or_default()),
        "stop_sequence": null,
        "usage": anthropic_usage(&resp["usage"]),
    })
}

/// An Anthropic-style message id for an OpenAI completion id.
pub fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) => format!("msg_{id}"),
        None => "msg_h3gate".to_string(),
    }
}

/// An Anthropic model object as an OpenAI model object.
pub fn model_to_openai(m: &Value) -> Value {
    json!({
        "id": m["id"],
        "object": "model",
        "created": 0,
        "owned_by": "anthropic",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_message_to_chat_completion() {
        let msg = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 5}
        });
        let c = message_to_chat(&msg);
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "claude-x");
        let choice = &c["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me look.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["name"], "weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(c["usage"]["prompt_tokens"], 15);
        assert_eq!(c["usage"]["completion_tokens"], 7);
        assert_eq!(c["usage"]["total_tokens"], 22);
    }

    #[test]
    fn chat_completion_to_anthropic_message() {
        let resp = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "length", "message": {
                "role": "assistant", "content": "Hello",
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]
            }}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        });
        let m = chat_to_message(&resp);
        assert_eq!(m["type"], "message");
        assert_eq!(m["id"], "msg_chatcmpl-1");
        assert_eq!(m["stop_reason"], "max_tokens");
        assert_eq!(m["content"][0], json!({"type": "text", "text": "Hello"}));
        assert_eq!(
            m["content"][1],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}})
        );
        assert_eq!(m["usage"]["input_tokens"], 12);
        assert_eq!(m["usage"]["output_tokens"], 3);
    }

    #[test]
    fn round_trip_keeps_text_tools_and_usage() {
        let resp = json!({
            "id": "c", "model": "m",
            "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "Hi there"}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2}
        });
        let back = message_to_chat(&chat_to_message(&resp));
        assert_eq!(back["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(back["choices"][0]["finish_reason"], "stop");
        assert_eq!(back["usage"]["total_tokens"], 6);
    }
}
