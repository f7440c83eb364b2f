//! OpenAI's Responses API through the gateway, over HTTP/3, HTTP/2 and
//! HTTP/1.1: JSON and typed stream events passed through with usage
//! counted; response ids tagged with where they were made, so stored
//! responses (`GET`/`DELETE`, `input_items`, `cancel`) and
//! `previous_response_id` reach the provider and key that made them — and
//! only the client that made them; clear errors otherwise.

mod common;

use common::keys::{bearer, key, with_keys};
use common::{sse, Gateway, Proto, TestBody};
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    a_response_passes_through_with_its_id_tagged_and_usage_counted,
    a_streamed_response_keeps_its_events_and_counts_usage,
    stored_responses_reach_the_provider_and_key_that_made_them,
    previous_response_id_reaches_where_the_response_lives,
    ids_the_gateway_did_not_give_out_are_refused_clearly,
    another_clients_response_is_not_found,
    failures_reach_a_responses_client_in_its_shape,
    the_mock_and_azure_speak_the_responses_api,
    a_responses_client_reaches_an_anthropic_provider,
    what_the_translation_cannot_carry_is_a_400_naming_it,
);

const FIVE_TOKENS: &str = "The quick brown fox jumps";

const POOL: &str = r#"
[[providers]]
name = "resp-{p}"
kind = "openai"
base_url = "{upstream}"
api_keys = ["test-resp-key-a", "test-resp-key-b"]

[[routes]]
model = "responses-{p}"
targets = [{ provider = "resp-{p}", model = "gpt-4o-mini" }]
"#;

/// [`POOL`] with its provider named for one case (metrics are per process).
fn pool(case: &str) -> String {
    POOL.replace(
        "name = \"resp-{p}\"",
        &format!("name = \"resp-{{p}}-{case}\""),
    )
    .replace(
        "provider = \"resp-{p}\"",
        &format!("provider = \"resp-{{p}}-{case}\""),
    )
}

fn create(model: &str) -> Value {
    json!({"model": model, "input": "hi"})
}

