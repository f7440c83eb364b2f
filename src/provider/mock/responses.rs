//! The mock's OpenAI Responses API wire format: a `response` object
//! (text in an `output_text` part, or a `function_call` item), the typed
//! stream events from `response.created` to `response.completed` with
//! their `sequence_number`s, and the stored-response calls' answers.

use serde_json::{json, Value};

use super::{split_half, token, Answer};
use crate::sse;

impl Answer {
    /// The Responses API's `usage`: cached tokens are part of `input_tokens`.
    fn responses_usage(&self) -> Value {
        json!({
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }

    fn item_id(&self) -> String {
        let suffix = self.id.trim_start_matches("resp_");
        match &self.tool {
            Some(_) => format!("fc_{suffix}"),
            None => format!("msg_{suffix}"),
        }
    }

    /// The output item, complete (or, `done` false, as first announced).
    fn output_item(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match &self.tool {
            Some(t) => json!({
                "type": "function_call", "id": self.item_id(), "call_id": t.id, "name": t.name,
                "arguments": if done { t.arguments.as_str() } else { "" }, "status": status,
            }),
            None => json!({
                "type": "message", "id": self.item_id(), "status": status, "role": "assistant",
                "content": if done {
                    json!([{"type": "output_text", "text": self.text(), "annotations": [], "logprobs": []}])
                } else {
                    json!([])
                },
            }),
        }
    }

    /// A response object in `status`, with `output` and `usage`.
    pub fn response_object(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "background": false, "error": null, "incomplete_details": null, "instructions": null,
            "max_output_tokens": null, "model": self.model, "output": output,
            "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": null, "metadata": {},
        })
    }

    /// The non-streaming Responses API answer.
    pub fn response(&self) -> Value {
        self.response_object(
            "completed",
            json!([self.output_item(true)]),
            self.responses_usage(),
        )
    }

    /// Every event of a streamed response, in order.
    pub fn response_events(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.completion_tokens as usize + 10);
        let mut seq = 0u64;
        let mut push = |name: &str, mut body: Value| {
            body["type"] = json!(name);
            body["sequence_number"] = json!(seq);
            seq += 1;
            out.push(sse::encode(Some(name), &body.to_string()));
        };
        let started = self.response_object("in_progress", json!([]), Value::Null);
        push("response.created", json!({"response": started}));
        push("response.in_progress", json!({"response": started}));
        push(
            "response.output_item.added",
            json!({"output_index": 0, "item": self.output_item(false)}),
        );
        let item_id = self.item_id();
        match &self.tool {
            Some(t) => {
                for piece in split_half(&t.arguments) {
                    push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": 0, "delta": piece}),
                    );
                }
                push(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": 0, "name": t.name, "arguments": t.arguments}),
                );
            }
            None => {
                let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
                let with = |extra: Value| {
                    let mut v = at.clone();
                    for (k, x) in extra.as_object().into_iter().flatten() {
                        v[k] = x.clone();
                    }
                    v
                };
                let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                push(
                    "response.content_part.added",
                    with(json!({"part": part("")})),
                );
                for i in 0..self.completion_tokens as usize {
                    push(
                        "response.output_text.delta",
                        with(json!({"delta": token(i), "logprobs": []})),
                    );
                }
                let text = self.text();
                push(
                    "response.output_text.done",
                    with(json!({"text": text, "logprobs": []})),
                );
                push(
                    "response.content_part.done",
                    with(json!({"part": part(&text)})),
                );
            }
        }
        push(
            "response.output_item.done",
            json!({"output_index": 0, "item": self.output_item(true)}),
        );
        push("response.completed", json!({"response": self.response()}));
        out
    }
}

/// A stored response, as `GET /v1/responses/{id}` answers it.
pub fn stored_response(id: &str, model: &str) -> Value {
    let mut answer = Answer::new(model, crate::provider::Endpoint::Responses, 7, 5);
    answer.id = id.to_string();
    answer.response()
}

/// `DELETE /v1/responses/{id}`'s answer.
pub fn deleted_response(id: &str) -> Value {
    json!({"id": id, "object": "response", "deleted": true})
}

/// `GET /v1/responses/{id}/input_items`'s answer.
pub fn input_items(id: &str) -> Value {
    let item = format!("msg_{}", id.trim_start_matches("resp_"));
    json!({
        "object": "list", "has_more": false, "first_id": item, "last_id": item,
        "data": [{"type": "message", "id": item, "status": "completed", "role": "user",
                  "content": [{"type": "input_text", "text": "hi"}]}],
    })
}
