//! 0-RTT with replay protection (RFC 8470), with a resuming h3 + h3-quinn
//! client. A UDP relay between client and gateway holds back the client's
//! handshake-completing packets for a while, so the early requests are
//! handled, deterministically, before the handshake completes; the relay's
//! release of those packets is the handshake event the tests compare with.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::{chat, Gateway};
use h3gate::config::EarlyUnsafe;
use rustls::pki_types::ServerName;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// How long the relay holds the client's handshake completion.
const HOLD: Duration = Duration::from_millis(400);
/// How long it holds the server's first flight.
const SERVER_HOLD: Duration = Duration::from_millis(150);

/// A UDP relay that holds the client's handshake-completing datagrams for
/// [`HOLD`], and the server's first flight for [`SERVER_HOLD`] — so the
/// client cannot switch to 1-RTT before it has sent its request as 0-RTT.
struct Relay {
    addr: SocketAddr,
    /// When the first held datagram was released (the handshake event).
    released: Arc<Mutex<Option<Instant>>>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let released: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (f, b, c, r) = (
            front.clone(),
            back.clone(),
            client.clone(),
            released.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut hold_until: Option<Instant> = None;
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().unwrap() = Some(from);
                let d = buf[..n].to_vec();
                if common::relay::packet_kinds(&d).completes {
                    let until = *hold_until.get_or_insert_with(|| Instant::now() + HOLD);
                    let (b, r) = (b.clone(), r.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until).await;
                        r.lock().unwrap().get_or_insert_with(Instant::now);
                        let _ = b.send(&d).await;
                    });
                } else {
                    let _ = b.send(&d).await;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut hold_until: Option<Instant> = None;
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().unwrap();
                let Some(to) = to else { continue };
                let until = *hold_until.get_or_insert_with(|| Instant::now() + SERVER_HOLD);
                if Instant::now() < until {
                    let (front, d) = (front.clone(), buf[..n].to_vec());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until).await;
                        let _ = front.send_to(&d, to).await;
                    });
                } else {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        Relay { addr, released }
    }

    fn released(&self) -> Option<Instant> {
        *self.released.lock().unwrap()
    }
}

/// The client's session store, counting the tickets it is given, so that
/// priming waits for them rather than for a while.
#[derive(Debug)]
struct Tickets {
    store: rustls::client::ClientSessionMemoryCache,
    received: AtomicUsize,
}

impl Tickets {
    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl rustls::client::ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server: ServerName<'static>, group: rustls::NamedGroup) {
        self.store.set_kx_hint(server, group);
    }
    fn kx_hint(&self, server: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.store.kx_hint(server)
    }
    fn set_tls12_session(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.store.set_tls12_session(server, value);
    }
    fn tls12_session(
        &self,
        server: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.store.tls12_session(server)
    }
    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.store.remove_tls12_session(server);
    }
    fn insert_tls13_ticket(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.store.insert_tls13_ticket(server, value);
        self.received.fetch_add(1, Ordering::SeqCst);
    }
    fn take_tls13_ticket(
        &self,
        server: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.store.take_tls13_ticket(server)
    }
}

/// A client that remembers session tickets and sends early data.
struct Resuming {
    endpoint: quinn::Endpoint,
    tickets: Arc<Tickets>,
}

impl Resuming {
    fn new(ca: &[u8]) -> Resuming {
        let tickets = Arc::new(Tickets {
            store: rustls::client::ClientSessionMemoryCache::new(256),
            received: AtomicUsize::new(0),
        });
        let mut tls = common::client::h3_tls_config(ca, true);
        tls.resumption = rustls::client::Resumption::store(tickets.clone());
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(common::client::quic_client_config(tls));
        Resuming { endpoint, tickets }
    }

