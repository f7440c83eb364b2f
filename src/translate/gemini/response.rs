//! A whole Gemini `GenerateContentResponse` as the client's answer: the
//! first candidate's text and function calls, its finish reason and the
//! usage. Thought parts (`thought: true`) are the model's reasoning
//! summary, not its answer, and are left out.

use serde_json::{json, Value};

use super::{anthropic_usage, call_id, ended, finish_reason, openai_usage, stop_reason};

/// The first candidate's answer text and function calls `(name, args)`.
pub fn answer(resp: &Value) -> (String, Vec<(Value, Value)>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in resp["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if part["thought"] == json!(true) {
            continue;
        }
        if let Some(t) = part["text"].as_str() {
            text.push_str(t);
        }
        let call = &part["functionCall"];
        if call.is_object() {
            let args = if call["args"].is_object() {
                call["args"].clone()
            } else {
                json!({})
            };
            calls.push((call["name"].clone(), args));
        }
    }
    (text, calls)
}

/// The response's id, or a made-up one.
fn response_id(resp: &Value) -> String {
    resp["responseId"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map_or_else(|| call_id(""), str::to_string)
}

/// A Gemini response as an OpenAI `chat.completion`.
pub fn to_chat(resp: &Value) -> Value {
    let (text, calls) = answer(resp);
    let tools = !calls.is_empty();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && tools { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if tools {
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|(name, args)| {
                json!({"id": call_id("call_"), "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}})
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": format!("chatcmpl-{}", response_id(resp)),
        "object": "chat.completion",
        "created": crate::clock::now_secs(),
        "model": resp["modelVersion"].as_str().unwrap_or("gemini"),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(ended(resp).unwrap_or("STOP"), tools),
        }],
        "usage": openai_usage(&resp["usageMetadata"]),
    })
}

/// A Gemini response as an Anthropic message.
pub fn to_message(resp: &Value) -> Value {
    let (text, calls) = answer(resp);
    let tools = !calls.is_empty();
    let mut content = Vec::with_capacity(calls.len() + 1);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for (name, input) in calls {
        content.push(
            json!({"type": "tool_use", "id": call_id("toolu_"), "name": name, "input": input}),
        );
    }
    json!({
        "id": format!("msg_{}", response_id(resp)),
        "type": "message",
        "role": "assistant",
        "model": resp["modelVersion"].as_str().unwrap_or("gemini"),
        "content": content,
        "stop_reason": stop_reason(ended(resp).unwrap_or("STOP"), tools),
        "stop_sequence": null,
        "usage": anthropic_usage(&resp["usageMetadata"]),
    })
}
