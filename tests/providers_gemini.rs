//! The Gemini provider kind over HTTP/3, HTTP/2 and HTTP/1.1: OpenAI and
//! Anthropic clients reaching a `kind = "gemini"` target (JSON, streams,
//! tools, usage, errors, mid-stream failure, failover to and from an
//! OpenAI target), checked on both wires — what the client got, and what
//! the test upstream's Gemini API received.

mod common;

use common::{sse, Gateway, Proto, TestBody, UPSTREAM_KEY};
use h3gate::config::{Config, ProviderConfig, ProviderKind, RouteConfig, Secret, TargetConfig};
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    openai_chat_reaches_a_gemini_provider,
    openai_stream_from_a_gemini_provider,
    anthropic_messages_reach_a_gemini_provider,
    anthropic_stream_from_a_gemini_provider,
    tool_calls_round_trip_through_gemini,
    usage_reaches_the_metrics_once,
    gemini_errors_come_in_the_client_api_shape,
    mid_stream_failure_becomes_the_clients_error_event,
    failover_between_gemini_and_openai,
    unsupported_parameters_and_endpoints,
);

const FIVE_TOKENS: &str = "The quick brown fox jumps";

fn target(provider: &str, model: Option<&str>) -> TargetConfig {
    TargetConfig {
        provider: provider.to_string(),
        model: model.map(str::to_string),
        weight: 1,
    }
}

fn route(model: &str, targets: Vec<TargetConfig>, drop: bool) -> RouteConfig {
    RouteConfig {
        model: model.to_string(),
        targets,
        strategy: Default::default(),
        stream_keepalive: None,
        drop_unsupported_params: drop,
    }
}

/// The test gateway plus a Gemini provider `name` at the test upstream's
/// `/v1beta`, and its routes (placed first, so they win over the test
/// configuration's own):
/// `gemini-*` (and `lenient-gemini-*`, dropping unsupported parameters),
/// `gstatus-NNN` → Gemini `status-NNN`, `gdrop` → `drop-mid-stream`,
/// `g-then-openai` (a failing Gemini target, then OpenAI) and
/// `openai-then-g` (a failing OpenAI target, then Gemini).
async fn start(name: &str) -> Gateway {
    let name = name.to_string();
    Gateway::start_with(move |c: &mut Config| {
        let openai = c.providers.iter().find(|p| p.name == "up").unwrap();
        let base = openai.base_url.replace("/v1", "/v1beta");
        c.providers.push(ProviderConfig {
            name: name.clone(),
            kind: ProviderKind::Gemini,
            base_url: base,
            api_key: Secret::new(UPSTREAM_KEY),
            ..Default::default()
        });
        let g = |model: Option<&str>| vec![target(&name, model)];
        let mut routes = vec![
            route("gemini-*", g(None), false),
            route("lenient-gemini-*", g(Some("gemini-x")), true),
            route("gdrop", g(Some("drop-mid-stream")), false),
            route(
                "g-then-openai",
                vec![
                    target(&name, Some("status-503")),
                    target("up", Some("gpt-4o-mini")),
                ],
                false,
            ),
            route(
                "openai-then-g",
                vec![
                    target("up", Some("status-503")),
                    target(&name, Some("gemini-x")),
                ],
                false,
            ),
        ];
        for code in [400, 429] {
            let model = format!("status-{code}");
            routes.push(route(&format!("gstatus-{code}"), g(Some(&model)), false));
        }
        routes.append(&mut c.routes);
        c.routes = routes;
    })
    .await
}

async fn post(gw: &Gateway, p: Proto, path: &str, body: Value) -> common::client::TestResponse {
    // A client's own credentials never go to the provider.
    let headers = [
        ("authorization", "Bearer client-credential-not-forwarded"),
        ("x-goog-api-key", "client-credential-not-forwarded"),
    ];
    gw.client(p)
        .await
        .request(Method::POST, path, &headers, TestBody::Json(body))
        .await
}

