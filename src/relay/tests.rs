//! Each relay mode on a body the test feeds chunk by chunk (paused time: a
//! stalled upstream runs into its idle limit at once).

use std::collections::HashMap;

use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::*;
use crate::config::{
    self, BreakerConfig, Config, ProviderConfig, ProviderKind, ProviderTimeouts, RetryConfig,
    RouteConfig, TargetConfig,
};
use crate::provider::{Endpoint, HttpClients, UpstreamCall};
use crate::routing::breaker::BreakerState;
use crate::routing::{forward, Forwarded, Route, Router, Target};
use crate::sse::encode;
use crate::translate::Conversion;

/// An upstream body fed by the test: it waits while nothing is queued and
/// the sender lives, and ends when the sender is dropped.
struct Feed(mpsc::UnboundedReceiver<Result<Bytes, BodyError>>);

impl HttpBody for Feed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

type Sender = mpsc::UnboundedSender<Result<Bytes, BodyError>>;

fn feed() -> (Sender, Body) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Body::new(Feed(rx)))
}

fn send(tx: &Sender, chunk: impl Into<Bytes>) {
    tx.send(Ok(chunk.into())).unwrap();
}

/// How a test's upstream answers and whom the relay answers.
struct Case {
    /// The upstream's endpoint (its API).
    upstream: Endpoint,
    conversion: Conversion,
    content_type: &'static str,
    client: Api,
    /// The provider's total limit (idle is 5s).
    total: config::Duration,
}

impl Case {
    fn new(upstream: Endpoint, conversion: Conversion, client: Api) -> Self {
        Case {
            upstream,
            conversion,
            content_type: "text/event-stream",
            client,
            total: config::Duration::secs(600),
        }
    }

    fn json(mut self) -> Self {
        self.content_type = "application/json";
        self
    }
}

/// A relay over `body`, and what it reports to.
struct Relayed {
    response: http::Response<RelayBody>,
    record: Arc<Record>,
    target: Arc<Target>,
}

/// A route to one in-process mock target named `name`, with the case's
/// limits and a breaker that opens at the first failure.
fn route_for(name: &str, case: &Case) -> Arc<Route> {
    let cfg = ProviderConfig {
        name: name.to_string(),
        kind: ProviderKind::Mock,
        models: vec!["m".into()],
        breaker: BreakerConfig {
            consecutive_failures: 1,
            cooldown: config::Duration::secs(10),
            ..Default::default()
        },
        timeouts: ProviderTimeouts {
            idle: config::Duration::secs(5),
            total: case.total,
            ..Default::default()
        },
        ..Default::default()
    };
    let provider = Arc::new(Provider::build(&cfg, &mut HttpClients::default()).unwrap());
    let providers = HashMap::from([(name.to_string(), provider)]);
    let config = Config {
        routes: vec![RouteConfig {
            model: "m".into(),
            targets: vec![TargetConfig::from(name)],
            ..Default::default()
        }],
        ..Default::default()
    };
    Router::new(&config, &providers)
        .resolve("m")
        .unwrap()
        .clone()
}

/// A real attempt at the mock (so a real attempt guard), its response
/// replaced by the case's.
async fn forwarded(route: &Route, case: &Case, body: Body) -> Forwarded {
    let call = UpstreamCall {
        endpoint: Endpoint::ChatCompletions,
        model: "m".into(),
        body: Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
        stream: false,
        include_usage: false,
        request_id: "req-relay".into(),
        early_data: false,
        trace: None,
        headers: Default::default(),
        pin: None,
        owner: 0,
        drop_unsupported: false,
    };
    let mut done = forward(route, &call, &RetryConfig::default()).await;
    let Ok(a) = done.result.as_mut() else {
        panic!("the mock answers");
    };
    a.response.body = body;
    let ct = HeaderValue::from_static(case.content_type);
    a.response.headers.insert(header::CONTENT_TYPE, ct);
    a.prepared.endpoint = case.upstream;
    a.prepared.conversion = case.conversion;
    a.prepared.model = "m".into();
    done
}

