//! The built-in mock provider: answers in-process exactly like OpenAI (chat
//! completions JSON and SSE chunks ending in `data: [DONE]`, completions,
//! embeddings, realistic `usage`) and like Anthropic (messages JSON and
//! named SSE events, `count_tokens`) and, asked in Gemini's API, like
//! Gemini (`generateContent` JSON, `alt=sse` chunks, see [`gemini`]), with
//! configurable latency to the first
//! token and tokens per second. A request that offers tools is answered
//! with a call to the first one (unless its last message is a tool result).
//! A request whose first user message says `cached:N` (and `cache_write:N`)
//! is answered with that many more prompt tokens, reported as read from
//! (written to) the prompt cache in each API's own usage fields (see
//! [`MockRequest::cache_usage`]).
//! With `converse = true` it answers as AWS Bedrock's Converse API instead
//! ([`bedrock`]).
//! The wire-format builders here are public so test and benchmark upstreams
//! speak the very same format.

mod anthropic;
pub mod bedrock;
mod cache;
mod gemini;
mod responses;

pub use gemini::{gemini_error, gemini_status};
pub use responses::{deleted_response, input_items, stored_response};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Common, Endpoint, Prepared, UpstreamError, UpstreamResponse};
use crate::config::{MockConfig, ProviderConfig};
use crate::exchange::{full, BodyError};
use crate::sse;

/// Test support only, for checking that a panic inside the pipeline is
/// contained (a 500, and the gateway keeps serving). A request for this
/// model makes the mock panic, but only while [`PANIC_SWITCH`] is on.
#[doc(hidden)]
pub const PANIC_MODEL: &str = "mock-test-only-panic";

/// Test support only: arms [`PANIC_MODEL`]. Off unless a test harness
/// linking the library sets it; no configuration key or request can turn
/// it on, so a production gateway never honours the reserved model name.
#[doc(hidden)]
pub static PANIC_SWITCH: AtomicBool = AtomicBool::new(false);

fn test_panic_requested(model: &str) -> bool {
    model == PANIC_MODEL && PANIC_SWITCH.load(Ordering::Relaxed)
}

#[derive(Debug)]
pub struct Mock {
    pub common: Common,
    cfg: MockConfig,
}

/// The fields of a request the mock looks at.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct MockRequest {
    pub model: String,
    #[serde(alias = "max_output_tokens")]
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub stream_options: Option<MockStreamOptions>,
    pub input: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub messages: Option<Vec<Value>>,
}

impl MockRequest {
    /// The tool call the mock answers with: the first tool offered, unless
    /// the conversation just returned a tool result or tools are off.
    pub fn tool_call(&self) -> Option<ToolCall> {
        let tool = self.tools.as_ref()?.first()?;
        if self
            .tool_choice
            .as_ref()
            .is_some_and(|c| c == "none" || c["type"] == "none")
        {
            return None;
        }
        // Chat and Anthropic: `messages`; the Responses API: `input` items.
        let input = self.input.as_ref().and_then(Value::as_array);
        let last = match self.messages.as_ref() {
            Some(m) => m.last()?,
            // A plain-text `input` is a user turn.
            None => input.and_then(|i| i.last()).unwrap_or(&Value::Null),
        };
        let answered = last["role"] == "tool"
            || last["type"] == "function_call_output"
            || last["content"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"));
        if answered {
            return None;
        }
        // OpenAI: {type, function: {name, parameters}}; Anthropic: {name, input_schema}.
        let (name, schema) = match tool.get("function") {
            Some(f) => (&f["name"], &f["parameters"]),
            // Responses: {type, name, parameters}.
            None if tool.get("parameters").is_some() => (&tool["name"], &tool["parameters"]),
            None => (&tool["name"], &tool["input_schema"]),
        };
        let mut args = serde_json::Map::new();
        if let Some(props) = schema["properties"].as_object() {
            for (k, p) in props {
                let v = match p["type"].as_str() {
                    Some("number") | Some("integer") => json!(1),
                    Some("boolean") => json!(true),
                    _ => json!("mock"),
                };
                args.insert(k.clone(), v);
            }
        }
        Some(ToolCall {
            id: format!("call_mock{:04x}", rand_u16()),
            name: name.as_str().unwrap_or("tool").to_string(),
            arguments: Value::Object(args).to_string(),
        })
    }
}

/// A tool call in a mock answer.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct MockStreamOptions {
    pub include_usage: bool,
}

impl Mock {
    pub fn new(common: Common, cfg: &ProviderConfig) -> Self {
        Mock {
            common,
            cfg: cfg.mock.clone(),
        }
    }