async fn post_stream(
    gw: &Gateway,
    p: Proto,
    path: &str,
    body: Value,
) -> Vec<(Option<String>, Value)> {
    let resp = post(gw, p, path, body).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    sse::events(&resp.text().await)
}

/// The one request the upstream saw: the Gemini path, method and key.
fn seen_once(gw: &Gateway, model: &str, stream: bool) -> common::upstream::Seen {
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = seen.into_iter().next().unwrap();
    let method = if stream {
        "streamGenerateContent"
    } else {
        "generateContent"
    };
    assert_eq!(s.path, format!("/v1beta/models/{model}:{method}"));
    assert_eq!(s.query, if stream { "alt=sse" } else { "" });
    assert_eq!(s.headers["x-goog-api-key"], UPSTREAM_KEY);
    assert!(s.headers.get("authorization").is_none());
    s
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 5, "temperature": 0.5,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]})
}

fn anthropic(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 5, "stream": stream, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
}

async fn openai_chat_reaches_a_gemini_provider(p: Proto) {
    let gw = start("gem").await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("gemini-x", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("gem"));
    let v = resp.json().await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gemini-x");
    assert_eq!(v["choices"][0]["message"]["content"], FIVE_TOKENS);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 12);
    let s = seen_once(&gw, "gemini-x", false);
    assert_eq!(
        s.body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        s.body["contents"],
        json!([{"role": "user", "parts": [{"text": "Say hi"}]}])
    );
    assert_eq!(
        s.body["generationConfig"],
        json!({"maxOutputTokens": 5, "temperature": 0.5})
    );
}

