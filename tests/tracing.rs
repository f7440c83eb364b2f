//! OpenTelemetry traces over every protocol, received by an OTLP/HTTP
//! collector in the test (decoded with the official protobuf definitions):
//! the request's span and its children (admission, each upstream attempt),
//! W3C trace context continued from the client and into the upstream, the
//! sampled share, and a collector that is away costing the requests nothing.

mod common;

use std::time::Duration;

use common::otlp::{Collector, Span};
use common::{chat, Gateway, Proto};
use h3gate::config::{Config, TrustIncoming};

const PROTOS: [Proto; 3] = [Proto::H1, Proto::H2, Proto::H3];
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;

fn traced(c: &mut Config, collector: &str) {
    c.tracing.endpoint = Some(collector.to_string());
    c.tracing.export_interval = h3gate::config::Duration::millis(50);
    c.tracing.service_name = Some("edge-test".into());
}

/// The trace id and span id of a `traceresponse` / `traceparent` value.
fn ids(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn one(spans: &[Span], what: impl Fn(&Span) -> bool) -> &Span {
    let found: Vec<&Span> = spans.iter().filter(|s| what(s)).collect();
    assert_eq!(found.len(), 1, "{spans:#?}");
    found[0]
}

fn version(p: Proto) -> &'static str {
    match p {
        Proto::H1 => "1.1",
        Proto::H2 => "2",
        Proto::H3 => "3",
    }
}

#[tokio::test]
async fn a_streamed_request_is_a_server_span_with_admission_and_attempt_children() {
    let collector = Collector::start().await;
    let gw = Gateway::start_with(|c| traced(c, &collector.url())).await;
    for proto in PROTOS {
        let client = gw.client(proto).await;
        let mut body = chat("gpt-4o-mini", true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let resp = client.post_json("/v1/chat/completions", body).await;
        assert_eq!(resp.status, 200);
        let (trace_id, server_id, flags) = ids(resp.header("traceresponse").unwrap());
        assert_eq!(flags, "01");
        let text = resp.text().await;
        assert!(text.contains("[DONE]"));
        let spans = collector.trace(&trace_id, 3).await;

        let server = one(&spans, |s| s.kind == SERVER);
        assert_eq!(
            server.span_id, server_id,
            "traceresponse names the request's span"
        );
        assert_eq!(server.parent, "", "a new trace: the client sent none");
        assert_eq!(server.name, "POST /v1/chat/completions");
        assert_eq!(server.service, "edge-test");
        assert_eq!(server.attr("network.protocol.name"), "http");
        assert_eq!(server.attr("network.protocol.version"), version(proto));
        assert_eq!(server.attr("http.response.status_code"), "200");
        assert_eq!(server.attr("h3gate.outcome"), "complete");
        assert_eq!(server.attr("gen_ai.request.model"), "gpt-4o-mini");
        assert_eq!(server.attr("gen_ai.usage.input_tokens"), "7");
        assert_eq!(server.attr("gen_ai.usage.output_tokens"), "5");
        assert_eq!(server.attr("client.address"), "", "off by default");
        assert!(server.events.contains(&"gen_ai.first_token".to_string()));
        // The QUIC connection's facts, on HTTP/3 only.
        let rtt = server.attr("h3gate.quic.rtt_ms");
        if proto == Proto::H3 {
            assert!(rtt.parse::<f64>().is_ok_and(|ms| ms > 0.0), "{server:#?}");
            assert_eq!(server.attr("h3gate.quic.zero_rtt"), "false");
            assert!(server
                .attr("h3gate.quic.handshake_ms")
                .parse::<f64>()
                .is_ok());
        } else {
            assert_eq!(rtt, "");
        }

        let admission = one(&spans, |s| s.kind == INTERNAL);
        assert_eq!(
            (admission.name.as_str(), admission.parent.as_str()),
            ("admission", server_id.as_str())
        );

        let attempt = one(&spans, |s| s.kind == CLIENT);
        assert_eq!(attempt.parent, server_id);
        assert_eq!(attempt.name, "chat gpt-4o-mini");
        assert_eq!(attempt.attr("gen_ai.system"), "openai");
        assert_eq!(attempt.attr("h3gate.target"), "up");
        assert_eq!(attempt.attr("h3gate.attempt"), "1");
        assert_eq!(attempt.attr("http.response.status_code"), "200");
        assert_eq!(attempt.attr("gen_ai.usage.output_tokens"), "5");
        assert_eq!(attempt.attributes.get("h3gate.attempt.kind"), None);
        assert_eq!(attempt.events, ["gen_ai.first_byte", "gen_ai.first_token"]);
        assert!(attempt.start >= server.start && attempt.end <= server.end);

        // The attempt's context reached the upstream.
        let seen = gw.upstream.seen();
        let last = seen.last().unwrap();
        let sent = last.headers["traceparent"].to_str().unwrap();
        assert_eq!(
            ids(sent),
            (trace_id.clone(), attempt.span_id.clone(), "01".into())
        );
        // Never the key.
        for s in &spans {
            assert!(!format!("{s:?}").contains(common::UPSTREAM_KEY));
        }
    }
}

#[tokio::test]
async fn a_failover_is_two_attempt_spans_and_a_mid_stream_failure_an_error() {
    let collector = Collector::start().await;
    let gw = Gateway::start_with(|c| traced(c, &collector.url())).await;
    for proto in PROTOS {
        let client = gw.client(proto).await;
        let resp = client
            .post_json("/v1/chat/completions", chat("failover", false))
            .await;
        assert_eq!(resp.status, 200);
        let (trace_id, server_id, _) = ids(resp.header("traceresponse").unwrap());
        resp.text().await;
        let spans = collector.trace(&trace_id, 4).await;
        let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT).collect();
        attempts.sort_by_key(|s| s.attr("h3gate.attempt").to_string());
        assert_eq!(attempts.len(), 2, "{spans:#?}");
        assert!(attempts.iter().all(|a| a.parent == server_id));
        assert_eq!(attempts[0].attr("h3gate.target"), "dead");
        assert_eq!(attempts[0].status, 2, "the failed attempt is an error");
        assert_eq!(attempts[0].attr("h3gate.outcome"), "connect error");
        assert_eq!(attempts[1].attr("h3gate.target"), "up");
        assert_eq!(attempts[1].attr("h3gate.attempt.kind"), "failover");
        assert_eq!(attempts[1].attr("h3gate.attempt.reason"), "connect error");
        assert_eq!(attempts[1].status, 0);
        let server = one(&spans, |s| s.kind == SERVER);
        assert_eq!(server.status, 0, "the request succeeded");

        let resp = client
            .post_json("/v1/chat/completions", chat("drop-mid-stream", true))
            .await;
        assert_eq!(resp.status, 200);
        let (trace_id, _, _) = ids(resp.header("traceresponse").unwrap());
        let _ = resp.text_and_end().await;
        let spans = collector.trace(&trace_id, 3).await;
        let server = one(&spans, |s| s.kind == SERVER);
        assert_eq!(server.status, 2, "{server:#?}");
        assert!(
            ["upstream_failed", "error"].contains(&server.attr("h3gate.outcome")),
            "{server:#?}"
        );
        let attempt = one(&spans, |s| s.kind == CLIENT);
        assert_eq!(attempt.status, 2, "the serving attempt failed mid-stream");
    }
}

