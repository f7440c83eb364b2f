//! Streaming translation, one SSE event at a time: each upstream event is
//! turned into zero or more client events as soon as it arrives.
//!
//! Anthropic → OpenAI: `message_start` → the role chunk; text and
//! `input_json_delta` deltas → content and tool-call argument chunks;
//! `message_delta` → the finish chunk; `message_stop` → the usage chunk (if
//! the client asked) and `[DONE]`; `error` → an OpenAI error event; `ping`
//! and thinking deltas → nothing.
//!
//! OpenAI → Anthropic: the first chunk → `message_start`; content deltas →
//! a text block's `content_block_*` events; tool-call deltas → a `tool_use`
//! block each, arguments as `input_json_delta`; `[DONE]` → the last
//! `content_block_stop`, `message_delta` (stop reason, usage) and
//! `message_stop`. OpenAI reports usage last, so `message_start` says 0
//! input tokens and `message_delta` carries the real counts.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::response::{anthropic_usage, message_id, openai_usage};
use super::{finish_reason, stop_reason, Conversion};
use crate::sse::{encode, Event};

/// Translates one response stream.
pub enum Translator {
    StripUsage,
    ToChat(ToChat),
    ToMessages(ToMessages),
    ConverseToChat(super::bedrock::stream::ToChat),
    ConverseToMessages(super::bedrock::stream::ToMessages),
    GeminiToChat(super::gemini::stream::ToChat),
    GeminiToMessages(super::gemini::stream::ToMessages),
    /// Responses API events with the response's id tagged.
    TagResponse(super::responses::ResponseTag),
    /// Anthropic events → chat chunks → Responses API events.
    ToResponses(Box<ToResponses>),
}

/// A chain: the upstream's events as chat chunks (re-read), then as
/// Responses API events.
pub struct ToResponses {
    chat: Box<Translator>,
    parser: crate::sse::Parser,
    out: super::responses::stream::ChatToResponses,
}

impl ToResponses {
    fn event(&mut self, ev: &Event, out: &mut String) {
        let mut chunks = String::new();
        self.chat.event(ev, &mut chunks);
        self.relay(&chunks, out);
    }

    fn relay(&mut self, chunks: &str, out: &mut String) {
        if self.parser.push(chunks.as_bytes()).is_err() {
            return;
        }
        while let Ok(Some(chunk)) = self.parser.next_event() {
            self.out.chunk(&chunk.data, out);
        }
    }

    fn finish(&mut self, out: &mut String) {
        let mut chunks = String::new();
        self.chat.finish(&mut chunks);
        self.relay(&chunks, out);
        self.out.end(out);
    }
}

impl Translator {
    /// `model`: the model name the client asked for (used until the
    /// upstream names one). `None` when the stream passes through as is.
    pub fn new(conversion: Conversion, model: &str) -> Option<Translator> {
        Some(match conversion {
            Conversion::StripUsage => Translator::StripUsage,
            Conversion::MessagesToChat { include_usage } => Translator::ToChat(ToChat {
                id: String::new(),
                model: model.to_string(),
                created: crate::clock::now_secs(),
                include_usage,
                usage: json!({}),
                tools: HashMap::new(),
                finished: false,
            }),
            Conversion::ChatToMessages => Translator::ToMessages(ToMessages {
                model: model.to_string(),
                started: false,
                open: None,
                next_index: 0,
                tools: HashMap::new(),
                finish: None,
                usage: Value::Null,
                ended: false,
            }),
            Conversion::TagResponse(tag) => Translator::TagResponse(tag),
            Conversion::MessagesToResponses => {
                let chat = Translator::new(
                    Conversion::MessagesToChat {
                        include_usage: true,
                    },
                    model,
                )?;
                Translator::ToResponses(Box::new(ToResponses {
                    chat: Box::new(chat),
                    parser: crate::sse::Parser::new(1 << 22),
                    out: super::responses::stream::ChatToResponses::new(model),
                }))
            }
            Conversion::GeminiToChat { include_usage } => {
                Translator::GeminiToChat(super::gemini::stream::ToChat::new(model, include_usage))
            }
            Conversion::GeminiToMessages => {
                Translator::GeminiToMessages(super::gemini::stream::ToMessages::new(model))
            }
            Conversion::ConverseToChat { include_usage } => Translator::ConverseToChat(
                super::bedrock::stream::ToChat::new(model, include_usage),
            ),
            Conversion::ConverseToMessages => {
                Translator::ConverseToMessages(super::bedrock::stream::ToMessages::new(model))
            }
            Conversion::None | Conversion::ModelToOpenAi => return None,
        })
    }