    /// A full handshake and one request, so the client holds tickets.
    async fn prime(&self, server: SocketAddr) {
        let before = self.tickets.received();
        let conn = self
            .endpoint
            .connect(server, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        let drive =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let req = http::Request::get(format!("https://localhost:{}/health", server.port()))
            .body(())
            .unwrap();
        let mut s = send.send_request(req).await.unwrap();
        s.finish().await.unwrap();
        s.recv_response().await.unwrap();
        while s.recv_data().await.unwrap().is_some() {}
        // Tickets arrive just after the handshake: wait for one.
        let ticketed = common::wait_until(Duration::from_secs(10), async || {
            self.tickets.received() > before
        })
        .await;
        assert!(ticketed, "the server sent a session ticket");
        conn.close(0u32.into(), b"done");
        drive.abort();
    }

    /// Whether the server accepts 0-RTT from this client's latest ticket
    /// (None: the client holds no ticket allowing early data).
    async fn zero_rtt_accepted(&self, server: SocketAddr) -> Option<bool> {
        let connecting = self.endpoint.connect(server, "localhost").unwrap();
        let (conn, accepted) = connecting.into_0rtt().ok()?;
        let accepted = accepted.await;
        conn.close(0u32.into(), b"done");
        Some(accepted)
    }

    /// Connects with 0-RTT (None if the client has no early-data ticket)
    /// and sends one request as early data; returns status, body and when
    /// the response arrived.
    async fn early_request(
        &self,
        server: SocketAddr,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Option<(u16, String, Instant)> {
        let connecting = self.endpoint.connect(server, "localhost").unwrap();
        let (conn, _accepted) = connecting.into_0rtt().ok()?;
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        let drive =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", server.port()))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let mut s = send.send_request(req).await.unwrap();
        if let Some(b) = body {
            s.send_data(Bytes::from(b)).await.unwrap();
        }
        s.finish().await.unwrap();
        let resp = s.recv_response().await.unwrap();
        let at = Instant::now();
        let mut text = Vec::new();
        while let Some(mut chunk) = s.recv_data().await.unwrap() {
            text.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        drive.abort();
        Some((
            resp.status().as_u16(),
            String::from_utf8_lossy(&text).into_owned(),
            at,
        ))
    }
}

async fn early_counter(gw: &Gateway, outcome: &str) -> f64 {
    gw.metric(&format!(
        "h3gate_quic_early_requests_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

// Whether the client manages to put its request in the 0-RTT flight (rather
// than 1-RTT) depends on scheduling; each test tries a few resumptions and
// asserts on the first request the gateway saw as early data.
const ATTEMPTS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_get_is_served_before_the_handshake_completes() {
    let gw = Gateway::start().await;
    let client = Resuming::new(&gw.ca);
    client.prime(gw.udp).await;
    for _ in 0..ATTEMPTS {
        // (The counters are per process; only this test serves early GETs.)
        let served = early_counter(&gw, "served").await;
        let relay = Relay::start(gw.udp).await;
        // A GET the gateway forwards: one model, answered by its provider.
        let (status, body, _) = client
            .early_request(relay.addr, "GET", "/v1/models/gpt-4o-mini", None)
            .await
            .expect("the ticket allows early data");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("gpt-4o-mini"));
        // The gateway answered it as early data, without waiting for the
        // handshake. (When the answer reaches the client also depends on
        // QUIC's anti-amplification limit, which the held handshake keeps
        // in force — not on the gateway.)
        if early_counter(&gw, "served").await > served {
            let seen = gw.upstream.seen();
            let last = seen.last().unwrap();
            assert_eq!(last.path, "/v1/models/gpt-4o-mini");
            assert_eq!(
                last.headers["early-data"], "1",
                "forwarded upstream marked as early data (RFC 8470)"
            );
            return;
        }
        let last = gw.upstream.seen().pop().unwrap();
        assert!(
            last.headers.get("early-data").is_none(),
            "a request that was not early is not marked"
        );
    }
    panic!("no request arrived as early data in {ATTEMPTS} resumptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_post_reaches_the_upstream_only_after_the_handshake() {
    let gw = Gateway::start().await;
    let client = Resuming::new(&gw.ca);
    client.prime(gw.udp).await;
    for _ in 0..ATTEMPTS {
        let before = early_counter(&gw, "held").await;
        let relay = Relay::start(gw.udp).await;
        let (status, _, _) = client
            .early_request(
                relay.addr,
                "POST",
                "/v1/chat/completions",
                Some(chat("gpt-ok", false).to_string()),
            )
            .await
            .expect("the ticket allows early data");
        assert_eq!(status, 200);
        if early_counter(&gw, "held").await > before {
            let handshake = relay
                .released()
                .expect("the handshake completed through the relay");
            let seen = gw.upstream.seen();
            let last = seen.last().unwrap();
            assert!(
                last.at >= handshake,
                "forwarded only after the handshake completed"
            );
            assert!(
                last.headers.get("early-data").is_none(),
                "no longer early when forwarded"
            );
            return;
        }
    }
    panic!("no request arrived as early data in {ATTEMPTS} resumptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_post_is_rejected_with_425_when_configured() {
    let gw = Gateway::start_with(|c| c.quic.early_unsafe = EarlyUnsafe::Reject).await;
    let client = Resuming::new(&gw.ca);
    client.prime(gw.udp).await;
    for _ in 0..ATTEMPTS {
        let forwarded = gw.upstream.seen().len();
        let relay = Relay::start(gw.udp).await;
        let (status, body, _) = client
            .early_request(
                relay.addr,
                "POST",
                "/v1/chat/completions",
                Some(chat("gpt-ok", false).to_string()),
            )
            .await
            .expect("the ticket allows early data");
        if status == 425 {
            assert!(body.contains("too_early"));
            assert_eq!(gw.upstream.seen().len(), forwarded, "never forwarded");
            assert!(early_counter(&gw, "rejected").await >= 1.0);
            return;
        }
        assert_eq!(
            status, 200,
            "a request that was not early is served: {body}"
        );
    }
    panic!("no request arrived as early data in {ATTEMPTS} resumptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_off_never_accepts_early_data() {
    let gw = Gateway::start_with(|c| c.quic.zero_rtt = false).await;
    let client = Resuming::new(&gw.ca);
    client.prime(gw.udp).await;
    let early = client
        .early_request(gw.udp, "GET", "/v1/models", None)
        .await;
    assert!(
        early.is_none(),
        "the gateway's tickets do not allow early data"
    );
}

/// RFC 8470 §5.1: an intermediary keeps an incoming `Early-Data: 1` (a
/// proxy in front of the gateway took the request as early data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_early_data_header_is_forwarded() {
    let gw = Gateway::start().await;
    let c = gw.client(common::Proto::H2).await;
    let r = c
        .request(
            http::Method::POST,
            "/v1/chat/completions",
            &[("early-data", "1")],
            common::TestBody::Json(chat("gpt-ok", false)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.upstream.seen()[0].headers["early-data"], "1");
    c.post_json("/v1/chat/completions", chat("gpt-ok", false))
        .await
        .text()
        .await;
    assert!(gw.upstream.seen()[1].headers.get("early-data").is_none());
}

/// Single-use tickets, checked with an independent QUIC stack (aioquic, from
/// the test venv): the same ticket presented twice gives 0-RTT at most once.
/// (rustls's client ticket cannot be cloned, so a Rust client cannot replay one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ticket_gives_0rtt_at_most_once() {
    let python = common::python::python();
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.ca).unwrap();
    let port = gw.udp.port().to_string();
    let out = common::python::run_script(
        &python,
        "zero_rtt_replay.py",
        &[&port, ca.to_str().unwrap()],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        v["max_early_data"],
        u64::from(u32::MAX),
        "tickets allow early data: {v}"
    );
    let uses = v["uses"].as_array().unwrap();
    assert!(
        uses.iter().all(|u| u["status"] == 200),
        "both connections served: {v}"
    );
    assert_eq!(uses[0]["resumed"], true, "{v}");
    assert_eq!(uses[0]["early_data_accepted"], true, "{v}");
    assert_eq!(
        uses[1]["resumed"], false,
        "a replayed ticket does not resume: {v}"
    );
    assert_eq!(
        uses[1]["early_data_accepted"], false,
        "nor carry early data: {v}"
    );
}

/// Changing transport limits on reload starts a new ticket store: a ticket
/// promising the old limits is not resumed with 0-RTT (the client would
/// otherwise send early data under limits the server no longer has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_new_transport_limits_rotates_the_ticket_store() {
    let gw = Gateway::start().await;
    let client = Resuming::new(&gw.ca);
    client.prime(gw.udp).await;
    assert_eq!(
        client.zero_rtt_accepted(gw.udp).await,
        Some(true),
        "0-RTT works before the change"
    );

    client.prime(gw.udp).await;
    gw.edit_config(|t| format!("{t}\n[quic]\nmax_concurrent_bidi_streams = 77\n"));
    let (status, report) = gw.reload().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        client.zero_rtt_accepted(gw.udp).await,
        Some(false),
        "a ticket issued before the change gives no 0-RTT"
    );

    client.prime(gw.udp).await;
    assert_eq!(
        client.zero_rtt_accepted(gw.udp).await,
        Some(true),
        "tickets issued after the change allow 0-RTT again"
    );
}
