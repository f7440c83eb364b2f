//! Many long-lived streamed requests at once, over HTTP/3, HTTP/2 (TLS) or
//! h2c, for `benches/streams.sh`:
//!
//! ```text
//! stream_load --url https://localhost:8443/v1/chat/completions --proto h3 \
//!     --streams 10000 --per-conn 100 --sources 50 --ramp 10 \
//!     --ca certs/ca.pem --key sk-... --pid <gateway pid>
//! stream_load --url https://localhost:8443/v1/chat/completions --proto h2 \
//!     --bulk 50 --model bench-1mb ...      # sequential 1 MiB responses, one connection
//! ```
//!
//! Streams mode: opens `--streams` streamed chat completions, `--per-conn`
//! on each connection, the connections spread over `--sources` source
//! addresses 127.0.0.2… (each its own socket, so the gateway's per-address
//! caps see many clients) and their start spread over `--ramp` seconds.
//! Every SSE chunk of `examples/bench_upstream` carries the time it was
//! sent; for each chunk received while all the streams are open (the steady
//! window) it records the gap since the stream's previous chunk and the
//! time from the upstream's send to its arrival here (the hold). A stream
//! is stalled when a gap exceeds 1 s, failed when its status is not 200 or
//! it ends without `[DONE]`. With `--pid` it samples that process's RSS
//! and counts its CPU time over the steady window, reported per chunk.
//!
//! Bulk mode: `--bulk N` requests one after another on one connection,
//! each a non-streamed response (the `bench-1mb` model: 1 MiB); reports
//! the throughput.
//!
//! Prints one JSON object on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Args {
    url: http::Uri,
    addr: SocketAddr,
    host: String,
    proto: String,
    streams: usize,
    per_conn: usize,
    sources: usize,
    ramp: f64,
    ca: Option<String>,
    key: Option<String>,
    model: String,
    pid: Option<u32>,
    bulk: usize,
    deadline: Duration,
}

fn parse_args() -> Result<Args, Error> {
    let mut a = std::env::args().skip(1);
    let (mut url, mut proto, mut ca, mut key, mut pid) = (None, "h3".to_string(), None, None, None);
    let (mut streams, mut per_conn, mut sources, mut ramp, mut bulk) = (1000, 100, 16, 5.0, 0);
    let mut model = "bench-slow".to_string();
    let mut deadline = 120u64;
    while let Some(flag) = a.next() {
        let mut v = || a.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(v()?),
            "--proto" => proto = v()?,
            "--streams" => streams = v()?.parse()?,
            "--per-conn" => per_conn = v()?.parse()?,
            "--sources" => sources = v()?.parse()?,
            "--ramp" => ramp = v()?.parse()?,
            "--ca" => ca = Some(v()?),
            "--key" => key = Some(v()?),
            "--model" => model = v()?,
            "--pid" => pid = Some(v()?.parse()?),
            "--bulk" => bulk = v()?.parse()?,
            "--deadline" => deadline = v()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let url: http::Uri = url.ok_or("--url is required")?.parse()?;
    let host = url.host().ok_or("URL needs a host")?.to_string();
    let port = url.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .find(|a| a.is_ipv4())
        .ok_or("cannot resolve host")?;
    if !matches!(proto.as_str(), "h3" | "h2" | "h2c") {
        return Err("--proto is h3, h2 or h2c".into());
    }
    Ok(Args {
        url,
        addr,
        host,
        proto,
        streams,
        per_conn: per_conn.max(1),
        sources: sources.clamp(1, 250),
        ramp,
        ca,
        key,
        model,
        pid,
        bulk,
        deadline: Duration::from_secs(deadline),
    })
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn source(i: usize, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8))
}

fn tls_config(args: &Args, alpn: &[u8]) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(args.ca.as_deref().unwrap_or("certs/ca.pem"))? {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

fn request(args: &Args) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(args.url.clone())
        .header("content-type", "application/json");
    if args.proto == "h2c" {
        b = b.version(http::Version::HTTP_2);
    }
    if let Some(k) = &args.key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(()).unwrap_or_default()
}

fn body(args: &Args, stream: bool) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{}","stream":{stream},"messages":[{{"role":"user","content":"hello"}}]}}"#,
        args.model
    ))
}

/// What every stream records, shared.
#[derive(Default)]
struct Shared {
    opened: AtomicU64,
    done: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    stalled: AtomicU64,
    chunks: AtomicU64,
    steady: AtomicBool,
    gaps_us: Mutex<Vec<u32>>,
    holds_us: Mutex<Vec<u32>>,
    errors: Mutex<Vec<String>>,
}

