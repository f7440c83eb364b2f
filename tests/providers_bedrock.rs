//! `kind = "bedrock"`: OpenAI and Anthropic clients reaching AWS Bedrock's
//! Converse API (JSON and ConverseStream's event stream), over HTTP/3,
//! HTTP/2 and HTTP/1.1, checked on both wires: what the client got, and
//! what the test upstream received — SigV4-signed requests whose
//! signatures it recomputes (tests/common/bedrock.rs).

mod common;

use common::bedrock::{secret_for, ACCESS_KEY_ID};
use common::{sse, Gateway, Proto};
use h3gate::config::{Config, ProviderConfig, RouteConfig};
use serde_json::{json, Value};

over_every_protocol!(
    openai_chat_reaches_bedrock,
    openai_stream_from_bedrock,
    anthropic_messages_reach_bedrock,
    anthropic_stream_from_bedrock,
    tool_calls_through_bedrock,
    usage_reaches_metrics_without_include_usage,
    bedrock_errors_come_in_the_client_api_shape,
    mid_stream_failures_end_in_the_clients_error_event,
    failover_from_bedrock_to_openai,
    inference_profile_arns_are_encoded_in_the_path,
    unsupported_parameter_is_400_naming_it,
    in_process_mock_speaks_converse,
);

const FIVE_TOKENS: &str = "The quick brown fox jumps";
const CLAUDE_ID: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const PROFILE_ARN: &str =
    "arn:aws:bedrock:us-east-1:000000000000:inference-profile/us.anthropic.claude-x";

#[derive(serde::Deserialize)]
struct Extra {
    providers: Vec<ProviderConfig>,
    routes: Vec<RouteConfig>,
}

/// The test config plus Bedrock providers and routes (ahead of the others).
fn with_bedrock(c: &mut Config) {
    let up = c.providers.iter().find(|p| p.name == "up").unwrap();
    let base = up.base_url.trim_end_matches("/v1").to_string();
    let secret = secret_for(ACCESS_KEY_ID);
    let extra: Extra = toml::from_str(&format!(
        r#"
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "{base}"
region = "us-east-1"
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "{secret}"
session_token = "test-session-token-not-real"

[[providers]]
name = "bedrock-bad"
kind = "bedrock"
base_url = "{base}"
region = "us-east-1"
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "a-wrong-secret-not-real"

[[providers]]
name = "bedrock-env"
kind = "bedrock"
base_url = "{base}"
region = "us-east-1"

[[providers]]
name = "mockbr"
kind = "mock"
mock = {{ converse = true }}

[[routes]]
model = "br-claude"
targets = [{{ provider = "bedrock", model = "{CLAUDE_ID}" }}]

[[routes]]
model = "br-arn"
targets = [{{ provider = "bedrock", model = "{PROFILE_ARN}" }}]

[[routes]]
model = "br-failover"
targets = [{{ provider = "bedrock", model = "status-503" }}, {{ provider = "up", model = "gpt-4o-mini" }}]

[[routes]]
model = "br-*"
targets = ["bedrock"]

[[routes]]
model = "badsig"
targets = ["bedrock-bad"]

[[routes]]
model = "env-claude"
targets = ["bedrock-env"]

[[routes]]
model = "mockbr-*"
targets = ["mockbr"]
"#
    ))
    .unwrap();
    c.providers.extend(extra.providers);
    c.routes.splice(0..0, extra.routes);
}

async fn gateway() -> Gateway {
    Gateway::start_with(with_bedrock).await
}

async fn post(gw: &Gateway, p: Proto, path: &str, body: Value) -> common::client::TestResponse {
    gw.client(p).await.post_json(path, body).await
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

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 5, "temperature": 0.5,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]})
}

fn anthropic(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 5, "stream": stream, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
}

/// The one upstream request: signed with the config's key and session token.
fn assert_signed(seen: &common::upstream::Seen) {
    let auth = seen.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{auth}"
    );
    assert!(
        auth.contains("SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token"),
        "{auth}"
    );
    assert_eq!(
        seen.headers["x-amz-security-token"],
        "test-session-token-not-real"
    );
}

