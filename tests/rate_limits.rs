//! Rate limits and abuse denies over HTTP/3, HTTP/2 and HTTP/1.1: a key's
//! requests and tokens per minute (with streamed usage reconciled), the
//! address's requests per minute after authentication (listing models
//! spends only the address's), and the deny that
//! repeated bad keys earn an address.

mod common;

use common::keys::{bearer, key, with_keys};
use common::{chat, Proto, TestBody, ADMIN_TOKEN};
use h3gate::auth::NewKey;
use http::Method;
use serde_json::{json, Value};

over_every_protocol!(
    request_rate_limit_headers_and_429,
    tokens_per_minute_refuse_then_reconcile_streamed_usage,
    address_limit_applies_after_authentication,
    listing_models_spends_no_key_budget,
    repeated_bad_keys_deny_the_address,
);

/// Listing models (SDKs and readiness probes do) spends none of the key's
/// requests per minute, and still works once they are used up.
async fn listing_models_spends_no_key_budget(p: Proto) {
    let (_gw, c, auth) = key_with_rpm(p, 1).await;
    let h = [("authorization", auth.as_str())];
    for _ in 0..3 {
        let r = c
            .request(Method::GET, "/v1/models", &h, TestBody::Empty)
            .await;
        assert_eq!(r.status, 200);
    }
    let chat_body = TestBody::Json(chat("gpt-ok", false));
    let r = c
        .request(Method::POST, "/v1/chat/completions", &h, chat_body)
        .await;
    assert_eq!(
        r.status, 200,
        "the listings took none of the key's one request"
    );
    let r = c
        .request(Method::GET, "/v1/models", &h, TestBody::Empty)
        .await;
    assert_eq!(r.status, 200, "listing works with the key's budget used up");
}

/// A gateway with one key limited to `rpm` requests per minute, a client,
/// and the key's `authorization` value.
async fn key_with_rpm(p: Proto, rpm: u32) -> (common::Gateway, common::Client, String) {
    let limited = NewKey {
        rpm: Some(rpm),
        ..key("rl")
    };
    let (gw, keys) = with_keys(vec![limited], |_| {}).await;
    let c = gw.client(p).await;
    (gw, c, bearer(&keys[0]))
}

async fn request_rate_limit_headers_and_429(p: Proto) {
    let (gw, c, auth) = key_with_rpm(p, 2).await;
    let h = [("authorization", auth.as_str())];
    let post = || {
        let body = TestBody::Json(chat("gpt-ok", false));
        c.request(Method::POST, "/v1/chat/completions", &h, body)
    };
    for remaining in ["1", "0"] {
        let r = post().await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(remaining));
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let r = post().await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(r.json().await["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        gw.upstream.seen().len(),
        2,
        "the refused request never reached the upstream"
    );
}

/// The key's tokens per minute: a held stream's reservation refuses the
/// next request (429, and nothing taken, not even its request); the
/// stream's unused reservation comes back once it ends (applied off the
/// request's path), leaving exactly the usage it reported.
async fn tokens_per_minute_refuse_then_reconcile_streamed_usage(p: Proto) {
    let limited = NewKey {
        rpm: Some(3),
        tpm: Some(100),
        ..key("tpm")
    };
    let (gw, keys) = with_keys(vec![limited], |_| {}).await;
    let c = gw.client(p).await;
    let auth = bearer(&keys[0]);
    let h = [("authorization", auth.as_str())];
    let post = |body: &Value| {
        c.request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            TestBody::Json(body.clone()),
        )
    };
    let started = std::time::Instant::now();
    // `gated` holds its stream after the first chunk; 95 completion tokens
    // make the estimate the whole minute's budget.
    let mut held = chat("gated", true);
    held["max_tokens"] = json!(95);
    held["stream_options"] = json!({"include_usage": true});
    let mut stream = post(&held).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(stream.header("x-ratelimit-remaining-requests"), Some("2"));
    stream.chunk().await.unwrap().unwrap();

    let small = chat("gpt-ok", false);
    let refused = post(&small).await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.header("x-ratelimit-remaining-tokens").is_some());
    assert_eq!(refused.json().await["error"]["code"], "rate_limit_exceeded");

    gw.upstream.release();
    assert!(stream.text().await.contains("\"usage\""));
    // Ask until the correction is in: a refused request takes nothing, so
    // asking costs nothing.
    let mut served = None;
    for _ in 0..2000 {
        let r = post(&small).await;
        if r.status == 200 {
            served = Some(r);
            break;
        }
        assert_eq!(r.status, 429);
    }
    let served = served.expect("the stream's unused reservation came back");
    assert_eq!(
        served.header("x-ratelimit-remaining-requests"),
        Some("1"),
        "the refused requests took no request"
    );
    let left: i64 = served
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    served.text().await;
    // The stream reported 7 prompt + 5 completion tokens: the bucket holds
    // those 12 and this request's estimate, less what refilled meanwhile
    // (100 per minute).
    let estimate = 5 + small.to_string().len() as i64 / 4;
    let refilled = started.elapsed().as_secs() as i64 * 100 / 60 + 2;
    let exact = 100 - 12 - estimate;
    assert!(
        (exact..=exact + refilled).contains(&left),
        "reserved then reconciled: {left} tokens left, {exact} expected"
    );
}

/// The address's requests per minute are decided with the key's, after
/// authentication: 401s do not spend them (the abuse deny bounds those).
async fn address_limit_applies_after_authentication(p: Proto) {
    let (gw, keys) = with_keys(vec![key("ip")], |c| {
        c.rate_limit.per_ip_rpm = 1;
        c.rate_limit.per_ip_burst = 2;
    })
    .await;
    let c = &gw.client(p).await;
    let models = |auth: String| async move {
        c.request(
            Method::GET,
            "/v1/models",
            &[("authorization", &auth)],
            TestBody::Empty,
        )
        .await
    };
    for _ in 0..3 {
        assert_eq!(models("Bearer h3g_bad".into()).await.status, 401);
    }
    for _ in 0..2 {
        assert_eq!(models(bearer(&keys[0])).await.status, 200);
    }
    let r = models(bearer(&keys[0])).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json().await["error"]["code"], "rate_limit_exceeded");
}

async fn repeated_bad_keys_deny_the_address(p: Proto) {
    let (gw, keys) = with_keys(vec![key("good")], |c| {
        c.abuse.max_failures = 3;
    })
    .await;
    let c = gw.client(p).await;
    for _ in 0..3 {
        let r = c
            .request(
                Method::GET,
                "/v1/models",
                &[("authorization", "Bearer h3g_bad")],
                TestBody::Empty,
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let denied = c
        .request(
            Method::GET,
            "/v1/models",
            &[("authorization", &bearer(&keys[0]))],
            TestBody::Empty,
        )
        .await;
    assert_eq!(denied.status, 403, "denied even with a good key");
    let admin = reqwest::Client::new();
    let list: Value = serde_json::from_str(
        &admin
            .get(format!("http://{}/admin/denylist", gw.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list["denied"][0]["address"], "127.0.0.1");
    let lifted = admin
        .delete(format!("http://{}/admin/denylist/127.0.0.1", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 200);
    let ok = c
        .request(
            Method::GET,
            "/v1/models",
            &[("authorization", &bearer(&keys[0]))],
            TestBody::Empty,
        )
        .await;
    assert_eq!(ok.status, 200);
}
