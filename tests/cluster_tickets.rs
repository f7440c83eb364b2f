//! Session tickets shared by three replicas through a real Redis: a ticket
//! one replica issued resumes at another with 0-RTT exactly once; a replay
//! to a third is refused early data (by TLS when the take has reached it,
//! by the claim in Redis when it has not); TCP sessions resume anywhere.
//!
//! Early requests go through a relay that holds each client's
//! handshake-completing packets (300 ms), so they reach the replica, as
//! over a real round trip, before its handshake completes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{dev_cert, Redis, Replica, ReplicaSpec};
use common::relay::{Relay, RelayConfig};
use common::tools::Gtlsclient;
use common::upstream::Upstream;
use common::wait::wait_until;

const BOUND: Duration = Duration::from_secs(10);
/// A GET the replicas forward upstream: the upstream sees `Early-Data`.
const EARLY_GET: &str = "/v1/models/gpt-4o-mini";

/// Redis, the upstream and three replicas (node ids 1, 2, 3), without
/// client keys.
struct Cluster {
    redis: Redis,
    upstream: Upstream,
    replicas: Vec<Replica>,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = Redis::start();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dev_cert(dir.path());
        let (url, base) = (redis.url(), upstream.base_url());
        let replicas: Vec<Replica> = (1..=3)
            .map(|node_id| {
                Replica::spawn(&ReplicaSpec {
                    dir: dir.path(),
                    redis_url: &url,
                    node_id,
                    upstream: &base,
                    extra: "",
                    // A generous Redis timeout: a loaded test machine must
                    // not turn a first use into a hold.
                    replace: &[
                        ("required = true", "required = false"),
                        ("secret = ", "timeout = \"1s\"\nsecret = "),
                    ],
                })
            })
            .collect();
        for r in &replicas {
            // Both stores (QUIC, TCP) listen for the others' tickets.
            let ready = wait_until(BOUND, async || syncs(r, "subscribed").await >= 2.0).await;
            assert!(ready, "the replica subscribed:\n{}", r.log());
        }
        Cluster {
            redis,
            upstream,
            replicas,
            ca,
            _dir: dir,
        }
    }

    /// Waits until `replica` has taken in `n` more tickets than `before`.
    async fn received(&self, replica: usize, before: f64, n: f64) {
        let r = &self.replicas[replica];
        let got = wait_until(BOUND, async || syncs(r, "received").await >= before + n).await;
        assert!(got, "replica {} received the tickets", replica + 1);
    }

    /// A full handshake at A (gtlsclient saving its session): once B and C
    /// have taken in A's tickets, two copies of the session, for B and C.
    async fn session_from_a(&self, ng: &Gtlsclient) -> (tempfile::TempDir, tempfile::TempDir) {
        let (a, b, r3) = (&self.replicas[0], &self.replicas[1], &self.replicas[2]);
        let at_a = tempfile::tempdir().unwrap();
        let (b0, c0) = (syncs(b, "received").await, syncs(r3, "received").await);
        let first = ng.run(a.udp, "/health", &resume_args(at_a.path())).await;
        assert_eq!(first.status, Some(200), "A:\n{}", first.log_tail);
        self.received(1, b0, 2.0).await;
        self.received(2, c0, 2.0).await;
        (copy_session(at_a.path()), copy_session(at_a.path()))
    }

    /// Marks every session stored in Redis as taken, without telling the
    /// replicas: what they see when another replica took a ticket and its
    /// message has not reached them yet.
    fn take_all_in_redis(&self) -> usize {
        let mut c = self.redis.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("h3gate:ticket:quic:*")
            .query(&mut c)
            .unwrap();
        for k in &keys {
            let _: Option<String> = redis::cmd("SET")
                .arg(k)
                .arg("taken")
                .arg("XX")
                .arg("KEEPTTL")
                .query(&mut c)
                .unwrap();
        }
        keys.len()
    }
}

async fn syncs(r: &Replica, result: &str) -> f64 {
    r.metric(&format!(
        "h3gate_cluster_syncs_total{{what=\"ticket\",result=\"{result}\"}}"
    ))
    .await
}

