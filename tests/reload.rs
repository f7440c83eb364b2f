//! Hot reload under traffic, rejected reloads, and `h3gate check` agreeing
//! with what a reload decides.

mod common;

use common::{chat, Gateway, Proto, TestBody};
use http::Method;

over_every_protocol!(reload_under_streaming_traffic);

/// A chat body of about `size` bytes.
fn sized_chat(model: &str, size: usize) -> Vec<u8> {
    let filler = "x".repeat(size.saturating_sub(120));
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": filler}]})
        .to_string()
        .into_bytes()
}

async fn reload_under_streaming_traffic(p: Proto) {
    let gw = Gateway::start().await;
    let c = std::sync::Arc::new(gw.client(p).await);

    // A stream that spans the reload.
    let mut stream = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    let first = stream.chunk().await.unwrap().unwrap();

    // Before: the route goes to `up`, a 2KB body is fine.
    let before = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[],
            TestBody::Bytes(sized_chat("reloadme", 2048)),
        )
        .await;
    assert_eq!(before.status, 200);
    assert_eq!(before.header("x-h3gate-target"), Some("up"));

    // Traffic that keeps flowing while the configuration changes.
    let traffic = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..30 {
                let r = c
                    .post_json("/v1/chat/completions", chat("reloadme", false))
                    .await;
                statuses.push(r.status);
                r.text().await;
                // The traffic's pace (load, not a wait for anything).
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            statuses
        })
    };

    gw.edit_config(|t| {
        t.replace(
            "model = \"reloadme\"\ntargets = [\"up\"]",
            "model = \"reloadme\"\ntargets = [\"mock\"]",
        )
        .replace("max_request_body = \"64KB\"", "max_request_body = \"1KB\"")
    });
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!([]));

    // After: the new route and the new limit apply to new requests.
    let after = c
        .post_json("/v1/chat/completions", chat("reloadme", false))
        .await;
    assert_eq!(after.header("x-h3gate-target"), Some("mock"));
    let too_big = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[],
            TestBody::Bytes(sized_chat("reloadme", 2048)),
        )
        .await;
    assert_eq!(too_big.status, 413);

    // Nothing failed, and the stream that started before the reload completes.
    let statuses = traffic.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    gw.upstream.release();
    let mut all = String::from_utf8(first.to_vec()).unwrap();
    all.push_str(&stream.text().await);
    assert!(
        all.trim_end().ends_with("data: [DONE]"),
        "stream completed: {all}"
    );
}

const BAD_EDIT: (&str, &str) = (
    "[quic]\n",
    "[quic]\nmax_concurrent_uni_streams = 1\nstream_window = \"1MB\"\n",
);

