//! Provider families and API surfaces: OpenAI clients reaching Anthropic
//! providers and Anthropic clients reaching OpenAI-compatible ones, over
//! HTTP/3, HTTP/2 and HTTP/1.1, checked on both wires (what the client got
//! and what the test upstream received).

mod common;

use common::{chat, sse, Gateway, Proto, TestBody, UPSTREAM_KEY};
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    openai_chat_reaches_an_anthropic_provider,
    openai_stream_from_an_anthropic_provider,
    openai_tool_call_stream_from_an_anthropic_provider,
    anthropic_messages_reach_an_openai_provider,
    anthropic_stream_from_an_openai_provider,
    anthropic_native_requests_pass_through,
    failover_across_provider_families,
    errors_come_in_the_client_api_shape,
    unsupported_parameter_is_400_unless_dropped,
    endpoint_no_target_serves_is_400,
    usage_chunk_is_requested_and_stripped,
    single_model_is_forwarded_to_its_provider,
    mid_stream_failure_reaches_an_anthropic_client_as_an_error_event,
    ollama_provider_and_extra_headers,
);

const FIVE_TOKENS: &str = "The quick brown fox jumps";

async fn post(gw: &Gateway, p: Proto, path: &str, body: Value) -> common::client::TestResponse {
    gw.client(p).await.post_json(path, body).await
}

/// A streamed request answered 200: its SSE events.
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

async fn openai_chat_reaches_an_anthropic_provider(p: Proto) {
    let gw = Gateway::start().await;
    let body = json!({"model": "claude-x", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}
    ], "stop": ["END"], "temperature": 0.3});
    let resp = post(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], FIVE_TOKENS);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(
        seen.body["system"],
        json!([{"type": "text", "text": "Be brief."}])
    );
    assert_eq!(
        seen.body["max_tokens"], 333,
        "default_max_tokens from config"
    );
    assert_eq!(seen.body["stop_sequences"], json!(["END"]));
    assert_eq!(seen.body["temperature"], 0.3);
}