/// The `Authorization` each upstream request carried, with its path.
fn seen(gw: &Gateway) -> Vec<(String, String, String)> {
    gw.upstream
        .seen()
        .iter()
        .map(|s| {
            let auth = s
                .headers
                .get("authorization")
                .map_or("", |v| v.to_str().unwrap());
            (
                s.path.clone(),
                auth.to_string(),
                s.body["previous_response_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

async fn a_response_passes_through_with_its_id_tagged_and_usage_counted(p: Proto) {
    let gw = Gateway::with_config(p, &pool("json")).await;
    let client = gw.client(p).await;
    let model = format!("responses-{}", p.tag());
    let resp = client.post_json("/v1/responses", create(&model)).await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], FIVE_TOKENS);
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("resp_mock") && id.contains("_h3g"), "{id}");
    assert!(
        v["output"][0]["id"].as_str().unwrap().starts_with("msg_"),
        "item ids untouched"
    );
    assert_eq!(v["usage"]["input_tokens"], 7);
    let s = &gw.upstream.seen()[0];
    assert_eq!(s.path, "/v1/responses");
    assert_eq!(s.body["model"], "gpt-4o-mini");
    assert_eq!(s.body["input"], "hi");
    let series = |dir: &str| {
        format!(
            r#"h3gate_tokens_total{{direction="{dir}",model="{model}",provider="resp-{}-json"}}"#,
            p.tag()
        )
    };
    assert_eq!(gw.metric(&series("prompt")).await, 7.0);
    assert_eq!(gw.metric(&series("completion")).await, 5.0);
}

async fn a_streamed_response_keeps_its_events_and_counts_usage(p: Proto) {
    let gw = Gateway::with_config(p, &pool("stream")).await;
    let client = gw.client(p).await;
    let model = format!("responses-{}", p.tag());
    let mut body = create(&model);
    body["stream"] = json!(true);
    let resp = client.post_json("/v1/responses", body).await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse::events(&resp.text().await);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    for (name, v) in &events {
        assert_eq!(
            v["type"],
            name.as_deref().unwrap(),
            "each event says its type"
        );
    }
    let text: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.output_text.delta"))
        .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, FIVE_TOKENS);
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|(_, v)| v["response"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "created, in_progress, completed");
    assert!(
        ids.iter().all(|i| *i == ids[0] && i.contains("_h3g")),
        "{ids:?}"
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers kept: {seqs:?}"
    );
    let series = format!(
        r#"h3gate_tokens_total{{direction="completion",model="{model}",provider="resp-{}-stream"}}"#,
        p.tag()
    );
    assert_eq!(gw.metric(&series).await, 5.0);
}

async fn stored_responses_reach_the_provider_and_key_that_made_them(p: Proto) {
    let gw = Gateway::with_config(p, &pool("stored")).await;
    let client = gw.client(p).await;
    let model = format!("responses-{}", p.tag());
    let v = client
        .post_json("/v1/responses", create(&model))
        .await
        .json()
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let upstream_id = id.split("_h3g").next().unwrap().to_string();
    let made_with = seen(&gw)[0].1.clone();
    assert!(
        made_with.starts_with("Bearer test-resp-key-"),
        "{made_with}"
    );
    for _ in 0..4 {
        let resp = client.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(resp.status, 200);
        let got = resp.json().await;
        assert_eq!(got["id"], id, "the id the client knows");
        assert_eq!(got["object"], "response");
    }
    let items = client.get(&format!("/v1/responses/{id}/input_items")).await;
    assert_eq!(items.status, 200);
    assert_eq!(items.json().await["object"], "list");
    let cancel = client
        .request(
            Method::POST,
            &format!("/v1/responses/{id}/cancel"),
            &[],
            TestBody::Empty,
        )
        .await;
    assert_eq!(cancel.status, 200);
    assert_eq!(cancel.json().await["id"], id);
    let deleted = client
        .request(
            Method::DELETE,
            &format!("/v1/responses/{id}"),
            &[],
            TestBody::Empty,
        )
        .await;
    assert_eq!(deleted.status, 200);
    let deleted = deleted.json().await;
    assert_eq!(
        (deleted["id"].as_str(), deleted["deleted"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    let seen = seen(&gw);
    assert_eq!(seen.len(), 8);
    for (path, auth, _) in &seen[1..] {
        assert!(
            path.starts_with(&format!("/v1/responses/{upstream_id}")),
            "{path}"
        );
        assert_eq!(auth, &made_with, "the key that made it, every time");
    }
    let methods: Vec<String> = gw.upstream.seen()[1..]
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(
        methods[4].ends_with("/input_items") && methods[5].ends_with("/cancel"),
        "{methods:?}"
    );
    // Reading it again costs nothing: no tokens counted for the reads.
    let series = format!(
        r#"h3gate_tokens_total{{direction="prompt",model="{model}",provider="resp-{}-stored"}}"#,
        p.tag()
    );
    assert_eq!(gw.metric(&series).await, 7.0);
}

async fn previous_response_id_reaches_where_the_response_lives(p: Proto) {
    let gw = Gateway::with_config(p, POOL).await;
    let client = gw.client(p).await;
    let model = format!("responses-{}", p.tag());
    let first = client
        .post_json("/v1/responses", create(&model))
        .await
        .json()
        .await;
    let id = first["id"].as_str().unwrap();
    for _ in 0..3 {
        let mut body = create(&model);
        body["previous_response_id"] = json!(id);
        let resp = client.post_json("/v1/responses", body).await;
        assert_eq!(resp.status, 200);
        assert!(resp.json().await["id"].as_str().unwrap().contains("_h3g"));
    }
    let seen = seen(&gw);
    let upstream_id = id.split("_h3g").next().unwrap();
    for (_, auth, previous) in &seen[1..] {
        assert_eq!(previous, upstream_id, "the upstream's own id goes upstream");
        assert_eq!(auth, &seen[0].1, "with the key that made it");
    }
    // A route that does not reach the provider it lives with: a clear 400.
    let mut body = create("gpt-4o-mini");
    body["previous_response_id"] = json!(id);
    let resp = client.post_json("/v1/responses", body).await;
    assert_eq!(resp.status, 400);
    let e = resp.json().await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not reach"),
        "{e}"
    );
}

async fn ids_the_gateway_did_not_give_out_are_refused_clearly(p: Proto) {
    let gw = Gateway::start().await;
    let client = gw.client(p).await;
    let resp = client.get("/v1/responses/resp_123").await;
    assert_eq!(resp.status, 404);
    let rid = resp.header("x-request-id").map(str::to_string);
    let e = resp.json().await;
    assert_eq!(e["error"]["code"], "response_not_found");
    assert_eq!(
        e["error"]["message"],
        "No response found with id 'resp_123'."
    );
    assert!(rid.is_some());
    // A tag naming no provider configured here.
    let resp = client
        .get("/v1/responses/resp_1_h3g000000010000000000000000")
        .await;
    assert_eq!(resp.status, 404);
    let mut body = create("gpt-4o-mini");
    body["previous_response_id"] = json!("resp_not_ours");
    let resp = client.post_json("/v1/responses", body).await;
    assert_eq!(resp.status, 400);
    let e = resp.json().await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not created through this gateway"),
        "{e}"
    );
    let resp = client
        .request(Method::PUT, "/v1/responses/resp_123", &[], TestBody::Empty)
        .await;
    assert_eq!(resp.status, 405);
    assert!(
        gw.upstream.seen().is_empty(),
        "none of these reached the upstream"
    );
}

async fn another_clients_response_is_not_found(p: Proto) {
    let (gw, keys) = with_keys(vec![key("alice"), key("bob")], |_| {}).await;
    let client = gw.client(p).await;
    let alice = [("authorization", bearer(&keys[0]))];
    let bob = [("authorization", bearer(&keys[1]))];
    let send = |who: &[(&'static str, String); 1], method: Method, path: String, body: TestBody| {
        let headers: Vec<(&str, String)> = who.iter().map(|(k, v)| (*k, v.clone())).collect();
        let client = &client;
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client.request(method, &path, &refs, body).await
        }
    };
    let made = send(
        &alice,
        Method::POST,
        "/v1/responses".into(),
        TestBody::Json(create("gpt-4o-mini")),
    )
    .await;
    assert_eq!(made.status, 200);
    let id = made.json().await["id"].as_str().unwrap().to_string();
    let mine = send(
        &alice,
        Method::GET,
        format!("/v1/responses/{id}"),
        TestBody::Empty,
    )
    .await;
    assert_eq!(mine.status, 200);
    let theirs = send(
        &bob,
        Method::GET,
        format!("/v1/responses/{id}"),
        TestBody::Empty,
    )
    .await;
    assert_eq!(theirs.status, 404);
    assert_eq!(theirs.json().await["error"]["code"], "response_not_found");
    let deleted = send(
        &bob,
        Method::DELETE,
        format!("/v1/responses/{id}"),
        TestBody::Empty,
    )
    .await;
    assert_eq!(deleted.status, 404);
    let mut body = create("gpt-4o-mini");
    body["previous_response_id"] = json!(id);
    let chained = send(
        &bob,
        Method::POST,
        "/v1/responses".into(),
        TestBody::Json(body),
    )
    .await;
    assert_eq!(chained.status, 400);
    assert_eq!(
        gw.upstream.seen().len(),
        2,
        "bob's calls never left the gateway"
    );
}

async fn failures_reach_a_responses_client_in_its_shape(p: Proto) {
    let gw = Gateway::start().await;
    let client = gw.client(p).await;
    let resp = client
        .post_json("/v1/responses", create("status-400"))
        .await;
    assert_eq!(resp.status, 400);
    let e = resp.json().await;
    assert!(e["error"]["message"].is_string(), "{e}");
    let text = e.to_string();
    assert!(
        !text.contains("FAKEKEY"),
        "no upstream key in the error: {text}"
    );
    let mut body = create("drop-mid-stream");
    body["stream"] = json!(true);
    let resp = client.post_json("/v1/responses", body).await;
    assert_eq!(resp.status, 200);
    let events = sse::events(&resp.text().await);
    let (name, last) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{events:?}");
    assert_eq!(last["type"], "error");
    assert!(
        last["message"].is_string() && last["code"].is_string(),
        "{last}"
    );
}

async fn the_mock_and_azure_speak_the_responses_api(p: Proto) {
    let gw = Gateway::with_config(
        p,
        r#"
[[providers]]
name = "azure-resp-{p}"
kind = "azure"
base_url = "http://{addr}"
api_version = "2025-04-01-preview"
api_key = "test-azure-key"

[[routes]]
model = "azure-responses"
targets = [{ provider = "azure-resp-{p}", model = "my-deployment" }]
"#,
    )
    .await;
    let client = gw.client(p).await;
    // The built-in mock: JSON, stream, and its stored responses.
    let v = client
        .post_json("/v1/responses", create("mock-1"))
        .await
        .json()
        .await;
    assert_eq!(v["object"], "response");
    let id = v["id"].as_str().unwrap();
    let got = client.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json().await["id"], id);
    let mut body = create("mock-1");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let events = sse::events(&client.post_json("/v1/responses", body).await.text().await);
    let args: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.function_call_arguments.delta"))
        .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "mock"})
    );
    assert_eq!(
        events.last().unwrap().0.as_deref(),
        Some("response.completed")
    );
    // Azure: `/openai/responses?api-version=…`, the deployment in the body.
    let v = client
        .post_json("/v1/responses", create("azure-responses"))
        .await;
    assert_eq!(v.status, 200);
    let id = v.json().await["id"].as_str().unwrap().to_string();
    let got = client.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got.status, 200);
    let seen = gw.upstream.seen();
    assert_eq!(seen[0].path, "/openai/responses");
    assert_eq!(seen[0].query, "api-version=2025-04-01-preview");
    assert_eq!(seen[0].body["model"], "my-deployment");
    assert_eq!(seen[0].headers["api-key"], "test-azure-key");
    assert!(
        seen[1].path.starts_with("/openai/responses/resp_"),
        "{}",
        seen[1].path
    );
    assert_eq!(seen[1].query, "api-version=2025-04-01-preview");
}