/// One stream's view of its SSE body: chunk timing, `[DONE]`.
struct Tracker {
    shared: Arc<Shared>,
    buf: Vec<u8>,
    last: Option<Instant>,
    gaps: Vec<u32>,
    holds: Vec<u32>,
    stalled: bool,
    done: bool,
}

impl Tracker {
    fn new(shared: Arc<Shared>) -> Self {
        Tracker {
            shared,
            buf: Vec::new(),
            last: None,
            gaps: Vec::new(),
            holds: Vec::new(),
            stalled: false,
            done: false,
        }
    }

    fn feed(&mut self, mut data: impl Buf) {
        while data.has_remaining() {
            let c = data.chunk();
            self.buf.extend_from_slice(c);
            let n = c.len();
            data.advance(n);
        }
        let now = Instant::now();
        let wall = now_us();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            if event.starts_with(b"data: [DONE]") {
                self.done = true;
                continue;
            }
            let Some(at) = memchr::memmem::find(&event, b"\"sent_us\":") else {
                continue;
            };
            let digits = &event[at + 10..];
            let sent: u64 = digits
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0, |n, b| n * 10 + u64::from(b - b'0'));
            self.shared.chunks.fetch_add(1, Ordering::Relaxed);
            if let Some(last) = self.last {
                let gap = now.duration_since(last);
                if gap > Duration::from_secs(1) {
                    self.stalled = true;
                }
                if self.shared.steady.load(Ordering::Relaxed) {
                    self.gaps.push(gap.as_micros().min(u32::MAX as u128) as u32);
                    self.holds
                        .push(wall.saturating_sub(sent).min(u32::MAX as u64) as u32);
                }
            }
            self.last = Some(now);
        }
    }

    /// The stream ended: its status, or the error that ended it.
    fn finish(self, result: Result<u16, Error>) {
        let (status, error) = match result {
            Ok(st) => (st, None),
            Err(e) => (0, Some(e.to_string())),
        };
        let s = &self.shared;
        s.done.fetch_add(1, Ordering::Relaxed);
        if self.stalled {
            s.stalled.fetch_add(1, Ordering::Relaxed);
        }
        match (status, self.done, error) {
            (200, true, None) => {
                s.ok.fetch_add(1, Ordering::Relaxed);
            }
            (st, done, e) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = s.errors.lock().unwrap_or_else(|e| e.into_inner());
                if errs.len() < 10 {
                    errs.push(format!("status {st}, [DONE] {done}, error {e:?}"));
                }
            }
        }
        s.gaps_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(self.gaps);
        s.holds_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(self.holds);
    }
}

/// `n` streams of one connection, each `one(tracker)` in a task of its own
/// (it returns the tracker and the stream's status); waits for them all.
async fn run_streams<F, Fut>(n: usize, shared: &Arc<Shared>, one: F)
where
    F: Fn(Tracker) -> Fut,
    Fut: std::future::Future<Output = (Tracker, Result<u16, Error>)> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let stream = one(Tracker::new(shared.clone()));
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.opened.fetch_add(1, Ordering::Relaxed);
                let (t, r) = stream.await;
                t.finish(r);
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

// --- HTTP/3 -------------------------------------------------------------------

async fn h3_connection(
    args: Arc<Args>,
    endpoint: quinn::Endpoint,
    n: usize,
    shared: Arc<Shared>,
) -> Result<(), Error> {
    let conn = endpoint.connect(args.addr, &args.host)?.await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    run_streams(n, &shared, |mut t| {
        let (mut send, args) = (send.clone(), args.clone());
        async move {
            let r = async {
                let mut s = send.send_request(request(&args)).await?;
                s.send_data(body(&args, true)).await?;
                s.finish().await?;
                let resp = s.recv_response().await?;
                while let Some(chunk) = s.recv_data().await? {
                    t.feed(chunk);
                }
                Ok(resp.status().as_u16())
            }
            .await;
            (t, r)
        }
    })
    .await;
    drop(send);
    drive.abort();
    Ok(())
}

fn h3_endpoint(args: &Args, src: IpAddr) -> Result<quinn::Endpoint, Error> {
    let tls = tls_config(args, b"h3")?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    let mut cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    cfg.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(src, 0))?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

// --- HTTP/2 (TLS or cleartext) ------------------------------------------------