async fn openai_stream_from_an_anthropic_provider(p: Proto) {
    let gw = Gateway::start().await;
    let mut body = chat("claude-x", true);
    body["stream_options"] = json!({"include_usage": true});
    let ev = post_stream(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(ev.last().unwrap().1, "[DONE]");
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
    assert_eq!(gw.upstream.seen()[0].body["stream"], true);
    let tokens = gw
        .metric(r#"h3gate_tokens_total{direction="completion",model="claude-*",provider="claude"}"#)
        .await;
    assert!(
        tokens >= 5.0,
        "usage read from the Anthropic stream: {tokens}"
    );
}

async fn openai_tool_call_stream_from_an_anthropic_provider(p: Proto) {
    let gw = Gateway::start().await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    for stream in [true, false] {
        let body = json!({"model": "claude-x", "stream": stream, "tools": tools,
            "messages": [{"role": "user", "content": "Weather in Paris?"}]});
        let resp = post(&gw, p, "/v1/chat/completions", body).await;
        assert_eq!(resp.status, 200);
        let (args, finish) = if stream {
            let ev = sse::events(&resp.text().await);
            let first_call = ev.iter().find_map(|(_, v)| {
                v["choices"][0]["delta"]["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .map(str::to_string)
            });
            assert_eq!(first_call.as_deref(), Some("weather"));
            let (_, args, finish) = sse::assemble_openai(&ev);
            (args, finish.unwrap())
        } else {
            let v = resp.json().await;
            let call = &v["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(call["function"]["name"], "weather");
            (
                call["function"]["arguments"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "mock"})
        );
        assert_eq!(finish, "tool_calls");
    }
    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.body["tools"][0]["name"], "weather");
    assert_eq!(
        seen.body["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
}

fn anthropic_request(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 5, "stream": stream,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
}

async fn anthropic_messages_reach_an_openai_provider(p: Proto) {
    let gw = Gateway::start().await;
    let resp = post(
        &gw,
        p,
        "/v1/messages",
        anthropic_request("gpt-4o-mini", false),
    )
    .await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"], json!([{"type": "text", "text": FIVE_TOKENS}]));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["output_tokens"], 5);
    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(seen.body["max_tokens"], 5);
}

async fn anthropic_stream_from_an_openai_provider(p: Proto) {
    let gw = Gateway::start().await;
    let ev = post_stream(
        &gw,
        p,
        "/v1/messages",
        anthropic_request("gpt-4o-mini", true),
    )
    .await;
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, FIVE_TOKENS);
    let delta = &ev[8].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["usage"]["input_tokens"], 7);
    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.body["stream_options"]["include_usage"], true);
}

async fn anthropic_native_requests_pass_through(p: Proto) {
    let gw = Gateway::start().await;
    let sent = anthropic_request("claude-x", true);
    let ev = post_stream(&gw, p, "/v1/messages", sent.clone()).await;
    assert_eq!(ev[0].0.as_deref(), Some("message_start"));
    assert!(
        ev.iter().any(|(n, _)| n.as_deref() == Some("ping")),
        "untouched, pings included"
    );
    assert_eq!(ev.last().unwrap().0.as_deref(), Some("message_stop"));
    assert_eq!(gw.upstream.seen()[0].body, sent, "forwarded untouched");

    let resp = post(
        &gw,
        p,
        "/v1/messages/count_tokens",
        json!({"model": "claude-x",
        "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().await["input_tokens"], 42);
    assert_eq!(gw.upstream.seen()[1].path, "/v1/messages/count_tokens");

    // The built-in mock speaks Anthropic too.
    let resp = post(&gw, p, "/v1/messages", anthropic_request("mock-1", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().await["type"], "message");
}

async fn failover_across_provider_families(p: Proto) {
    let gw = Gateway::start().await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("cross-family", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up/gpt-4o-mini"));
    assert_eq!(
        resp.json().await["choices"][0]["message"]["content"],
        FIVE_TOKENS
    );
    let seen = gw.upstream.seen();
    assert_eq!(
        (seen[0].path.as_str(), &seen[0].body["model"]),
        ("/v1/messages", &json!("status-529"))
    );
    let last = seen.last().unwrap();
    assert_eq!(
        (last.path.as_str(), &last.body["model"]),
        ("/v1/chat/completions", &json!("gpt-4o-mini"))
    );

    // And an Anthropic client through the same route.
    let resp = post(
        &gw,
        p,
        "/v1/messages",
        anthropic_request("cross-family", false),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().await["content"][0]["text"], FIVE_TOKENS);
}

async fn errors_come_in_the_client_api_shape(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    // The gateway's own error, to an Anthropic client.
    let resp = c
        .post_json("/v1/messages", anthropic_request("nonexistent", false))
        .await;
    assert_eq!(resp.status, 404);
    let id = resp.header("x-request-id").unwrap().to_string();
    let v = resp.json().await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(v["request_id"], id.as_str());
    // An OpenAI upstream's 429, to an Anthropic client.
    let resp = c
        .post_json("/v1/messages", anthropic_request("status-400", false))
        .await;
    assert_eq!(resp.status, 400);
    let v = resp.json().await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(!v.to_string().contains("FAKEKEY"), "scrubbed: {v}");
    // Anthropic's 529 overloaded, to an OpenAI client: a 503 it retries.
    let resp = c
        .post_json("/v1/chat/completions", chat("claude-status-529", false))
        .await;
    assert_eq!(resp.status, 503);
    let v = resp.json().await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded"),
        "{v}"
    );
    assert!(!v.to_string().contains("FAKEKEY"), "scrubbed: {v}");
    // A bad body to /v1/messages.
    let resp = c
        .request(
            Method::POST,
            "/v1/messages",
            &[],
            TestBody::Bytes("{nope".into()),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json().await["error"]["type"], "invalid_request_error");
}

async fn unsupported_parameter_is_400_unless_dropped(p: Proto) {
    let gw = Gateway::start().await;
    let mut body = chat("claude-x", false);
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
    assert!(gw.upstream.seen().is_empty(), "nothing sent upstream");

    body["model"] = json!("lenient-x");
    let resp = post(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(resp.status, 200);
    assert!(gw.upstream.seen()[0].body.get("logit_bias").is_none());

    let mut body = anthropic_request("gpt-4o-mini", false);
    body["top_k"] = json!(5);
    let resp = post(&gw, p, "/v1/messages", body).await;
    assert_eq!(resp.status, 400);
    assert!(resp.json().await["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`top_k`"));
}

async fn endpoint_no_target_serves_is_400(p: Proto) {
    let gw = Gateway::start().await;
    let resp = post(
        &gw,
        p,
        "/v1/embeddings",
        json!({"model": "claude-x", "input": "hi"}),
    )
    .await;
    assert_eq!(resp.status, 400);
    let v = resp.json().await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not serve"),
        "{v}"
    );
    let resp = post(
        &gw,
        p,
        "/v1/messages/count_tokens",
        json!({"model": "gpt-4o-mini", "messages": []}),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json().await["type"], "error");
}

async fn usage_chunk_is_requested_and_stripped(p: Proto) {
    let gw = Gateway::start().await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("gpt-4o-mini", true)).await;
    let ev = sse::events(&resp.text().await);
    assert!(
        ev.iter()
            .all(|(_, v)| v.get("usage").is_none_or(Value::is_null)),
        "no usage chunk"
    );
    assert_eq!(sse::assemble_openai(&ev).0, FIVE_TOKENS);
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    assert_eq!(
        gw.upstream.seen()[0].body["stream_options"]["include_usage"],
        true
    );
    let tokens = gw
        .metric(r#"h3gate_tokens_total{direction="completion",model="gpt-4o-mini",provider="up"}"#)
        .await;
    assert!(tokens >= 5.0, "usage still accounted: {tokens}");
}

async fn single_model_is_forwarded_to_its_provider(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let resp = c.get("/v1/models/gpt-4o-mini").await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(
        (v["id"].as_str(), v["owned_by"].as_str()),
        (Some("gpt-4o-mini"), Some("test-upstream"))
    );
    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.path, "/v1/models/gpt-4o-mini");
    // An Anthropic provider's model object, in OpenAI's shape.
    let v = c.get("/v1/models/claude-x").await.json().await;
    assert_eq!(
        v,
        json!({"id": "claude-x", "object": "model", "created": 0, "owned_by": "anthropic"})
    );
    // Anthropic clients list models in Anthropic's shape.
    let resp = c
        .request(
            Method::GET,
            "/v1/models",
            &[("anthropic-version", "2023-06-01")],
            TestBody::Empty,
        )
        .await;
    let v = resp.json().await;
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["type"] == "model"));
    assert_eq!(v["has_more"], false);
    assert_eq!(c.get("/v1/models/nonexistent").await.status, 404);
    // The path cannot walk out of `/models/` on the upstream.
    // (Clients normalise a literal `..` away; encoded forms reach the gateway.)
    for bad in ["/v1/models/gpt%2F..%2F..%2Fadmin", "/v1/models/gpt-%2e%2e"] {
        assert_eq!(c.get(bad).await.status, 400, "{bad}");
    }
    assert!(gw
        .upstream
        .seen()
        .iter()
        .all(|s| !s.path.contains("admin") && !s.path.contains('%')));
}

async fn mid_stream_failure_reaches_an_anthropic_client_as_an_error_event(p: Proto) {
    let gw = Gateway::start().await;
    let ev = post_stream(
        &gw,
        p,
        "/v1/messages",
        anthropic_request("drop-mid-stream", true),
    )
    .await;
    assert_eq!(ev[0].0.as_deref(), Some("message_start"));
    let (name, last) = ev.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{ev:?}");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(ev.iter().all(|(n, _)| n.as_deref() != Some("message_stop")));
}

async fn ollama_provider_and_extra_headers(p: Proto) {
    let gw = Gateway::start().await;
    // Ollama: OpenAI's wire format, no key configured, so no Authorization.
    let resp = post(&gw, p, "/v1/chat/completions", chat("llama3.1:8b", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json().await["choices"][0]["message"]["content"],
        FIVE_TOKENS
    );
    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.path, "/v1/chat/completions");
    assert!(seen.headers.get("authorization").is_none());
    // And Anthropic clients reach it too.
    let ev = post_stream(
        &gw,
        p,
        "/v1/messages",
        anthropic_request("llama3.1:8b", true),
    )
    .await;
    assert_eq!(ev.last().unwrap().0.as_deref(), Some("message_stop"));
    // A provider's configured extra headers go with every request.
    post(&gw, p, "/v1/chat/completions", chat("gpt-4o-mini", false)).await;
    let last = gw.upstream.seen().pop().unwrap();
    assert_eq!(last.headers["x-extra-header"], "test-extra");
    assert!(gw.upstream.seen()[0]
        .headers
        .get("x-extra-header")
        .is_none());
}