async fn relayed(name: &str, case: Case, body: Body) -> Relayed {
    let route = route_for(name, &case);
    let Ok(attempted) = forwarded(&route, &case, body).await.result else {
        unreachable!()
    };
    let record = Arc::new(Record::default());
    let client = ClientEnd {
        model_label: "m".into(),
        record: record.clone(),
        api: case.client,
    };
    Relayed {
        response: RelayBody::start(attempted, client, Framing::Upstream),
        record,
        target: route.targets[0].clone(),
    }
}

/// Everything the client gets: the data, and the error the body ended in.
async fn drain<B>(body: &mut B) -> (String, Option<BodyError>)
where
    B: HttpBody<Data = Bytes, Error = BodyError> + Unpin,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend_from_slice(&f.into_data().unwrap()),
            Err(e) => return (String::from_utf8(out).unwrap(), Some(e)),
        }
    }
    (String::from_utf8(out).unwrap(), None)
}

/// The `data:` of each event, as JSON where it is.
fn data_of(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| json!(d)))
        .collect()
}

fn openai_chunk(content: &str) -> String {
    let chunk = json!({"id":"c1","object":"chat.completion.chunk","model":"m",
        "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}],"usage":null});
    encode(None, &chunk.to_string())
}

fn anthropic_stream() -> Vec<String> {
    let ev = |name: &str, data: Value| encode(Some(name), &data.to_string());
    vec![
        ev(
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",
                "model":"m","content":[],"usage":{"input_tokens":10,"cache_read_input_tokens":3,"output_tokens":1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ),
        ev(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}),
        ),
        ev("message_stop", json!({"type":"message_stop"})),
    ]
}

#[tokio::test(start_paused = true)]
async fn openai_stream_passes_through_and_counts_usage_from_its_last_event() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi);
    let mut r = relayed("pass-openai", case, body).await;
    let usage = json!({"id":"c1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4}});
    let events = [
        openai_chunk("Hel"),
        openai_chunk("lo"),
        encode(None, &usage.to_string()),
        encode(None, "[DONE]"),
    ];
    let sent = events.concat();
    // An event split across chunks is read whole.
    let (a, b) = sent.split_at(sent.len() / 2 + 3);
    send(&tx, a.to_string());
    send(&tx, b.to_string());
    drop(tx);
    let headers = r.response.headers();
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers["x-h3gate-target"], "pass-openai");
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert_eq!(out, sent, "passed through byte for byte");
    assert_eq!(r.record.total_tokens(), Some(15));
    assert!(!r.record.upstream_failed());
}

#[tokio::test(start_paused = true)]
async fn anthropic_stream_passes_through_and_counts_input_from_its_start() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::Messages, Conversion::None, Api::Anthropic);
    let mut r = relayed("pass-anthropic", case, body).await;
    for ev in anthropic_stream() {
        send(&tx, ev);
    }
    drop(tx);
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert_eq!(out, anthropic_stream().concat());
    // 10 input + 3 cache read from `message_start`, 7 output from `message_delta`.
    assert_eq!(r.record.total_tokens(), Some(20));
    assert!(!r.record.upstream_failed());
}