async fn early(r: &Replica, outcome: &str) -> f64 {
    r.metric(&format!(
        "h3gate_quic_early_requests_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

async fn tickets(r: &Replica, result: &str) -> f64 {
    r.metric(&format!(
        "h3gate_cluster_tickets_total{{result=\"{result}\"}}"
    ))
    .await
}

fn hold_handshake() -> RelayConfig {
    RelayConfig {
        hold_handshake: Some(Duration::from_millis(300)),
        ..RelayConfig::clean()
    }
}

/// `--session-file`/`--tp-file` in `dir`.
fn resume_args(dir: &std::path::Path) -> [String; 2] {
    [
        format!("--session-file={}", dir.join("session.pem").display()),
        format!("--tp-file={}", dir.join("tp.txt").display()),
    ]
}

/// A copy of `from`'s saved session (each run overwrites its own).
fn copy_session(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for f in ["session.pem", "tp.txt"] {
        std::fs::copy(from.join(f), to.path().join(f)).unwrap();
    }
    to
}

/// The last request the upstream saw, and whether it came marked as early.
fn last_upstream(c: &Cluster) -> (String, bool) {
    let seen = c.upstream.seen();
    let last = seen.last().expect("the upstream saw a request");
    (last.path.clone(), last.headers.get("early-data").is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_ticket_from_a_resumes_with_0rtt_on_b_once_and_is_refused_early_data_on_c() {
    let c = Cluster::start().await;
    let (a, b, r3) = (&c.replicas[0], &c.replicas[1], &c.replicas[2]);
    let ng = Gtlsclient::require();

    // A full handshake at A: its tickets reach B and C.
    let (for_b, for_c) = c.session_from_a(&ng).await;

    // B: resumed with early data, the early GET served before the handshake.
    let relay_b = Relay::start(b.udp, hold_handshake()).await;
    let at_b = ng
        .run(relay_b.addr, EARLY_GET, &resume_args(for_b.path()))
        .await;
    assert!(at_b.sent_0rtt, "B: 0-RTT sent:\n{}", at_b.log_tail);
    assert!(
        !at_b.early_rejected,
        "B: early data accepted:\n{}",
        at_b.log_tail
    );
    assert_eq!(at_b.status, Some(200), "B:\n{}", at_b.log_tail);
    assert_eq!(tickets(b, "first_use").await, 1.0, "{}", b.metrics().await);
    assert_eq!(early(b, "served").await, 1.0, "served as early data");
    assert_eq!(last_upstream(&c), (EARLY_GET.to_string(), true));

    // C, once B's take has reached it: the same ticket gets a full
    // handshake, its early data refused by TLS; the request is answered.
    let dropped = wait_until(BOUND, async || syncs(r3, "dropped").await >= 1.0).await;
    assert!(dropped, "C forgot the ticket B took");
    let relay_c = Relay::start(r3.udp, hold_handshake()).await;
    let at_c = ng
        .run(relay_c.addr, EARLY_GET, &resume_args(for_c.path()))
        .await;
    assert!(
        at_c.sent_0rtt,
        "C: the replay sent 0-RTT:\n{}",
        at_c.log_tail
    );
    assert!(
        at_c.early_rejected,
        "C: early data refused:\n{}",
        at_c.log_tail
    );
    assert_eq!(at_c.status, Some(200), "C:\n{}", at_c.log_tail);
    assert_eq!(early(r3, "served").await, 0.0);
    assert_eq!(last_upstream(&c), (EARLY_GET.to_string(), false));
    assert_eq!(
        early(a, "served").await + early(r3, "served").await,
        0.0,
        "early data served once in the cluster"
    );
}

/// The race the claim closes: C still holds the ticket (another replica
/// took it; the message has not arrived), so TLS accepts the early data —
/// but Redis says taken, and the early GET waits for the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_replay_to_a_replica_that_still_holds_the_ticket_is_not_served_early() {
    let c = Cluster::start().await;
    let (a, r3) = (&c.replicas[0], &c.replicas[2]);
    let ng = Gtlsclient::require();
    let at_a = tempfile::tempdir().unwrap();
    let c0 = syncs(r3, "received").await;
    let first = ng.run(a.udp, "/health", &resume_args(at_a.path())).await;
    assert_eq!(first.status, Some(200), "A:\n{}", first.log_tail);
    c.received(2, c0, 2.0).await;
    assert!(c.take_all_in_redis() >= 2, "A's tickets are in Redis");

    let relay = Relay::start(r3.udp, hold_handshake()).await;
    let run = ng
        .run(relay.addr, EARLY_GET, &resume_args(at_a.path()))
        .await;
    assert!(run.sent_0rtt, "0-RTT sent:\n{}", run.log_tail);
    assert!(!run.early_rejected, "C's TLS took it:\n{}", run.log_tail);
    assert_eq!(
        run.status,
        Some(200),
        "answered after the handshake:\n{}",
        run.log_tail
    );
    assert_eq!(tickets(r3, "replayed").await, 1.0, "{}", r3.metrics().await);
    assert_eq!(early(r3, "served").await, 0.0, "never served as early data");
    assert!(early(r3, "held").await >= 1.0);
    assert_eq!(last_upstream(&c), (EARLY_GET.to_string(), false));
}

/// Our own clients: rustls over quinn resumes at B with 0-RTT from A's
/// ticket, its early GET served early; rustls over TCP resumes at B from
/// A's TLS 1.3 ticket and from A's TLS 1.2 session id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_clients_resume_at_another_replica_over_quic_and_tcp() {
    common::init_logs();
    let c = Cluster::start().await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);

    let quic = QuicResuming::new(&c.ca);
    let before = syncs(b, "received").await;
    quic.request(a.udp, "/health").await;
    c.received(1, before, 2.0).await;
    let relay = Relay::start(b.udp, hold_handshake()).await;
    let (status, accepted) = quic.early_request(relay.addr, EARLY_GET).await;
    assert_eq!(status, 200);
    assert!(accepted, "B accepted A's ticket's 0-RTT");
    assert_eq!(early(b, "served").await, 1.0, "{}", b.metrics().await);
    assert_eq!(last_upstream(&c), (EARLY_GET.to_string(), true));

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let tls = tcp_tls(&c.ca, version);
        let before = syncs(b, "received").await;
        assert_eq!(tcp_request(&tls, a.tcp).await, rustls::HandshakeKind::Full);
        let n = if version == &rustls::version::TLS13 {
            2.0
        } else {
            1.0
        };
        c.received(1, before, n).await;
        assert_eq!(
            tcp_request(&tls, b.tcp).await,
            rustls::HandshakeKind::Resumed,
            "{version:?} resumed at another replica"
        );
    }
}

fn tcp_tls(
    ca: &[u8],
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(16),
    ));
    Arc::new(tls)
}

