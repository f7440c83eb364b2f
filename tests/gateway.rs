//! The backbone's behaviour, run unchanged over HTTP/3, HTTP/2 and HTTP/1.1.

mod common;

use std::time::Duration;

use common::{chat, sse, Gateway, Proto, TestBody, UPSTREAM_KEY};
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    non_streaming_chat,
    streaming_chat_is_not_buffered,
    models_are_listed,
    completions_and_embeddings,
    bad_json_is_400,
    missing_model_is_400,
    unknown_model_is_404,
    unknown_path_is_404,
    oversized_body_is_413,
    oversized_chunked_body_is_413,
    unreachable_upstream_is_502,
    slow_upstream_is_504,
    upstream_error_is_passed_through_sanitised,
    failover_to_next_target_on_connect_error,
    client_disconnect_drops_upstream,
    upstream_drop_mid_stream_ends_with_error_event,
    incoming_request_id_is_reused,
    alt_svc_advertises_http3,
    graceful_shutdown_completes_stream,
    builtin_mock_streams,
);

/// Every error: the status, an OpenAI-shaped body, the request id in both places.
async fn assert_error(resp: common::client::TestResponse, status: u16, code: &str) -> Value {
    assert_eq!(resp.status, status);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let id = resp
        .header("x-request-id")
        .expect("x-request-id")
        .to_string();
    let body = resp.json().await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["error"]["type"].is_string());
    assert_eq!(body["error"]["request_id"], id.as_str());
    body
}

async fn non_streaming_chat(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("gpt-4o-mini", false))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up"));
    let id = resp.header("x-request-id").unwrap().to_string();
    let body = resp.json().await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The quick brown fox jumps"
    );
    assert_eq!(body["usage"]["total_tokens"], 12);

    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].body,
        chat("gpt-4o-mini", false),
        "body forwarded untouched"
    );
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    assert_eq!(seen[0].headers["x-request-id"], id.as_str());
}

async fn streaming_chat_is_not_buffered(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "first chunk is an SSE event");
    assert_eq!(
        gw.upstream.sent_last(),
        0,
        "the first chunk arrived before the upstream sent its last"
    );
    gw.upstream.release();
    let mut all = String::from_utf8(first.to_vec()).unwrap();
    all.push_str(&resp.text().await);
    assert_eq!(gw.upstream.sent_last(), 1);
    let (text, done) = sse::openai_text(&all);
    assert_eq!(text, "The quick brown fox jumps");
    assert!(done, "stream ends with [DONE]");
}

async fn models_are_listed(p: Proto) {
    let gw = Gateway::start().await;
    let body = gw.client(p).await.get("/v1/models").await.json().await;
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for expected in ["gpt-4o-mini", "mock-1", "gated", "slow", "failover"] {
        assert!(ids.contains(&expected), "{expected} missing from {ids:?}");
    }
    assert!(
        !ids.iter().any(|id| id.contains('*')),
        "no glob patterns listed: {ids:?}"
    );
}

async fn completions_and_embeddings(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let body = c
        .post_json(
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}),
        )
        .await
        .json()
        .await;
    assert_eq!(body["object"], "text_completion");
    let body = c
        .post_json(
            "/v1/embeddings",
            json!({"model": "gpt-embed", "input": ["a", "b"]}),
        )
        .await
        .json()
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let paths: Vec<String> = gw.upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/completions", "/v1/embeddings"]);
}

async fn bad_json_is_400(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let resp = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[],
            TestBody::Bytes(b"{\"model\": ".to_vec()),
        )
        .await;
    assert_error(resp, 400, "invalid_json").await;
    assert!(gw.upstream.seen().is_empty());
}

async fn missing_model_is_400(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", json!({"messages": []}))
        .await;
    let body = assert_error(resp, 400, "invalid_request").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("model"));
}

async fn unknown_model_is_404(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("nonexistent-model", false))
        .await;
    assert_error(resp, 404, "model_not_found").await;
}

async fn unknown_path_is_404(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    assert_error(c.get("/v2/nothing").await, 404, "not_found").await;
    assert_error(
        c.get("/v1/chat/completions").await,
        405,
        "method_not_allowed",
    )
    .await;
}

async fn oversized_body_is_413(p: Proto) {
    let gw = Gateway::start().await;
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100_000)
    );
    let resp = gw
        .client(p)
        .await
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[],
            TestBody::Bytes(big.into_bytes()),
        )
        .await;
    assert_error(resp, 413, "request_too_large").await;
    assert!(gw.upstream.seen().is_empty());
}

async fn oversized_chunked_body_is_413(p: Proto) {
    let gw = Gateway::start().await;
    // No Content-Length: the limit must be enforced on the bytes as they stream in.
    let chunks = (0..20).map(|_| vec![b' '; 8 * 1024]).collect();
    let resp = gw
        .client(p)
        .await
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[],
            TestBody::Chunked(chunks),
        )
        .await;
    assert_error(resp, 413, "request_too_large").await;
}

