//! ConverseStream events → the client's stream, one event at a time. The
//! relay decodes the event stream's frames into [`Event`]s named by their
//! `:event-type` (`exception` for an exception, see
//! `provider::bedrock::eventstream::to_event`), JSON payload as data.
//!
//! Bedrock's order: `messageStart`, per block `contentBlockStart` (tool use
//! only), `contentBlockDelta`s, `contentBlockStop`; `messageStop` (the stop
//! reason); `metadata` (the usage). So an OpenAI client gets its finish
//! chunk at `messageStop` and its usage chunk and `[DONE]` at `metadata`;
//! an Anthropic client its `message_delta` (stop reason and usage) and
//! `message_stop` at `metadata`. A stream that ends after `messageStop`
//! without `metadata` is finished by [`ToChat::finish`] / [`ToMessages::finish`].

use std::collections::HashMap;

use serde_json::{json, Value};

use super::response::{anthropic_usage, message_id, stop_reason};
use crate::api::anthropic_error_type;
use crate::sse::{encode, Event};
use crate::translate::finish_reason;
use crate::translate::response::openai_usage;

fn parse(ev: &Event) -> Option<(&str, Value)> {
    let name = ev.event.as_deref()?;
    Some((name, serde_json::from_str(&ev.data).ok()?))
}

/// The HTTP status an exception type stands for (Bedrock's own mapping).
pub fn exception_status(kind: &str) -> u16 {
    match kind
        .trim_end_matches("Exception")
        .to_ascii_lowercase()
        .as_str()
    {
        "throttling" => 429,
        "validation" => 400,
        "accessdenied" => 403,
        "resourcenotfound" => 404,
        "modeltimeout" => 408,
        "serviceunavailable" => 503,
        "modelnotready" => 429,
        _ => 500,
    }
}

fn block_index(v: &Value) -> u64 {
    v["contentBlockIndex"].as_u64().unwrap_or(0)
}

/// Converse events → OpenAI chat completion chunks.
pub struct ToChat {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Converse block index → OpenAI tool call index.
    tools: HashMap<u64, usize>,
    stopped: bool,
    done: bool,
}

impl ToChat {
    pub fn new(model: &str, include_usage: bool) -> Self {
        ToChat {
            id: message_id().replacen("msg_", "chatcmpl-", 1),
            model: model.to_string(),
            created: crate::clock::now_secs(),
            include_usage,
            tools: HashMap::new(),
            stopped: false,
            done: false,
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

    pub fn event(&mut self, ev: &Event, out: &mut String) {
        if self.done {
            return;
        }
        let Some((name, v)) = parse(ev) else {
            return;
        };
        match name {
            "messageStart" => self.chunk(json!({"role": "assistant", "content": ""}), None, out),
            "contentBlockStart" => {
                if let Some(t) = v["start"].get("toolUse") {
                    let index = self.tools.len();
                    self.tools.insert(block_index(&v), index);
                    self.chunk(
                        json!({"tool_calls": [{"index": index, "id": t["toolUseId"], "type": "function",
                            "function": {"name": t["name"], "arguments": ""}}]}),
                        None,
                        out,
                    );
                }
            }
            "contentBlockDelta" => {
                let d = &v["delta"];
                if let Some(text) = d["text"].as_str() {
                    self.chunk(json!({ "content": text }), None, out);
                } else if let Some(input) = d["toolUse"]["input"].as_str() {
                    if let Some(i) = self.tools.get(&block_index(&v)) {
                        self.chunk(
                            json!({"tool_calls": [{"index": i, "function": {"arguments": input}}]}),
                            None,
                            out,
                        );
                    }
                }
            }
            "messageStop" if !self.stopped => {
                self.stopped = true;
                let reason = stop_reason(v["stopReason"].as_str().unwrap_or_default());
                self.chunk(json!({}), Some(finish_reason(reason)), out);
            }
            "metadata" => {
                if self.include_usage {
                    let body = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [],
                        "usage": openai_usage(&anthropic_usage(&v["usage"])),
                    });
                    out.push_str(&encode(None, &body.to_string()));
                }
                self.end(out);
            }
            "exception" => {
                let kind = v["type"].as_str().unwrap_or("exception");
                let status = exception_status(kind);
                let body = json!({"error": {
                    "message": v["message"].as_str().unwrap_or("the upstream provider failed mid-stream"),
                    "type": if status >= 500 { "server_error" } else { anthropic_error_type(status) },
                    "code": kind,
                }});
                out.push_str(&encode(None, &body.to_string()));
                self.done = true;
            }
            _ => {} // contentBlockStop, reasoning deltas, unknown events
        }
    }

