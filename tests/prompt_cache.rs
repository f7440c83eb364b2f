//! Prompt-cache usage reaches the client in its own API's fields, over
//! HTTP/3, HTTP/2 and HTTP/1.1, in JSON answers and streams: from an
//! OpenAI upstream (`prompt_tokens_details.cached_tokens`, counted in
//! `prompt_tokens`), from an Anthropic one (`cache_read_input_tokens`,
//! `cache_creation_input_tokens`, not counted in `input_tokens`), across
//! families, and from the built-in mock. The upstreams report a cache when
//! the first user message says `cached:N` / `cache_write:N`
//! (tests/common/upstream.rs).

mod common;

use common::{sse, Gateway, Proto};
use serde_json::{json, Value};

over_every_protocol!(
    openai_upstream_cached_tokens,
    anthropic_upstream_cache_reads_and_writes,
    the_mock_provider_reports_cached_tokens,
);

const ASK: &str = "Say hi. cached:600 cache_write:100";

fn chat(model: &str, stream: bool) -> Value {
    let mut body = json!({"model": model, "stream": stream, "max_tokens": 5,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ASK}]});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn messages(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 5, "stream": stream, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": ASK}]}]})
}

async fn post(gw: &Gateway, p: Proto, path: &str, body: Value) -> common::client::TestResponse {
    let resp = gw.client(p).await.post_json(path, body).await;
    assert_eq!(resp.status, 200);
    resp
}

async fn json_usage(gw: &Gateway, p: Proto, path: &str, body: Value) -> Value {
    post(gw, p, path, body).await.json().await["usage"].clone()
}

async fn events(gw: &Gateway, p: Proto, path: &str, body: Value) -> Vec<(Option<String>, Value)> {
    sse::events(&post(gw, p, path, body).await.text().await)
}

/// The usage of an OpenAI stream's usage-only chunk (before `[DONE]`).
fn stream_usage(ev: &[(Option<String>, Value)]) -> Value {
    let last = &ev[ev.len() - 2].1;
    assert_eq!(last["choices"], json!([]), "the usage chunk: {last}");
    last["usage"].clone()
}

/// An Anthropic stream's `message_start` and `message_delta` usages.
fn message_usages(ev: &[(Option<String>, Value)]) -> (Value, Value) {
    let named = |n: &str| {
        ev.iter()
            .find(|(name, _)| name.as_deref() == Some(n))
            .unwrap_or_else(|| panic!("no {n}: {ev:?}"))
            .1
            .clone()
    };
    (
        named("message_start")["message"]["usage"].clone(),
        named("message_delta")["usage"].clone(),
    )
}

/// 7 uncached prompt tokens, 600 read from the cache, 100 written: OpenAI
/// reports no writes, so they are plain prompt tokens.
async fn openai_upstream_cached_tokens(p: Proto) {
    let gw = Gateway::start().await;
    let want = json!({"prompt_tokens": 707, "completion_tokens": 5, "total_tokens": 712,
        "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 0}});
    let path = "/v1/chat/completions";
    assert_eq!(json_usage(&gw, p, path, chat("gpt-4o", false)).await, want);
    assert_eq!(
        stream_usage(&events(&gw, p, path, chat("gpt-4o", true)).await),
        want
    );

    // An Anthropic client of the OpenAI upstream: its own fields.
    let u = json_usage(&gw, p, "/v1/messages", messages("gpt-4o", false)).await;
    assert_eq!(
        (
            &u["input_tokens"],
            &u["cache_read_input_tokens"],
            &u["output_tokens"]
        ),
        (&json!(107), &json!(600), &json!(5)),
        "{u}"
    );
}

async fn anthropic_upstream_cache_reads_and_writes(p: Proto) {
    let gw = Gateway::start().await;
    let model = "claude-sonnet-4-5";
    let want = json!({"input_tokens": 7, "cache_read_input_tokens": 600,
        "cache_creation_input_tokens": 100, "output_tokens": 5});
    let path = "/v1/messages";
    assert_eq!(json_usage(&gw, p, path, messages(model, false)).await, want);
    let (start, delta) = message_usages(&events(&gw, p, path, messages(model, true)).await);
    assert_eq!(
        (
            &start["cache_read_input_tokens"],
            &start["cache_creation_input_tokens"]
        ),
        (&json!(600), &json!(100)),
        "{start}"
    );
    assert_eq!(delta, want);

    // An OpenAI client of the Anthropic upstream: every prompt token in
    // prompt_tokens, the cached ones in the details.
    let path = "/v1/chat/completions";
    for u in [
        json_usage(&gw, p, path, chat(model, false)).await,
        stream_usage(&events(&gw, p, path, chat(model, true)).await),
    ] {
        assert_eq!(
            (
                &u["prompt_tokens"],
                &u["prompt_tokens_details"]["cached_tokens"]
            ),
            (&json!(707), &json!(600)),
            "{u}"
        );
    }
}

/// The built-in mock estimates the uncached prompt from the request's
/// size, and adds the asked-for cache on top.
async fn the_mock_provider_reports_cached_tokens(p: Proto) {
    let gw = Gateway::start().await;
    let u = json_usage(&gw, p, "/v1/chat/completions", chat("mock-1", false)).await;
    let prompt = u["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 700, "{u}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 600, "{u}");
    let ev = events(&gw, p, "/v1/chat/completions", chat("mock-1", true)).await;
    assert_eq!(
        stream_usage(&ev)["prompt_tokens_details"]["cached_tokens"],
        600
    );

    let (start, delta) =
        message_usages(&events(&gw, p, "/v1/messages", messages("mock-1", true)).await);
    assert_eq!(start["cache_read_input_tokens"], 600, "{start}");
    assert_eq!(delta["cache_creation_input_tokens"], 100, "{delta}");
    let u = json_usage(&gw, p, "/v1/messages", messages("mock-1", false)).await;
    assert_eq!(
        (
            &u["cache_read_input_tokens"],
            &u["cache_creation_input_tokens"]
        ),
        (&json!(600), &json!(100)),
        "{u}"
    );
    assert!(u["input_tokens"].as_u64().unwrap() < prompt, "{u}");
}