async fn a_responses_client_reaches_an_anthropic_provider(p: Proto) {
    let gw = Gateway::start().await;
    let client = gw.client(p).await;
    let body = json!({
        "model": "claude-3-haiku", "instructions": "Be brief.", "max_output_tokens": 40,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"},
                   {"type": "input_image", "image_url": "https://example.com/cat.png"}]}],
    });
    let resp = client.post_json("/v1/responses", body.clone()).await;
    assert_eq!(resp.status, 200);
    let v = resp.json().await;
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["text"], FIVE_TOKENS);
    assert_eq!(
        (
            v["usage"]["input_tokens"].as_u64(),
            v["usage"]["output_tokens"].as_u64()
        ),
        (Some(7), Some(5))
    );
    let up = &gw.upstream.seen()[0];
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.body["system"][0]["text"], "Be brief.");
    assert_eq!(up.body["max_tokens"], 40);
    assert_eq!(up.body["messages"][0]["content"][0]["text"], "hi");
    assert_eq!(up.body["messages"][0]["content"][1]["type"], "image");
    // Streamed, with a tool: Anthropic events become Responses events.
    let body = json!({
        "model": "claude-3-haiku", "stream": true, "input": "Weather in Paris?",
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    });
    let resp = client.post_json("/v1/responses", body).await;
    assert_eq!(resp.status, 200);
    let events = sse::events(&resp.text().await);
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        names[..2],
        ["response.created", "response.in_progress"],
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    let args: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.function_call_arguments.delta"))
        .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "mock"})
    );
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "function_call");
    assert_eq!(done["output"][0]["name"], "weather");
    assert_eq!(done["usage"]["output_tokens"], 5);
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(gw.upstream.seen()[1].body["tools"][0]["name"], "weather");
}

async fn what_the_translation_cannot_carry_is_a_400_naming_it(p: Proto) {
    let gw = Gateway::start().await;
    let client = gw.client(p).await;
    for (extra, named) in [
        (
            json!({"tools": [{"type": "web_search_preview"}]}),
            "web_search_preview",
        ),
        (json!({"background": true}), "background"),
        (json!({"store": true}), "store"),
        (
            json!({"include": ["reasoning.encrypted_content"]}),
            "include",
        ),
    ] {
        let mut body = create("claude-3-haiku");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = client.post_json("/v1/responses", body).await;
        assert_eq!(resp.status, 400, "{named}");
        let e = resp.json().await;
        assert!(
            e["error"]["message"].as_str().unwrap().contains(named),
            "{e}"
        );
    }
    // Dropped instead on a route that says so.
    let mut body = create("lenient-x");
    body["store"] = json!(true);
    let resp = client.post_json("/v1/responses", body).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        gw.upstream.seen().len(),
        1,
        "only the lenient one went upstream"
    );
}
