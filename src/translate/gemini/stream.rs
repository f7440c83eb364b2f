//! Gemini's `alt=sse` stream, one chunk at a time. Every event's data is a
//! `GenerateContentResponse` holding the next parts of the first candidate;
//! the last one has a `finishReason` (and the final `usageMetadata`).
//! There is no `[DONE]`: the chunk with a finish reason ends the client's
//! stream too, and anything after it is ignored.
//!
//! To OpenAI: the first chunk → the role chunk; text parts → content
//! chunks; each `functionCall` part → one tool call (a made-up id, its name
//! and its whole arguments in one chunk); the finish reason → the finish
//! chunk, the usage chunk (if the client asked) and `[DONE]`.
//!
//! To Anthropic: the first chunk → `message_start` (its input tokens, when
//! the chunk reports them); text parts → a text block's deltas; each
//! `functionCall` → a whole `tool_use` block; the finish reason →
//! `content_block_stop`, `message_delta` (stop reason, usage),
//! `message_stop`.
//!
//! An `{"error": …}` chunk becomes the client's error event and ends the
//! stream.

use serde_json::{json, Value};

use super::{anthropic_usage, call_id, ended, finish_reason, openai_usage, stop_reason};
use crate::sse::{encode, Event};

/// A chunk's JSON, unless it is not JSON (then it says nothing).
fn parse(ev: &Event) -> Option<Value> {
    serde_json::from_str::<Value>(&ev.data)
        .ok()
        .filter(Value::is_object)
}

/// The error of an `{"error": {...}}` chunk: status code and message.
fn error_of(v: &Value) -> Option<(u16, &str)> {
    let e = v.get("error").filter(|e| e.is_object())?;
    let code = e["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(500);
    let message = e["message"]
        .as_str()
        .unwrap_or("the upstream provider failed mid-stream");
    Some((code, message))
}

/// The first candidate's parts that are the answer (not thoughts).
fn parts(v: &Value) -> impl Iterator<Item = &Value> {
    v["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["thought"] != json!(true))
}

/// A function call part's `(name, arguments as JSON text)`.
fn function_call(part: &Value) -> Option<(&Value, String)> {
    let call = part.get("functionCall").filter(|c| c.is_object())?;
    let args = match &call["args"] {
        a @ Value::Object(_) => a.to_string(),
        _ => "{}".to_string(),
    };
    Some((&call["name"], args))
}

/// Gemini chunks → OpenAI chat completion chunks.
pub struct ToChat {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    tools: usize,
    usage: Value,
    ended: bool,
}

impl ToChat {
    pub fn new(model: &str, include_usage: bool) -> Self {
        ToChat {
            id: String::new(),
            model: model.to_string(),
            created: crate::clock::now_secs(),
            include_usage,
            started: false,
            tools: 0,
            usage: Value::Null,
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut String) {
        let body = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        out.push_str(&encode(None, &body.to_string()));
    }

    fn start(&mut self, v: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let id = v["responseId"].as_str().filter(|s| !s.is_empty());
        self.id = format!(
            "chatcmpl-{}",
            id.map_or_else(|| call_id(""), str::to_string)
        );
        if let Some(m) = v["modelVersion"].as_str() {
            self.model = m.to_string();
        }
        self.chunk(json!({"role": "assistant", "content": ""}), None, out);
    }

    pub fn event(&mut self, ev: &Event, out: &mut String) {
        if self.ended {
            return;
        }
        let Some(mut v) = parse(ev) else {
            return;
        };
        if let Some((code, message)) = error_of(&v) {
            let kind = if code >= 500 || code == 429 {
                "server_error"
            } else {
                "invalid_request_error"
            };
            let status = v["error"]["status"].as_str().unwrap_or("upstream_error");
            let body = json!({"error": {"message": message, "type": kind, "code": status}});
            out.push_str(&encode(None, &body.to_string()));
            self.ended = true;
            return;
        }
        self.start(&v, out);
        for part in parts(&v) {
            if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
                self.chunk(json!({ "content": text }), None, out);
            }
            if let Some((name, args)) = function_call(part) {
                let call = json!({"index": self.tools, "id": call_id("call_"), "type": "function",
                    "function": {"name": name, "arguments": args}});
                self.tools += 1;
                self.chunk(json!({ "tool_calls": [call] }), None, out);
            }
        }
        if let Some(u) = v.get_mut("usageMetadata").filter(|u| u.is_object()) {
            self.usage = u.take();
        }
        if let Some(reason) = ended(&v) {
            let reason = reason.to_string();
            self.end(&reason, out);
        }
    }

    fn end(&mut self, reason: &str, out: &mut String) {
        self.ended = true;
        self.chunk(json!({}), Some(finish_reason(reason, self.tools > 0)), out);
        if self.include_usage {
            let body = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": openai_usage(&self.usage),
            });
            out.push_str(&encode(None, &body.to_string()));
        }
        out.push_str("data: [DONE]\n\n");
    }

    /// A stream the relay saw end but that never said why: ended as `STOP`.
    pub fn finish(&mut self, out: &mut String) {
        if !self.ended {
            self.start(&Value::Null, out);
            self.end("STOP", out);
        }
    }
}