#[tokio::test(start_paused = true)]
async fn anthropic_stream_is_translated_for_an_openai_client() {
    let (tx, body) = feed();
    let conversion = Conversion::MessagesToChat {
        include_usage: true,
    };
    let case = Case::new(Endpoint::Messages, conversion, Api::OpenAi);
    let mut r = relayed("translate-to-chat", case, body).await;
    for ev in anthropic_stream() {
        send(&tx, ev);
    }
    drop(tx);
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert!(!out.contains("event:"), "OpenAI events are unnamed: {out}");
    let data = data_of(&out);
    let text: String = data
        .iter()
        .filter_map(|d| d["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(data.last(), Some(&json!("[DONE]")));
    let usage = data
        .iter()
        .find(|d| d["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    assert_eq!(r.record.total_tokens(), Some(20));
}

#[tokio::test(start_paused = true)]
async fn a_json_body_is_converted_whole_and_counts_its_usage() {
    let (tx, body) = feed();
    let conversion = Conversion::MessagesToChat {
        include_usage: false,
    };
    let case = Case::new(Endpoint::Messages, conversion, Api::OpenAi).json();
    let mut r = relayed("convert-json", case, body).await;
    let message = json!({"id":"msg_1","type":"message","role":"assistant","model":"m",
        "content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn",
        "usage":{"input_tokens":9,"output_tokens":2}})
    .to_string();
    let (a, b) = message.split_at(20);
    send(&tx, a.to_string());
    send(&tx, b.to_string());
    assert!(r.response.body().size_hint().exact().is_none());
    drop(tx);
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    let chat: Value = serde_json::from_str(&out).expect("one JSON body");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["content"], "Hello");
    assert_eq!(r.record.total_tokens(), Some(11));
}

#[tokio::test(start_paused = true)]
async fn a_sized_json_body_passed_through_ends_at_its_length() {
    let answer = json!({"id":"c1","object":"chat.completion","choices":[],
        "usage":{"prompt_tokens":5,"completion_tokens":6}})
    .to_string();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi).json();
    let mut r = relayed("sized-json", case, crate::exchange::full(answer.clone())).await;
    let body = r.response.body_mut();
    assert_eq!(body.size_hint().exact(), Some(answer.len() as u64));
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, answer.as_bytes());
    // HTTP/1.1 stops here, at the length: the body is over, its usage read.
    assert!(body.is_end_stream());
    assert_eq!(r.record.total_tokens(), Some(11));
    assert!(r.response.headers().get(header::CACHE_CONTROL).is_none());
}

/// An event too large to inspect, with no line end.
fn huge_event() -> String {
    format!("data: {}", "x".repeat((1 << 20) + 1))
}

#[tokio::test(start_paused = true)]
async fn a_stream_too_large_to_read_goes_through_opaque() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi);
    let mut r = relayed("opaque-sse", case, body).await;
    let sent = huge_event() + "\n\n";
    send(&tx, sent.clone());
    // Unread from here: no `[DONE]` is expected.
    drop(tx);
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert_eq!(out, sent);
    assert!(!r.record.upstream_failed());
}

#[tokio::test(start_paused = true)]
async fn a_json_body_too_large_to_read_goes_through_opaque() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi).json();
    let mut r = relayed("opaque-json", case, body).await;
    let usage = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"pad":""#;
    send(&tx, usage);
    send(&tx, "y".repeat(1 << 20));
    send(&tx, "\"}");
    drop(tx);
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert_eq!(out.len(), usage.len() + (1 << 20) + 2);
    assert_eq!(r.record.total_tokens(), None, "not kept, not read");
}

#[tokio::test(start_paused = true)]
async fn a_translated_stream_too_large_to_read_fails_in_the_client_api() {
    let (tx, body) = feed();
    let case = Case::new(
        Endpoint::ChatCompletions,
        Conversion::ChatToMessages,
        Api::Anthropic,
    );
    let mut r = relayed("untranslatable", case, body).await;
    send(&tx, huge_event());
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert!(out.starts_with("event: error\n"), "{out}");
    assert!(out.contains("too large to translate"));
    assert!(r.record.upstream_failed());
}

