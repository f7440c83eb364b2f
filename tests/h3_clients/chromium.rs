//! Headless Chromium as an HTTP/3 client: a page from a local HTTP/1.1
//! origin streams a chat completion and an Anthropic message through the
//! gateway with `fetch` (CORS allowed for that origin), QUIC forced on the
//! gateway's UDP address, the development certificate trusted by its SPKI.

use std::time::Duration;

use serde_json::Value;

use super::{metric_sum, serial};
use crate::common::browser::{spki_sha256_base64, Browser, BrowserOptions, Origin};
use crate::common::relay::{Relay, RelayConfig};
use crate::common::Gateway;

/// The test page. `?gw=https://127.0.0.1:<udp port>` says where the
/// gateway is; `runChecks(model)` streams both surfaces and reports, per
/// request, the status, how many reads the body took (more than one:
/// incremental), the text, and the resource timing's protocol.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>h3gate browser check</title>
<script>
const gateway = new URLSearchParams(location.search).get('gw');
async function stream(path, body, extra) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 10000);
  const out = {path, status: 0, chunks: 0, bytes: 0, text: '', error: null, nextHopProtocol: null};
  try {
    const r = await fetch(gateway + path, {
      method: 'POST', mode: 'cors', cache: 'no-store', signal: ctl.signal,
      headers: Object.assign({'content-type': 'application/json'}, extra),
      body: JSON.stringify(body),
    });
    out.status = r.status;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      out.chunks += 1;
      out.bytes += value.length;
      out.text += dec.decode(value, {stream: true});
    }
  } catch (e) {
    out.error = String(e);
  }
  clearTimeout(timer);
  return out;
}
window.runChecks = async (model) => {
  const messages = [{role: 'user', content: 'Say hi'}];
  const results = [
    await stream('/v1/chat/completions', {model, stream: true, messages}, {}),
    await stream('/v1/messages', {model, stream: true, max_tokens: 16, messages},
                 {'anthropic-version': '2023-06-01'}),
  ];
  // Resource timing entries are added asynchronously: read them at the end.
  // Cross-origin, the protocol is "" unless the gateway sends Timing-Allow-Origin.
  await new Promise(r => setTimeout(r, 50));
  for (const out of results) {
    const entry = performance.getEntriesByType('resource').filter(e => e.name === gateway + out.path).pop();
    if (entry) out.nextHopProtocol = entry.nextHopProtocol;
  }
  return results;
};
window.getModels = async () => {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 10000);
  try {
    const r = await fetch(gateway + '/v1/models', {mode: 'cors', cache: 'no-store', signal: ctl.signal});
    await r.text();
    return r.status;
  } catch (e) {
    return String(e);
  } finally {
    clearTimeout(timer);
  }
};
</script>
"#;

/// A gateway that lets `origin` in, with a mock that streams at 40 tokens/s
/// (so a stream takes several reads).
async fn browser_gateway(origin: &Origin) -> Gateway {
    let allowed = origin.origin();
    Gateway::start_with(move |c| {
        c.cors.allowed_origins = vec![allowed];
        for p in c.providers.iter_mut().filter(|p| p.name == "mock") {
            p.mock.tokens_per_second = 40;
        }
    })
    .await
}

fn browser_options(gw: &Gateway) -> BrowserOptions {
    let cert = std::fs::read(gw.config_path.parent().unwrap().join("cert.pem")).unwrap();
    BrowserOptions {
        force_quic: vec![gw.udp],
        trusted_spki: vec![spki_sha256_base64(&cert)],
        ..BrowserOptions::default()
    }
}

async fn origin() -> Origin {
    Origin::serve(vec![("/h3.html", "text/html; charset=utf-8", PAGE.into())]).await
}

/// The page's base URL for the gateway: QUIC is forced on the UDP address,
/// so the page names the UDP port (the TCP one is never used).
fn gateway_base(gw: &Gateway) -> String {
    format!("https://127.0.0.1:{}", gw.udp.port())
}

/// One page load in a new tab: the page's report, and `(url, protocol,
/// status)` of every gateway response the DevTools protocol saw.
struct Load {
    /// What the optional first script returned (`getModels()`: the status).
    first: Value,
    results: Value,
    responses: Vec<(String, String, u64)>,
}

async fn load(browser: &Browser, origin: &Origin, base: &str, first: &str) -> Result<Load, String> {
    let page = browser.new_page().await;
    let net = page.record_network().await;
    page.navigate(&origin.url(&format!("/h3.html?gw={base}")))
        .await?;
    let first = match first {
        "" => Value::Null,
        js => page.eval(js).await?,
    };
    let results = page.eval("runChecks('mock-1')").await?;
    let responses = net
        .responses()
        .into_iter()
        .filter(|(url, ..)| url.starts_with(base))
        .collect();
    let _ = page.call("Page.close", serde_json::json!({})).await;
    Ok(Load {
        first,
        results,
        responses,
    })
}