async fn h2_sender(
    args: &Args,
    src: IpAddr,
) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, Error> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let tcp = sock.connect(args.addr).await?;
    tcp.set_nodelay(true)?;
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_reset_streams(1000);
    if args.proto == "h2c" {
        let (send, conn) = b.handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        return Ok(send);
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(args, b"h2")?));
    let name = ServerName::try_from(args.host.clone())?;
    let tls = tls.connect(name, tcp).await?;
    let (send, conn) = b.handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn h2_connection(
    args: Arc<Args>,
    src: IpAddr,
    n: usize,
    shared: Arc<Shared>,
) -> Result<(), Error> {
    let send = h2_sender(&args, src).await?;
    run_streams(n, &shared, |mut t| {
        let (mut send, args) = (send.clone(), args.clone());
        async move {
            let r = async {
                send.ready().await?;
                let req = request(&args).map(|()| Full::new(body(&args, true)));
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16();
                let mut b = resp.into_body();
                while let Some(frame) = b.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        t.feed(data);
                    }
                }
                Ok(status)
            }
            .await;
            (t, r)
        }
    })
    .await;
    Ok(())
}

// --- the target process -------------------------------------------------------

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// VmRSS and VmHWM of `pid`, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0.0, 0.0);
    };
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

async fn streams(args: Arc<Args>) -> Result<String, Error> {
    let shared = Arc::new(Shared::default());
    let conns = args.streams.div_ceil(args.per_conn);
    let endpoints: Vec<quinn::Endpoint> = if args.proto == "h3" {
        (0..args.sources.min(conns))
            .map(|i| h3_endpoint(&args, source(i, args.sources)))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    let mut left = args.streams;
    for i in 0..conns {
        let n = left.min(args.per_conn);
        left -= n;
        let at = start + Duration::from_secs_f64(args.ramp * i as f64 / conns as f64);
        let (args, shared) = (args.clone(), shared.clone());
        let endpoint = endpoints.get(i % endpoints.len().max(1)).cloned();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let src = source(i, args.sources);
            let r = match endpoint {
                Some(e) => h3_connection(args, e, n, shared.clone()).await,
                None => h2_connection(args, src, n, shared.clone()).await,
            };
            if let Err(e) = r {
                // The connection failed before its streams: count them all.
                shared.done.fetch_add(n as u64, Ordering::Relaxed);
                shared.failed.fetch_add(n as u64, Ordering::Relaxed);
                let mut errs = shared.errors.lock().unwrap_or_else(|e| e.into_inner());
                if errs.len() < 10 {
                    errs.push(format!("connection: {e}"));
                }
            }
        }));
    }
    // The steady window: from every stream open (plus a second for the
    // last ones' first chunks) to the first stream's end.
    let total = args.streams as u64;
    let (mut peak_rss, mut steady_rss) = (0.0f64, 0.0f64);
    let (mut cpu0, mut t0, mut chunks0) = (0.0, None::<Instant>, 0);
    let (mut cpu_used, mut window, mut chunks_in) = (0.0, 0.0, 0);
    let deadline = start + args.deadline;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (opened, done) = (
            shared.opened.load(Ordering::Relaxed),
            shared.done.load(Ordering::Relaxed),
        );
        if let Some(pid) = args.pid {
            let (rss, hwm) = rss_mb(pid);
            peak_rss = peak_rss.max(rss).max(hwm);
            if t0.is_some() && done == 0 {
                steady_rss = steady_rss.max(rss);
            }
        }
        let steady = shared.steady.load(Ordering::Relaxed);
        if !steady
            && opened == total
            && done == 0
            && start.elapsed().as_secs_f64() > args.ramp + 1.0
        {
            shared.steady.store(true, Ordering::Relaxed);
            t0 = Some(Instant::now());
            cpu0 = args.pid.map(cpu_seconds).unwrap_or(0.0);
            chunks0 = shared.chunks.load(Ordering::Relaxed);
        } else if steady && (done > 0 || Instant::now() > deadline) {
            shared.steady.store(false, Ordering::Relaxed);
            if let Some(t0) = t0 {
                window = t0.elapsed().as_secs_f64();
                cpu_used = args.pid.map(cpu_seconds).unwrap_or(0.0) - cpu0;
                chunks_in = shared.chunks.load(Ordering::Relaxed) - chunks0;
            }
        }
        if done >= total || Instant::now() > deadline {
            break;
        }
    }
    let finished_in_time = shared.done.load(Ordering::Relaxed) >= total;
    for t in &tasks {
        t.abort();
    }
    let mut gaps = std::mem::take(&mut *shared.gaps_us.lock().unwrap_or_else(|e| e.into_inner()));
    let mut holds = std::mem::take(&mut *shared.holds_us.lock().unwrap_or_else(|e| e.into_inner()));
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let cpu_per_chunk_us = if chunks_in > 0 {
        cpu_used * 1e6 / chunks_in as f64
    } else {
        0.0
    };
    Ok(format!(
        concat!(
            r#"{{"mode":"streams","proto":"{}","streams":{},"connections":{},"sources":{},"#,
            r#""ok":{},"failed":{},"stalled":{},"unfinished":{},"chunks":{},"#,
            r#""steady_s":{:.1},"steady_chunks":{},"chunks_per_s":{:.0},"#,
            r#""gap_p50_ms":{:.2},"gap_p99_ms":{:.2},"gap_max_ms":{:.2},"#,
            r#""hold_p50_ms":{:.2},"hold_p99_ms":{:.2},"hold_max_ms":{:.2},"#,
            r#""cpu_s":{:.2},"cpu_per_chunk_us":{:.1},"cpu_share":{:.2},"#,
            r#""rss_steady_mb":{:.1},"rss_peak_mb":{:.1},"errors":{:?}}}"#
        ),
        args.proto,
        args.streams,
        conns,
        args.sources.min(conns),
        shared.ok.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.stalled.load(Ordering::Relaxed),
        if finished_in_time {
            0
        } else {
            total.saturating_sub(shared.done.load(Ordering::Relaxed))
        },
        shared.chunks.load(Ordering::Relaxed),
        window,
        chunks_in,
        if window > 0.0 {
            chunks_in as f64 / window
        } else {
            0.0
        },
        percentile(&mut gaps, 0.5),
        percentile(&mut gaps, 0.99),
        percentile(&mut gaps, 1.0),
        percentile(&mut holds, 0.5),
        percentile(&mut holds, 0.99),
        percentile(&mut holds, 1.0),
        cpu_used,
        cpu_per_chunk_us,
        if window > 0.0 { cpu_used / window } else { 0.0 },
        steady_rss,
        peak_rss,
        errors,
    ))
}