/// Gemini chunks → Anthropic events.
pub struct ToMessages {
    model: String,
    started: bool,
    /// The index of the text block being streamed, if one is open.
    text: Option<u64>,
    next_index: u64,
    tools: bool,
    usage: Value,
    ended: bool,
}

fn event(name: &str, body: Value, out: &mut String) {
    out.push_str(&encode(Some(name), &body.to_string()));
}

impl ToMessages {
    pub fn new(model: &str) -> Self {
        ToMessages {
            model: model.to_string(),
            started: false,
            text: None,
            next_index: 0,
            tools: false,
            usage: Value::Null,
            ended: false,
        }
    }

    fn start(&mut self, v: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(m) = v["modelVersion"].as_str() {
            self.model = m.to_string();
        }
        let id = v["responseId"].as_str().filter(|s| !s.is_empty());
        let mut usage = anthropic_usage(&v["usageMetadata"]);
        usage["output_tokens"] = json!(0);
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": format!("msg_{}", id.map_or_else(|| call_id(""), str::to_string)),
                "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage,
            }}),
            out,
        );
    }

    fn close_text(&mut self, out: &mut String) {
        if let Some(i) = self.text.take() {
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
                out,
            );
        }
    }

    fn next(&mut self) -> u64 {
        let i = self.next_index;
        self.next_index += 1;
        i
    }

    pub fn event(&mut self, ev: &Event, out: &mut String) {
        if self.ended {
            return;
        }
        let Some(mut v) = parse(ev) else {
            return;
        };
        if let Some((code, message)) = error_of(&v) {
            let kind = crate::api::anthropic_error_type(code);
            event(
                "error",
                json!({"type": "error", "error": {"type": kind, "message": message}}),
                out,
            );
            self.ended = true;
            return;
        }
        self.start(&v, out);
        for part in parts(&v) {
            if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
                let index = match self.text {
                    Some(i) => i,
                    None => {
                        let i = self.next();
                        event(
                            "content_block_start",
                            json!({"type": "content_block_start", "index": i,
                                "content_block": {"type": "text", "text": ""}}),
                            out,
                        );
                        self.text = Some(i);
                        i
                    }
                };
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": text}}),
                    out,
                );
            }
            if let Some((name, args)) = function_call(part) {
                self.close_text(out);
                self.tools = true;
                let i = self.next();
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block":
                        {"type": "tool_use", "id": call_id("toolu_"), "name": name, "input": {}}}),
                    out,
                );
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
                    out,
                );
                event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": i}),
                    out,
                );
            }
        }
        if let Some(u) = v.get_mut("usageMetadata").filter(|u| u.is_object()) {
            self.usage = u.take();
        }
        if let Some(reason) = ended(&v) {
            let reason = reason.to_string();
            self.end(&reason, out);
        }
    }

    fn end(&mut self, reason: &str, out: &mut String) {
        self.ended = true;
        self.close_text(out);
        event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(reason, self.tools), "stop_sequence": null},
                "usage": anthropic_usage(&self.usage)}),
            out,
        );
        event("message_stop", json!({"type": "message_stop"}), out);
    }

    /// A stream the relay saw end but that never said why: ended as `STOP`.
    pub fn finish(&mut self, out: &mut String) {
        if !self.ended {
            self.start(&Value::Null, out);
            self.end("STOP", out);
        }
    }
}