    pub async fn send(&self, call: &Prepared) -> Result<UpstreamResponse, UpstreamError> {
        if self.speaks_converse() {
            return self.send_converse(call).await;
        }
        match call.endpoint {
            Endpoint::Model => {
                return Ok(json_response(
                    json!({"id": call.model, "object": "model", "created": 0, "owned_by": self.common.name}),
                ))
            }
            Endpoint::StoredResponse => {
                return Ok(json_response(stored_response(&call.model, "mock")))
            }
            Endpoint::CancelResponse => {
                let mut v = stored_response(&call.model, "mock");
                v["status"] = json!("cancelled");
                return Ok(json_response(v));
            }
            Endpoint::DeleteResponse => return Ok(json_response(deleted_response(&call.model))),
            Endpoint::ResponseInputItems => return Ok(json_response(input_items(&call.model))),
            _ => {}
        }
        let req: MockRequest = if call.endpoint == Endpoint::GenerateContent {
            let body = serde_json::from_slice(&call.body).unwrap_or_default();
            MockRequest::from_gemini(&call.model, &body)
        } else {
            serde_json::from_slice(&call.body).unwrap_or_default()
        };
        if test_panic_requested(&req.model) {
            panic!("mock provider: {PANIC_MODEL:?} requested with the test panic switch on");
        }
        let n = req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(self.cfg.completion_tokens)
            .clamp(1, 4096);
        let prompt_tokens = estimate_tokens(call.body.len());
        if call.endpoint == Endpoint::CountTokens {
            return Ok(json_response(json!({"input_tokens": prompt_tokens})));
        }
        let (cached, written) = req.cache_usage();
        let mut answer =
            Answer::new(&req.model, call.endpoint, prompt_tokens, n).with_cache(cached, written);
        answer.tool = req.tool_call();

        if call.endpoint == Endpoint::Embeddings {
            return Ok(json_response(embeddings(
                &req.model,
                &req.input,
                prompt_tokens,
            )));
        }
        if !call.stream {
            tokio::time::sleep(self.cfg.first_token_latency.get()).await;
            return Ok(json_response(answer.complete()));
        }
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let first = self.cfg.first_token_latency.get();
        let gap = match self.cfg.tokens_per_second {
            0 => Duration::ZERO,
            tps => Duration::from_secs_f64(1.0 / f64::from(tps)),
        };
        let events = match call.endpoint {
            Endpoint::Messages => answer.message_events(),
            Endpoint::Responses => answer.response_events(),
            Endpoint::GenerateContent => answer.gemini_events(),
            _ => answer.stream_events(include_usage),
        };
        let stream = futures_util::stream::unfold(0usize, move |i| {
            let ev = events.get(i).cloned();
            async move {
                let ev = ev?;
                let delay = if i == 0 { first } else { gap };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((
                    Ok::<_, BodyError>(http_body::Frame::data(Bytes::from(ev))),
                    i + 1,
                ))
            }
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        Ok(UpstreamResponse {
            status: StatusCode::OK,
            headers,
            body: StreamBody::new(stream).boxed_unsync(),
            key: None,
        })
    }
}

fn json_response(v: Value) -> UpstreamResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body: full(v.to_string()),
        key: None,
    }
}

/// A rough token estimate from a byte count (about four bytes a token).
pub fn estimate_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes / 4).unwrap_or(u32::MAX).max(1)
}

const WORDS: [&str; 16] = [
    "The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ",", " and",
    " the", " gateway", " streams", " it", ".",
];

