//! The TCP edge's caps and endings: connections per address, HEAD,
//! `Expect: 100-continue`, a drain that load balancers can see on `/ready`,
//! and a queued client that goes away. Timeouts (silent, idle and stalled
//! connections) are in `tcp_timeouts.rs`.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::raw_tls::{read_until_closed, tls, try_tls, BOUND, H2_PREFACE, H2_SETTINGS, SHORT};
use common::{chat, Gateway, Proto, TestBody};
use h3gate::config::Duration as Dur;
use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- 1. connection caps ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_before_tls() {
    let gw = Gateway::start_with(|c| {
        c.http.header_read_timeout = Dur::secs(60);
        c.http.max_connections_per_ip = 2;
    })
    .await;
    let one: IpAddr = [127, 0, 0, 1].into();
    let two: IpAddr = [127, 0, 0, 2].into();
    let a = try_tls(&gw, one, &[b"h2"]).await.expect("first");
    let _b = try_tls(&gw, one, &[b"h2"]).await.expect("second");
    assert!(
        try_tls(&gw, one, &[b"h2"]).await.is_err(),
        "a third connection from the same address is refused"
    );
    let _c = try_tls(&gw, two, &[b"h2"])
        .await
        .expect("another address is accepted");
    assert!(
        gw.metric("h3gate_tcp_connections_refused_total{reason=\"max_connections_per_ip\"}")
            .await
            >= 1.0
    );

    drop(a);
    let mut accepted = false;
    for _ in 0..100 {
        if try_tls(&gw, one, &[b"h2"]).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "a closed connection gives its place back");
}

// ---- 2. HEAD -----------------------------------------------------------------

async fn head_has_no_body(proto: Proto) {
    let gw = Gateway::start().await;
    let c = gw.client(proto).await;
    for path in ["/health", "/v1/models"] {
        let resp = c
            .try_request(Method::HEAD, path, &[], TestBody::Empty)
            .await
            .unwrap_or_else(|e| panic!("HEAD {path} over {proto:?}: {e}"));
        assert_eq!(resp.status, 200, "HEAD {path}");
        assert!(
            resp.header("content-type").is_some(),
            "HEAD {path} says what GET would send"
        );
        let (body, end) = resp.text_and_end().await;
        assert_eq!(end, Ok(()), "HEAD {path} ends cleanly");
        assert_eq!(body, "", "HEAD {path} has no body");
    }
    // The connection still serves a GET afterwards.
    let resp = c.get("/v1/models").await;
    assert_eq!(resp.status, 200);
    assert!(resp.json().await["data"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_no_body_over_h2() {
    head_has_no_body(Proto::H2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_no_body_over_http1() {
    head_has_no_body(Proto::H1).await
}

// ---- 3. Expect: 100-continue -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_body_over_the_limit_is_refused_without_100_continue() {
    let gw = Gateway::start().await;
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // Within the limit, the body is invited and served.
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    let body = chat("gpt-4o-mini", false).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));
    s.write_all(body.as_bytes()).await.unwrap();
    let rest = read_until_closed(&mut s).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));
}

// ---- 4. drain and /ready -----------------------------------------------------

