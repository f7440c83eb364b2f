//! A test upstream that speaks OpenAI's wire format (and Anthropic's on
//! `/v1/messages`, `/v1/messages/count_tokens`) over plain HTTP/1.1 on
//! loopback, and misbehaves on request. `GET /v1/models/{id}` answers a
//! model object. A request offering tools gets a tool call (as the mock
//! does). Usage is 7 prompt and 5 completion tokens; a first user message
//! saying `cached:N` (and `cache_write:N`) adds N prompt tokens read from
//! (written to) the prompt cache, reported in the API's own fields, as the
//! mock does (`h3gate::provider::mock`, `MockRequest::cache_usage`):
//! OpenAI `prompt_tokens_details.cached_tokens` (counted in
//! `prompt_tokens`; in the JSON answer and the `include_usage` chunk),
//! Anthropic `cache_read_input_tokens` and `cache_creation_input_tokens`
//! (not counted in `input_tokens`; in the JSON answer, `message_start` and
//! `message_delta`). The behaviour is picked by the request's `model`:
//!
//! | model            | behaviour                                                         |
//! |------------------|-------------------------------------------------------------------|
//! | anything else    | a normal answer: JSON, or SSE chunks ending in `data: [DONE]`     |
//! | `gated`          | SSE: first chunk, then waits for [`Upstream::release`], then rest |
//! | `endless`        | SSE: a chunk every 20 ms (at most 1,000); records when dropped    |
//! | `drop-mid-stream`| SSE: two chunks, then the connection is cut                       |
//! | `slow`           | waits 5 s before the response headers                             |
//! | `slow-MS`        | waits MS milliseconds before answering normally                   |
//! | `status-NNN`     | an OpenAI-shaped error with status NNN (message holds a fake key) |
//! | `status-NNN-raS` | the same, with `Retry-After: S`                                   |
//! | `flaky-PCT`      | PCT % of requests fail: half 503, half a cut body                 |
//!
//! Whatever the model, a credential (`Authorization: Bearer …` or Azure's
//! `api-key`) holding `ratelimited` is answered 429 with `Retry-After: 30`,
//! one holding `revoked` 401, as OpenAI answers them.
//!
//! It speaks OpenAI's Responses API on `/v1/responses` (JSON, and the typed
//! stream events, as the mock does), and answers the stored-response calls
//! (`GET`/`DELETE /v1/responses/{id}`, `…/input_items`, `POST …/cancel`)
//! for any id, echoing it.
//!
//! It is also an Azure OpenAI resource: `/openai/deployments/{deployment}/…`
//! answers as the same path below `/v1` does, with the deployment as the
//! model when the body names none; without `?api-version=` it answers 404
//! as Azure does.
//!
//! A path `…/models/{model}:generateContent` (or `:streamGenerateContent`)
//! is Gemini's API, answered in its wire format (see [`gemini`]).
//!
//! Bedrock's Converse API is served on `/model/…` (see `bedrock.rs`; its
//! base URL is [`Upstream::bedrock_url`]), its SigV4 signatures checked.

