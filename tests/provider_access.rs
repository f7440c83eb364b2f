//! How the gateway reaches a provider: key pools (spread, a rate-limited
//! key resting for its `Retry-After`, a refused key out until reload), the
//! client headers that reach the provider and those that stay behind, and
//! Azure OpenAI's deployment paths, `api-version`, `api-key` and rotated
//! token files — over HTTP/3, HTTP/2 and HTTP/1.1, checked on both wires.

mod common;

use common::{sse, Gateway, Proto, TestBody};
use h3gate::provider::keys::key_id;
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    a_key_pool_spreads_requests_and_rests_a_rate_limited_key,
    a_refused_key_is_out_until_reload,
    a_pool_whose_keys_all_rest_fails_over_without_calling_them,
    client_beta_headers_reach_the_provider_and_others_stay_behind,
    azure_deployment_paths_api_version_and_api_key,
    azure_reached_from_the_anthropic_surface_and_failover_to_openai,
    azure_token_file_is_read_again_when_rotated,
);

fn tag(p: Proto) -> String {
    p.tag()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// The credentials the upstream saw, in order (`Authorization` or `api-key`).
fn credentials(gw: &Gateway) -> Vec<String> {
    gw.upstream
        .seen()
        .iter()
        .filter_map(|s| {
            let h = s
                .headers
                .get("authorization")
                .or(s.headers.get("api-key"))?;
            Some(h.to_str().unwrap().to_string())
        })
        .collect()
}

const POOL: &str = r#"
[[providers]]
name = "pool-{p}"
kind = "openai"
base_url = "{upstream}"
api_keys = ["test-pool-key-a", "test-pool-key-ratelimited", "test-pool-key-c"]

[[routes]]
model = "pooled"
targets = [{ provider = "pool-{p}", model = "gpt-4o-mini" }]
"#;

async fn a_key_pool_spreads_requests_and_rests_a_rate_limited_key(p: Proto) {
    let gw = Gateway::with_config(p, POOL).await;
    let client = gw.client(p).await;
    for _ in 0..6 {
        let resp = client
            .post_json("/v1/chat/completions", chat("pooled"))
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.json().await["choices"][0]["message"]["role"],
            "assistant"
        );
    }
    let seen = credentials(&gw);
    let count = |k: &str| seen.iter().filter(|c| *c == &format!("Bearer {k}")).count();
    // The rate-limited key was tried once (its 429 retried at once with
    // the next key, unseen by the client), then rested for 30 s.
    assert_eq!(count("test-pool-key-ratelimited"), 1, "{seen:?}");
    assert_eq!(
        count("test-pool-key-a") + count("test-pool-key-c"),
        6,
        "{seen:?}"
    );
    assert!(
        count("test-pool-key-a") >= 2 && count("test-pool-key-c") >= 2,
        "spread: {seen:?}"
    );
    let id = key_id("test-pool-key-ratelimited");
    let series = format!(
        r#"h3gate_provider_key_rests_total{{provider="pool-{}",key="{id}",reason="rate_limited"}}"#,
        tag(p)
    );
    assert_eq!(gw.metric(&series).await, 1.0);
    let text = gw.metrics_text().await;
    assert!(!text.contains("test-pool-key"), "no key in the metrics");
    // Streams go with the pool too, usage and all.
    let resp = client
        .post_json(
            "/v1/chat/completions",
            json!({"model": "pooled", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status, 200);
    let events = sse::data(&resp.text().await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

async fn a_refused_key_is_out_until_reload(p: Proto) {
    let gw = Gateway::with_config(
        p,
        r#"
[[providers]]
name = "pool-{p}"
kind = "openai"
base_url = "{upstream}"
api_key = "test-pool-key-revoked"
api_keys = ["test-pool-key-b"]

[[routes]]
model = "pooled"
targets = [{ provider = "pool-{p}", model = "gpt-4o-mini" }]
"#,
    )
    .await;
    let client = gw.client(p).await;
    for _ in 0..4 {
        let resp = client
            .post_json("/v1/chat/completions", chat("pooled"))
            .await;
        assert_eq!(resp.status, 200);
    }
    let revoked = "Bearer test-pool-key-revoked".to_string();
    let tries = |gw: &Gateway| credentials(gw).iter().filter(|c| **c == revoked).count();
    assert_eq!(tries(&gw), 1, "refused once, then left out");
    let id = key_id("test-pool-key-revoked");
    let series = format!(
        r#"h3gate_provider_key_rests_total{{provider="pool-{}",key="{id}",reason="refused"}}"#,
        tag(p)
    );
    assert_eq!(gw.metric(&series).await, 1.0);
    // A reload (the operator fixed the key, or not) gives it another chance.
    let (status, _) = gw.reload().await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let resp = client
            .post_json("/v1/chat/completions", chat("pooled"))
            .await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(tries(&gw), 2, "tried again after the reload");
}

async fn a_pool_whose_keys_all_rest_fails_over_without_calling_them(p: Proto) {
    let gw = Gateway::with_config(
        p,
        r#"
[[providers]]
name = "pool-{p}"
kind = "openai"
base_url = "{upstream}"
api_keys = ["test-pool-key-ratelimited-1", "test-pool-key-ratelimited-2"]

[[routes]]
model = "pooled"
targets = [{ provider = "pool-{p}", model = "gpt-4o-mini" }, { provider = "up", model = "gpt-4o-mini" }]
"#,
    )
    .await;
    let client = gw.client(p).await;
    for _ in 0..3 {
        let resp = client
            .post_json("/v1/chat/completions", chat("pooled"))
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json().await["object"], "chat.completion");
    }
    let seen = credentials(&gw);
    let pooled = seen.iter().filter(|c| c.contains("ratelimited")).count();
    assert_eq!(
        pooled, 2,
        "each key tried once, then left to rest: {seen:?}"
    );
    assert_eq!(seen.len(), 5, "the other target served all three: {seen:?}");
}

async fn client_beta_headers_reach_the_provider_and_others_stay_behind(p: Proto) {
    let gw = Gateway::with_config(
        p,
        r#"
[[providers]]
name = "org"
kind = "openai"
base_url = "{upstream}"
api_key = "test-org-key"
forward_headers = ["OpenAI-Organization", "openai-project"]

[[routes]]
model = "with-org"
targets = [{ provider = "org", model = "gpt-4o-mini" }]
"#,
    )
    .await;
    let client = gw.client(p).await;
    let headers = [
        ("openai-beta", "assistants=v2"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("openai-organization", "org-test"),
        ("openai-project", "proj-test"),
        ("x-client-secret-ish", "stays"),
        ("cookie", "session=stays"),
    ];
    let body = |model: &str| TestBody::Json(chat(model));
    let sent = |path: &str, model: &str| {
        let client = &client;
        let path = path.to_string();
        let b = body(model);
        async move {
            let resp = client.request(Method::POST, &path, &headers, b).await;
            let status = resp.status;
            assert_eq!(status, 200, "{}", resp.text().await);
        }
    };
    // OpenAI kind, defaults only.
    sent("/v1/chat/completions", "gpt-4o-mini").await;
    // OpenAI kind with forward_headers.
    sent("/v1/chat/completions", "with-org").await;
    // Anthropic kind (an OpenAI client translated): anthropic-beta only.
    sent("/v1/chat/completions", "claude-3-haiku").await;
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 3);
    let has = |i: usize, h: &str| {
        seen[i]
            .headers
            .get(h)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(has(0, "openai-beta").as_deref(), Some("assistants=v2"));
    assert_eq!(has(0, "anthropic-beta"), None);
    assert_eq!(has(0, "openai-organization"), None, "not in its allowlist");
    assert_eq!(has(1, "openai-organization").as_deref(), Some("org-test"));
    assert_eq!(has(1, "openai-project").as_deref(), Some("proj-test"));
    assert_eq!(has(1, "openai-beta").as_deref(), Some("assistants=v2"));
    assert_eq!(
        has(2, "anthropic-beta").as_deref(),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(has(2, "openai-beta"), None);
    for s in &seen {
        assert!(s.headers.get("x-client-secret-ish").is_none());
        assert!(s.headers.get("cookie").is_none());
    }
}

const AZURE: &str = r#"
[[providers]]
name = "azure-{p}"
kind = "azure"
base_url = "http://{addr}"
api_version = "2024-10-21"
api_key = "test-azure-key"

[[routes]]
model = "azure-chat"
targets = [{ provider = "azure-{p}", model = "my-deployment" }]

[[routes]]
model = "azure-embed"
targets = [{ provider = "azure-{p}", model = "embed-deployment" }]

[[routes]]
model = "azure-then-openai"
targets = [{ provider = "azure-{p}", model = "status-503" }, { provider = "up", model = "gpt-4o-mini" }]
"#;

async fn azure_deployment_paths_api_version_and_api_key(p: Proto) {
    // Its own provider name: its token counts are its own.
    let gw = Gateway::with_config(p, &AZURE.replace("azure-{p}", "azure-{p}-paths")).await;
    let client = gw.client(p).await;
    let resp = client
        .post_json("/v1/chat/completions", chat("azure-chat"))
        .await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    let resp = client
        .post_json(
            "/v1/chat/completions",
            json!({"model": "azure-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status, 200);
    let events = sse::data(&resp.text().await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "the usage chunk the gateway asked for is not passed on"
    );
    let resp = client
        .post_json(
            "/v1/embeddings",
            json!({"model": "azure-embed", "input": "hi"}),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp.json().await["data"][0]["embedding"].is_array());
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(
        seen[1].path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(
        seen[2].path,
        "/openai/deployments/embed-deployment/embeddings"
    );
    for s in &seen {
        assert_eq!(s.query, "api-version=2024-10-21");
        assert_eq!(s.headers["api-key"], "test-azure-key");
        assert!(s.headers.get("authorization").is_none());
    }
    assert_eq!(seen[1].body["stream_options"]["include_usage"], true);
    let tokens = gw
        .metric(&format!(
            r#"h3gate_tokens_total{{direction="prompt",model="azure-chat",provider="azure-{}-paths"}}"#,
            tag(p)
        ))
        .await;
    assert_eq!(tokens, 14.0, "usage of both chat requests counted");
    // Azure has deployments, not a model catalogue.
    let resp = client.get("/v1/models/azure-chat").await;
    assert_eq!(resp.status, 400);
    assert!(resp.json().await["error"]["message"].is_string());
}

async fn azure_reached_from_the_anthropic_surface_and_failover_to_openai(p: Proto) {
    let gw = Gateway::with_config(p, AZURE).await;
    let client = gw.client(p).await;
    let resp = client
        .post_json(
            "/v1/messages",
            json!({"model": "azure-chat", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["usage"]["input_tokens"], 7);
    let seen = gw.upstream.seen();
    assert_eq!(
        seen[0].path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(seen[0].body["max_tokens"], 50);
    // Azure answers 503: the next target (OpenAI) serves.
    let resp = client
        .post_json("/v1/chat/completions", chat("azure-then-openai"))
        .await;
    assert_eq!(resp.status, 200);
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[1].path,
        "/openai/deployments/status-503/chat/completions"
    );
    assert_eq!(seen[2].path, "/v1/chat/completions");
    assert!(seen[2].headers.get("api-key").is_none());
}

async fn azure_token_file_is_read_again_when_rotated(p: Proto) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "test-entra-token-1\n").unwrap();
    let gw = Gateway::with_config(
        p,
        &format!(
            r#"
[[providers]]
name = "azure-{{p}}"
kind = "azure"
base_url = "http://{{addr}}"
api_version = "2024-10-21"
token_file = "{}"

[[routes]]
model = "azure-chat"
targets = [{{ provider = "azure-{{p}}", model = "my-deployment" }}]
"#,
            file.display()
        ),
    )
    .await;
    let client = gw.client(p).await;
    let resp = client
        .post_json("/v1/chat/completions", chat("azure-chat"))
        .await;
    assert_eq!(resp.status, 200);
    // Rotated in place, as the workload identity webhook does.
    std::fs::write(&file, "test-entra-token-2-rotated\n").unwrap();
    common::wait_until(std::time::Duration::from_secs(10), async || {
        let resp = client
            .post_json("/v1/chat/completions", chat("azure-chat"))
            .await;
        assert_eq!(resp.status, 200);
        credentials(&gw).last().map(String::as_str) == Some("Bearer test-entra-token-2-rotated")
    })
    .await;
    let seen = credentials(&gw);
    assert_eq!(seen[0], "Bearer test-entra-token-1");
    assert!(gw
        .upstream
        .seen()
        .iter()
        .all(|s| s.headers.get("api-key").is_none()));
}
