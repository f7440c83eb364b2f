//! OpenAI chat completion chunks → Responses API stream events, one chunk
//! at a time: `response.created`/`.in_progress` at the first chunk, an
//! output item per text answer and per tool call (`output_item.added`, the
//! deltas, the `.done` events), and `response.completed` (or
//! `.incomplete`) with the usage when the chat stream ends.

use serde_json::{json, Value};

use super::chat::{response_id, response_object, usage};
use crate::sse::encode;

#[derive(Debug, Default)]
pub struct ChatToResponses {
    id: String,
    model: Value,
    created: Value,
    started: bool,
    seq: u64,
    /// Output items so far (their final form), by output index.
    items: Vec<Value>,
    /// The open text item's index.
    text: Option<usize>,
    /// Chat tool-call index → output index.
    calls: Vec<(u64, usize)>,
    finish: Option<String>,
    usage: Value,
    ended: bool,
}

impl ChatToResponses {
    pub fn new(model: &str) -> Self {
        ChatToResponses {
            model: json!(model),
            ..Default::default()
        }
    }

    fn emit(&mut self, name: &str, mut body: Value, out: &mut String) {
        body["type"] = json!(name);
        body["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.push_str(&encode(Some(name), &body.to_string()));
    }

    fn response(&self, finish: Option<&str>) -> Value {
        let output = if finish.is_some() {
            Value::Array(self.items.clone())
        } else {
            json!([])
        };
        let usage = if finish.is_some() {
            usage(&self.usage)
        } else {
            Value::Null
        };
        response_object(&self.id, &self.model, &self.created, output, finish, usage)
    }

    /// One chat chunk (its `data`); `[DONE]` ends the response.
    pub fn chunk(&mut self, data: &str, out: &mut String) {
        if self.ended {
            return;
        }
        if data == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if chunk.get("error").is_some() {
            let message = chunk["error"]["message"]
                .as_str()
                .unwrap_or("upstream error");
            let code = chunk["error"]["code"].as_str().unwrap_or("upstream_error");
            self.emit(
                "error",
                json!({"code": code, "message": message, "param": null}),
                out,
            );
            self.ended = true;
            return;
        }
        if !self.started {
            self.started = true;
            self.id = response_id(chunk["id"].as_str().unwrap_or("gateway"));
            if chunk["model"].is_string() {
                self.model = chunk["model"].clone();
            }
            self.created = chunk["created"].clone();
            let response = self.response(None);
            self.emit("response.created", json!({"response": response}), out);
            self.emit("response.in_progress", json!({"response": response}), out);
        }
        if chunk["usage"].is_object() {
            self.usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return;
        };
        if let Some(text) = choice["delta"]["content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            self.text_delta(text, out);
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            self.call_delta(call, out);
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.finish = Some(finish.to_string());
        }
    }

    fn text_delta(&mut self, text: &str, out: &mut String) {
        let index = match self.text {
            Some(i) => i,
            None => {
                let i = self.items.len();
                let id = format!("msg_{}_{i}", self.id.trim_start_matches("resp_"));
                let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                    out,
                );
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
                    out,
                );
                let mut done = item;
                done["status"] = json!("completed");
                done["content"] = json!([{"type": "output_text", "text": "", "annotations": []}]);
                self.items.push(done);
                self.text = Some(i);
                i
            }
        };
        let item = &mut self.items[index];
        let so_far = item["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        item["content"][0]["text"] = json!(so_far + text);
        let id = item["id"].clone();
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
            out,
        );
    }

    fn call_delta(&mut self, call: &Value, out: &mut String) {
        let chat_index = call["index"].as_u64().unwrap_or(0);
        let index = match self.calls.iter().find(|(c, _)| *c == chat_index) {
            Some((_, i)) => *i,
            None => {
                let i = self.items.len();
                let call_id = call["id"].as_str().unwrap_or("call_gateway").to_string();
                let item = json!({
                    "type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
                    "name": call["function"]["name"], "arguments": "", "status": "in_progress",
                });
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                    out,
                );
                let mut done = item;
                done["status"] = json!("completed");
                self.items.push(done);
                self.calls.push((chat_index, i));
                i
            }
        };
        if let Some(args) = call["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        {
            let item = &mut self.items[index];
            let so_far = item["arguments"].as_str().unwrap_or_default().to_string();
            item["arguments"] = json!(so_far + args);
            let id = item["id"].clone();
            self.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": args}),
                out,
            );
        }
    }

    /// The `.done` events of every item, and the response's last event.
    pub fn end(&mut self, out: &mut String) {
        if self.ended || !self.started {
            return;
        }
        self.ended = true;
        for index in 0..self.items.len() {
            let item = self.items[index].clone();
            let id = item["id"].clone();
            if item["type"] == "message" {
                let part = item["content"][0].clone();
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": part["text"], "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                    out,
                );
            } else {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": item["name"], "arguments": item["arguments"]}),
                    out,
                );
            }
            self.emit(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
                out,
            );
        }
        let finish = self.finish.clone().unwrap_or_else(|| "stop".into());
        let response = self.response(Some(&finish));
        let name = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(name, json!({"response": response}), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(out: &str) -> Vec<(String, Value)> {
        let mut p = crate::sse::Parser::new(1 << 20);
        p.push(out.as_bytes()).unwrap();
        let mut v = Vec::new();
        while let Ok(Some(ev)) = p.next_event() {
            v.push((
                ev.event.unwrap_or_default(),
                serde_json::from_str(&ev.data).unwrap(),
            ));
        }
        v
    }

    #[test]
    fn text_cut_by_the_token_cap_is_an_incomplete_response() {
        let mut t = ChatToResponses::new("m");
        let mut out = String::new();
        for chunk in [
            r#"{"id":"chatcmpl-1","model":"m","created":1,"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}"#,
            r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            t.chunk(chunk, &mut out);
        }
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        let last = &ev.last().unwrap().1["response"];
        assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(last["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(last["usage"]["output_tokens"], 2);
        assert_eq!(ev[6].1["text"], "Hello");
        assert!(ev
            .iter()
            .enumerate()
            .all(|(i, (_, v))| v["sequence_number"] == i));
    }

    #[test]
    fn an_upstream_error_chunk_ends_the_stream_with_an_error_event() {
        let mut t = ChatToResponses::new("m");
        let mut out = String::new();
        t.chunk(
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            &mut out,
        );
        t.chunk(
            r#"{"error":{"message":"overloaded","code":"upstream_error"}}"#,
            &mut out,
        );
        t.end(&mut out);
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "error");
        assert_eq!(ev.last().unwrap().1["message"], "overloaded");
        assert!(!out.contains("response.completed"));
    }
}