// --- bulk ---------------------------------------------------------------------

async fn bulk(args: Arc<Args>) -> Result<String, Error> {
    let mut times = Vec::with_capacity(args.bulk);
    let mut bytes = 0u64;
    let src = source(0, 1);
    let started;
    if args.proto == "h3" {
        let endpoint = h3_endpoint(&args, src)?;
        let conn = endpoint.connect(args.addr, &args.host)?.await?;
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        let drive =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        started = Instant::now();
        for _ in 0..args.bulk {
            let t = Instant::now();
            let mut s = send.send_request(request(&args)).await?;
            s.send_data(body(&args, false)).await?;
            s.finish().await?;
            let resp = s.recv_response().await?;
            if resp.status() != 200 {
                return Err(format!("status {}", resp.status()).into());
            }
            while let Some(chunk) = s.recv_data().await? {
                bytes += chunk.remaining() as u64;
            }
            times.push(t.elapsed().as_micros() as u32);
        }
        drop(send);
        drive.abort();
    } else {
        let mut send = h2_sender(&args, src).await?;
        started = Instant::now();
        for _ in 0..args.bulk {
            let t = Instant::now();
            send.ready().await?;
            let req = request(&args).map(|()| Full::new(body(&args, false)));
            let resp = send.send_request(req).await?;
            if resp.status() != 200 {
                return Err(format!("status {}", resp.status()).into());
            }
            let mut b = resp.into_body();
            while let Some(frame) = b.frame().await {
                if let Ok(data) = frame?.into_data() {
                    bytes += data.len() as u64;
                }
            }
            times.push(t.elapsed().as_micros() as u32);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        r#"{{"mode":"bulk","proto":"{}","requests":{},"bytes":{},"seconds":{:.3},"mb_per_s":{:.1},"p50_ms":{:.2},"p99_ms":{:.2}}}"#,
        args.proto,
        args.bulk,
        bytes,
        secs,
        bytes as f64 / secs / 1e6,
        percentile(&mut times.clone(), 0.5),
        percentile(&mut times, 0.99),
    ))
}

fn main() -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arc::new(parse_args()?);
    // One thread: the harness shares its core with the upstream.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async move {
        if args.bulk > 0 {
            bulk(args).await
        } else {
            streams(args).await
        }
    })?;
    println!("{out}");
    Ok(())
}
