//! The official OpenAI and Anthropic Python SDKs against the gateway over
//! HTTPS (HTTP/1.1 and HTTP/2): chat, streaming chat, tool calls (plain and
//! streamed), the Responses API (create, stream, tools, retrieve, chain,
//! delete), embeddings, models, messages, streaming messages, tool
//! results, count_tokens and errors — across both provider families.
//! The script asserts every result; this test asserts its summary too.

mod common;

use common::python::{python, run_script};
use common::Gateway;

async fn sdk_suite(http2: bool) {
    let python = python();
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.ca).unwrap();
    let base = format!("https://127.0.0.1:{}", gw.tcp.port());
    let out = run_script(
        &python,
        "sdk_check.py",
        &[&base, ca.to_str().unwrap(), if http2 { "1" } else { "0" }],
    )
    .await;
    let summary: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("a JSON summary");
    let five = "The quick brown fox jumps";
    for model in ["gpt-4o-mini", "claude-x"] {
        assert_eq!(summary[format!("openai.chat.{model}")], five);
        assert_eq!(summary[format!("openai.stream.{model}")], five);
        assert_eq!(summary[format!("openai.tools.{model}")], "weather");
        assert_eq!(summary[format!("anthropic.messages.{model}")], five);
        assert_eq!(summary[format!("anthropic.stream.{model}")], five);
        assert_eq!(summary[format!("anthropic.tools.{model}")], "weather");
        assert_eq!(summary[format!("anthropic.tool_result.{model}")], five);
        assert_eq!(
            summary[format!("anthropic.stream_tools.{model}")],
            serde_json::json!({"city": "mock"})
        );
    }
    assert_eq!(summary["openai.embeddings"], 2);
    assert_eq!(summary["openai.responses"], five);
    assert_eq!(summary["openai.responses.stream"], five);
    assert_eq!(summary["openai.responses.tools"], "weather");
    assert_eq!(summary["openai.responses.deleted"], true);
    assert_eq!(summary["openai.error"], 404);
    assert_eq!(summary["anthropic.count_tokens"], 42);
    assert_eq!(summary["anthropic.error"], 404);
    // The SDKs really spoke the protocol under test (only this test does,
    // in this binary).
    let proto = if http2 { "h2" } else { "http/1.1" };
    let served: f64 = gw
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("h3gate_requests_total{{protocol=\"{proto}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(served >= 20.0, "{served} requests over {proto}");
    // The upstream saw both wire formats.
    let paths: Vec<String> = gw.upstream.seen().iter().map(|s| s.path.clone()).collect();
    assert!(paths.iter().any(|p| p == "/v1/messages"));
    assert!(paths.iter().any(|p| p == "/v1/chat/completions"));
}

/// A budget refusal lasts until its period ends: with `x-should-retry:
/// false` the official SDKs, whose default is two retries of a 429, give up
/// at once — one request each reaches the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_do_not_retry_a_budget_refusal() {
    let python = python();
    let (gw, keys) = common::keys::with_keys(vec![common::keys::key("tiny")], |c| {
        common::spend::priced(c);
        common::spend::edit_keys(c.auth.keys_file.as_deref().unwrap(), |k| {
            k.budget = Some(0.000_001); // less than any request's reservation
        });
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.ca).unwrap();
    let base = format!("https://127.0.0.1:{}", gw.tcp.port());
    let out = run_script(
        &python,
        "budget_refusal.py",
        &[&base, ca.to_str().unwrap(), &keys[0]],
    )
    .await;
    let summary: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(summary["openai"], "insufficient_quota");
    assert_eq!(summary["anthropic"], "rate_limit_error");
    let refused = gw
        .metric("h3gate_rate_limited_total{scope=\"key_budget\"}")
        .await;
    assert_eq!(refused, 2.0, "one request per SDK: no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_over_http1() {
    sdk_suite(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_over_http2() {
    sdk_suite(true).await;
}