    /// Appends the client's events for one upstream event to `out`.
    pub fn event(&mut self, ev: &Event, out: &mut String) {
        match self {
            Translator::StripUsage => {
                if !is_usage_only_chunk(&ev.data) {
                    out.push_str(&encode(ev.event.as_deref(), &ev.data));
                }
            }
            Translator::ToChat(t) => t.event(ev, out),
            Translator::ToMessages(t) => t.event(ev, out),
            Translator::TagResponse(tag) => tag.tag_event(ev, out),
            Translator::ToResponses(t) => t.event(ev, out),
            Translator::GeminiToChat(t) => t.event(ev, out),
            Translator::GeminiToMessages(t) => t.event(ev, out),
            Translator::ConverseToChat(t) => t.event(ev, out),
            Translator::ConverseToMessages(t) => t.event(ev, out),
        }
    }

    /// Appends what a cleanly ended stream still owes (nothing, normally).
    pub fn finish(&mut self, out: &mut String) {
        match self {
            Translator::ToMessages(t) => t.done(out),
            Translator::ToResponses(t) => t.finish(out),
            Translator::GeminiToChat(t) => t.finish(out),
            Translator::GeminiToMessages(t) => t.finish(out),
            Translator::ConverseToChat(t) => t.finish(out),
            Translator::ConverseToMessages(t) => t.finish(out),
            _ => {}
        }
    }
}

/// The final chunk OpenAI sends for `include_usage`: no choices, a usage.
pub(crate) fn is_usage_only_chunk(data: &str) -> bool {
    has_usage_object(data)
        && serde_json::from_str::<Value>(data).is_ok_and(|v| {
            v["choices"].as_array().is_some_and(|c| c.is_empty()) && v["usage"].is_object()
        })
}

/// Whether an OpenAI chunk carries a `usage` object — without parsing it:
/// with `include_usage` every chunk says `"usage":null` and only the last
/// one is worth a parse.
pub fn has_usage_object(data: &str) -> bool {
    // One searcher for every event (`match_indices` set one up per call:
    // ~1k instructions per streamed chunk).
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    KEY.find_iter(data.as_bytes()).any(|i| {
        data[i + KEY.needle().len()..]
            .trim_start()
            .strip_prefix(':')
            .is_some_and(|rest| rest.trim_start().starts_with('{'))
    })
}

/// Anthropic events → OpenAI chat completion chunks.
pub struct ToChat {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Value,
    /// Anthropic content block index → OpenAI tool call index.
    tools: HashMap<u64, usize>,
    finished: bool,
}

impl ToChat {
    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut String) {
        let body = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        out.push_str(&encode(None, &body.to_string()));
    }

    fn event(&mut self, ev: &Event, out: &mut String) {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        match v["type"].as_str().or(ev.event.as_deref()) {
            Some("message_start") => {
                let m = &v["message"];
                self.id = format!("chatcmpl-{}", m["id"].as_str().unwrap_or("h3gate"));
                if let Some(model) = m["model"].as_str() {
                    self.model = model.to_string();
                }
                self.usage = m["usage"].clone();
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            Some("content_block_start") => {
                let b = &v["content_block"];
                if b["type"] == "tool_use" {
                    let index = self.tools.len();
                    self.tools.insert(v["index"].as_u64().unwrap_or(0), index);
                    self.chunk(
                        json!({"tool_calls": [{"index": index, "id": b["id"], "type": "function",
                            "function": {"name": b["name"], "arguments": ""}}]}),
                        None,
                        out,
                    );
                } else if let Some(text) = b["text"].as_str().filter(|t| !t.is_empty()) {
                    self.chunk(json!({"content": text}), None, out);
                }
            }
            Some("content_block_delta") => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => self.chunk(json!({"content": d["text"]}), None, out),
                    Some("input_json_delta") => {
                        let index = v["index"].as_u64().unwrap_or(0);
                        if let Some(i) = self.tools.get(&index) {
                            self.chunk(
                                json!({"tool_calls": [{"index": i,
                                    "function": {"arguments": d["partial_json"]}}]}),
                                None,
                                out,
                            );
                        }
                    }
                    _ => {} // thinking and signature deltas have no OpenAI form
                }
            }
            Some("message_delta") => {
                if let Some(u) = v["usage"].as_object() {
                    for (k, n) in u {
                        if !n.is_null() {
                            self.usage[k] = n.clone();
                        }
                    }
                }
                let reason = finish_reason(v["delta"]["stop_reason"].as_str().unwrap_or_default());
                self.chunk(json!({}), Some(reason), out);
            }
            Some("message_stop") if !self.finished => {
                self.finished = true;
                if self.include_usage {
                    let body = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": openai_usage(&self.usage),
                    });
                    out.push_str(&encode(None, &body.to_string()));
                }
                out.push_str("data: [DONE]\n\n");
            }
            Some("error") => {
                let e = &v["error"];
                let kind = e["type"].as_str().unwrap_or("api_error");
                let body = json!({"error": {
                    "message": e["message"].as_str().unwrap_or("the upstream provider failed mid-stream"),
                    "type": if kind == "overloaded_error" || kind == "api_error" { "server_error" } else { kind },
                    "code": kind,
                }});
                out.push_str(&encode(None, &body.to_string()));
            }
            _ => {} // ping, content_block_stop, unknown events
        }
    }
}