async fn openai_chat_reaches_bedrock(p: Proto) {
    let gw = gateway().await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("br-claude", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-h3gate-target"),
        Some(format!("bedrock/{CLAUDE_ID}").as_str())
    );
    let v = resp.json().await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], FIVE_TOKENS);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        (
            v["usage"]["prompt_tokens"].as_u64(),
            v["usage"]["completion_tokens"].as_u64()
        ),
        (Some(7), Some(5))
    );
    let seen = &gw.upstream.seen()[0];
    assert_eq!(
        seen.path,
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    );
    assert_signed(seen);
    assert_eq!(seen.body["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": [{"text": "Say hi"}]}])
    );
    assert_eq!(
        seen.body["inferenceConfig"],
        json!({"maxTokens": 5, "temperature": 0.5})
    );
    assert!(seen.body.get("model").is_none());
}

async fn openai_stream_from_bedrock(p: Proto) {
    let gw = gateway().await;
    let mut body = chat("br-claude", true);
    body["stream_options"] = json!({"include_usage": true});
    let ev = post_stream(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    let (text, _, finish) = sse::assemble_openai(&ev);
    assert_eq!(text, FIVE_TOKENS);
    assert_eq!(finish.as_deref(), Some("length"));
    let usage = &ev[ev.len() - 2].1;
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        (
            usage["usage"]["prompt_tokens"].as_u64(),
            usage["usage"]["completion_tokens"].as_u64()
        ),
        (Some(7), Some(5))
    );
    let seen = &gw.upstream.seen()[0];
    assert!(seen.path.ends_with("/converse-stream"), "{}", seen.path);
    assert_eq!(seen.headers["accept"], "application/vnd.amazon.eventstream");
    assert_signed(seen);
}

async fn anthropic_messages_reach_bedrock(p: Proto) {
    let gw = gateway().await;
    let resp = post(&gw, p, "/v1/messages", anthropic("br-claude", false)).await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], CLAUDE_ID);
    assert_eq!(v["content"], json!([{"type": "text", "text": FIVE_TOKENS}]));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(
        (
            v["usage"]["input_tokens"].as_u64(),
            v["usage"]["output_tokens"].as_u64()
        ),
        (Some(7), Some(5))
    );
    let seen = &gw.upstream.seen()[0];
    assert_eq!(seen.body["inferenceConfig"]["maxTokens"], 5);
    assert_eq!(seen.body["system"], json!([{"text": "Be brief."}]));
}

