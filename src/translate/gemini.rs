//! Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`) from
//! both client surfaces: OpenAI chat completions and Anthropic messages.
//!
//! - [`request`]: a client's request body → Gemini's (`contents`,
//!   `systemInstruction`, `tools`, `toolConfig`, `generationConfig`).
//! - [`response`]: a whole `GenerateContentResponse` → the client's
//!   completion or message.
//! - [`stream`]: each SSE chunk (a `GenerateContentResponse`) → the client's
//!   chunks or named events, one upstream event at a time.
//!
//! Gemini's function calls have no ids: the gateway makes them up
//! (`call_…` / `toolu_…`), and maps a tool result back to its function by
//! the call the conversation carries.

pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;

use serde_json::{json, Value};

/// Gemini's `usageMetadata` as the counts the gateway and clients use:
/// `(prompt incl. cached, completion incl. thoughts, cached)`. Gemini's
/// `promptTokenCount` includes `cachedContentTokenCount`; its
/// `candidatesTokenCount` leaves out `thoughtsTokenCount`.
pub fn usage_counts(u: &Value) -> (u64, u64, u64) {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let prompt = n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount"));
    let completion = n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount"));
    (prompt, completion, n("cachedContentTokenCount").min(prompt))
}

/// OpenAI `usage` for a Gemini `usageMetadata`.
pub fn openai_usage(u: &Value) -> Value {
    let (prompt, completion, cached) = usage_counts(u);
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": cached},
    });
    if let Some(thoughts) = u["thoughtsTokenCount"].as_u64() {
        usage["completion_tokens_details"] = json!({ "reasoning_tokens": thoughts });
    }
    usage
}

/// Anthropic `usage` for a Gemini `usageMetadata` (`input_tokens` without
/// the cached ones, which are `cache_read_input_tokens`).
pub fn anthropic_usage(u: &Value) -> Value {
    let (prompt, completion, cached) = usage_counts(u);
    json!({
        "input_tokens": prompt - cached,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    })
}

/// Gemini finish reasons that mean the output was filtered.
fn filtered(reason: &str) -> bool {
    matches!(
        reason,
        "SAFETY"
            | "RECITATION"
            | "LANGUAGE"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
    )
}

/// OpenAI `finish_reason` for a Gemini `finishReason` (`tools`: the answer
/// called functions; Gemini says `STOP` then).
pub fn finish_reason(reason: &str, tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        r if filtered(r) => "content_filter",
        _ if tools => "tool_calls",
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for a Gemini `finishReason`.
pub fn stop_reason(reason: &str, tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "max_tokens",
        r if filtered(r) => "refusal",
        _ if tools => "tool_use",
        _ => "end_turn",
    }
}

/// The finish reason of a response, if it has ended: the first
/// candidate's, or a blocked prompt's (`promptFeedback.blockReason`,
/// reported as `SAFETY`).
pub fn ended(resp: &Value) -> Option<&str> {
    resp["candidates"][0]["finishReason"].as_str().or_else(|| {
        resp["promptFeedback"]["blockReason"]
            .as_str()
            .map(|_| "SAFETY")
    })
}

/// A made-up tool call id (Gemini has none): `prefix` and 16 hex digits.
pub fn call_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", fastrand::u64(..))
}

/// The fuzz target's property, here so tests run it too: any bytes into
/// the Gemini translators never panic, and what they produce is JSON.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    let opts = super::Options::default();
    for out in [
        request::chat_to_gemini(data, &opts),
        request::messages_to_gemini(data, &opts),
    ]
    .into_iter()
    .flatten()
    {
        serde_json::from_slice::<Value>(&out).expect("a translated request is JSON");
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = response::to_chat(&value).to_string();
        let _ = response::to_message(&value).to_string();
    }
    let text = String::from_utf8_lossy(data);
    for to_chat in [true, false] {
        let mut chat = stream::ToChat::new("fuzz", true);
        let mut messages = stream::ToMessages::new("fuzz");
        let mut parser = crate::sse::Parser::new(1 << 20);
        let _ = parser.push(text.as_bytes());
        let _ = parser.push(b"\n\n");
        let mut out = String::new();
        while let Ok(Some(ev)) = parser.next_event() {
            if to_chat {
                chat.event(&ev, &mut out);
            } else {
                messages.event(&ev, &mut out);
            }
        }
        if to_chat {
            chat.finish(&mut out);
        } else {
            messages.finish(&mut out);
        }
        let mut p = crate::sse::Parser::new(1 << 22);
        let _ = p.push(out.as_bytes());
        while let Ok(Some(ev)) = p.next_event() {
            if ev.data != "[DONE]" {
                serde_json::from_str::<Value>(&ev.data).expect("translated events carry JSON");
            }
        }
    }
}