/// One HTTP/1.1 request over TLS (read to the end, so TLS 1.3 tickets
/// arrive); how the handshake went.
async fn tcp_request(
    tls: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut s = tokio::time::timeout(BOUND, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let kind = s.get_ref().1.handshake_kind().unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    kind
}

/// A quinn client that keeps its tickets and sends early data.
struct QuicResuming {
    endpoint: quinn::Endpoint,
}

impl QuicResuming {
    fn new(ca: &[u8]) -> QuicResuming {
        let mut tls = common::client::h3_tls_config(ca, true);
        tls.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(16),
        ));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(common::client::quic_client_config(tls));
        QuicResuming { endpoint }
    }

    /// A full handshake and one GET (the tickets come with the response).
    async fn request(&self, server: std::net::SocketAddr, path: &str) {
        let conn = self.endpoint.connect(server, "localhost").unwrap();
        let conn = tokio::time::timeout(BOUND, conn).await.unwrap().unwrap();
        assert_eq!(get(&conn, server, path).await, 200);
        conn.close(0u32.into(), b"done");
    }

    /// Connects with 0-RTT and sends a GET as early data: its status, and
    /// whether the server accepted the early data.
    async fn early_request(&self, server: std::net::SocketAddr, path: &str) -> (u16, bool) {
        let connecting = self.endpoint.connect(server, "localhost").unwrap();
        let (conn, accepted) = connecting
            .into_0rtt()
            .unwrap_or_else(|_| panic!("the client holds a ticket allowing early data"));
        let status = get(&conn, server, path).await;
        let accepted = tokio::time::timeout(BOUND, accepted).await.unwrap();
        conn.close(0u32.into(), b"done");
        (status, accepted)
    }
}

