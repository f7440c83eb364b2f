//! OpenAI chat completions ↔ Anthropic messages (and both → AWS Bedrock
//! Converse, [`bedrock`]): requests, responses, streaming events and
//! errors, so any API surface reaches any provider.
//!
//! - [`request`]: a client's request body in one API → the provider's API
//!   (an unsupported parameter is a 400 naming it, unless the route drops them).
//! - [`response`]: a complete (non-streaming) response body, both directions.
//! - [`stream`]: SSE events translated one by one as they arrive (no buffering
//!   of the whole stream), plus the filter that removes a usage chunk the
//!   gateway asked for and the client did not.
//!
//! Everything here works on `serde_json::Value`s: the shapes are open-ended
//! and the gateway must pass on fields it does not know unchanged where the
//! two APIs agree. A request is never one `Value` tree, though: its messages
//! are translated one at a time into the output body, so a large request
//! costs about its output's size, not tens of times its body.

pub mod bedrock;
pub mod gemini;
pub mod request;
pub mod response;
pub mod responses;
pub mod stream;

/// What turns the upstream's response body into the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Same API both sides: bytes pass through untouched.
    None,
    /// OpenAI stream with a usage chunk the gateway asked for and the client
    /// did not: that chunk is removed, everything else passes through.
    StripUsage,
    /// Upstream Anthropic messages → client OpenAI chat completions.
    MessagesToChat { include_usage: bool },
    /// Upstream OpenAI chat completions → client Anthropic messages.
    ChatToMessages,
    /// Upstream Anthropic model object → OpenAI model object.
    ModelToOpenAi,
    /// A Responses API answer: the response's id tagged with where it was
    /// made (see [`responses`]), everything else unchanged.
    TagResponse(responses::ResponseTag),
    /// Upstream Anthropic messages → a Responses API client (through chat
    /// completions: [`responses::chat`]).
    MessagesToResponses,
    /// Upstream Gemini `generateContent` → client OpenAI chat completions.
    GeminiToChat { include_usage: bool },
    /// Upstream Gemini `generateContent` → client Anthropic messages.
    GeminiToMessages,
    /// Upstream Bedrock Converse (JSON, or an event stream) → client
    /// OpenAI chat completions.
    ConverseToChat { include_usage: bool },
    /// Upstream Bedrock Converse → client Anthropic messages.
    ConverseToMessages,
}

/// Why a request cannot be translated: the client's fault, a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(
        "the parameter `{param}` is not supported when this model is served through the {api} API"
    )]
    Unsupported { param: String, api: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// A request the translation cannot read: the client's fault (400).
pub(crate) fn invalid(msg: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(msg.into())
}

/// Translation settings of the route and provider serving a request.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Drop parameters the target API lacks instead of refusing the request.
    pub drop_unsupported: bool,
    /// `max_tokens` for Anthropic when the client gave none (it is required there).
    pub default_max_tokens: u32,
}

impl Options {
    /// `param` has no counterpart in `api`: refused (a 400 naming it), or
    /// let through to be dropped when the route says so.
    pub(crate) fn refuse(&self, param: &str, api: &'static str) -> Result<(), TranslateError> {
        if self.drop_unsupported {
            Ok(())
        } else {
            Err(TranslateError::Unsupported {
                param: param.to_string(),
                api,
            })
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            drop_unsupported: false,
            default_max_tokens: 4096,
        }
    }
}

/// OpenAI `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// The fuzz target's property, here so tests run it too: any bytes into any
/// translator never panic, and whatever comes out is valid JSON.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    let opts = Options::default();
    let check = |v: &serde_json::Value| {
        let text = v.to_string();
        serde_json::from_str::<serde_json::Value>(&text).expect("translator output is JSON");
    };
    if let Ok(v) = request::chat_to_messages(data, &opts) {
        check(&v);
    }
    if let Ok(v) = request::messages_to_chat(data, &opts) {
        check(&v);
    }
    if let Ok(v) = responses::chat::request_to_chat(data, &opts) {
        check(&v);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        check(&response::message_to_chat(&value));
        check(&response::chat_to_message(&value));
        check(&response::model_to_openai(&value));
        check(&responses::chat::chat_to_response(&value));
    }
    // Streams: the input split into events at blank lines.
    let text = String::from_utf8_lossy(data);
    for conv in [
        Conversion::MessagesToChat {
            include_usage: true,
        },
        Conversion::ChatToMessages,
        Conversion::StripUsage,
        Conversion::MessagesToResponses,
    ] {
        let mut t = stream::Translator::new(conv, "fuzz").expect("a converting stream");
        let mut parser = crate::sse::Parser::new(1 << 20);
        let _ = parser.push(text.as_bytes());
        let _ = parser.push(b"\n\n");
        let mut out = String::new();
        let mut upstream = Vec::new();
        while let Ok(Some(ev)) = parser.next_event() {
            t.event(&ev, &mut out);
            upstream.push(ev);
        }
        t.finish(&mut out);
        let mut p = crate::sse::Parser::new(1 << 22);
        let _ = p.push(out.as_bytes());
        while let Ok(Some(ev)) = p.next_event() {
            if conv == Conversion::StripUsage {
                // A filter, not a translation: whatever it lets through is
                // an upstream event, unchanged (JSON or not).
                assert!(!stream::is_usage_only_chunk(&ev.data), "usage removed");
                assert!(
                    upstream
                        .iter()
                        .any(|u| u.data == ev.data && u.event == ev.event),
                    "events pass through unchanged"
                );
            } else if ev.data != "[DONE]" {
                serde_json::from_str::<serde_json::Value>(&ev.data)
                    .expect("translated events carry JSON");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The fuzz property on hand-picked shapes (the fuzz target explores the rest).
    #[test]
    fn fuzz_property_on_samples() {
        let samples: &[&str] = &[
            "",
            "null",
            "[]",
            r#"{"messages": 5}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            r#"{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}], "tools": [{"type": "function", "function": {}}]}"#,
            r#"{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result", "content": [{"type": "image"}]}]}], "system": 5}"#,
            r#"{"choices": [{"message": {"tool_calls": [{"function": {"arguments": "not json"}}]}}]}"#,
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\"}}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3}]}}]}\n\ndata: [DONE]\n\ndata: [DONE]\n\n",
            "data: {\"error\": 5}\n\ndata: {\"usage\": {}, \"choices\": []}\n\n",
        ];
        for s in samples {
            super::fuzz_check(s.as_bytes());
        }
    }

    /// Found by the `translate` fuzz target: a `data` line without a colon
    /// is an event with empty data, which the usage filter passes through
    /// unchanged (the property wrongly wanted JSON from a filter).
    #[test]
    fn fuzz_regression_an_event_with_empty_data() {
        super::fuzz_check(b"\n{\t@Q\t\t\ndala\ndata\n[");
        super::fuzz_check(b"data\n\n");
        super::fuzz_check(b"data:\n\nevent: x\ndata: \n\n");
    }
}