async fn anthropic_stream_from_bedrock(p: Proto) {
    let gw = gateway().await;
    let ev = post_stream(&gw, p, "/v1/messages", anthropic("br-claude", true)).await;
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(["content_block_delta"; 5]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
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
    let tokens = gw
        .metric(
            r#"h3gate_tokens_total{direction="completion",model="br-claude",provider="bedrock"}"#,
        )
        .await;
    assert!(tokens >= 5.0, "usage read from the event stream: {tokens}");
}

async fn tool_calls_through_bedrock(p: Proto) {
    let gw = gateway().await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    for stream in [false, true] {
        let body = json!({"model": "br-claude", "stream": stream, "tools": tools,
            "messages": [{"role": "user", "content": "Weather in Paris?"}]});
        let resp = post(&gw, p, "/v1/chat/completions", body).await;
        assert_eq!(resp.status, 200);
        let (name, args, finish) = if stream {
            let ev = sse::events(&resp.text().await);
            let name = ev.iter().find_map(|(_, v)| {
                v["choices"][0]["delta"]["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .map(str::to_string)
            });
            let (_, args, finish) = sse::assemble_openai(&ev);
            (name.unwrap(), args, finish.unwrap())
        } else {
            let v = resp.json().await;
            let call = &v["choices"][0]["message"]["tool_calls"][0];
            (
                call["function"]["name"].as_str().unwrap().to_string(),
                call["function"]["arguments"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(name, "weather");
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "mock"})
        );
        assert_eq!(finish, "tool_calls");
    }
    let seen = &gw.upstream.seen()[0];
    assert_eq!(
        seen.body["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "weather"
    );
    assert_eq!(
        seen.body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]
            ["city"]["type"],
        "string"
    );
    // An Anthropic client, streaming: a tool_use block with its input.
    let body = json!({"model": "br-claude", "max_tokens": 50, "stream": true,
        "tools": [{"name": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "messages": [{"role": "user", "content": "Weather?"}]});
    let ev = post_stream(&gw, p, "/v1/messages", body).await;
    let block = ev
        .iter()
        .find(|(n, _)| n.as_deref() == Some("content_block_start"))
        .unwrap();
    assert_eq!(block.1["content_block"]["type"], "tool_use");
    assert_eq!(block.1["content_block"]["name"], "weather");
    let input: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({"city": "mock"})
    );
    let delta = ev
        .iter()
        .find(|(n, _)| n.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

async fn usage_reaches_metrics_without_include_usage(p: Proto) {
    let gw = gateway().await;
    let ev = post_stream(&gw, p, "/v1/chat/completions", chat("br-usage", true)).await;
    assert!(
        ev.iter()
            .all(|(_, v)| v.get("usage").is_none_or(Value::is_null)),
        "no usage chunk: {ev:?}"
    );
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    let metric = |dir: &str| {
        format!(r#"h3gate_tokens_total{{direction="{dir}",model="br-*",provider="bedrock"}}"#)
    };
    assert!(gw.metric(&metric("completion")).await >= 5.0);
    assert!(gw.metric(&metric("prompt")).await >= 7.0);
    // And from a JSON answer.
    let before = gw.metric(&metric("completion")).await;
    post(&gw, p, "/v1/chat/completions", chat("br-usage", false)).await;
    assert!(gw.metric(&metric("completion")).await >= before + 5.0);
}

async fn bedrock_errors_come_in_the_client_api_shape(p: Proto) {
    let gw = gateway().await;
    let c = gw.client(p).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("br-status-400", false))
        .await;
    assert_eq!(resp.status, 400);
    let v = resp.json().await;
    assert_eq!(v["error"]["type"], "ValidationException", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many requests"),
        "{v}"
    );
    let resp = c
        .post_json("/v1/messages", anthropic("br-status-429", false))
        .await;
    assert_eq!(resp.status, 429);
    let v = resp.json().await;
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error")),
        "{v}"
    );
    let resp = c
        .post_json("/v1/messages", anthropic("br-status-503", true))
        .await;
    assert_eq!(resp.status, 529, "Anthropic's overloaded status");
    // A refused signature is the gateway's credential problem: a 502,
    // whose body names no secret.
    let resp = c
        .post_json("/v1/chat/completions", chat("badsig", false))
        .await;
    assert_eq!(resp.status, 502);
    let text = resp.text().await;
    assert!(
        text.contains("credentials were refused") && !text.contains("not-real"),
        "{text}"
    );
    assert!(gw
        .upstream
        .seen()
        .iter()
        .all(|s| s.path.starts_with("/model/")));
}

async fn mid_stream_failures_end_in_the_clients_error_event(p: Proto) {
    let gw = gateway().await;
    for (model, code) in [
        ("br-drop-mid-stream", "upstream_stream_error"),
        ("br-exception-mid-stream", "throttlingException"),
        ("br-bad-frame", "upstream_bad_frame"),
    ] {
        let ev = post_stream(&gw, p, "/v1/chat/completions", chat(model, true)).await;
        let last = &ev.last().unwrap().1;
        assert_eq!(last["error"]["code"], code, "{model}: {ev:?}");
        assert!(ev.iter().all(|(_, v)| v != "[DONE]"), "{model}");
        let ev = post_stream(&gw, p, "/v1/messages", anthropic(model, true)).await;
        assert_eq!(ev[0].0.as_deref(), Some("message_start"), "{model}");
        let (name, last) = ev.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"), "{model}: {ev:?}");
        assert_eq!(last["type"], "error");
        assert!(
            ev.iter().all(|(n, _)| n.as_deref() != Some("message_stop")),
            "{model}"
        );
    }
    let v = post_stream(
        &gw,
        p,
        "/v1/messages",
        anthropic("br-exception-mid-stream", true),
    )
    .await;
    let last = &v.last().unwrap().1;
    assert_eq!(last["error"]["type"], "rate_limit_error");
    assert_eq!(last["error"]["message"], "Too many tokens");
}

async fn failover_from_bedrock_to_openai(p: Proto) {
    let gw = gateway().await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("br-failover", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up/gpt-4o-mini"));
    assert_eq!(
        resp.json().await["choices"][0]["message"]["content"],
        FIVE_TOKENS
    );
    let seen = gw.upstream.seen();
    assert_eq!(seen[0].path, "/model/status-503/converse");
    assert_eq!(seen.last().unwrap().path, "/v1/chat/completions");
    // An Anthropic client through the same route.
    let resp = post(&gw, p, "/v1/messages", anthropic("br-failover", false)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().await["content"][0]["text"], FIVE_TOKENS);
}

async fn inference_profile_arns_are_encoded_in_the_path(p: Proto) {
    let gw = gateway().await;
    let resp = post(&gw, p, "/v1/messages", anthropic("br-arn", false)).await;
    assert_eq!(
        resp.status, 200,
        "the signature over the encoded path checks out"
    );
    let seen = &gw.upstream.seen()[0];
    assert_eq!(
        seen.path,
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A000000000000%3Ainference-profile%2Fus.anthropic.claude-x/converse"
    );
}

async fn unsupported_parameter_is_400_naming_it(p: Proto) {
    let gw = gateway().await;
    let mut body = chat("br-claude", false);
    body["logit_bias"] = json!({"50256": -100});
    let resp = post(&gw, p, "/v1/chat/completions", body).await;
    assert_eq!(resp.status, 400);
    let v = resp.json().await;
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`logit_bias`") && message.contains("Bedrock"),
        "{v}"
    );
    let mut body = anthropic("br-claude", false);
    body["top_k"] = json!(5);
    let resp = post(&gw, p, "/v1/messages", body).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json().await["error"]["type"], "invalid_request_error");
    assert!(gw.upstream.seen().is_empty(), "nothing sent upstream");
}

async fn in_process_mock_speaks_converse(p: Proto) {
    let gw = gateway().await;
    let resp = post(&gw, p, "/v1/chat/completions", chat("mockbr-1", false)).await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["choices"][0]["message"]["content"], FIVE_TOKENS);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let ev = post_stream(&gw, p, "/v1/messages", anthropic("mockbr-1", true)).await;
    assert_eq!(ev.last().unwrap().0.as_deref(), Some("message_stop"));
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, FIVE_TOKENS);
}

/// Credentials from the environment are read per request: rotated ones
/// apply at once. The only test touching `AWS_*` variables (every other
/// Bedrock provider has config keys, which win), run once, not per protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_changed_in_the_environment_are_picked_up() {
    let gw = gateway().await;
    let c = gw.client(Proto::H2).await;
    for key in ["AKIDROTATEDFIRST", "AKIDROTATEDSECOND"] {
        std::env::set_var("AWS_ACCESS_KEY_ID", key);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret_for(key));
        std::env::remove_var("AWS_SESSION_TOKEN");
        let resp = c
            .post_json("/v1/chat/completions", chat("env-claude", false))
            .await;
        assert_eq!(resp.status, 200, "{key}");
        let seen = gw.upstream.seen().pop().unwrap();
        let auth = seen.headers["authorization"].to_str().unwrap().to_string();
        assert!(auth.contains(&format!("Credential={key}/")), "{auth}");
        assert!(seen.headers.get("x-amz-security-token").is_none());
    }
    // A session token set later is signed and sent.
    std::env::set_var("AWS_SESSION_TOKEN", "rotated-session-token-not-real");
    let resp = c
        .post_json("/v1/messages", anthropic("env-claude", false))
        .await;
    assert_eq!(resp.status, 200);
    let seen = gw.upstream.seen().pop().unwrap();
    assert_eq!(
        seen.headers["x-amz-security-token"],
        "rotated-session-token-not-real"
    );
    // A secret that no longer matches: refused upstream, a 502 here.
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "stale-secret-not-real");
    let resp = c
        .post_json("/v1/chat/completions", chat("env-claude", false))
        .await;
    assert_eq!(resp.status, 502);
    // No credentials at all: nothing is sent.
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    let sent = gw.upstream.seen().len();
    let resp = c
        .post_json("/v1/chat/completions", chat("env-claude", false))
        .await;
    assert_eq!(resp.status, 502);
    assert_eq!(gw.upstream.seen().len(), sent);
}
