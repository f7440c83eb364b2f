//! The mock's Anthropic wire format: a `message` object, and the named SSE
//! events of a streamed message (`message_start` … `message_stop`, with a
//! `ping`), text or a `tool_use` block with `input_json_delta` pieces.

use serde_json::{json, Value};

use super::{split_half, token, Answer};
use crate::sse;

fn event(name: &str, body: Value) -> String {
    sse::encode(Some(name), &body.to_string())
}

impl Answer {
    fn stop_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_use"
        } else {
            "max_tokens"
        }
    }

    /// Anthropic's `usage`: `input_tokens` excludes the prompt tokens read
    /// from or written to the cache, which have their own fields (written
    /// only when there are some). `output_tokens` as given.
    fn anthropic_usage(&self, output_tokens: u32) -> Value {
        let cache = self.cached_tokens.saturating_add(self.cache_write_tokens);
        let mut usage = json!({
            "input_tokens": self.prompt_tokens.saturating_sub(cache),
            "output_tokens": output_tokens,
        });
        if cache > 0 {
            usage["cache_creation_input_tokens"] = json!(self.cache_write_tokens);
            usage["cache_read_input_tokens"] = json!(self.cached_tokens);
        }
        usage
    }

    fn tool_use_id(&self) -> Option<String> {
        self.tool.as_ref().map(|t| t.id.replace("call_", "toolu_"))
    }

    /// The non-streaming Anthropic message.
    pub fn message(&self) -> Value {
        let content = match &self.tool {
            Some(t) => json!([{
                "type": "tool_use", "id": self.tool_use_id(), "name": t.name,
                "input": serde_json::from_str::<Value>(&t.arguments).unwrap_or(json!({})),
            }]),
            None => json!([{"type": "text", "text": self.text()}]),
        };
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content, "stop_reason": self.stop_reason(), "stop_sequence": null,
            "usage": self.anthropic_usage(self.completion_tokens),
        })
    }

    /// Every event of a streamed Anthropic message, in order.
    pub fn message_events(&self) -> Vec<String> {
        let mut events = Vec::with_capacity(self.completion_tokens as usize + 6);
        events.push(event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": self.anthropic_usage(1),
            }}),
        ));
        let (block, deltas) = match &self.tool {
            Some(t) => (
                json!({"type": "tool_use", "id": self.tool_use_id(), "name": t.name, "input": {}}),
                split_half(&t.arguments)
                    .iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect::<Vec<_>>(),
            ),
            None => (
                json!({"type": "text", "text": ""}),
                (0..self.completion_tokens as usize)
                    .map(|i| json!({"type": "text_delta", "text": token(i)}))
                    .collect(),
            ),
        };
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ));
        events.push(event("ping", json!({"type": "ping"})));
        for delta in deltas {
            events.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": delta}),
            ));
        }
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        // Like Anthropic's API today, a cached prompt's final usage repeats
        // the input and cache counts beside the output tokens.
        let usage = if self.cached_tokens.saturating_add(self.cache_write_tokens) > 0 {
            self.anthropic_usage(self.completion_tokens)
        } else {
            json!({"output_tokens": self.completion_tokens})
        };
        events.push(event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
                "usage": usage}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
        events
    }
}
