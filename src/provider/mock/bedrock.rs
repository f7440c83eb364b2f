//! The mock's Bedrock Converse wire format: the Converse JSON answer and
//! the ConverseStream event-stream frames (real framing, CRCs included:
//! `messageStart`, text deltas or a `toolUse` block in two pieces,
//! `contentBlockStop`, `messageStop`, `metadata` with the usage), and
//! Bedrock's error answers. The in-process mock speaks it with
//! `[providers.mock] converse = true`; the test upstream reuses it.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

use super::{estimate_tokens, split_half, token, Answer, Mock, MockRequest};
use crate::exchange::{full, BodyError};
use crate::provider::bedrock::eventstream::{event_frame, exception_frame};
use crate::provider::bedrock::EVENT_STREAM;
use crate::provider::{Endpoint, Prepared, UpstreamError, UpstreamResponse};

/// The fields of a Converse request the mock looks at, as a [`MockRequest`]
/// (its tools and tool results in the shape that reads them).
pub fn mock_request(body: &Value, model: &str) -> MockRequest {
    let messages = body["messages"].as_array().map(|ms| {
        ms.iter()
            .map(|m| {
                let content: Vec<Value> = m["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| match b.get("toolResult") {
                        Some(_) => json!({"type": "tool_result"}),
                        None => json!({"type": "text", "text": b["text"]}),
                    })
                    .collect();
                json!({"role": m["role"], "content": content})
            })
            .collect()
    });
    let tools = body["toolConfig"]["tools"].as_array().map(|ts| {
        ts.iter()
            .filter_map(|t| t.get("toolSpec"))
            .map(|s| json!({"name": s["name"], "input_schema": s["inputSchema"]["json"]}))
            .collect()
    });
    MockRequest {
        model: model.to_string(),
        max_tokens: body["inferenceConfig"]["maxTokens"]
            .as_u64()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        tools,
        messages,
        ..Default::default()
    }
}

/// Bedrock's error type and status for the mock's `status-NNN` models.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// A Bedrock error answer: `{"message"}` with `x-amzn-ErrorType`.
pub fn error_response(status: u16, message: &str) -> (StatusCode, HeaderMap, String) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_static(error_type(status)),
    );
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, headers, json!({ "message": message }).to_string())
}

impl Answer {
    fn converse_stop_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_use"
        } else {
            "max_tokens"
        }
    }

    fn converse_tool_id(&self) -> Option<String> {
        self.tool
            .as_ref()
            .map(|t| t.id.replace("call_", "tooluse_"))
    }

    /// Converse `usage`: `inputTokens` leaves the cache's tokens out.
    pub fn converse_usage(&self) -> Value {
        let cache = self.cached_tokens.saturating_add(self.cache_write_tokens);
        let input = self.prompt_tokens.saturating_sub(cache);
        let mut usage = json!({
            "inputTokens": input,
            "outputTokens": self.completion_tokens,
            "totalTokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        });
        if cache > 0 {
            usage["cacheReadInputTokens"] = json!(self.cached_tokens);
            usage["cacheWriteInputTokens"] = json!(self.cache_write_tokens);
        }
        usage
    }

    /// The Converse (non-streaming) answer.
    pub fn converse(&self) -> Value {
        let content = match &self.tool {
            Some(t) => json!([{"toolUse": {
                "toolUseId": self.converse_tool_id(), "name": t.name,
                "input": serde_json::from_str::<Value>(&t.arguments).unwrap_or(json!({})),
            }}]),
            None => json!([{ "text": self.text() }]),
        };
        json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.converse_stop_reason(),
            "usage": self.converse_usage(),
            "metrics": {"latencyMs": 1},
        })
    }

    /// Every frame of the ConverseStream answer, in order.
    pub fn converse_frames(&self) -> Vec<Bytes> {
        let mut frames = vec![event_frame("messageStart", &json!({"role": "assistant"}))];
        match &self.tool {
            Some(t) => {
                frames.push(event_frame(
                    "contentBlockStart",
                    &json!({"contentBlockIndex": 0, "start": {"toolUse": {
                        "toolUseId": self.converse_tool_id(), "name": t.name}}}),
                ));
                for piece in split_half(&t.arguments) {
                    frames.push(event_frame(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                    ));
                }
            }
            None => {
                for i in 0..self.completion_tokens as usize {
                    frames.push(event_frame(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": 0, "delta": {"text": token(i)}, "p": "abcd"}),
                    ));
                }
            }
        }
        frames.push(event_frame(
            "contentBlockStop",
            &json!({"contentBlockIndex": 0}),
        ));
        frames.push(event_frame(
            "messageStop",
            &json!({"stopReason": self.converse_stop_reason()}),
        ));
        frames.push(event_frame(
            "metadata",
            &json!({"usage": self.converse_usage(), "metrics": {"latencyMs": 1}}),
        ));
        frames.into_iter().map(Bytes::from).collect()
    }
}

/// A stream cut by an exception after its first frames (the test
/// upstream's `exception-mid-stream` model).
pub fn frames_ending_in_exception(answer: &Answer, kind: &str, message: &str) -> Vec<Bytes> {
    let mut frames: Vec<Bytes> = answer.converse_frames().into_iter().take(3).collect();
    frames.push(Bytes::from(exception_frame(kind, message)));
    frames
}

impl Mock {
    /// Whether this mock answers as Bedrock's Converse API.
    pub fn speaks_converse(&self) -> bool {
        self.cfg.converse
    }

    /// A Converse call's answer: JSON, or the event stream.
    pub(super) async fn send_converse(
        &self,
        call: &Prepared,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or_default();
        let req = mock_request(&body, &call.model);
        let n = req
            .max_tokens
            .unwrap_or(self.cfg.completion_tokens)
            .clamp(1, 4096);
        let (cached, written) = req.cache_usage();
        let mut answer = Answer::new(
            &req.model,
            Endpoint::Messages,
            estimate_tokens(call.body.len()),
            n,
        )
        .with_cache(cached, written);
        answer.tool = req.tool_call();
        let first = self.cfg.first_token_latency.get();
        let mut headers = HeaderMap::new();
        if !call.stream {
            tokio::time::sleep(first).await;
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(UpstreamResponse {
                status: StatusCode::OK,
                headers,
                body: full(answer.converse().to_string()),
                key: None,
            });
        }
        let gap = match self.cfg.tokens_per_second {
            0 => Duration::ZERO,
            tps => Duration::from_secs_f64(1.0 / f64::from(tps)),
        };
        let frames = answer.converse_frames();
        let stream = futures_util::stream::unfold(0usize, move |i| {
            let frame = frames.get(i).cloned();
            async move {
                let frame = frame?;
                let delay = if i == 0 { first } else { gap };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<_, BodyError>(http_body::Frame::data(frame)), i + 1))
            }
        });
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
        Ok(UpstreamResponse {
            status: StatusCode::OK,
            headers,
            body: StreamBody::new(stream).boxed_unsync(),
            key: None,
        })
    }
}
