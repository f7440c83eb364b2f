//! HTTP/3 with clients that are not ours, on paths that are not clean:
//! ngtcp2's `gtlsclient` with a ClientHello split over two Initial packets
//! (delivered apart by a relay) and with 0-RTT resumption; our h3 client
//! and ngtcp2 on a lossy, reordering path; headless Chromium with forced
//! QUIC streaming through `fetch` (fresh browser per run, then 0-RTT);
//! and an Initial flood from many addresses, which must meet Retry.
//!
//! Every loop is bounded in count and time; nothing asserts a timing.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::relay::{Relay, RelayConfig};
use common::tools::Gtlsclient;
use common::{chat, sse, Client, Gateway, Proto};
use h3gate::config::AddressValidation;

/// One test at a time: the metrics recorder is process-wide, and every
/// test here reads QUIC series that the others move; Chromium and the
/// floods also want the two cores to themselves.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Sum of every series of the metric `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// `--groups` that make GnuTLS send an FFDHE8192 key share: a ClientHello
/// of ~1.3 KB, over two Initial packets.
fn split_hello_groups() -> String {
    "--groups=-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519".into()
}

/// Ten fresh `gtlsclient` processes with a split ClientHello through a
/// relay that delays each one's second datagram by 30 ms; how many got 200.
async fn split_client_hello_runs(zero_rtt: bool) -> (usize, Vec<String>) {
    let gw = Gateway::start_with(|c| c.quic.zero_rtt = zero_rtt).await;
    let relay = Relay::start(gw.udp, RelayConfig::delay_second(Duration::from_millis(30))).await;
    let ng = Gtlsclient::require();
    let mut ok = 0;
    let mut failures = Vec::new();
    // Five at a time: each a fresh process (new handshake), bounded.
    for batch in 0..2 {
        let runs = (0..5).map(|i| {
            let (ng, addr) = (&ng, relay.addr);
            async move {
                let extra = [split_hello_groups()];
                let path = if i % 2 == 0 { "/health" } else { "/v1/models" };
                (batch * 5 + i, ng.run(addr, path, &extra).await)
            }
        });
        for (n, run) in futures_util::future::join_all(runs).await {
            if run.status == Some(200) {
                ok += 1;
            } else {
                failures.push(format!(
                    "run {n}: status {:?}, exit {:?}, killed {}\n{}",
                    run.status, run.exit, run.timed_out, run.log_tail
                ));
            }
        }
    }
    if ok < 10 {
        failures.push(relay.describe());
    }
    (ok, failures)
}

/// A ClientHello spanning two Initial packets that arrive 30 ms apart: the
/// gateway (0-RTT on, the default) must answer every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_split_client_hello_with_zero_rtt_on() {
    let _turn = serial().await;
    let (ok, failures) = split_client_hello_runs(true).await;
    assert_eq!(
        ok,
        10,
        "split ClientHello, 0-RTT on: {ok}/10 answered\n{}",
        failures.join("\n---\n")
    );
}

/// The same with 0-RTT off: the control that the relay and client are sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_split_client_hello_with_zero_rtt_off() {
    let _turn = serial().await;
    let (ok, failures) = split_client_hello_runs(false).await;
    assert_eq!(
        ok,
        10,
        "split ClientHello, 0-RTT off: {ok}/10 answered\n{}",
        failures.join("\n---\n")
    );
}

/// ngtcp2 resumes with the saved session and transport parameters and sends
/// its GET as 0-RTT: it is answered, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngtcp2_zero_rtt_resumption_is_accepted_and_counted() {
    let _turn = serial().await;
    let gw = Gateway::start().await;
    let ng = Gtlsclient::require();
    let dir = tempfile::tempdir().unwrap();
    let resume = [
        format!(
            "--session-file={}",
            dir.path().join("session.pem").display()
        ),
        format!("--tp-file={}", dir.path().join("tp.txt").display()),
    ];
    let first = ng.run(gw.udp, "/health", &resume).await;
    assert_eq!(first.status, Some(200), "first run:\n{}", first.log_tail);
    assert!(
        dir.path().join("session.pem").exists(),
        "the first run saved a session ticket:\n{}",
        first.log_tail
    );
    let before = gw.metrics_text().await;
    let second = ng.run(gw.udp, "/v1/models", &resume).await;
    assert!(
        second.sent_0rtt,
        "the second run sent 0-RTT:\n{}",
        second.log_tail
    );
    assert!(
        !second.early_rejected,
        "early data accepted:\n{}",
        second.log_tail
    );
    assert_eq!(second.status, Some(200), "second run:\n{}", second.log_tail);
    assert!(
        second.body_text().contains("gpt-4o-mini"),
        "{}",
        second.body_text()
    );
    let after = gw.metrics_text().await;
    for name in [
        "h3gate_quic_zero_rtt_connections_total",
        "h3gate_quic_early_requests_total",
    ] {
        assert!(
            metric_sum(&after, name) > metric_sum(&before, name),
            "{name} went up: {} -> {}",
            metric_sum(&before, name),
            metric_sum(&after, name)
        );
    }
}