    fn end(&mut self, out: &mut String) {
        if !self.done {
            self.done = true;
            out.push_str("data: [DONE]\n\n");
        }
    }

    /// A stream that stopped but sent no `metadata`: its `[DONE]`.
    pub fn finish(&mut self, out: &mut String) {
        if self.stopped {
            self.end(out);
        }
    }
}

/// Converse events → Anthropic message events.
pub struct ToMessages {
    model: String,
    started: bool,
    /// Converse block index → Anthropic block index, for blocks opened.
    blocks: HashMap<u64, u64>,
    open: Option<u64>,
    stop: Option<&'static str>,
    done: bool,
}

fn anthropic_event(name: &str, body: Value, out: &mut String) {
    out.push_str(&encode(Some(name), &body.to_string()));
}

impl ToMessages {
    pub fn new(model: &str) -> Self {
        ToMessages {
            model: model.to_string(),
            started: false,
            blocks: HashMap::new(),
            open: None,
            stop: None,
            done: false,
        }
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
            out,
        );
    }

    fn close(&mut self, out: &mut String) {
        if let Some(i) = self.open.take() {
            anthropic_event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
                out,
            );
        }
    }

    /// The Anthropic index of Converse block `bi`, opening it as `block`.
    fn open_block(&mut self, bi: u64, block: Value, out: &mut String) -> u64 {
        if let Some(i) = self.blocks.get(&bi) {
            return *i;
        }
        self.close(out);
        let i = self.blocks.len() as u64;
        self.blocks.insert(bi, i);
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": block}),
            out,
        );
        self.open = Some(i);
        i
    }

    pub fn event(&mut self, ev: &Event, out: &mut String) {
        if self.done {
            return;
        }
        let Some((name, v)) = parse(ev) else {
            return;
        };
        if name != "exception" {
            self.start(out);
        }
        match name {
            "contentBlockStart" => {
                if let Some(t) = v["start"].get("toolUse") {
                    self.open_block(
                        block_index(&v),
                        json!({"type": "tool_use", "id": t["toolUseId"], "name": t["name"], "input": {}}),
                        out,
                    );
                }
            }
            "contentBlockDelta" => {
                let d = &v["delta"];
                let bi = block_index(&v);
                let (block, delta) = if let Some(text) = d["text"].as_str() {
                    (
                        json!({"type": "text", "text": ""}),
                        json!({"type": "text_delta", "text": text}),
                    )
                } else if let Some(input) = d["toolUse"]["input"].as_str() {
                    (
                        json!({"type": "tool_use", "id": "", "name": "", "input": {}}),
                        json!({"type": "input_json_delta", "partial_json": input}),
                    )
                } else if let Some(text) = d["reasoningContent"]["text"].as_str() {
                    (
                        json!({"type": "thinking", "thinking": ""}),
                        json!({"type": "thinking_delta", "thinking": text}),
                    )
                } else {
                    return;
                };
                let index = self.open_block(bi, block, out);
                anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                    out,
                );
            }
            "contentBlockStop" if self.blocks.get(&block_index(&v)) == self.open.as_ref() => {
                self.close(out);
            }
            "messageStop" => {
                self.close(out);
                self.stop = Some(stop_reason(v["stopReason"].as_str().unwrap_or_default()));
            }
            "metadata" => self.end(anthropic_usage(&v["usage"]), out),
            "exception" => {
                let kind = v["type"].as_str().unwrap_or("exception");
                let message = v["message"]
                    .as_str()
                    .unwrap_or("the upstream provider failed mid-stream");
                anthropic_event(
                    "error",
                    json!({"type": "error", "error": {
                        "type": anthropic_error_type(exception_status(kind)), "message": message}}),
                    out,
                );
                self.done = true;
            }
            _ => {}
        }
    }

    fn end(&mut self, usage: Value, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        self.close(out);
        anthropic_event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage}),
            out,
        );
        anthropic_event("message_stop", json!({"type": "message_stop"}), out);
    }

    /// A stream that stopped but sent no `metadata`: its last events.
    pub fn finish(&mut self, out: &mut String) {
        if self.stop.is_some() {
            self.end(json!({"input_tokens": 0, "output_tokens": 0}), out);
        }
    }
}

#[cfg(test)]
mod tests;