/// Every request completed with 200, incrementally (more than one read),
/// whole; every gateway response came over `h3`.
fn check(load: &Load) -> Result<(), String> {
    if !load.first.is_null() && load.first != 200 {
        return Err(format!("GET /v1/models: {}", load.first));
    }
    let results = load.results.as_array().ok_or("no report from the page")?;
    for (r, end) in results.iter().zip(["[DONE]", "message_stop"]) {
        let summary = format!(
            "{} status {} chunks {} error {} nextHopProtocol {}",
            r["path"], r["status"], r["chunks"], r["error"], r["nextHopProtocol"]
        );
        if !r["error"].is_null() || r["status"] != 200 {
            return Err(format!("failed: {summary}"));
        }
        if r["chunks"].as_u64().unwrap_or(0) < 2 {
            return Err(format!("not incremental: {summary}"));
        }
        // Hidden ("") unless the gateway sends Timing-Allow-Origin; if shown, h3.
        if !matches!(r["nextHopProtocol"].as_str(), None | Some("" | "h3")) {
            return Err(format!("page saw another protocol: {summary}"));
        }
        if !r["text"].as_str().unwrap_or_default().contains(end) {
            return Err(format!("incomplete (no {end}): {summary}: {}", r["text"]));
        }
    }
    if results.len() != 2 {
        return Err(format!("{} results", results.len()));
    }
    if load.responses.is_empty() || load.responses.iter().any(|(_, p, _)| p != "h3") {
        return Err(format!("not all over h3: {:?}", load.responses));
    }
    Ok(())
}

/// Ten fresh browser processes (each a new QUIC handshake with Chromium's
/// large, post-quantum ClientHello): every page load completes, over h3,
/// incrementally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_streams_over_h3_in_fresh_browsers() {
    let _turn = serial().await;
    let origin = origin().await;
    let gw = browser_gateway(&origin).await;
    let (opts, base) = (browser_options(&gw), gateway_base(&gw));
    let mut failures = Vec::new();
    let mut ok = 0;
    for run in 0..10 {
        let browser = Browser::launch(&opts).await;
        match load(&browser, &origin, &base, "").await {
            Ok(l) => match check(&l) {
                Ok(()) => {
                    if run == 0 {
                        let r = &l.results;
                        println!(
                            "run 0: chat {} chunks, messages {} chunks, nextHopProtocol {} / {}, CDP protocols {:?}",
                            r[0]["chunks"], r[1]["chunks"], r[0]["nextHopProtocol"], r[1]["nextHopProtocol"], l.responses
                        );
                    }
                    ok += 1;
                }
                Err(e) => failures.push(format!("run {run}: {e}")),
            },
            Err(e) => failures.push(format!(
                "run {run}: {e}\nChromium stderr:\n{}",
                browser.stderr_tail()
            )),
        }
        browser.close().await;
    }
    assert_eq!(
        ok,
        10,
        "Chromium, fresh browser per run: {ok}/10 completed over h3 incrementally\n{}",
        failures.join("\n---\n")
    );
}

/// One browser: a first load, its connections closed through the DevTools
/// protocol (`chrome.benchmarking.closeConnections()`, evaluated in the
/// page, with `--enable-net-benchmarking`), then a second load resumes
/// with 0-RTT — accepted and counted. Through a relay that holds the
/// browser's handshake completion for 150 ms (a round trip, as off
/// loopback), so its early requests are handled before it: otherwise
/// whether they count as early is a race with microseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_resumes_with_zero_rtt_and_is_counted() {
    let _turn = serial().await;
    let origin = origin().await;
    let gw = browser_gateway(&origin).await;
    let hold = RelayConfig {
        hold_handshake: Some(Duration::from_millis(150)),
        ..RelayConfig::clean()
    };
    let relay = Relay::start(gw.udp, hold).await;
    let mut opts = browser_options(&gw);
    opts.force_quic = vec![relay.addr];
    opts.net_benchmarking = true;
    let base = format!("https://127.0.0.1:{}", relay.addr.port());
    let browser = Browser::launch(&opts).await;
    let first = load(&browser, &origin, &base, "getModels()")
        .await
        .unwrap_or_else(|e| panic!("first load: {e}\n{}", browser.stderr_tail()));
    check(&first).unwrap_or_else(|e| panic!("first load: {e}; {}", relay.describe()));

    let page = browser.new_page().await;
    page.navigate(&origin.url(&format!("/h3.html?gw={base}")))
        .await
        .unwrap();
    let closer = "typeof chrome === 'object' && chrome.benchmarking && typeof chrome.benchmarking.closeConnections === 'function'";
    assert_eq!(
        page.eval(closer).await.unwrap(),
        Value::Bool(true),
        "chrome.benchmarking.closeConnections is available"
    );
    page.eval("chrome.benchmarking.closeConnections()")
        .await
        .unwrap();
    let _ = page.call("Page.close", serde_json::json!({})).await;
    // The gateway sees the connection close (bounded).
    let open = "h3gate_quic_connections_open";
    for _ in 0..50 {
        if metric_sum(&gw.metrics_text().await, open) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let before = gw.metrics_text().await;
    let second = load(&browser, &origin, &base, "getModels()")
        .await
        .unwrap_or_else(|e| panic!("second load: {e}\n{}", browser.stderr_tail()));
    check(&second).unwrap_or_else(|e| panic!("second load: {e}; {}", relay.describe()));
    let after = gw.metrics_text().await;
    browser.close().await;
    let accepted = "h3gate_quic_connections_accepted_total";
    for name in [
        accepted,
        "h3gate_quic_zero_rtt_connections_total",
        "h3gate_quic_early_requests_total",
    ] {
        assert!(
            metric_sum(&after, name) > metric_sum(&before, name),
            "{name} went up on the second load: {} -> {} (connections open before: {}); {}",
            metric_sum(&before, name),
            metric_sum(&after, name),
            metric_sum(&before, open),
            relay.describe()
        );
    }
    println!("Chromium 0-RTT: {}", relay.describe());
}
