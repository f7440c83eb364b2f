//! Edge protection over HTTP/3, HTTP/2 and HTTP/1.1: keys, scopes, address
//! filters, hosts, CORS, security headers, limits, panics, the admin key API
//! and the audit log. Rate limits and abuse denies are in `rate_limits.rs`.

mod common;

use std::time::Duration;

use common::keys::{bearer, key, with_keys};
use common::{chat, Gateway, Proto, TestBody, ADMIN_TOKEN};
use h3gate::auth::{self, NewKey};
use h3gate::config::Config;
use http::Method;
use serde_json::Value;

over_every_protocol!(
    keys_are_required_and_checked,
    scopes_and_models_are_enforced,
    revocation_applies_without_restart_while_others_stream,
    cors_preflight_allowed_and_refused,
    cors_headers_a_browser_reads,
    oversized_header_is_431,
    panic_is_contained,
    security_headers_on_every_response,
    address_filters_and_trusted_proxies,
    slow_body_is_408,
);

/// A chat request authenticated with `key`.
async fn chat_as(
    c: &common::Client,
    key: &str,
    model: &str,
    stream: bool,
) -> common::client::TestResponse {
    c.request(
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", &bearer(key))],
        TestBody::Json(chat(model, stream)),
    )
    .await
}

async fn keys_are_required_and_checked(p: Proto) {
    let (gw, keys) = with_keys(vec![key("a")], |_| {}).await;
    let c = gw.client(p).await;
    let body = || TestBody::Json(chat("gpt-ok", false));
    let none = c
        .request(Method::POST, "/v1/chat/completions", &[], body())
        .await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert_eq!(none.json().await["error"]["code"], "invalid_api_key");
    let wrong = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", "Bearer h3g_0000")],
            body(),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let msg = wrong.json().await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !msg.contains("h3g_0000") && !msg.contains("exist"),
        "no hint about keys: {msg}"
    );
    let ok = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &bearer(&keys[0]))],
            body(),
        )
        .await;
    assert_eq!(ok.status, 200);
    let anthropic_style = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[("x-api-key", &keys[0])],
            body(),
        )
        .await;
    assert_eq!(anthropic_style.status, 200);
    assert_eq!(c.get("/health").await.status, 200, "health needs no key");
}

async fn scopes_and_models_are_enforced(p: Proto) {
    let embeddings_only = NewKey {
        scopes: vec!["embeddings".into()],
        ..key("emb")
    };
    let gpt_only = NewKey {
        models: vec!["gpt-*".into()],
        ..key("gpt")
    };
    let (gw, keys) = with_keys(vec![embeddings_only, gpt_only], |_| {}).await;
    let c = gw.client(p).await;
    let r = chat_as(&c, &keys[0], "gpt-ok", false).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json().await["error"]["code"], "forbidden");
    let r = chat_as(&c, &keys[1], "mock-1", false).await;
    assert_eq!(r.status, 403, "model outside the key's globs");
    let models = c
        .request(
            Method::GET,
            "/v1/models",
            &[("authorization", &bearer(&keys[1]))],
            TestBody::Empty,
        )
        .await
        .json()
        .await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-4o-mini") && !ids.contains(&"mock-1"),
        "{ids:?}"
    );
}

async fn revocation_applies_without_restart_while_others_stream(p: Proto) {
    let (gw, keys) = with_keys(vec![key("streamer"), key("victim")], |_| {}).await;
    let c = gw.client(p).await;
    let mut stream = chat_as(&c, &keys[0], "gated", true).await;
    assert_eq!(stream.status, 200);
    stream.chunk().await.unwrap().unwrap();

    let keys_file = gw.config_path.parent().unwrap().join("keys.json");
    auth::revoke(&keys_file, "victim").unwrap();
    let refused = common::wait_until(Duration::from_secs(5), async || {
        let r = chat_as(&c, &keys[1], "gpt-ok", false).await;
        let refused = r.status == 401;
        r.text().await;
        refused
    })
    .await;
    assert!(refused, "the revoked key stopped working within seconds");
    gw.upstream.release();
    assert!(
        stream.text().await.contains("[DONE]"),
        "the other client's stream was not disturbed"
    );
}