async fn get(conn: &quinn::Connection, server: std::net::SocketAddr, path: &str) -> u16 {
    let exchange = async {
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        let drive =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let req = http::Request::get(format!("https://localhost:{}{path}", server.port()))
            .body(())
            .unwrap();
        let mut s = send.send_request(req).await.unwrap();
        s.finish().await.unwrap();
        let status = s.recv_response().await.unwrap().status().as_u16();
        while s.recv_data().await.unwrap().is_some() {}
        drive.abort();
        status
    };
    tokio::time::timeout(BOUND, exchange).await.unwrap()
}

/// Redis gone after A's tickets were shared: B still resumes from its own
/// store (the handshake never waits for Redis), but the first use cannot
/// be confirmed, so the early GET waits for the handshake; counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_early_data_is_held_while_redis_cannot_confirm_the_first_use() {
    let mut c = Cluster::start().await;
    let ng = Gtlsclient::require();
    let at_a = tempfile::tempdir().unwrap();
    let b0 = syncs(&c.replicas[1], "received").await;
    let first = ng
        .run(c.replicas[0].udp, "/health", &resume_args(at_a.path()))
        .await;
    assert_eq!(first.status, Some(200), "A:\n{}", first.log_tail);
    c.received(1, b0, 2.0).await;
    c.redis.kill();

    let b = &c.replicas[1];
    let relay = Relay::start(b.udp, hold_handshake()).await;
    let run = ng
        .run(relay.addr, EARLY_GET, &resume_args(at_a.path()))
        .await;
    assert!(!run.early_rejected, "B resumed locally:\n{}", run.log_tail);
    assert_eq!(
        run.status,
        Some(200),
        "answered after the handshake:\n{}",
        run.log_tail
    );
    assert_eq!(tickets(b, "error").await, 1.0, "{}", b.metrics().await);
    let held = "h3gate_cluster_fallbacks_total{what=\"ticket\",decision=\"hold\"}";
    assert_eq!(b.metric(held).await, 1.0);
    assert_eq!(early(b, "served").await, 0.0);
    assert_eq!(last_upstream(&c), (EARLY_GET.to_string(), false));
}

/// The same saved session replayed at B and C at once (a race, both
/// replicas holding the ticket, neither take announced yet): at most one
/// of them serves early data; both requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_the_same_ticket_at_two_replicas_at_once_is_served_early_at_most_once() {
    let c = Cluster::start().await;
    let (b, r3) = (&c.replicas[1], &c.replicas[2]);
    let ng = Gtlsclient::require();
    let (for_b, for_c) = c.session_from_a(&ng).await;
    let relay_b = Relay::start(b.udp, hold_handshake()).await;
    let relay_c = Relay::start(r3.udp, hold_handshake()).await;
    let (args_b, args_c) = (resume_args(for_b.path()), resume_args(for_c.path()));
    let (at_b, at_c) = tokio::join!(
        ng.run(relay_b.addr, EARLY_GET, &args_b),
        ng.run(relay_c.addr, EARLY_GET, &args_c),
    );
    assert_eq!(at_b.status, Some(200), "B:\n{}", at_b.log_tail);
    assert_eq!(at_c.status, Some(200), "C:\n{}", at_c.log_tail);
    let served = early(b, "served").await + early(r3, "served").await;
    assert!(
        served <= 1.0,
        "early data served {served} times for one ticket"
    );
    let marked = c
        .upstream
        .seen()
        .iter()
        .filter(|s| s.headers.get("early-data").is_some())
        .count();
    assert!(marked <= 1, "the upstream saw {marked} early requests");
}