/// 5% loss and 5% reordering both ways: 20 streamed chat completions over
/// our h3 client (4 connections) and 5 more from ngtcp2 all arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_reordering_path_streams_complete() {
    let _turn = serial().await;
    let gw = Gateway::start().await;
    let reference = gw
        .client(Proto::H3)
        .await
        .post_json("/v1/chat/completions", chat("gpt-4o-mini", true))
        .await
        .text()
        .await;
    let (want, done) = sse::openai_text(&reference);
    assert!(done && !want.is_empty(), "{reference}");

    let relay = Relay::start(gw.udp, RelayConfig::default()).await;
    let bodies = streams_over_our_client(&gw, &relay).await;
    assert_eq!(bodies.len(), 20);
    for (i, (body, end)) in bodies.iter().enumerate() {
        assert!(
            end.is_ok(),
            "stream {i} failed: {end:?}; {}",
            relay.describe()
        );
        assert_eq!(
            sse::openai_text(body),
            (want.clone(), true),
            "stream {i} whole; {}",
            relay.describe()
        );
    }

    println!("our h3 client, 20 streams: {}", relay.describe());
    streams_over_ngtcp2(&relay, &want).await;
    println!("and 5 ngtcp2 streams: {}", relay.describe());
}

/// Five streamed chat completions on each of 4 connections of our h3
/// client through `relay`: each body and how it ended.
async fn streams_over_our_client(gw: &Gateway, relay: &Relay) -> Vec<(String, Result<(), String>)> {
    let conns = (0..4).map(|c| async move {
        let client = Client::try_connect_from(
            Proto::H3,
            gw.tcp,
            relay.addr,
            &gw.ca,
            "127.0.0.1".parse().unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("connection {c}: {e}; {}", relay.describe()));
        let mut bodies = Vec::new();
        for _ in 0..5 {
            let resp = client
                .post_json("/v1/chat/completions", chat("gpt-4o-mini", true))
                .await;
            assert_eq!(resp.status, 200, "{}", relay.describe());
            bodies.push(resp.text_and_end().await);
        }
        bodies
    });
    futures_util::future::join_all(conns)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Five streamed chat completions from ngtcp2 through `relay`, each whole
/// (`want`).
async fn streams_over_ngtcp2(relay: &Relay, want: &str) {
    let ng = Gtlsclient::require();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chat.json");
    std::fs::write(&data, chat("gpt-4o-mini", true).to_string()).unwrap();
    let extra = [
        "-m".to_string(),
        "POST".into(),
        format!("-d{}", data.display()),
    ];
    for i in 0..5 {
        let run = ng.run(relay.addr, "/v1/chat/completions", &extra).await;
        assert_eq!(
            run.status,
            Some(200),
            "ngtcp2 run {i}; {}\n{}",
            relay.describe(),
            run.log_tail
        );
        assert_eq!(
            sse::openai_text(&run.body_text()),
            (want.to_string(), true),
            "ngtcp2 run {i} whole; {}",
            relay.describe()
        );
    }
}

#[path = "h3_clients/chromium.rs"]
mod chromium;

/// Real QUIC Initial packets (each a whole ClientHello) from every address
/// in `sources`, `per_source` each, never continued: the handshakes stay
/// pending. Counts the Retry packets that come back.
struct Flood {
    sent: usize,
    retries: Arc<AtomicU64>,
    /// Flood connections whose handshake the gateway went ahead with.
    answered: Arc<std::sync::Mutex<HashSet<Vec<u8>>>>,
    _readers: tokio::task::JoinSet<()>,
}

async fn flood(
    server: SocketAddr,
    sources: &[IpAddr],
    per_source: usize,
    ca: &[u8],
    pause: Duration,
) -> Flood {
    let config = common::client::h3_client_config(ca, false);
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let retries = Arc::new(AtomicU64::new(0));
    let answered: Arc<std::sync::Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let mut readers = tokio::task::JoinSet::new();
    let mut sockets = Vec::new();
    for ip in sources {
        let s = std::net::UdpSocket::bind((*ip, 0)).unwrap();
        let r = s.try_clone().unwrap();
        r.set_nonblocking(true).unwrap();
        let r = tokio::net::UdpSocket::from_std(r).unwrap();
        let (count, admitted) = (retries.clone(), answered.clone());
        readers.spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = r.recv(&mut buf).await {
                // A long header: type 3 is a Retry, type 0 an Initial (the
                // handshake goes ahead; its destination connection ID names
                // the flood connection). Once quinn has read a ClientHello
                // it greases the fixed bit (RFC 9287), so that bit is not
                // looked at.
                let first = buf[..n].first().copied().unwrap_or(0);
                match (first & 0x80 != 0, (first >> 4) & 0x03) {
                    (true, 3) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    (true, 0) if n > 6 => {
                        let len = buf[5] as usize;
                        if let Some(dcid) = buf.get(6..6 + len) {
                            admitted.lock().unwrap().insert(dcid.to_vec());
                        }
                    }
                    _ => {}
                }
            }
        });
        sockets.push(s);
    }
    // Made first, sent after: the burst is not slowed by the crypto.
    let now = std::time::Instant::now();
    let mut rounds = Vec::new();
    for _ in 0..per_source {
        let mut round = Vec::new();
        for _ in &sockets {
            let (_, mut conn) = endpoint
                .connect(now, config.clone(), server, "localhost")
                .unwrap();
            let mut buf = Vec::with_capacity(1500);
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                buf.truncate(t.size);
                round.push(buf);
            }
        }
        rounds.push(round);
    }
    // Sent from a plain thread, as fast as the kernel takes them: the
    // gateway's runtime gets no help from the sender's pauses.
    let sent = tokio::task::spawn_blocking(move || {
        let mut sent = 0;
        for round in rounds {
            for (s, packet) in sockets.iter().zip(round) {
                if s.send_to(&packet, server).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(pause);
        }
        sent
    })
    .await
    .unwrap();
    Flood {
        sent,
        retries,
        answered,
        _readers: readers,
    }
}

