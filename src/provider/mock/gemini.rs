//! The mock's Gemini wire format: a `GenerateContentResponse` (text, or a
//! `functionCall` part), its `alt=sse` stream (one chunk per token, each
//! with running `usageMetadata`, the last with the `finishReason`), and
//! Google's error shape. A Gemini request is read into a [`MockRequest`]
//! (its `contents` as messages, its function declarations as tools), so
//! the mock's rules (tool calls, `cached:N`) apply to it unchanged.

use serde_json::{json, Value};

use super::{token, Answer, MockRequest};

/// Google's status name for an HTTP status.
pub fn gemini_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// Google's error body: `{"error":{"code","message","status"}}`.
pub fn gemini_error(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": gemini_status(status)}})
}

impl MockRequest {
    /// A Gemini request body as the mock reads requests: `contents` as
    /// messages (a turn holding a `functionResponse` counts as a tool
    /// result), the function declarations as Anthropic-style tools,
    /// `toolConfig` mode `NONE` as tools off.
    pub fn from_gemini(model: &str, body: &Value) -> MockRequest {
        let messages = body["contents"].as_array().map(|turns| {
            turns
                .iter()
                .map(|t| {
                    let parts = t["parts"].as_array().cloned().unwrap_or_default();
                    if parts.iter().any(|p| p.get("functionResponse").is_some()) {
                        json!({"role": "tool", "content": ""})
                    } else {
                        json!({"role": t["role"], "content": parts})
                    }
                })
                .collect()
        });
        let tools = body["tools"].as_array().map(|tools| {
            tools
                .iter()
                .flat_map(|t| t["functionDeclarations"].as_array().cloned().unwrap_or_default())
                .map(|d| {
                    let schema = d.get("parametersJsonSchema").or(d.get("parameters"));
                    json!({"name": d["name"], "input_schema": schema.cloned().unwrap_or(Value::Null)})
                })
                .collect()
        });
        let off = body["toolConfig"]["functionCallingConfig"]["mode"] == "NONE";
        MockRequest {
            model: model.to_string(),
            max_tokens: body["generationConfig"]["maxOutputTokens"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
            tools,
            tool_choice: off.then(|| json!("none")),
            messages,
            ..MockRequest::default()
        }
    }
}

impl Answer {
    /// `usageMetadata` after `output` tokens: `promptTokenCount` counts the
    /// cached ones, which `cachedContentTokenCount` repeats (when some are).
    fn usage_metadata(&self, output: u32) -> Value {
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": output,
            "totalTokenCount": self.prompt_tokens.saturating_add(output),
        });
        if self.cached_tokens > 0 {
            usage["cachedContentTokenCount"] = json!(self.cached_tokens);
        }
        usage
    }

    fn gemini_finish(&self) -> &'static str {
        if self.tool.is_some() {
            "STOP"
        } else {
            "MAX_TOKENS"
        }
    }

    fn gemini_body(&self, parts: Value, finish: Option<&str>, output: u32) -> Value {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": self.usage_metadata(output),
            "modelVersion": self.model,
            "responseId": self.id,
        })
    }

    fn function_call_part(&self) -> Option<Value> {
        let t = self.tool.as_ref()?;
        let args = serde_json::from_str::<Value>(&t.arguments).unwrap_or(json!({}));
        Some(json!({"functionCall": {"name": t.name, "args": args}}))
    }

    /// The non-streaming `generateContent` answer.
    pub fn gemini_response(&self) -> Value {
        let parts = match self.function_call_part() {
            Some(call) => json!([call]),
            None => json!([{ "text": self.text() }]),
        };
        self.gemini_body(parts, Some(self.gemini_finish()), self.completion_tokens)
    }

    /// Every chunk of the `alt=sse` stream, in order (no end marker),
    /// each ended with CRLF line breaks as Google's servers send them.
    pub fn gemini_events(&self) -> Vec<String> {
        let chunk = |v: Value| format!("data: {v}\r\n\r\n");
        let n = self.completion_tokens;
        match self.function_call_part() {
            Some(call) => vec![chunk(self.gemini_body(
                json!([call]),
                Some(self.gemini_finish()),
                n,
            ))],
            None => (0..n)
                .map(|i| {
                    let last = i + 1 == n;
                    let finish = last.then(|| self.gemini_finish());
                    chunk(self.gemini_body(json!([{ "text": token(i as usize) }]), finish, i + 1))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Endpoint;
    use crate::sse;

    #[test]
    fn stream_and_json_agree() {
        let a = Answer::new("gemini-x", Endpoint::GenerateContent, 7, 5);
        let whole = a.gemini_response();
        let mut p = sse::Parser::new(1 << 16);
        for ev in a.gemini_events() {
            p.push(ev.as_bytes()).unwrap();
        }
        let mut text = String::new();
        let mut last = Value::Null;
        while let Some(ev) = p.next_event().unwrap() {
            last = serde_json::from_str(&ev.data).unwrap();
            text.push_str(
                last["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap(),
            );
        }
        assert_eq!(text, whole["candidates"][0]["content"]["parts"][0]["text"]);
        assert_eq!(last["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(last["usageMetadata"], whole["usageMetadata"]);
        assert_eq!(whole["usageMetadata"]["candidatesTokenCount"], 5);
    }

    #[test]
    fn a_gemini_request_is_read_like_the_others() {
        let body = json!({
            "contents": [{"role": "user", "parts": [{"text": "cached:30 weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "weather",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}],
            "generationConfig": {"maxOutputTokens": 9},
        });
        let r = MockRequest::from_gemini("g", &body);
        assert_eq!(r.max_tokens, Some(9));
        assert_eq!(r.cache_usage(), (30, 0));
        let call = r.tool_call().unwrap();
        assert_eq!(
            (call.name.as_str(), call.arguments.as_str()),
            ("weather", r#"{"city":"mock"}"#)
        );
        let mut answered = body.clone();
        answered["contents"].as_array_mut().unwrap().push(
            json!({"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {}}}]}),
        );
        assert!(MockRequest::from_gemini("g", &answered)
            .tool_call()
            .is_none());
        let mut off = body;
        off["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
        assert!(MockRequest::from_gemini("g", &off).tool_call().is_none());
        assert_eq!(
            gemini_error(429, "x")["error"]["status"],
            "RESOURCE_EXHAUSTED"
        );
    }
}
