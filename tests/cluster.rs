//! N replicas behaving as one gateway through a real Redis: the cluster's
//! own signals (readiness, metrics) as Redis comes and goes.

mod common;

use std::time::Duration;

use common::client::Proto;
use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::upstream::Upstream;
use common::wait::wait_until;
use h3gate::metrics::FAMILIES;

/// A replica with per-address limits, so every request asks Redis at
/// `url`; `cluster` replaces the `[cluster]` header (to add settings).
fn replica(
    dir: &std::path::Path,
    url: &str,
    upstream: &Upstream,
    node_id: u64,
    cluster: &str,
) -> Replica {
    Replica::spawn(&ReplicaSpec {
        dir,
        redis_url: url,
        node_id,
        upstream: &upstream.base_url(),
        extra: "",
        replace: &[
            ("required = true", "required = false"),
            ("per_ip_rpm = 0", "per_ip_rpm = 6000\nper_ip_burst = 100"),
            ("[cluster]\n", cluster),
        ],
    })
}

async fn chat_status(r: &Replica, ca: &[u8], proto: Proto) -> u16 {
    let c = r.client(proto, ca).await;
    let resp = c
        .post_json("/v1/chat/completions", common::chat("gpt-4o-mini", false))
        .await;
    let status = resp.status;
    resp.text().await;
    status
}

/// Up, down (Redis killed: served under the local policy, ready but
/// degraded, fallbacks and errors counted), up again — and every
/// `h3gate_cluster_*` family this drives is exported with its HELP and TYPE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reports_redis_in_ready_and_metrics_as_it_comes_and_goes() {
    let mut redis = Redis::start();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_cert(dir.path());
    let r = replica(dir.path(), &redis.url(), &upstream, 1, "[cluster]\n");
    let up = async |want: f64| {
        wait_until(Duration::from_secs(5), async || {
            r.metric("h3gate_cluster_up").await == want
        })
        .await
    };
    assert!(up(1.0).await, "{}", r.metrics().await);
    let (status, body) = r.ready().await;
    assert_eq!(
        (status, &body["cluster"]["redis"]),
        (200, &"up".into()),
        "{body}"
    );
    for proto in [Proto::H3, Proto::H2, Proto::H1] {
        assert_eq!(chat_status(&r, &ca, proto).await, 200, "{proto:?}");
    }

    redis.kill();
    // The next decision finds Redis gone; the probe confirms it.
    for proto in [Proto::H3, Proto::H2, Proto::H1] {
        assert_eq!(
            chat_status(&r, &ca, proto).await,
            200,
            "{proto:?} without redis"
        );
    }
    assert!(up(0.0).await, "{}", r.metrics().await);
    let (status, body) = r.ready().await;
    assert_eq!(
        status, 200,
        "a Redis outage must not pull the replica out: {body}"
    );
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["cluster"]["redis"], "down", "{body}");
    let local = "h3gate_cluster_fallbacks_total{what=\"rate_limit\",decision=\"local\"}";
    assert!(r.metric(local).await >= 1.0, "{}", r.metrics().await);

    redis.start_again();
    assert!(up(1.0).await, "recovers by itself: {}", r.metrics().await);
    assert_eq!(r.ready().await.1["status"], "ready");

    let text = r.metrics().await;
    for f in FAMILIES
        .iter()
        .filter(|f| f.name.starts_with("h3gate_cluster_"))
    {
        if f.name == "h3gate_cluster_tickets_total" {
            continue; // 0-RTT resumption: tests/cluster_tickets.rs
        }
        assert!(
            text.contains(&format!("# HELP {} ", f.name)),
            "{} undescribed:\n{text}",
            f.name
        );
        assert!(
            text.contains(&format!("# TYPE {} ", f.name)),
            "{} untyped",
            f.name
        );
    }
}

/// `rediss://`: a replica reaches a TLS Redis whose certificate its
/// `[cluster] ca_file` verifies (and its limits are decided there); a
/// replica without that CA does not trust it, and stays on the failure
/// policy, still serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_redis_over_tls_only_when_it_verifies_its_certificate() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_cert(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let redis = Redis::start_tls(&cert, &key);
    let url = redis.tls_url();
    let ca_file = dir.path().join("ca.pem");
    let with_ca = format!("[cluster]\nca_file = \"{}\"\n", ca_file.display());
    let spawn =
        |node_id: u64, cluster: &str| replica(dir.path(), &url, &upstream, node_id, cluster);
    let trusted = spawn(1, &with_ca);
    let up = wait_until(Duration::from_secs(5), async || {
        trusted.metric("h3gate_cluster_up").await == 1.0
    })
    .await;
    assert!(up, "{}", trusted.log());
    assert_eq!(chat_status(&trusted, &ca, Proto::H2).await, 200);
    let calls = "h3gate_cluster_redis_seconds_count{op=\"rate_limit\"}";
    assert!(
        trusted.metric(calls).await >= 1.0,
        "decided in Redis over TLS"
    );

    let untrusted = spawn(2, "[cluster]\n");
    assert_eq!(
        chat_status(&untrusted, &ca, Proto::H2).await,
        200,
        "served locally"
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // probes at 250 ms
    assert_eq!(untrusted.metric("h3gate_cluster_up").await, 0.0);
    assert_eq!(untrusted.ready().await.1["cluster"]["redis"], "down");
}