fn check(path: &std::path::Path) -> (bool, Vec<String>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_h3gate"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect();
    (out.status.success(), problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_config_and_check_agrees() {
    let gw = Gateway::start().await;
    let c = gw.client(Proto::H2).await;
    assert_eq!(
        check(&gw.config_path),
        (true, vec![]),
        "the running config checks clean"
    );

    gw.edit_config(|t| {
        let t = if t.contains("[quic]") {
            t
        } else {
            format!("{t}\n[quic]\n")
        };
        t.replace(
            "model = \"reloadme\"\ntargets = [\"up\"]",
            "model = \"reloadme\"\ntargets = [\"mock\"]",
        )
        .replacen(BAD_EDIT.0, BAD_EDIT.1, 1)
    });
    let (status, body) = gw.reload().await;
    assert_eq!(status, 422, "{body}");
    let problems: Vec<String> = body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("quic.max_concurrent_uni_streams:")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("quic.stream_window: unknown key")),
        "{problems:?}"
    );

    // The old configuration keeps serving.
    let resp = c
        .post_json("/v1/chat/completions", chat("reloadme", false))
        .await;
    assert_eq!(resp.header("x-h3gate-target"), Some("up"));

    // `check` says exactly what the reload said.
    let (ok, check_problems) = check(&gw.config_path);
    assert!(!ok);
    assert_eq!(check_problems, problems);

    // The rejection is counted.
    let metrics = gw.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("h3gate_config_reloads_total{result=\"error\"}")),
        "{metrics}"
    );

    // Fixed: check and reload both accept it.
    gw.edit_config(|t| t.replacen(BAD_EDIT.1, BAD_EDIT.0, 1));
    assert_eq!(check(&gw.config_path), (true, vec![]));
    assert_eq!(gw.reload().await.0, 200);
    let resp = c
        .post_json("/v1/chat/completions", chat("reloadme", false))
        .await;
    assert_eq!(resp.header("x-h3gate-target"), Some("mock"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_need_a_restart_are_reported() {
    let gw = Gateway::start().await;
    gw.edit_config(|t| t.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["restart_required"],
        serde_json::json!(["server.listen"])
    );
    // Still serving on the original sockets.
    let resp = gw.client(Proto::H3).await.get("/health").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_admin_token() {
    let gw = Gateway::start().await;
    let resp = reqwest::Client::new()
        .post(format!("http://{}/admin/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// A malformed chat request: counts as a failure for abuse control.
async fn malformed(c: &common::Client) -> u16 {
    let r = c
        .request(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            TestBody::Bytes(b"{not json".to_vec()),
        )
        .await;
    r.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_abuse_thresholds_apply_and_keep_the_counters_and_denies() {
    let gw = Gateway::start().await;
    let c = gw.client(Proto::H2).await;
    // One failure under the default threshold (20).
    assert_eq!(malformed(&c).await, 400);

    // `state_file` unchanged (unset): the new threshold must still apply.
    gw.edit_config(|t| format!("{t}\n[abuse]\nmax_failures = 2\n"));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");

    // The failure counted before the reload still counts: one more denies.
    assert_eq!(malformed(&c).await, 400);
    let denied = c
        .post_json("/v1/chat/completions", chat("mock-1", false))
        .await;
    assert_eq!(denied.status, 403, "denied after the second failure");

    // Another reload keeps the running deny list.
    gw.edit_config(|t| t.replace("max_failures = 2", "max_failures = 5"));
    assert_eq!(gw.reload().await.0, 200);
    let still = c
        .post_json("/v1/chat/completions", chat("mock-1", false))
        .await;
    assert_eq!(still.status, 403, "the deny survives the reload");
}

/// A reload that raises the admission limit admits the requests already
/// queued (they are not stranded on a gate of the old configuration), and
/// old and new limits do not add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_admission_limits_apply_to_the_queue() {
    let gw = Gateway::start_with(|c| {
        c.admission.max_concurrent = 1;
        c.admission.max_queue = 4;
        c.admission.max_wait = h3gate::config::Duration::secs(60);
    })
    .await;
    gw.edit_config(|t| {
        format!("{t}\n[admission]\nmax_concurrent = 1\nmax_queue = 4\nmax_wait = \"60s\"\n")
    });
    let c = std::sync::Arc::new(gw.client(Proto::H2).await);
    let held = c
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    assert_eq!(held.status, 200, "the one slot is taken");
    let queued = {
        let c = c.clone();
        tokio::spawn(async move {
            c.post_json("/v1/chat/completions", chat("gpt-4o-mini", false))
                .await
                .status
        })
    };
    let depth = "h3gate_admission_queue_depth{scope=\"gateway\"}";
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while gw.metric(depth).await != 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the second request waits in the queue");
    gw.edit_config(|t| {
        t.replace(
            "max_concurrent = 1\nmax_queue = 4",
            "max_concurrent = 2\nmax_queue = 4",
        )
    });
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), queued)
        .await
        .expect("the queued request is admitted by the new limit")
        .unwrap();
    assert_eq!(got, 200);
    gw.upstream.release();
    assert!(held.text().await.contains("[DONE]"));
}