async fn unreachable_upstream_is_502(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("dead", false))
        .await;
    let body = assert_error(resp, 502, "upstream_unreachable").await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        !msg.contains("127.0.0.1"),
        "no upstream address in errors: {msg}"
    );
}

async fn slow_upstream_is_504(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("slow", false))
        .await;
    assert_error(resp, 504, "upstream_timeout").await;
}

async fn upstream_error_is_passed_through_sanitised(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    for (model, status) in [
        ("status-400", 400),
        ("status-429", 429),
        ("status-500", 500),
    ] {
        let resp = c
            .post_json("/v1/chat/completions", chat(model, false))
            .await;
        let body = assert_error(resp, status, &format!("test_{status}")).await;
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("Rate limit reached"), "{msg}");
        assert!(
            !msg.contains("sk-test"),
            "credential-like text is masked: {msg}"
        );
    }
    // A refused gateway credential is the gateway's problem, not the client's.
    let resp = c
        .post_json("/v1/chat/completions", chat("status-401", false))
        .await;
    assert_error(resp, 502, "upstream_auth_failed").await;
}

async fn failover_to_next_target_on_connect_error(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("failover", false))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-h3gate-target"), Some("up"));
    assert_eq!(resp.json().await["object"], "chat.completion");
}

async fn client_disconnect_drops_upstream(p: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(p).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("endless", true))
        .await;
    assert_eq!(resp.status, 200);
    resp.chunk().await.unwrap().unwrap();
    resp.chunk().await.unwrap().unwrap();
    drop(resp);
    assert!(
        gw.upstream.wait_dropped().await,
        "upstream saw its response abandoned"
    );
}

async fn upstream_drop_mid_stream_ends_with_error_event(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json("/v1/chat/completions", chat("drop-mid-stream", true))
        .await;
    assert_eq!(resp.status, 200);
    let (text, end) = resp.text_and_end().await;
    let events = sse::data(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_stream_error",
        "{events:?} {end:?}"
    );
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a failed stream never looks complete"
    );
}

async fn incoming_request_id_is_reused(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .request(
            Method::GET,
            "/v1/models",
            &[("x-request-id", "trace-abc.123")],
            TestBody::Empty,
        )
        .await;
    assert_eq!(resp.header("x-request-id"), Some("trace-abc.123"));
    // Every character an id may have, and ids that differ on each request
    // of one connection: the header blocks (HPACK's dynamic table, QPACK's
    // table-driven Huffman code in vendor/h3) decode back to what was
    // sent, and so do the headers around them.
    let client = gw.client(p).await;
    let all: String = ('A'..='Z')
        .chain('a'..='z')
        .chain('0'..='9')
        .chain("._:-".chars())
        .collect();
    for i in 0..5 {
        let id = format!("{i}{all}{i}");
        let resp = client
            .request(
                Method::GET,
                "/v1/models",
                &[("x-request-id", id.as_str())],
                TestBody::Empty,
            )
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-request-id"), Some(id.as_str()));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert!(resp.json().await["data"].is_array());
    }
}

async fn alt_svc_advertises_http3(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw.client(p).await.get("/health").await;
    assert_eq!(resp.status, 200);
    let expected = format!("h3=\":{}\"; ma=86400", gw.udp.port());
    match p {
        Proto::H1 | Proto::H2 => assert_eq!(resp.header("alt-svc"), Some(expected.as_str())),
        Proto::H3 => assert_eq!(
            resp.header("alt-svc"),
            None,
            "no need to advertise h3 over h3"
        ),
    }
}

async fn graceful_shutdown_completes_stream(p: Proto) {
    let mut gw = Gateway::start().await;
    let c = gw.client(p).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    let first = resp.chunk().await.unwrap().unwrap();
    gw.begin_shutdown();
    // Once the drain has started (`/ready` says so), the in-flight stream
    // is allowed to finish.
    let draining = common::wait_until(Duration::from_secs(10), async || {
        gw.ready().await.1["status"] == "draining"
    })
    .await;
    assert!(draining, "the drain started");
    gw.upstream.release();
    let mut all = String::from_utf8(first.to_vec()).unwrap();
    all.push_str(&resp.text().await);
    let (text, done) = sse::openai_text(&all);
    assert_eq!(text, "The quick brown fox jumps");
    assert!(done);
    gw.stopped().await.expect("clean stop");
    assert!(
        std::net::TcpStream::connect(gw.tcp).is_err(),
        "listener closed after the drain"
    );
}

async fn builtin_mock_streams(p: Proto) {
    let gw = Gateway::start().await;
    let resp = gw
        .client(p)
        .await
        .post_json(
            "/v1/chat/completions",
            json!({"model": "mock-1", "stream": true, "max_tokens": 3, "stream_options": {"include_usage": true}, "messages": []}),
        )
        .await;
    assert_eq!(resp.header("x-h3gate-target"), Some("mock"));
    let (text, done) = sse::openai_text(&resp.text().await);
    assert_eq!(text, "The quick brown");
    assert!(done);
}