/// The content block being streamed to an Anthropic client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    Tool(u64),
}

/// OpenAI chat completion chunks → Anthropic events.
pub struct ToMessages {
    model: String,
    started: bool,
    open: Option<Open>,
    next_index: u64,
    /// OpenAI tool call index → Anthropic block index.
    tools: HashMap<u64, u64>,
    finish: Option<String>,
    usage: Value,
    ended: bool,
}

fn anthropic_event(name: &str, body: Value, out: &mut String) {
    out.push_str(&encode(Some(name), &body.to_string()));
}

impl ToMessages {
    fn start(&mut self, chunk: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(m) = chunk["model"].as_str() {
            self.model = m.to_string();
        }
        anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(chunk["id"].as_str()), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
            out,
        );
    }

    fn close(&mut self, out: &mut String) {
        if let Some(Open::Text(i) | Open::Tool(i)) = self.open.take() {
            anthropic_event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
                out,
            );
        }
    }

    fn open_block(&mut self, open: Open, block: Value, out: &mut String) {
        self.close(out);
        let (Open::Text(i) | Open::Tool(i)) = open;
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": block}),
            out,
        );
        self.open = Some(open);
    }

    fn event(&mut self, ev: &Event, out: &mut String) {
        if self.ended {
            return;
        }
        if ev.data == "[DONE]" {
            return self.done(out);
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        if let Some(e) = v.get("error").filter(|e| e.is_object()) {
            let message = e["message"]
                .as_str()
                .unwrap_or("the upstream provider failed");
            anthropic_event(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": message}}),
                out,
            );
            self.ended = true;
            return;
        }
        self.start(&v, out);
        if v["usage"].is_object() {
            self.usage = v["usage"].clone();
        }
        let Some(choice) = v["choices"].get(0) else {
            return;
        };
        let d = &choice["delta"];
        let text = d["content"].as_str().or(d["refusal"].as_str());
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some(Open::Text(i)) => i,
                _ => {
                    let i = self.next_index;
                    self.next_index += 1;
                    self.open_block(Open::Text(i), json!({"type": "text", "text": ""}), out);
                    i
                }
            };
            anthropic_event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text}}),
                out,
            );
        }
        for call in d["tool_calls"].as_array().into_iter().flatten() {
            let oi = call["index"].as_u64().unwrap_or(0);
            let index = match self.tools.get(&oi) {
                Some(i) => *i,
                None => {
                    let i = self.next_index;
                    self.next_index += 1;
                    self.tools.insert(oi, i);
                    self.open_block(
                        Open::Tool(i),
                        json!({"type": "tool_use", "id": call["id"],
                            "name": call["function"]["name"], "input": {}}),
                        out,
                    );
                    i
                }
            };
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
                    out,
                );
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish = Some(reason.to_string());
        }
    }

    fn done(&mut self, out: &mut String) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.start(&Value::Null, out);
        self.close(out);
        let usage = anthropic_usage(&self.usage);
        anthropic_event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish.as_deref().unwrap_or("stop")), "stop_sequence": null},
                "usage": usage}),
            out,
        );
        anthropic_event("message_stop", json!({"type": "message_stop"}), out);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod usage_tests {
    #[test]
    fn usage_objects_are_found_without_parsing() {
        assert!(super::has_usage_object(
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(super::has_usage_object(r#"{"usage" : {"x":1}}"#));
        assert!(!super::has_usage_object(r#"{"choices":[{}],"usage":null}"#));
        assert!(!super::has_usage_object(
            r#"{"choices":[{"delta":{"content":"\"usage\""}}]}"#
        ));
    }
}