/// Stalls a started response past the idle limit and returns what the
/// client got after the first chunk.
async fn stall(r: &mut Relayed, tx: &Sender, first: &str) -> (String, Option<BodyError>) {
    send(tx, first.to_string());
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(r.record.upstream_failed());
    assert_eq!(r.target.state.breaker_state(), BreakerState::Open);
    (out, err)
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_ends_in_an_openai_error_event() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi);
    let mut r = relayed("idle-openai", case, body).await;
    let first = openai_chunk("Hel");
    let (out, err) = stall(&mut r, &tx, &first).await;
    assert!(err.is_none(), "an event stream ends in an event");
    let rest = out
        .strip_prefix(&first)
        .expect("the first chunk went through");
    let data = data_of(rest);
    assert_eq!(data.len(), 1, "one error event, no [DONE]: {rest}");
    assert_eq!(data[0]["error"]["code"], "upstream_idle_timeout");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_translated_stream_ends_in_an_anthropic_error_event() {
    let (tx, body) = feed();
    let case = Case::new(
        Endpoint::ChatCompletions,
        Conversion::ChatToMessages,
        Api::Anthropic,
    );
    let mut r = relayed("idle-anthropic", case, body).await;
    let (out, err) = stall(&mut r, &tx, &openai_chunk("Hel")).await;
    assert!(err.is_none());
    assert!(out.starts_with("event: message_start"), "translated: {out}");
    let error = out.rsplit("event: ").next().unwrap();
    assert!(error.starts_with("error\n"), "{out}");
    let data = data_of(error);
    assert_eq!(data[0]["type"], "error");
    assert_eq!(data[0]["error"]["type"], "api_error");
    assert_eq!(
        data[0]["error"]["message"],
        "the upstream provider stalled mid-stream"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_json_body_ends_in_a_stream_error() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi).json();
    let mut r = relayed("idle-json", case, body).await;
    let (out, err) = stall(&mut r, &tx, r#"{"id":"#).await;
    assert_eq!(out, r#"{"id":"#);
    let err = err.expect("a body that is not a stream ends in an error");
    assert!(err.to_string().contains("sent nothing"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_opaque_body_ends_in_a_stream_error() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi);
    let mut r = relayed("idle-opaque", case, body).await;
    let (out, err) = stall(&mut r, &tx, &huge_event()).await;
    assert_eq!(out.len(), huge_event().len());
    assert!(err.is_some(), "unread, it cannot gain an event");
}

#[tokio::test(start_paused = true)]
async fn a_stream_past_its_total_limit_ends_in_an_error_event() {
    let (_tx, body) = feed();
    let mut case = Case::new(Endpoint::Messages, Conversion::None, Api::Anthropic);
    case.total = config::Duration::secs(2);
    let mut r = relayed("total", case, body).await;
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert!(out.contains("exceeded its time limit"), "{out}");
    assert!(r.record.upstream_failed());
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_short_or_failing_ends_in_an_error_event() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::Messages, Conversion::None, Api::Anthropic);
    let mut r = relayed("truncated", case, body).await;
    send(&tx, anthropic_stream()[0].clone());
    drop(tx);
    let (out, _) = drain(r.response.body_mut()).await;
    let cut = Failure::Truncated.event(Api::Anthropic);
    assert!(out.ends_with(std::str::from_utf8(&cut).unwrap()), "{out}");
    assert!(r.record.upstream_failed());

    let (tx, body) = feed();
    let case = Case::new(Endpoint::ChatCompletions, Conversion::None, Api::OpenAi);
    let mut r = relayed("upstream-error", case, body).await;
    tx.send(Err("reset".into())).unwrap();
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert_eq!(data_of(&out)[0]["error"]["code"], "upstream_stream_error");
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_error_event_is_passed_on_as_an_upstream_failure() {
    let (tx, body) = feed();
    let case = Case::new(Endpoint::Messages, Conversion::None, Api::Anthropic);
    let mut r = relayed("explicit-error", case, body).await;
    let error = encode(
        Some("error"),
        r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
    );
    send(&tx, error.clone());
    drop(tx);
    let (out, err) = drain(r.response.body_mut()).await;
    assert!(err.is_none());
    assert_eq!(
        out, error,
        "the upstream's own ending, and nothing after it"
    );
    assert!(r.record.upstream_failed());
    // An answered error is not a broken stream: the breaker is not told.
    assert_eq!(r.target.state.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_stream_pings_then_relays_as_the_promised_event_stream() {
    let (tx, body) = feed();
    // The upstream says JSON; the client was promised an event stream.
    let conversion = Conversion::MessagesToChat {
        include_usage: false,
    };
    let case = Case::new(Endpoint::Messages, conversion, Api::OpenAi).json();
    let route = route_for("keepalive", &case);
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let fwd = Box::pin(async move {
        let _ = ready.await;
        forwarded(&route, &case, body).await
    });
    let record = Arc::new(Record::default());
    let every = Duration::from_secs(1);
    let mut resp = KeepAliveBody::response(fwd, every, "m".into(), record.clone(), Api::OpenAi);
    let ping = resp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(ping.into_data().unwrap(), ": ping\n\n");
    go.send(()).unwrap();
    for ev in anthropic_stream() {
        send(&tx, ev);
    }
    drop(tx);
    let (out, err) = drain(resp.body_mut()).await;
    assert!(err.is_none());
    let data = data_of(out.trim_start_matches(": ping\n\n"));
    assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hello", "{out}");
    assert_eq!(data.last(), Some(&json!("[DONE]")));
    assert_eq!(record.total_tokens(), Some(20));
}