/// The `i`-th token of every mock answer.
pub fn token(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// One mock answer: its identity and the tokens it is made of.
pub struct Answer {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub endpoint: Endpoint,
    /// Every prompt token, the cached and cache-written ones included.
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Of `prompt_tokens`: read from the prompt cache.
    pub cached_tokens: u32,
    /// Of `prompt_tokens`: written to the prompt cache (Anthropic reports
    /// these; OpenAI's usage has no such field, they are plain prompt tokens).
    pub cache_write_tokens: u32,
    /// Answer with this tool call instead of text.
    pub tool: Option<ToolCall>,
}

impl Answer {
    pub fn new(
        model: &str,
        endpoint: Endpoint,
        prompt_tokens: u32,
        completion_tokens: u32,
    ) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Messages => "msg",
            Endpoint::Responses => "resp",
            _ => "chatcmpl",
        };
        Answer {
            // OpenAI's response ids are `resp_…`.
            id: format!(
                "{prefix}{}mock{created:x}{:04x}",
                if prefix == "resp" { "_" } else { "-" },
                rand_u16()
            ),
            model: if model.is_empty() {
                "mock".into()
            } else {
                model.into()
            },
            created,
            endpoint,
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
            cache_write_tokens: 0,
            tool: None,
        }
    }

    /// This answer with `cached` more prompt tokens read from the prompt
    /// cache and `written` more written to it.
    pub fn with_cache(mut self, cached: u32, written: u32) -> Self {
        self.cached_tokens = cached;
        self.cache_write_tokens = written;
        self.prompt_tokens = self
            .prompt_tokens
            .saturating_add(cached)
            .saturating_add(written);
        self
    }

    fn finish_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_calls"
        } else {
            "length"
        }
    }

    pub fn text(&self) -> String {
        (0..self.completion_tokens as usize).map(token).collect()
    }

    /// OpenAI's `usage`: `prompt_tokens` counts the cached ones too, and
    /// `prompt_tokens_details.cached_tokens` says how many (only when some are).
    fn usage(&self) -> Value {
        let mut usage = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        });
        if self.cached_tokens > 0 {
            usage["prompt_tokens_details"] =
                json!({"cached_tokens": self.cached_tokens, "audio_tokens": 0});
        }
        usage
    }

    /// The non-streaming response body.
    pub fn complete(&self) -> Value {
        match self.endpoint {
            Endpoint::Messages => return self.message(),
            Endpoint::Responses => return self.response(),
            _ => {}
        }
        if self.endpoint == Endpoint::GenerateContent {
            return self.gemini_response();
        }
        let choice = if let Some(t) = &self.tool {
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
                ]},
                "logprobs": null,
                "finish_reason": "tool_calls",
            })
        } else if self.endpoint == Endpoint::Completions {
            json!({"index": 0, "text": self.text(), "logprobs": null, "finish_reason": "length"})
        } else {
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": self.text(), "refusal": null},
                "logprobs": null,
                "finish_reason": "length",
            })
        };
        json!({
            "id": self.id,
            "object": if self.endpoint == Endpoint::Completions { "text_completion" } else { "chat.completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_h3gate_mock",
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    /// One streamed chunk as an SSE event. `delta` is the token, `None` for
    /// the role-only first chat chunk; `finish` marks the last choice chunk.
    pub fn chunk(&self, delta: Option<&str>, finish: bool) -> String {
        let finish_reason = if finish {
            json!(self.finish_reason())
        } else {
            Value::Null
        };
        if self.endpoint == Endpoint::Completions {
            let body = json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish_reason}],
            });
            return sse::encode(None, &body.to_string());
        }
        let d = match (delta, finish) {
            (_, true) => json!({}),
            (None, false) => json!({"role": "assistant", "content": "", "refusal": null}),
            (Some(t), false) => json!({"content": t}),
        };
        self.chat_chunk(d, finish_reason)
    }

    fn chat_chunk(&self, delta: Value, finish_reason: Value) -> String {
        let body = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_h3gate_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        sse::encode(None, &body.to_string())
    }

    /// A tool call streamed the way OpenAI does: id and name first, then
    /// the arguments in two pieces.
    fn tool_chunks(&self, t: &ToolCall, events: &mut Vec<String>) {
        events.push(self.chat_chunk(
            json!({"tool_calls": [{"index": 0, "id": t.id, "type": "function",
                "function": {"name": t.name, "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in split_half(&t.arguments) {
            events.push(self.chat_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }

    /// The final usage-only chunk OpenAI sends with `stream_options.include_usage`.
    pub fn usage_chunk(&self) -> String {
        let object = if self.endpoint == Endpoint::Completions {
            "text_completion"
        } else {
            "chat.completion.chunk"
        };
        let body = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": self.usage(),
        });
        sse::encode(None, &body.to_string())
    }

    /// Every event of the stream, in order, ending with `data: [DONE]`.
    pub fn stream_events(&self, include_usage: bool) -> Vec<String> {
        let mut events = Vec::with_capacity(self.completion_tokens as usize + 4);
        if self.endpoint == Endpoint::ChatCompletions {
            events.push(self.chunk(None, false));
        }
        match &self.tool {
            Some(t) => self.tool_chunks(t, &mut events),
            None => {
                for i in 0..self.completion_tokens as usize {
                    events.push(self.chunk(Some(token(i)), false));
                }
            }
        }
        events.push(self.chunk(None, true));
        if include_usage {
            events.push(self.usage_chunk());
        }
        events.push(DONE.to_string());
        events
    }
}

/// A string cut in two at a character boundary near its middle.
pub fn split_half(s: &str) -> [&str; 2] {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    [&s[..mid], &s[mid..]]
}

/// The event that ends an OpenAI stream.
pub const DONE: &str = "data: [DONE]\n\n";

/// An embeddings response: one deterministic 8-dimensional vector per input.
pub fn embeddings(model: &str, input: &Option<Value>, prompt_tokens: u32) -> Value {
    let inputs: Vec<String> = match input {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_string()).collect(),
        Some(v) => vec![v.to_string()],
        None => vec![String::new()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
            let vector: Vec<f64> = digest.as_ref()[..8]
                .iter()
                .map(|b| f64::from(*b) / 255.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": if model.is_empty() { "mock" } else { model },
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

fn rand_u16() -> u16 {
    fastrand::u16(..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_model_is_inert_while_the_switch_is_off() {
        // Nothing in the library's own tests sets the switch.
        assert!(!test_panic_requested(PANIC_MODEL));
        assert!(!test_panic_requested("mock-1"));
    }

    #[test]
    fn stream_text_equals_complete_text() {
        let a = Answer::new("m", Endpoint::ChatCompletions, 10, 5);
        let mut text = String::new();
        let mut p = sse::Parser::new(1 << 16);
        for ev in a.stream_events(true) {
            p.push(ev.as_bytes()).unwrap();
        }
        let mut last = String::new();
        while let Some(ev) = p.next_event().unwrap() {
            if ev.data == "[DONE]" {
                last = ev.data;
                continue;
            }
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
        assert_eq!(last, "[DONE]");
        assert_eq!(text, a.complete()["choices"][0]["message"]["content"]);
        assert_eq!(a.complete()["usage"]["total_tokens"], 15);
    }
}