/// The flood's source addresses: 127.0.0.2 ..= 127.0.0.41.
fn flood_sources() -> Vec<IpAddr> {
    (2..=41).map(|i| IpAddr::from([127, 0, 0, i])).collect()
}

/// After the flood: a legitimate client still connects and is answered.
async fn legitimate_client_gets_through(gw: &Gateway) {
    let c = tokio::time::timeout(
        Duration::from_secs(20),
        Client::try_connect_from(
            Proto::H3,
            gw.tcp,
            gw.udp,
            &gw.ca,
            "127.0.0.1".parse().unwrap(),
        ),
    )
    .await
    .expect("a legitimate client connects within 20 s")
    .expect("a legitimate client connects");
    assert_eq!(c.get("/health").await.status, 200);
}

/// Pending handshakes beyond which the flood tests' gateways send Retry.
const RETRY_THRESHOLD: u32 = 32;

/// Sends the flood and waits (bounded) until the answers stop coming.
/// Panics unless the gateway sent (and counted) Retry packets, and went
/// ahead with no more handshakes than `RETRY_THRESHOLD`: the flood's never
/// finish, so they stay pending, and Retry must start exactly there.
async fn flood_meets_retry(gw: &Gateway, per_source: usize, pause: Duration, what: &str) {
    let retried = "h3gate_quic_retry_sent_total";
    let before = gw.metric(retried).await;
    let f = flood(gw.udp, &flood_sources(), per_source, &gw.ca, pause).await;
    let answers = || {
        (
            f.retries.load(Ordering::Relaxed),
            f.answered.lock().unwrap().len(),
        )
    };
    let (mut last, mut still) = (answers(), 0);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = answers();
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 3 {
            break;
        }
    }
    let (seen, answered) = last;
    let counted = gw.metric(retried).await - before;
    let summary = format!(
        "{what}: {} Initials from 40 addresses got {seen} Retry packets ({retried} +{counted}); {answered} handshakes went ahead (threshold {RETRY_THRESHOLD})",
        f.sent
    );
    println!("{summary}");
    assert!(seen > 0 && counted > 0.0, "{summary}");
    assert!(answered <= RETRY_THRESHOLD as usize, "{summary}");
}

/// ~1,500 Initials from 40 addresses with 0-RTT on (the default) and
/// `under_load` validation: the gateway answers with Retry, and a
/// legitimate client still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_flood_meets_retry_with_zero_rtt_on() {
    let _turn = serial().await;
    let gw = Gateway::start_with(|c| {
        c.quic.address_validation = AddressValidation::UnderLoad;
        c.quic.retry_threshold = RETRY_THRESHOLD;
    })
    .await;
    let pause = Duration::from_millis(2);
    flood_meets_retry(&gw, 38, pause, "flood, 0-RTT on").await;
    legitimate_client_gets_through(&gw).await;
}

/// A burst of 400 Initials in 0.2 s with 0-RTT off and room for 100
/// connections: pending handshakes are counted as they are accepted (not
/// when their task first runs), so Retry starts within the burst, the
/// never-finished handshakes do not fill the connection cap, and a
/// legitimate client still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_burst_meets_retry_with_zero_rtt_off() {
    let _turn = serial().await;
    let gw = Gateway::start_with(|c| {
        c.quic.zero_rtt = false;
        c.quic.address_validation = AddressValidation::UnderLoad;
        c.quic.retry_threshold = RETRY_THRESHOLD;
        c.quic.max_connections = 100;
    })
    .await;
    let pause = Duration::from_millis(20);
    flood_meets_retry(&gw, 10, pause, "burst, 0-RTT off").await;
    legitimate_client_gets_through(&gw).await;
}