#[tokio::test]
async fn a_cancelled_request_ends_its_spans_as_cancelled() {
    let collector = Collector::start().await;
    let gw = Gateway::start_with(|c| {
        traced(c, &collector.url());
        c.routes.insert(
            0,
            h3gate::config::RouteConfig {
                model: "slow-*".into(),
                targets: vec!["up".into()],
                ..Default::default()
            },
        );
    })
    .await;
    for proto in PROTOS {
        let before = collector.spans().len();
        let client = gw.client(proto).await;
        let request = client.post_json("/v1/chat/completions", chat("slow-3000", false));
        assert!(tokio::time::timeout(Duration::from_millis(400), request)
            .await
            .is_err());
        drop(client);
        // Both spans arrive: the request's and its attempt's.
        let cancelled = || {
            let new: Vec<Span> = collector.spans().into_iter().skip(before).collect();
            let server = new.iter().find(|s| s.kind == SERVER)?.clone();
            let trace: Vec<Span> = new
                .into_iter()
                .filter(|s| s.trace_id == server.trace_id)
                .collect();
            (trace.iter().filter(|s| s.kind != INTERNAL).count() >= 2).then_some(trace)
        };
        let arrived =
            common::wait_until(Duration::from_secs(5), async || cancelled().is_some()).await;
        assert!(
            arrived,
            "{proto:?}: no cancelled spans: {:#?}",
            collector.spans()
        );
        let spans = cancelled().unwrap();
        let server = one(&spans, |s| s.kind == SERVER);
        assert_eq!(server.attr("h3gate.outcome"), "cancelled", "{proto:?}");
        assert_eq!(server.attr("http.response.status_code"), "");
        let attempt = one(&spans, |s| s.kind == CLIENT);
        assert_eq!(attempt.attr("h3gate.outcome"), "cancelled", "{proto:?}");
        assert_eq!(attempt.parent, server.span_id);
    }
}