/// What a page needs to read: one `Vary: Origin`, the request ids of both
/// API surfaces exposed (Anthropic's SDKs read `request-id`), and
/// `Timing-Allow-Origin` so the page may see the protocol and timings.
async fn cors_headers_a_browser_reads(p: Proto) {
    let origin = "https://app.example";
    let gw = Gateway::start_with(|c| c.cors.allowed_origins = vec![origin.into()]).await;
    let c = gw.client(p).await;
    let pre = c
        .request(
            Method::OPTIONS,
            "/v1/messages",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
            TestBody::Empty,
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.headers.get_all("vary").iter().count(),
        1,
        "one Vary on a preflight: {:?}",
        pre.headers
    );
    let body = serde_json::json!({
        "model": "mock-1", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    let resp = c
        .request(
            Method::POST,
            "/v1/messages",
            &[("origin", origin), ("anthropic-version", "2023-06-01")],
            TestBody::Json(body),
        )
        .await;
    assert_eq!(resp.status, 200);
    let id = resp.header("x-request-id").unwrap().to_string();
    assert_eq!(resp.header("request-id"), Some(id.as_str()));
    assert_eq!(resp.header("timing-allow-origin"), Some(origin));
    let exposed = resp.header("access-control-expose-headers").unwrap();
    for h in ["x-request-id", "request-id", "retry-after", "server-timing"] {
        assert!(
            exposed.split(',').any(|e| e.trim() == h),
            "{h} exposed: {exposed}"
        );
    }
    assert_eq!(resp.headers.get_all("vary").iter().count(), 1);
    // The OpenAI surface keeps only its own id.
    let openai = c
        .request(
            Method::GET,
            "/v1/models",
            &[("origin", origin)],
            TestBody::Empty,
        )
        .await;
    assert!(openai.header("request-id").is_none());
}

async fn cors_preflight_allowed_and_refused(p: Proto) {
    let gw =
        Gateway::start_with(|c| c.cors.allowed_origins = vec!["https://app.example".into()]).await;
    let c = gw.client(p).await;
    let pre = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization"),
        ]
    };
    let ok = c
        .request(
            Method::OPTIONS,
            "/v1/chat/completions",
            &pre("https://app.example"),
            TestBody::Empty,
        )
        .await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(ok
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let no = c
        .request(
            Method::OPTIONS,
            "/v1/chat/completions",
            &pre("https://evil.example"),
            TestBody::Empty,
        )
        .await;
    assert_eq!(no.status, 403);
    assert_eq!(no.header("access-control-allow-origin"), None);
    let actual = c
        .request(
            Method::GET,
            "/v1/models",
            &[("origin", "https://app.example")],
            TestBody::Empty,
        )
        .await;
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = c
        .request(
            Method::GET,
            "/v1/models",
            &[("origin", "https://evil.example")],
            TestBody::Empty,
        )
        .await;
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "same-origin only for others"
    );
}

async fn oversized_header_is_431(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let big = "x".repeat(80 * 1024);
    match c
        .try_request(
            Method::GET,
            "/v1/models",
            &[("x-big", &big)],
            TestBody::Empty,
        )
        .await
    {
        Ok(r) => assert_eq!(r.status, 431),
        // HTTP/3's native mechanism: the gateway advertises
        // SETTINGS_MAX_FIELD_SECTION_SIZE (64KB here) and a compliant client
        // will not send more; h3 answers 431 to one that does.
        Err(e) if p == Proto::H3 => assert!(
            e.contains("HeaderTooBig") && e.contains("max_size: 65536"),
            "{e}"
        ),
        Err(e) => panic!("{e}"),
    }
}

async fn panic_is_contained(p: Proto) {
    let boom = common::armed_panic_model();
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let r = c.post_json("/v1/chat/completions", chat(boom, false)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json().await["error"]["code"], "internal_error");
    let after = c
        .post_json("/v1/chat/completions", chat("mock-1", false))
        .await;
    assert_eq!(after.status, 200, "the gateway keeps serving");
}

async fn security_headers_on_every_response(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    for r in [
        c.get("/v1/models").await,
        c.get("/nope").await,
        c.post_json("/v1/chat/completions", chat("gpt-ok", true))
            .await,
    ] {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'none'")
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(r
            .header("strict-transport-security")
            .unwrap()
            .starts_with("max-age="));
        assert!(r.header("referrer-policy").is_some());
        assert_eq!(r.header("server"), None);
        r.text().await;
    }
}