async fn ready(gw: &Gateway) -> Result<(u16, Value), String> {
    let resp = reqwest::get(format!("http://{}/ready", gw.admin))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((
        status,
        serde_json::from_str(&text).map_err(|e| e.to_string())?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_draining() {
    let mut gw = Gateway::start().await;
    assert_eq!(ready(&gw).await.unwrap().0, 200);
    let c = gw.client(Proto::H2).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    resp.chunk().await.unwrap().unwrap();

    gw.begin_shutdown();
    let (status, body) = ready(&gw)
        .await
        .expect("the admin listener still answers while draining");
    assert_eq!(status, 503);
    assert_eq!(body["status"], "draining");
    let health = reqwest::get(format!("http://{}/health", gw.admin))
        .await
        .expect("/health still answers while draining");
    assert_eq!(health.status(), 200);

    gw.upstream.release();
    let (_, end) = resp.text_and_end().await;
    assert_eq!(end, Ok(()), "the in-flight stream finished");
    gw.stopped().await.expect("a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_accepting_while_not_ready() {
    let mut gw = Gateway::start_with(|c| c.server.drain_delay = Dur::secs(3)).await;
    gw.begin_shutdown();
    assert_eq!(ready(&gw).await.unwrap().0, 503);
    // New connections are still served during the delay.
    let c = gw.client(Proto::H1).await;
    let resp = c.get("/v1/models").await;
    assert_eq!(resp.status, 200);
    drop(c);
    gw.stopped().await.expect("a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_is_an_error() {
    let mut gw = Gateway::start_with(|c| c.server.shutdown_timeout = SHORT).await;
    let c = gw.client(Proto::H1).await;
    let mut resp = c
        .post_json("/v1/chat/completions", chat("endless", true))
        .await;
    resp.chunk().await.unwrap().unwrap();
    gw.begin_shutdown();
    let result = gw.stopped().await;
    assert!(
        result.is_err(),
        "streams cut at the deadline make the run fail: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_node_that_still_serves_is_ready() {
    let gw = Gateway::start_with(|c| {
        c.retry.max_attempts = 1;
        for p in &mut c.providers {
            p.breaker.consecutive_failures = 1;
        }
    })
    .await;
    let c = gw.client(Proto::H1).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("dead", false))
        .await;
    assert!(resp.status >= 500);
    let (status, body) = ready(&gw).await.unwrap();
    assert_eq!(status, 200, "other routes still serve: {body}");
    assert_eq!(body["status"], "degraded");
    assert!(
        body["routes_without_target"]
            .as_array()
            .unwrap()
            .contains(&Value::from("dead")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_idle_h2_client_does_not_hold_the_drain() {
    let mut gw = Gateway::start_with(|c| c.http.header_read_timeout = Dur::secs(60)).await;
    // Preface and SETTINGS only: it never answers GOAWAY's PING nor closes.
    let mut s = tls(&gw, &[b"h2"]).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(H2_SETTINGS).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf).await.unwrap(); // the server's SETTINGS
    gw.begin_shutdown();
    gw.stopped()
        .await
        .expect("a clean drain: an idle connection is not waited for");
    drop(s);
}

/// An HTTP/1.1 client that goes away mid-upload while its request waits for
/// admission gives its queue place back at once (HTTP/1.1 has no other sign
/// of it than the body failing: the gateway reads a little ahead while
/// queued), and the request ends as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_http1_client_that_goes_away_gives_its_place_back() {
    let gw = Gateway::start_with(|c| {
        c.admission.max_concurrent = 1;
        c.admission.max_queue = 1;
        c.admission.max_wait = Dur::secs(60);
    })
    .await;
    let c = gw.client(Proto::H1).await;
    let held = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    assert_eq!(held.status, 200, "the one slot is taken");

    let depth = "h3gate_admission_queue_depth{scope=\"gateway\"}";
    let mut s = tls(&gw, &[b"http/1.1"]).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n\
                content-type: application/json\r\ncontent-length: 100000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b' '; 1000]).await.unwrap();
    s.flush().await.unwrap();
    let until = |want: f64| {
        let gw = &gw;
        async move {
            tokio::time::timeout(BOUND, async {
                while gw.metric(depth).await != want {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(until(1.0).await, "the upload waits in the queue");
    drop(s); // the client gives up mid-upload
    assert!(until(0.0).await, "its queue place came back");
    let cancelled = gw
        .metric("h3gate_request_outcomes_total{protocol=\"http/1.1\",outcome=\"cancelled\"}")
        .await;
    assert_eq!(cancelled, 1.0);
    gw.upstream.release();
    assert!(held.text().await.contains("[DONE]"));
}
