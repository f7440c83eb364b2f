//! N replicas behaving as one gateway through a real Redis.

mod common;

use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_redis_and_report_it_in_ready_and_metrics() {
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _ca = dev_cert(dir.path());
    let url = redis.url();
    let base = upstream.base_url();
    let spec = ReplicaSpec {
        dir: dir.path(),
        redis_url: &url,
        node_id: 1,
        upstream: &base,
        extra: "",
        replace: &[],
    };
    let r = Replica::spawn(&spec);
    let up = common::wait::wait_until(std::time::Duration::from_secs(5), async || {
        r.metric("h3gate_cluster_up").await == 1.0
    })
    .await;
    assert!(up, "{}", r.metrics().await);
    let (status, body) = r.ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cluster"]["redis"], "up", "{body}");
}