async fn openai_stream_from_a_gemini_provider(p: Proto) {
    let gw = start("gem").await;
    let mut body = chat("gemini-x", true);
    body["stream_options"] = json!({"include_usage": true});
    let ev = post_stream(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    assert_eq!(ev[0].1["choices"][0]["delta"]["role"], "assistant");
    let (text, _, finish) = sse::assemble_openai(&ev);
    assert_eq!(text, FIVE_TOKENS);
    assert_eq!(finish.as_deref(), Some("length"));
    let usage = &ev[ev.len() - 2].1["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(7), Some(5))
    );
    seen_once(&gw, "gemini-x", true);

    // Without include_usage: no usage chunk (Gemini always reports usage).
    let ev = post_stream(&gw, p, "/v1/chat/completions", chat("gemini-x", true)).await;
    assert!(ev
        .iter()
        .all(|(_, v)| v.get("usage").is_none_or(Value::is_null)));
    assert_eq!(sse::assemble_openai(&ev).0, FIVE_TOKENS);
    assert_eq!(ev.last().unwrap().1, "[DONE]");
}

async fn anthropic_messages_reach_a_gemini_provider(p: Proto) {
    let gw = start("gem").await;
    let resp = post(&gw, p, "/v1/messages", anthropic("gemini-x", false)).await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"], json!([{"type": "text", "text": FIVE_TOKENS}]));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["output_tokens"], 5);
    let s = seen_once(&gw, "gemini-x", false);
    assert_eq!(s.body["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(
        s.body["contents"][0],
        json!({"role": "user", "parts": [{"text": "Hi"}]})
    );
}

async fn anthropic_stream_from_a_gemini_provider(p: Proto) {
    let gw = start("gem").await;
    let ev = post_stream(&gw, p, "/v1/messages", anthropic("gemini-x", true)).await;
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let mut want = vec!["message_start", "content_block_start"];
    want.extend(["content_block_delta"; 5]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    assert_eq!(ev[0].1["message"]["usage"]["input_tokens"], 7);
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, FIVE_TOKENS);
    let delta = &ev[8].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(
        (
            delta["usage"]["input_tokens"].as_u64(),
            delta["usage"]["output_tokens"].as_u64()
        ),
        (Some(7), Some(5))
    );
    seen_once(&gw, "gemini-x", true);
}

async fn tool_calls_round_trip_through_gemini(p: Proto) {
    let gw = start("gem").await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let ask = json!({"role": "user", "content": "Weather in Paris?"});
    // OpenAI, JSON and stream.
    let body = json!({"model": "gemini-x", "tools": tools, "messages": [ask]});
    let v = post(&gw, p, "/v1/chat/completions", body.clone())
        .await
        .json()
        .await;
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"mock"}"#);
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let ev = post_stream(&gw, p, "/v1/chat/completions", streamed).await;
    let (_, args, finish) = sse::assemble_openai(&ev);
    assert_eq!(
        (args.as_str(), finish.as_deref()),
        (r#"{"city":"mock"}"#, Some("tool_calls"))
    );
    let sent = &gw.upstream.seen()[0].body;
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"],
        "weather"
    );
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"]["city"]
            ["type"],
        "string"
    );
    // The result goes back as a functionResponse named by the call.
    let follow_up = json!({"model": "gemini-x", "tools": tools, "messages": [ask,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]});
    let v = post(&gw, p, "/v1/chat/completions", follow_up)
        .await
        .json()
        .await;
    assert_eq!(
        v["choices"][0]["message"]["content"], FIVE_TOKENS,
        "answered, no second call"
    );
    let sent = &gw.upstream.seen()[2].body;
    assert_eq!(
        sent["contents"][1]["parts"][0]["functionCall"],
        json!({"name": "weather", "args": {"city": "mock"}})
    );
    assert_eq!(
        sent["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"content": "sunny"}}}]})
    );
    // Anthropic, JSON and stream.
    let body = json!({"model": "gemini-x", "max_tokens": 50, "messages": [ask],
        "tools": [{"name": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]});
    let v = post(&gw, p, "/v1/messages", body.clone())
        .await
        .json()
        .await;
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["input"], json!({"city": "mock"}));
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let ev = post_stream(&gw, p, "/v1/messages", streamed).await;
    let start = ev
        .iter()
        .find(|(n, _)| n.as_deref() == Some("content_block_start"))
        .unwrap();
    assert_eq!(start.1["content_block"]["name"], "weather");
    let args: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(args, r#"{"city":"mock"}"#);
    let delta = ev
        .iter()
        .find(|(n, _)| n.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

async fn usage_reaches_the_metrics_once(p: Proto) {
    // Its own provider name: the token counters are process-wide.
    let name = format!("gemusage{}", format!("{p:?}").to_lowercase());
    let gw = start(&name).await;
    let series = |dir: &str| {
        format!(r#"h3gate_tokens_total{{direction="{dir}",model="gemini-*",provider="{name}"}}"#)
    };
    // A stream whose every chunk carries running totals, and a JSON answer
    // (a first user message saying cached:N adds N cached prompt tokens).
    post_stream(&gw, p, "/v1/chat/completions", chat("gemini-x", true)).await;
    let body = json!({"model": "gemini-x", "max_tokens": 5,
        "messages": [{"role": "user", "content": "cached:30 hello"}]});
    let v = post(&gw, p, "/v1/messages", body).await.json().await;
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 30);
    assert_eq!(
        gw.metric(&series("completion")).await,
        10.0,
        "5 + 5, each counted once"
    );
    assert_eq!(gw.metric(&series("prompt")).await, 7.0 + 37.0);
}

async fn gemini_errors_come_in_the_client_api_shape(p: Proto) {
    let gw = start("gem").await;
    // Gemini's 429 RESOURCE_EXHAUSTED, to an OpenAI client.
    let resp = post(&gw, p, "/v1/chat/completions", chat("gstatus-429", false)).await;
    assert_eq!(resp.status, 429);
    let v = resp.json().await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Quota exceeded"),
        "{v}"
    );
    assert_eq!(v["error"]["type"], "RESOURCE_EXHAUSTED");
    assert!(!v.to_string().contains("FAKEKEY"), "scrubbed: {v}");
    // To an Anthropic client: its own shape and type.
    let resp = post(&gw, p, "/v1/messages", anthropic("gstatus-429", false)).await;
    assert_eq!(resp.status, 429);
    let v = resp.json().await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(!v.to_string().contains("FAKEKEY"), "scrubbed: {v}");
    // A 400 INVALID_ARGUMENT, to both (a stream request answered before it starts).
    let resp = post(&gw, p, "/v1/chat/completions", chat("gstatus-400", true)).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json().await["error"]["type"], "INVALID_ARGUMENT");
    let resp = post(&gw, p, "/v1/messages", anthropic("gstatus-400", true)).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json().await["error"]["type"], "invalid_request_error");
}

async fn mid_stream_failure_becomes_the_clients_error_event(p: Proto) {
    let gw = start("gem").await;
    let ev = post_stream(&gw, p, "/v1/chat/completions", chat("gdrop", true)).await;
    assert_eq!(ev[0].1["choices"][0]["delta"]["role"], "assistant");
    let last = &ev.last().unwrap().1;
    assert_eq!(last["error"]["type"], "upstream_error", "{ev:?}");
    assert!(ev.iter().all(|(_, v)| v != "[DONE]"));
    let ev = post_stream(&gw, p, "/v1/messages", anthropic("gdrop", true)).await;
    assert_eq!(ev[0].0.as_deref(), Some("message_start"));
    let (name, last) = ev.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{ev:?}");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(ev.iter().all(|(n, _)| n.as_deref() != Some("message_stop")));
}

async fn failover_between_gemini_and_openai(p: Proto) {
    let gw = start("gem").await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("g-then-openai", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up/gpt-4o-mini"));
    assert_eq!(
        resp.json().await["choices"][0]["message"]["content"],
        FIVE_TOKENS
    );
    let seen = gw.upstream.seen();
    assert_eq!(seen[0].path, "/v1beta/models/status-503:generateContent");
    assert_eq!(seen.last().unwrap().path, "/v1/chat/completions");
    // And back: OpenAI fails, Gemini answers, to an Anthropic client streaming.
    let ev = post_stream(&gw, p, "/v1/messages", anthropic("openai-then-g", true)).await;
    assert_eq!(ev.last().unwrap().0.as_deref(), Some("message_stop"));
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, FIVE_TOKENS);
    let last = gw.upstream.seen().pop().unwrap();
    assert_eq!(last.path, "/v1beta/models/gemini-x:streamGenerateContent");
}

async fn unsupported_parameters_and_endpoints(p: Proto) {
    let gw = start("gem").await;
    let mut body = chat("gemini-x", false);
    body["logit_bias"] = json!({"50256": -100});
    let resp = post(&gw, p, "/v1/chat/completions", body.clone()).await;
    assert_eq!(resp.status, 400);
    let v = resp.json().await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`logit_bias`"),
        "{v}"
    );
    let mut anth = anthropic("gemini-x", false);
    anth["thinking"] = json!({"type": "enabled", "budget_tokens": 100});
    let resp = post(&gw, p, "/v1/messages", anth).await;
    assert_eq!(resp.status, 400);
    let v = resp.json().await;
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`thinking`"),
        "{v}"
    );
    // A model name that would change the upstream path.
    let resp = post(
        &gw,
        p,
        "/v1/chat/completions",
        chat("gemini-x:streamGenerateContent?x=", false),
    )
    .await;
    assert_eq!(resp.status, 400);
    // Embeddings and single models are not served by a Gemini target.
    let resp = post(
        &gw,
        p,
        "/v1/embeddings",
        json!({"model": "gemini-x", "input": "hi"}),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        gw.client(p).await.get("/v1/models/gemini-x").await.status,
        400
    );
    assert!(gw.upstream.seen().is_empty(), "nothing sent upstream");
    // A route that drops them.
    body["model"] = json!("lenient-gemini-1");
    let resp = post(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(resp.status, 200);
    let s = seen_once(&gw, "gemini-x", false);
    assert!(!s.body.to_string().contains("logit"));
}
