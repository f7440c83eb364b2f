//! QUIC load balancing across replicas: every connection ID a replica
//! issues carries its `[cluster] node_id` (QUIC-LB unencrypted mode), and
//! replicas sharing `[cluster] secret` share the stateless-reset key and the
//! Retry/NEW_TOKEN token key, so a packet that reaches the wrong replica
//! gets a reset the client accepts and a token from one validates at
//! another. The replicas are in-process gateways; a UDP relay in front of
//! them switches its destination, as a balancer that moved a client would.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h3gate::config::{AddressValidation, Secret};
use h3gate::listener::quic::lb::{decode, Decoded};
use quinn::{ConnectionError, TokenMemoryCache, TokenStore};
use tokio::net::UdpSocket;

use common::cluster::TEST_SECRET;
use common::{wait_until, Gateway};

/// Another replica set's secret (a test pattern, not a real secret).
fn other_secret() -> String {
    "0f".repeat(32)
}

/// A replica: node `node`, sharing `secret`, with Retry for every new
/// address when `retry_always`.
async fn replica(node: u64, secret: &str, retry_always: bool) -> Gateway {
    let secret = secret.to_string();
    Gateway::start_with(move |c| {
        c.cluster.node_id = Some(node);
        c.cluster.secret = Secret::new(secret);
        if retry_always {
            c.quic.address_validation = AddressValidation::Always;
        }
    })
    .await
}

/// What the relay saw.
#[derive(Default)]
struct Seen {
    /// Retry packets from each server.
    retries: Mutex<HashMap<SocketAddr, u64>>,
    /// Datagrams from each server.
    from: Mutex<HashMap<SocketAddr, u64>>,
    /// The Source CID of each server long-header datagram, with its sender.
    scids: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
}

fn count(map: &Mutex<HashMap<SocketAddr, u64>>, server: SocketAddr) -> u64 {
    map.lock().unwrap().get(&server).copied().unwrap_or(0)
}

impl Seen {
    fn from(&self, server: SocketAddr) -> u64 {
        count(&self.from, server)
    }

    fn retries_from(&self, server: SocketAddr) -> u64 {
        count(&self.retries, server)
    }
}