mod gemini;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use h3gate::provider::mock::{Answer, DONE};
use h3gate::provider::Endpoint;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: tokio::time::Instant,
    pub path: String,
    /// The query string (empty without one).
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    gate: Notify,
    /// How many times [`Upstream::release`] was called: a `gated` stream
    /// goes on once it is above what it was when the request arrived, so a
    /// release that comes before the stream's task runs is not lost.
    releases: AtomicUsize,
    dropped: AtomicUsize,
    dropped_notify: Notify,
    sent_last: AtomicUsize,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream { addr, shared }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL of its Bedrock runtime API.
    pub fn bedrock_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets every `gated` stream send the rest of its chunks.
    pub fn release(&self) {
        self.shared.releases.fetch_add(1, Ordering::SeqCst);
        self.shared.gate.notify_waiters();
    }

    /// Whether a `gated` stream has sent its last chunk.
    pub fn sent_last(&self) -> usize {
        self.shared.sent_last.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until a streaming response was dropped by its reader.
    pub async fn wait_dropped(&self) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.dropped_notify.notified();
                if self.shared.dropped.load(Ordering::SeqCst) > 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_ok()
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    s: Arc<Shared>,
) -> Result<hyper::Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    s.seen.lock().unwrap().push(Seen {
        at: tokio::time::Instant::now(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
        body: json.clone(),
    });
    if let Some((model, stream)) = gemini::route(parts.uri.path()) {
        return Ok(gemini::answer(model, stream, &json, s).await);
    }
    if parts.uri.path().starts_with("/model/") {
        return Ok(super::bedrock::handle(&parts, &bytes, &json).await);
    }
    let (path, deployment) = match azure_path(&parts.uri) {
        Some(Ok((path, deployment))) => (path, Some(deployment)),
        Some(Err(not_found)) => return Ok(not_found),
        None => (parts.uri.path().to_string(), None),
    };
    if let Some(resp) = credential_error(&parts.headers) {
        return Ok(resp);
    }
    let model = json["model"]
        .as_str()
        .map(str::to_string)
        .or(deployment.filter(|d| !d.is_empty()))
        .unwrap_or_default();
    let stream = json["stream"].as_bool().unwrap_or(false);
    let anthropic = parts.headers.contains_key("anthropic-version");
    if let Some(resp) = stored_response(&parts.method, &path) {
        return Ok(resp);
    }
    if let Some(resp) = fixed_answer(&path, anthropic) {
        return Ok(resp);
    }
    let endpoint = endpoint_of(&path);
    if let Some(resp) = flaky(&model).or_else(|| status_error(&model, endpoint)) {
        return Ok(resp);
    }
    // The slow upstream under test: these waits are its behaviour.
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if let Some(ms) = model.strip_prefix("slow-").and_then(|m| m.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let request = serde_json::from_value::<h3gate::provider::mock::MockRequest>(json.clone()).ok();
    let (cached, written) = request.as_ref().map_or((0, 0), |r| r.cache_usage());
    let mut answer = Answer::new(&model, endpoint, 7, 5).with_cache(cached, written);
    answer.tool = request.and_then(|r| r.tool_call());
    if endpoint == Endpoint::Embeddings {
        let body = h3gate::provider::mock::embeddings(&model, &Some(json["input"].clone()), 3);
        return Ok(respond(200, "application/json", full(body.to_string())));
    }
    if !stream {
        return Ok(respond(
            200,
            "application/json",
            full(answer.complete().to_string()),
        ));
    }
    Ok(stream_answer(model, endpoint, &json, answer, s))
}

/// A stored response's call, answered for any id.
fn stored_response(method: &http::Method, path: &str) -> Option<hyper::Response<RespBody>> {
    use h3gate::provider::mock;
    let rest = path.strip_prefix("/v1/responses/")?;
    let body = match (method.as_str(), rest.split_once('/')) {
        ("GET", None) => mock::stored_response(rest, "gpt-4o-mini"),
        ("DELETE", None) => mock::deleted_response(rest),
        ("GET", Some((id, "input_items"))) => mock::input_items(id),
        ("POST", Some((id, "cancel"))) => {
            let mut v = mock::stored_response(id, "gpt-4o-mini");
            v["status"] = "cancelled".into();
            v
        }
        _ => {
            return Some(respond(
                404,
                "application/json",
                full(r#"{"error":{"message":"Not found","type":"invalid_request_error"}}"#.into()),
            ))
        }
    };
    Some(respond(200, "application/json", full(body.to_string())))
}

/// An Azure deployment path as the `/v1` path it stands for, and the
/// deployment; a 404 in Azure's shape without `api-version`.
#[allow(clippy::result_large_err)]
fn azure_path(uri: &http::Uri) -> Option<Result<(String, String), hyper::Response<RespBody>>> {
    let path = uri.path();
    let (deployment, op) = match path.strip_prefix("/openai/deployments/") {
        Some(rest) => rest.split_once('/')?,
        // The Responses API is not below a deployment (the body names it).
        None => ("", path.strip_prefix("/openai/")?),
    };
    if !uri.query().unwrap_or("").contains("api-version=") {
        let body = r#"{"error":{"code":"404","message":"Resource not found"}}"#;
        return Some(Err(respond(404, "application/json", full(body.into()))));
    }
    Some(Ok((format!("/v1/{op}"), deployment.to_string())))
}

/// 429 or 401 for a credential that says so (see the module's table).
fn credential_error(headers: &http::HeaderMap) -> Option<hyper::Response<RespBody>> {
    let credential = ["authorization", "api-key"]
        .iter()
        .filter_map(|h| headers.get(*h)?.to_str().ok())
        .collect::<String>();
    let (status, kind, code) = if credential.contains("ratelimited") {
        (429, "requests", "rate_limit_exceeded")
    } else if credential.contains("revoked") {
        (401, "invalid_request_error", "invalid_api_key")
    } else {
        return None;
    };
    let body = serde_json::json!({"error": {"message": "test upstream refused this key", "type": kind, "param": null, "code": code}});
    let mut resp = respond(status, "application/json", full(body.to_string()));
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", "30".parse().unwrap());
    }
    Some(resp)
}

/// The answers that depend on the path alone: a model object, a token count.
fn fixed_answer(path: &str, anthropic: bool) -> Option<hyper::Response<RespBody>> {
    if let Some(id) = path.strip_prefix("/v1/models/") {
        let body = if anthropic {
            serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z"})
        } else {
            serde_json::json!({"id": id, "object": "model", "created": 1, "owned_by": "test-upstream"})
        };
        return Some(respond(200, "application/json", full(body.to_string())));
    }
    (path == "/v1/messages/count_tokens").then(|| {
        respond(
            200,
            "application/json",
            full(r#"{"input_tokens":42}"#.into()),
        )
    })
}

fn endpoint_of(path: &str) -> Endpoint {
    match path {
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/messages" => Endpoint::Messages,
        "/v1/responses" => Endpoint::Responses,
        _ => Endpoint::ChatCompletions,
    }
}

/// `flaky-PCT`: a failure PCT % of the time (half 503, half a cut body).
fn flaky(model: &str) -> Option<hyper::Response<RespBody>> {
    let pct = model.strip_prefix("flaky-")?.parse::<u32>().ok()?;
    let roll = fastrand::u32(0..100);
    if roll < pct / 2 {
        return Some(respond(
            503,
            "application/json",
            full(r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into()),
        ));
    }
    // A cut connection: the gateway sees an invalid response.
    (roll < pct).then(|| {
        respond(
            200,
            "application/json",
            Box::pin(http_body_util::StreamBody::new(futures_util::stream::iter(
                [Err::<Frame<Bytes>, BoxError>("cut".into())],
            )))
            .boxed(),
        )
    })
}

/// `status-NNN[-raS]`: an error in the endpoint's shape, holding a fake key.
fn status_error(model: &str, endpoint: Endpoint) -> Option<hyper::Response<RespBody>> {
    let spec = model.strip_prefix("status-")?;
    let (code, retry_after) = match spec.split_once("-ra") {
        Some((c, ra)) => (c, Some(ra.to_string())),
        None => (spec, None),
    };
    let status: u16 = code.parse().unwrap_or(500);
    let body = if endpoint == Endpoint::Messages {
        serde_json::json!({"type": "error", "error": {
            "type": h3gate::api::anthropic_error_type(status),
            "message": "Overloaded. Incorrect API key provided: sk-ant-FAKEKEY0123456789abcdef.",
        }})
    } else {
        serde_json::json!({"error": {
            "message": "Rate limit reached. Incorrect API key provided: sk-test-FAKEKEY0123456789abcdef.",
            "type": if status == 429 { "rate_limit_error" } else { "invalid_request_error" },
            "param": null,
            "code": format!("test_{status}"),
        }})
    };
    let mut resp = respond(status, "application/json", full(body.to_string()));
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    Some(resp)
}

type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// A streamed answer, played by a task as `model` asks.
fn stream_answer(
    model: String,
    endpoint: Endpoint,
    json: &Value,
    answer: Answer,
    s: Arc<Shared>,
) -> hyper::Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let include_usage = json["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let events = match endpoint {
        Endpoint::Messages => answer.message_events(),
        Endpoint::Responses => answer.response_events(),
        _ => answer.stream_events(include_usage),
    };
    // Read before the response starts: a release the client makes after
    // seeing it is then always counted, whenever the task below runs.
    let releases = s.releases.load(Ordering::SeqCst);
    tokio::spawn(play(model, events, answer, tx, s, releases));
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    respond(200, "text/event-stream", body)
}

/// Sends the events: gated, endless, cut mid-stream, or straight through.
async fn play(
    model: String,
    events: Vec<String>,
    answer: Answer,
    tx: FrameSender,
    s: Arc<Shared>,
    releases: usize,
) {
    let send = |ev: String| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_ok() }
    };
    match model.as_str() {
        "gated" => {
            let _ = send(events[0].clone()).await;
            loop {
                let released = s.gate.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if s.releases.load(Ordering::SeqCst) > releases {
                    break;
                }
                released.await;
            }
            for ev in &events[1..] {
                if !send(ev.clone()).await {
                    return;
                }
            }
            s.sent_last.fetch_add(1, Ordering::SeqCst);
        }
        "endless" => {
            for i in 0..1000 {
                if !send(answer.chunk(Some(h3gate::provider::mock::token(i)), false)).await {
                    s.dropped.fetch_add(1, Ordering::SeqCst);
                    s.dropped_notify.notify_waiters();
                    return;
                }
                // The pace of the endless stream (its behaviour).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = send(DONE.to_string()).await;
        }
        "drop-mid-stream" => {
            let _ = send(events[0].clone()).await;
            let _ = send(events[1].clone()).await;
            // A gap before the cut (the behaviour: a stream that dies later).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Err("upstream cut the connection".into())).await;
        }
        _ => {
            for ev in events {
                if !send(ev).await {
                    return;
                }
            }
        }
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub fn full(s: String) -> RespBody {
    http_body_util::Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed()
}

pub fn respond(status: u16, content_type: &str, body: RespBody) -> hyper::Response<RespBody> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}
