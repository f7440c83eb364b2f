//! The test upstream's Gemini API: `POST /v1beta/models/{model}:generateContent`
//! (JSON) and `:streamGenerateContent?alt=sse` (SSE chunks, no end
//! marker), built with the mock's Gemini builders
//! (`h3gate::provider::mock`, `Answer::gemini_response` and
//! `Answer::gemini_events`). The model is the path's; the behaviours are
//! the other APIs' (`status-NNN` answers Google's error shape holding a
//! fake key, `drop-mid-stream` cuts after two chunks, `slow` waits 5 s, a
//! request offering tools gets a function call).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use serde_json::Value;
use tokio::sync::mpsc;

use h3gate::provider::mock::{gemini_error, Answer, MockRequest};
use h3gate::provider::Endpoint;

use super::{full, play, respond, tokio_stream_from, RespBody, Shared};

/// `(model, stream)` of a Gemini path, e.g. `/v1beta/models/g:generateContent`.
pub(super) fn route(path: &str) -> Option<(String, bool)> {
    let (_, rest) = path.split_once("/models/")?;
    let (model, method) = rest.split_once(':')?;
    match method {
        "generateContent" => Some((model.to_string(), false)),
        "streamGenerateContent" => Some((model.to_string(), true)),
        _ => None,
    }
}

pub(super) async fn answer(
    model: String,
    stream: bool,
    json: &Value,
    s: Arc<Shared>,
) -> hyper::Response<RespBody> {
    if let Some(code) = model
        .strip_prefix("status-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let body = gemini_error(
            code,
            "Quota exceeded. API key not valid: AIzaFAKEKEY0123456789abcdefghijklmnop.",
        );
        return respond(code, "application/json", full(body.to_string()));
    }
    // The slow upstream under test: this wait is its behaviour.
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let request = MockRequest::from_gemini(&model, json);
    let (cached, written) = request.cache_usage();
    let mut answer =
        Answer::new(&model, Endpoint::GenerateContent, 7, 5).with_cache(cached, written);
    answer.tool = request.tool_call();
    if !stream {
        return respond(
            200,
            "application/json",
            full(answer.gemini_response().to_string()),
        );
    }
    let (tx, rx) = mpsc::channel(4);
    let events = answer.gemini_events();
    let releases = s.releases.load(Ordering::SeqCst);
    tokio::spawn(play(model, events, answer, tx, s, releases));
    let body: RespBody = StreamBody::new(tokio_stream_from(rx)).boxed();
    respond(200, "text/event-stream", body)
}