/// A UDP relay for one client: the client sends to `addr`, the relay sends
/// on to its current target from one socket (so every replica sees the
/// same client address) and relays every answer back.
struct Switch {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    /// Where to switch to once a server has sent a Retry.
    after_retry: Arc<Mutex<Option<SocketAddr>>>,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Switch {
    async fn start(target: SocketAddr) -> Switch {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let after_retry = Arc::new(Mutex::new(None));
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(relay(
            front,
            back,
            target.clone(),
            after_retry.clone(),
            seen.clone(),
        ));
        Switch {
            addr,
            target,
            after_retry,
            seen,
            task,
        }
    }

    fn switch_to(&self, server: SocketAddr) {
        *self.target.lock().unwrap() = server;
    }
}

async fn relay(
    front: UdpSocket,
    back: UdpSocket,
    target: Arc<Mutex<SocketAddr>>,
    after_retry: Arc<Mutex<Option<SocketAddr>>>,
    seen: Arc<Seen>,
) {
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut client = None;
    loop {
        tokio::select! {
            r = front.recv_from(&mut up) => {
                let Ok((n, from)) = r else { return };
                client = Some(from);
                let to = *target.lock().unwrap();
                let _ = back.send_to(&up[..n], to).await;
            }
            r = back.recv_from(&mut down) => {
                let Ok((n, server)) = r else { return };
                let packet = &down[..n];
                *seen.from.lock().unwrap().entry(server).or_default() += 1;
                if let Some((is_retry, scid)) = long_header(packet) {
                    seen.scids.lock().unwrap().push((server, scid));
                    if is_retry {
                        *seen.retries.lock().unwrap().entry(server).or_default() += 1;
                        if let Some(next) = after_retry.lock().unwrap().take() {
                            *target.lock().unwrap() = next;
                        }
                    }
                }
                if let Some(c) = client {
                    let _ = front.send_to(packet, c).await;
                }
            }
        }
    }
}

/// A QUIC v1 long header's (is it a Retry, Source CID); `None` for a short
/// header or version negotiation.
fn long_header(p: &[u8]) -> Option<(bool, Vec<u8>)> {
    if p.len() < 7 || p[0] & 0x80 == 0 || p[1..5] == [0, 0, 0, 0] {
        return None;
    }
    let dcid_len = usize::from(p[5]);
    let scid_len = usize::from(*p.get(6 + dcid_len)?);
    let scid = p.get(7 + dcid_len..7 + dcid_len + scid_len)?.to_vec();
    Some(((p[0] >> 4) & 0b11 == 0b11, scid))
}

/// The client's NEW_TOKEN tokens, counted.
#[derive(Default)]
struct CountingStore {
    inner: TokenMemoryCache,
    inserted: AtomicU64,
}

impl TokenStore for CountingStore {
    fn insert(&self, server_name: &str, token: Bytes) {
        self.inserted.fetch_add(1, Ordering::Relaxed);
        self.inner.insert(server_name, token);
    }
    fn take(&self, server_name: &str) -> Option<Bytes> {
        self.inner.take(server_name)
    }
}

/// A quinn client trusting every replica's CA, keeping NEW_TOKEN tokens in
/// `store`.
fn client(replicas: &[&Gateway], store: Arc<CountingStore>) -> quinn::Endpoint {
    let cas: Vec<u8> = replicas.iter().flat_map(|g| g.ca.clone()).collect();
    let mut config = common::client::h3_client_config(&cas, false);
    config.token_store(store);
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(config);
    ep
}

async fn connect(
    ep: &quinn::Endpoint,
    to: SocketAddr,
) -> Result<quinn::Connection, ConnectionError> {
    let connecting = ep.connect(to, "localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the handshake ends within 10 s")
}

fn node_of(cid: &[u8]) -> Option<u64> {
    decode(cid, 2).map(|d| d.node_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_id_an_aioquic_client_is_given_carries_the_node_id() {
    let gw = Gateway::start_with(|c| {
        c.cluster.node_id = Some(0x2a7);
        c.cluster.config_rotation = 3;
    })
    .await;
    let python = common::python::python();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.ca).unwrap();
    let port = gw.udp.port().to_string();
    let out = common::python::run_script(
        &python,
        "h3client.py",
        &["cids", &port, ca.to_str().unwrap()],
    )
    .await;
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    let cids: Vec<Vec<u8>> = report["cids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let h = h.as_str().unwrap();
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    // The handshake's Source CID and those of NEW_CONNECTION_ID frames
    // (quinn issues several right after the handshake).
    assert!(cids.len() >= 3, "{report}");
    for cid in &cids {
        assert_eq!(
            decode(cid, 2),
            Some(Decoded {
                config_rotation: 3,
                node_id: 0x2a7
            }),
            "{cid:02x?} in {report}"
        );
    }
    let distinct: std::collections::HashSet<_> = cids.iter().collect();
    assert_eq!(distinct.len(), cids.len(), "{report}");
    // The client moved to new IDs and the gateway kept answering on them.
    let statuses = report["statuses"].as_array().unwrap();
    assert!(statuses.len() >= 3, "{report}");
    assert!(statuses.iter().all(|s| s == 200), "{report}");
}

/// Connects through the relay to `a`, then points the relay at `b`: the
/// client's next packets reach a replica that does not know the
/// connection. Returns how the connection ended within 5 s (`None`: still
/// open) and how many datagrams `b` sent.
async fn move_to(a: &Gateway, b: &Gateway) -> (Option<ConnectionError>, u64) {
    let relay = Switch::start(a.udp).await;
    let ep = client(&[a, b], Arc::default());
    let conn = connect(&ep, relay.addr).await.expect("connected to A");
    relay.switch_to(b.udp);
    // Anything the client sends now goes to B.
    if let Ok(mut s) = conn.open_uni().await {
        let _ = s.write_all(b"after the move").await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    (conn.close_reason(), relay.seen.from(b.udp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_resets_another_replicas_connection_with_the_shared_key() {
    let a = replica(1, TEST_SECRET, false).await;
    let b = replica(2, TEST_SECRET, false).await;
    let (ended, from_b) = move_to(&a, &b).await;
    assert!(
        matches!(ended, Some(ConnectionError::Reset)),
        "{ended:?} (B sent {from_b} datagrams)"
    );

    // Another secret: B answers (a reset), but with a token the client
    // cannot accept, so the connection is not reset.
    let c = replica(3, &other_secret(), false).await;
    let (ended, from_c) = move_to(&a, &c).await;
    assert!(from_c > 0, "the other replica answered");
    assert!(!matches!(ended, Some(ConnectionError::Reset)), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_token_from_one_replica_validates_at_another() {
    // A answers the first Initial with a Retry; the relay then moves the
    // client to B, which gets the Initial carrying A's token. A client
    // takes one Retry per connection attempt, so the handshake completes
    // only if B accepts A's token.
    let a = replica(1, TEST_SECRET, true).await;
    let b = replica(2, TEST_SECRET, true).await;
    let relay = Switch::start(a.udp).await;
    *relay.after_retry.lock().unwrap() = Some(b.udp);
    let ep = client(&[&a, &b], Arc::default());
    let conn = connect(&ep, relay.addr)
        .await
        .expect("B accepts A's Retry token");
    assert!(relay.seen.retries_from(a.udp) >= 1);
    // The Retry's Source CID is A's, the handshake's B's.
    let scids = relay.seen.scids.lock().unwrap().clone();
    assert!(scids.iter().any(|(s, _)| *s == b.udp), "{scids:02x?}");
    for (server, scid) in &scids {
        let node = if *server == a.udp { 1 } else { 2 };
        assert_eq!(node_of(scid), Some(node), "{server} sent {scid:02x?}");
    }
    conn.close(0u32.into(), b"");

    // With another secret C cannot open A's token and sends a Retry of its
    // own, which the client must discard: the connection never forms.
    let c = replica(3, &other_secret(), true).await;
    let relay = Switch::start(a.udp).await;
    *relay.after_retry.lock().unwrap() = Some(c.udp);
    let ep = client(&[&a, &c], Arc::default());
    let connecting = ep.connect(relay.addr, "localhost").unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(3), connecting).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "{attempt:?}");
    assert!(relay.seen.retries_from(c.udp) >= 1, "C refused A's token");
}

/// Connects through `relay` and waits for the server's NEW_TOKEN tokens.
async fn connect_for_tokens(ep: &quinn::Endpoint, relay: &Switch, store: &CountingStore) {
    let before = store.inserted.load(Ordering::Relaxed);
    let conn = connect(ep, relay.addr).await.expect("connected");
    let got = wait_until(Duration::from_secs(5), async || {
        store.inserted.load(Ordering::Relaxed) > before
    })
    .await;
    assert!(got, "the server sent no NEW_TOKEN");
    conn.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_from_one_replica_spares_the_retry_at_another() {
    let a = replica(1, TEST_SECRET, true).await;
    let b = replica(2, TEST_SECRET, true).await;
    let c = replica(3, &other_secret(), true).await;
    for (other, shared) in [(&b, true), (&c, false)] {
        let store = Arc::new(CountingStore::default());
        let ep = client(&[&a, other], store.clone());
        let relay = Switch::start(a.udp).await;
        connect_for_tokens(&ep, &relay, &store).await;
        assert!(
            relay.seen.retries_from(a.udp) >= 1,
            "A validated the address"
        );
        relay.switch_to(other.udp);
        let conn = connect(&ep, relay.addr)
            .await
            .expect("connected to the other");
        let retries = relay.seen.retries_from(other.udp);
        if shared {
            assert_eq!(retries, 0, "B took A's NEW_TOKEN as proof of the address");
        } else {
            assert!(retries >= 1, "another secret: the token is ignored, Retry");
        }
        conn.close(0u32.into(), b"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_keys_outlive_a_reload_and_a_new_node_id_needs_a_restart() {
    let gw = replica(5, TEST_SECRET, true).await;
    // The file says what the running configuration does, plus a transport
    // change, so the reload installs a new server configuration.
    let cluster = format!("\n[cluster]\nnode_id = 5\nsecret = \"{TEST_SECRET}\"\n");
    let quic = "\n[quic]\naddress_validation = \"always\"\nidle_timeout = \"31s\"\n";
    gw.edit_config(|t| format!("{t}{cluster}{quic}"));
    let store = Arc::new(CountingStore::default());
    let ep = client(&[&gw], store.clone());
    let relay = Switch::start(gw.udp).await;
    connect_for_tokens(&ep, &relay, &store).await;

    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!([]), "{body}");
    // A token issued before the reload still proves the address.
    let before = relay.seen.retries_from(gw.udp);
    let conn = connect(&ep, relay.addr).await.expect("connected");
    assert_eq!(
        relay.seen.retries_from(gw.udp),
        before,
        "no Retry after the reload"
    );
    conn.close(0u32.into(), b"");

    gw.edit_config(|t| t.replace("node_id = 5", "node_id = 6"));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["restart_required"],
        serde_json::json!(["cluster.node_id"]),
        "{body}"
    );
    let conn = connect(&ep, relay.addr).await.expect("connected");
    conn.close(0u32.into(), b"");
    let scids = relay.seen.scids.lock().unwrap().clone();
    assert!(!scids.is_empty());
    assert!(
        scids.iter().all(|(_, scid)| node_of(scid) == Some(5)),
        "the running endpoint keeps its node id: {scids:02x?}"
    );
}
