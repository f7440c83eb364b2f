//! Peak memory of translating one large request across API families, the
//! way the gateway does it (`Provider::prepare`).
//!
//! ```sh
//! cargo run --example translate_memory -- 240000   # messages (default 240000)
//! ```
//!
//! Builds an OpenAI chat request of `N` short messages (about 7.8 MB for
//! 240,000), then has an Anthropic provider prepare it, and reports the
//! process's peak resident size (VmHWM) before and after, relative to the
//! body. Run it also with `direction=messages` to time Anthropic → OpenAI.
//! Linux only (reads /proc/self/status).

use std::sync::Arc;

use bytes::Bytes;
use h3gate::config::Config;
use h3gate::provider::{Endpoint, UpstreamCall};
use h3gate::state::State;

const CONFIG: &str = r#"
[tls]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"
generate_dev_cert = true

[auth]
required = false

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://127.0.0.1:9/v1"
api_key = "not-a-real-key"

[[providers]]
name = "gpt"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "not-a-real-key"

[[routes]]
model = "*"
targets = ["claude"]
"#;

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A chat body of `n` alternating user/assistant messages for `model`,
/// written as text (no JSON tree). The OpenAI and Anthropic shapes agree on
/// this much.
fn conversation(model: &str, n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 34 + 64);
    s.push_str(&format!(
        r#"{{"model":"{model}","max_tokens":64,"messages":["#
    ));
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        s.push_str(&format!(r#"{{"role":"{role}","content":"m{}"}}"#, i % 1000));
    }
    s.push_str("]}");
    s.into_bytes()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(240_000);
    let messages = args.next().as_deref() == Some("direction=messages");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_toml(CONFIG, std::path::Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let state = State::build(config).unwrap_or_else(|e| panic!("{e}"));
    let (endpoint, body, provider) = if messages {
        (Endpoint::Messages, conversation("gpt-x", n), "gpt")
    } else {
        (
            Endpoint::ChatCompletions,
            conversation("claude-x", n),
            "claude",
        )
    };
    let body = Bytes::from(body);
    let call = UpstreamCall {
        endpoint,
        model: Arc::from("x"),
        body: body.clone(),
        stream: false,
        include_usage: false,
        request_id: Arc::from("bench"),
        early_data: false,
        trace: None,
        headers: Default::default(),
        pin: None,
        owner: 0,
        drop_unsupported: false,
    };
    let before = peak_kib();
    let started = std::time::Instant::now();
    let prepared = state.providers[provider]
        .prepare(&call, Some("target-model"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let took = started.elapsed();
    let after = peak_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let body_mib = body.len() as f64 / (1024.0 * 1024.0);
    println!(
        "{n} messages, body {body_mib:.1} MiB → {:.1} MiB translated in {took:.0?}; peak RSS {:.1} → {:.1} MiB: +{:.1} MiB = {:.1}× the body",
        prepared.body.len() as f64 / (1024.0 * 1024.0),
        mib(before),
        mib(after),
        mib(after - before),
        mib(after - before) / body_mib,
    );
}
