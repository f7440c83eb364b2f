//! A complete Converse response → the client's: an Anthropic message, or
//! (through it) an OpenAI `chat.completion`.

use serde_json::{json, Value};

use crate::translate::response::message_to_chat;

/// Anthropic `stop_reason` for a Converse `stopReason`.
pub fn stop_reason(bedrock: &str) -> &'static str {
    match bedrock {
        "tool_use" => "tool_use",
        "max_tokens" => "max_tokens",
        "stop_sequence" => "stop_sequence",
        "guardrail_intervened" | "content_filtered" => "refusal",
        "model_context_window_exceeded" => "model_context_window_exceeded",
        // end_turn and anything new
        _ => "end_turn",
    }
}

/// Anthropic `usage` from Converse `usage` (both leave cached input out
/// of the input count).
pub fn anthropic_usage(u: &Value) -> Value {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let mut usage = json!({
        "input_tokens": n("inputTokens"),
        "output_tokens": n("outputTokens"),
    });
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    if read > 0 || write > 0 {
        usage["cache_read_input_tokens"] = json!(read);
        usage["cache_creation_input_tokens"] = json!(write);
    }
    usage
}

/// A fresh Anthropic-style message id (Converse answers carry none).
pub fn message_id() -> String {
    format!("msg_bdrk_{:016x}", fastrand::u64(..))
}

/// A Converse response as an Anthropic message from `model`.
pub fn converse_to_message(resp: &Value, model: &str) -> Value {
    let mut content = Vec::new();
    for block in resp["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(text) = block["text"].as_str() {
            content.push(json!({"type": "text", "text": text}));
        } else if let Some(t) = block.get("toolUse") {
            content.push(json!({
                "type": "tool_use",
                "id": t["toolUseId"],
                "name": t["name"],
                "input": if t["input"].is_object() { t["input"].clone() } else { json!({}) },
            }));
        } else if let Some(r) = block["reasoningContent"].get("reasoningText") {
            content.push(json!({
                "type": "thinking",
                "thinking": r["text"].as_str().unwrap_or_default(),
                "signature": r["signature"].as_str().unwrap_or_default(),
            }));
        }
    }
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(resp["stopReason"].as_str().unwrap_or_default()),
        "stop_sequence": null,
        "usage": anthropic_usage(&resp["usage"]),
    })
}

/// A Converse response as an OpenAI `chat.completion` from `model`.
pub fn converse_to_chat(resp: &Value, model: &str) -> Value {
    let mut chat = message_to_chat(&converse_to_message(resp, model));
    if let Some(id) = chat["id"].as_str() {
        chat["id"] = json!(id.replacen("msg_", "chatcmpl-", 1));
    }
    chat
}