const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A caller's trace per protocol (each its own, so their spans do not mix).
fn incoming(proto: Proto) -> (String, String) {
    let trace = format!("0af7651916cd43dd8448eb211c8031{:02x}", proto as u8);
    (format!("00-{trace}-b7ad6b7169203331-01"), trace)
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_into_the_upstream_when_trusted() {
    let collector = Collector::start().await;
    let gw = Gateway::start_with(|c| {
        traced(c, &collector.url());
        c.tracing.trust_incoming = TrustIncoming::Always;
    })
    .await;
    for proto in PROTOS {
        let client = gw.client(proto).await;
        let (parent, caller) = incoming(proto);
        let resp = client
            .request(
                http::Method::POST,
                "/v1/chat/completions",
                &[("traceparent", &parent), ("tracestate", "vendor=abc")],
                common::TestBody::Json(chat("gpt-4o-mini", false)),
            )
            .await;
        assert_eq!(resp.status, 200);
        let (trace_id, server_id, _) = ids(resp.header("traceresponse").unwrap());
        assert_eq!(trace_id, caller, "{proto:?}");
        resp.text().await;
        let spans = collector.trace(&trace_id, 3).await;
        let server = one(&spans, |s| s.kind == SERVER && s.span_id == server_id);
        assert_eq!(server.parent, "b7ad6b7169203331");
        let attempt = one(&spans, |s| s.kind == CLIENT && s.parent == server_id);
        let seen = gw.upstream.seen();
        let last = seen.last().unwrap();
        let sent = last.headers["traceparent"].to_str().unwrap();
        assert_eq!(ids(sent).0, trace_id);
        assert_eq!(ids(sent).1, attempt.span_id);
        assert_eq!(last.headers["tracestate"], "vendor=abc");
    }
}

#[tokio::test]
async fn an_untrusted_clients_traceparent_starts_a_new_trace() {
    let collector = Collector::start().await;
    // The default: only trusted proxies' (none here).
    let gw = Gateway::start_with(|c| traced(c, &collector.url())).await;
    for proto in PROTOS {
        let client = gw.client(proto).await;
        let resp = client
            .request(
                http::Method::POST,
                "/v1/chat/completions",
                &[("traceparent", INCOMING)],
                common::TestBody::Json(chat("gpt-4o-mini", false)),
            )
            .await;
        let (trace_id, _, _) = ids(resp.header("traceresponse").unwrap());
        assert_ne!(trace_id, "0af7651916cd43dd8448eb211c80319c");
        resp.text().await;
        let spans = collector.trace(&trace_id, 3).await;
        assert_eq!(one(&spans, |s| s.kind == SERVER).parent, "");
    }
}

#[tokio::test]
async fn sampling_zero_exports_nothing_but_still_propagates() {
    let collector = Collector::start().await;
    let mut gw = Gateway::start_with(|c| {
        traced(c, &collector.url());
        c.tracing.sample_ratio = Some(0.0);
    })
    .await;
    for proto in PROTOS {
        let client = gw.client(proto).await;
        let resp = client
            .post_json("/v1/chat/completions", chat("gpt-4o-mini", true))
            .await;
        let (trace_id, _, flags) = ids(resp.header("traceresponse").unwrap());
        assert_eq!(flags, "00", "not sampled");
        resp.text().await;
        let seen = gw.upstream.seen();
        let sent = seen.last().unwrap().headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!((ids(&sent).0, ids(&sent).2), (trace_id, "00".to_string()));
    }
    // Shutting down sends whatever is queued: nothing.
    gw.begin_shutdown();
    gw.stopped().await.unwrap();
    assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
}

#[tokio::test]
async fn shutting_down_sends_the_spans_still_queued() {
    let collector = Collector::start().await;
    let mut gw = Gateway::start_with(|c| {
        traced(c, &collector.url());
        // Longer than the test: only the exit sends them.
        c.tracing.export_interval = h3gate::config::Duration::secs(600);
    })
    .await;
    let client = gw.client(Proto::H2).await;
    let resp = client
        .post_json("/v1/chat/completions", chat("gpt-4o-mini", false))
        .await;
    let (trace_id, _, _) = ids(resp.header("traceresponse").unwrap());
    resp.text().await;
    drop(client);
    gw.begin_shutdown();
    gw.stopped().await.unwrap();
    let spans: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect();
    assert_eq!(spans.len(), 3, "{spans:#?}");
}

#[tokio::test]
async fn a_silent_collector_costs_requests_nothing_and_drops_are_counted() {
    let silent = Collector::silent().await;
    let gw = Gateway::start_with(|c| {
        traced(c, &format!("http://{silent}"));
        c.tracing.queue_size = 4;
        c.tracing.batch_size = 2;
    })
    .await;
    for proto in PROTOS {
        let client = gw.client(proto).await;
        for _ in 0..10 {
            let resp = client
                .post_json("/v1/chat/completions", chat("gpt-4o-mini", false))
                .await;
            assert_eq!(resp.status, 200);
            assert!(resp.header("traceresponse").is_some());
            resp.text().await;
        }
    }
    let dropped = gw
        .metric("h3gate_trace_spans_total{result=\"dropped\"}")
        .await;
    assert!(dropped > 0.0, "a full queue drops spans, counted");
}