async fn address_filters_and_trusted_proxies(p: Proto) {
    let gw = Gateway::start_with(|c| c.network.deny = vec!["127.0.0.2/32".parse().unwrap()]).await;
    let other =
        common::Client::connect_from(p, gw.tcp, gw.udp, &gw.ca, "127.0.0.2".parse().unwrap()).await;
    assert_eq!(other.get("/v1/models").await.status, 403);
    assert_eq!(gw.client(p).await.get("/v1/models").await.status, 200);

    let gw = Gateway::start_with(|c| {
        c.network.deny = vec!["198.51.100.0/24".parse().unwrap()];
        c.network.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let c = gw.client(p).await;
    let via_proxy = c
        .request(
            Method::GET,
            "/v1/models",
            &[("x-forwarded-for", "198.51.100.7")],
            TestBody::Empty,
        )
        .await;
    assert_eq!(via_proxy.status, 403, "the forwarded client is denied");
    let gw2 =
        Gateway::start_with(|c| c.network.deny = vec!["198.51.100.0/24".parse().unwrap()]).await;
    let spoof = gw2
        .client(p)
        .await
        .request(
            Method::GET,
            "/v1/models",
            &[("x-forwarded-for", "198.51.100.7")],
            TestBody::Empty,
        )
        .await;
    assert_eq!(
        spoof.status, 200,
        "X-Forwarded-For from an untrusted peer is ignored"
    );
}

async fn slow_body_is_408(p: Proto) {
    let gw =
        Gateway::start_with(|c| c.server.request_timeout = h3gate::config::Duration::millis(300))
            .await;
    let body = chat("gpt-ok", false).to_string().into_bytes();
    let chunks = body.chunks(16).map(<[u8]>::to_vec).collect();
    let r = gw
        .client(p)
        .await
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[],
            TestBody::Slow(chunks, Duration::from_millis(100)),
        )
        .await;
    assert_eq!(r.status, 408);
    assert_eq!(r.json().await["error"]["code"], "request_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misdirected_host_is_421() {
    let gw = Gateway::start_with(|c| c.network.hosts = vec!["localhost".into()]).await;
    let h1 = gw.client(Proto::H1).await;
    assert_eq!(h1.get("/v1/models").await.status, 200);
    let r = h1
        .request(
            Method::GET,
            "/v1/models",
            &[("host", "other.example")],
            TestBody::Empty,
        )
        .await;
    assert_eq!(r.status, 421);
    assert_eq!(
        gw.client(Proto::H3).await.get("/v1/models").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_api_and_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit/audit.log");
    let af = audit_file.clone();
    let (gw, _) = with_keys(vec![], move |c| c.audit.file = Some(af)).await;
    let admin = reqwest::Client::new();
    let key = create_key_through_the_api(&gw, &admin).await;
    let c = gw.client(Proto::H2).await;
    let ok = chat_as(&c, &key, "gpt-ok", false).await;
    assert_eq!(
        ok.status, 200,
        "a key created through the API works at once"
    );
    let list = admin
        .get(format!("http://{}/admin/keys", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.contains("\"svc\"") && !list.contains(&key),
        "listed without the secret"
    );
    let revoked = admin
        .delete(format!("http://{}/admin/keys/svc", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let refused = chat_as(&c, &key, "gpt-ok", false).await;
    assert_eq!(refused.status, 401);

    assert_eq!(gw.reload().await.0, 200);
    audit_log_has_every_event_and_no_secret(&audit_file, &key).await;
}

/// `POST /admin/keys` for `svc`: the new key.
async fn create_key_through_the_api(gw: &Gateway, admin: &reqwest::Client) -> String {
    let created: Value = serde_json::from_str(
        &admin
            .post(format!("http://{}/admin/keys", gw.admin))
            .bearer_auth(ADMIN_TOKEN)
            .body(r#"{"name":"svc","scopes":["chat"],"expires":"90d","rpm":100}"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("h3g_"));
    key
}

/// The audit log (written in the background: waited for, bounded) has
/// every event, and no secret; it is private to its owner.
async fn audit_log_has_every_event_and_no_secret(audit_file: &std::path::Path, key: &str) {
    let mut text = String::new();
    common::wait_until(Duration::from_secs(5), async || {
        text = std::fs::read_to_string(audit_file).unwrap_or_default();
        text.contains("\"authentication\"") && text.contains("config_reload")
    })
    .await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.iter().filter(|a| **a == "admin").count() >= 3,
        "{actions:?}"
    );
    assert!(actions.contains(&"authentication"), "{actions:?}");
    assert!(actions.contains(&"config_reload"), "{actions:?}");
    assert!(lines.iter().all(|l| l["timestamp"].is_string()));
    assert!(
        !text.contains(key) && !text.contains(ADMIN_TOKEN),
        "no secret in the audit log"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(audit_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn auth_required_without_keys_file_refuses_to_start() {
    let text = "[tls]\ngenerate_dev_cert = true\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n[[routes]]\nmodel = \"*\"\ntargets = [\"m\"]\n";
    let err = Config::from_toml(text, std::path::Path::new("."), &|_| None).unwrap_err();
    let p = err
        .problems()
        .iter()
        .find(|p| p.path == "auth.keys_file")
        .expect("auth is required by default");
    assert!(
        p.message.contains("h3gate keys create") && p.message.contains("required = false"),
        "{p}"
    );
}
