//! A user-space UDP relay between QUIC clients and the gateway, for hostile
//! paths: it can delay the client's second datagram (a ClientHello split
//! over two Initial packets arriving apart) or every client datagram, and
//! drop and reorder a share of packets in both directions from a fixed seed.
//!
//! It listens on 127.0.0.1 port 0 and opens one upstream socket per client
//! address, so many clients (fresh processes) can share it. The client's
//! first datagram is never dropped (a lost first Initial only costs a
//! retransmission timer, but keeping it keeps every test bounded). Dropping
//! the relay aborts all its tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// How the relay mistreats the path.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Hold each client's second datagram this long.
    pub delay_second: Option<Duration>,
    /// Hold every client datagram this long.
    pub delay_all: Option<Duration>,
    /// Hold each client's handshake-completing datagrams (those carrying a
    /// Handshake or 1-RTT packet) until this long after its first one,
    /// while Initial and 0-RTT packets pass: its early requests then reach
    /// the server before its handshake completes, as over a real round
    /// trip (on loopback it completes within microseconds).
    pub hold_handshake: Option<Duration>,
    /// Share of datagrams dropped, each direction (0.0..=1.0).
    pub loss: f64,
    /// Share of datagrams held back behind later ones, each direction.
    pub reorder: f64,
    /// How long a reordered datagram is held back, at most.
    pub reorder_hold: Duration,
    /// Seed of the loss and reordering decisions.
    pub seed: u64,
}

impl Default for RelayConfig {
    /// 5% loss and 5% reordering both ways, from a fixed seed.
    fn default() -> Self {
        RelayConfig {
            delay_second: None,
            delay_all: None,
            hold_handshake: None,
            loss: 0.05,
            reorder: 0.05,
            reorder_hold: Duration::from_millis(20),
            seed: 0x6833_6761_7465,
        }
    }
}

impl RelayConfig {
    /// No loss, no reordering, no delay: a plain forwarder to build on.
    pub fn clean() -> Self {
        RelayConfig {
            loss: 0.0,
            reorder: 0.0,
            ..Self::default()
        }
    }

    /// A clean path that delays each client's second datagram.
    pub fn delay_second(by: Duration) -> Self {
        RelayConfig {
            delay_second: Some(by),
            ..Self::clean()
        }
    }
}

/// What the relay did, for failure messages.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub clients: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub reordered: AtomicU64,
    pub delayed: AtomicU64,
    /// Client datagrams that carried a 0-RTT packet.
    pub zero_rtt: AtomicU64,
}

pub struct Relay {
    /// Where clients send (127.0.0.1, port 0 picked by the kernel).
    pub addr: SocketAddr,
    pub config: RelayConfig,
    pub stats: Arc<RelayStats>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

/// One direction's decisions.
struct Path {
    rng: Mutex<fastrand::Rng>,
    loss: f64,
    reorder: f64,
    reorder_hold: Duration,
}

enum Fate {
    Drop,
    Hold(Duration),
    Send,
}

impl Path {
    fn new(cfg: &RelayConfig, salt: u64) -> Path {
        Path {
            rng: Mutex::new(fastrand::Rng::with_seed(cfg.seed ^ salt)),
            loss: cfg.loss,
            reorder: cfg.reorder,
            reorder_hold: cfg.reorder_hold,
        }
    }

    fn fate(&self, may_drop: bool) -> Fate {
        let mut rng = self.rng.lock().unwrap();
        let (a, b) = (rng.f64(), rng.f64());
        if may_drop && a < self.loss {
            Fate::Drop
        } else if b < self.reorder {
            let max = self.reorder_hold.as_millis().max(2) as u64;
            Fate::Hold(Duration::from_millis(rng.u64(1..=max)))
        } else {
            Fate::Send
        }
    }
}

/// Spawns into the relay's task set (reaping the finished ones).
fn spawn(tasks: &Mutex<JoinSet<()>>, f: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut set = tasks.lock().unwrap();
    while set.try_join_next().is_some() {}
    set.spawn(f);
}

impl Relay {
    /// Starts a relay to `server` (the gateway's UDP address).
    pub async fn start(server: SocketAddr, config: RelayConfig) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let stats = Arc::new(RelayStats::default());
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let relay = Relay {
            addr,
            config: config.clone(),
            stats: stats.clone(),
            tasks: tasks.clone(),
        };
        let t = tasks.clone();
        spawn(&tasks, async move {
            client_side(front, server, config, stats, t).await;
        });
        relay
    }

    /// The seed and what happened, for an assertion message.
    pub fn describe(&self) -> String {
        let s = &self.stats;
        format!(
            "relay seed {:#x} (loss {}, reorder {}, delay_second {:?}, delay_all {:?}, hold_handshake {:?}): {} clients, {} forwarded, {} dropped, {} reordered, {} delayed, {} client datagrams with 0-RTT",
            self.config.seed,
            self.config.loss,
            self.config.reorder,
            self.config.delay_second,
            self.config.delay_all,
            self.config.hold_handshake,
            s.clients.load(Ordering::Relaxed),
            s.forwarded.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
            s.reordered.load(Ordering::Relaxed),
            s.delayed.load(Ordering::Relaxed),
            s.zero_rtt.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// A client address's upstream socket and how many datagrams it sent.
struct Peer {
    upstream: Arc<UdpSocket>,
    sent: u64,
    /// Until when its handshake-completing datagrams are held.
    hold_until: Option<tokio::time::Instant>,
}

/// Reads client datagrams and forwards them, each client through its own
/// upstream socket (whose replies go back to that client).
async fn client_side(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    cfg: RelayConfig,
    stats: Arc<RelayStats>,
    tasks: Arc<Mutex<JoinSet<()>>>,
) {
    let to_server = Arc::new(Path::new(&cfg, 0x01));
    let to_client = Arc::new(Path::new(&cfg, 0x02));
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let peer = match peers.get_mut(&from) {
            Some(p) => p,
            None => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(server).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                stats.clients.fetch_add(1, Ordering::Relaxed);
                let (f, u, p, s, t) = (
                    front.clone(),
                    up.clone(),
                    to_client.clone(),
                    stats.clone(),
                    tasks.clone(),
                );
                spawn(&tasks, server_side(f, u, from, p, s, t));
                peers.entry(from).or_insert(Peer {
                    upstream: up,
                    sent: 0,
                    hold_until: None,
                })
            }
        };
        peer.sent += 1;
        let nth = peer.sent;
        let mut hold = cfg.delay_all.unwrap_or_default();
        if nth == 2 {
            if let Some(d) = cfg.delay_second {
                hold += d;
            }
        }
        let kinds = packet_kinds(&buf[..n]);
        if kinds.zero_rtt {
            stats.zero_rtt.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(h), true) = (cfg.hold_handshake, kinds.completes) {
            let now = tokio::time::Instant::now();
            let until = *peer.hold_until.get_or_insert(now + h);
            hold += until.saturating_duration_since(now);
        }
        let fate = to_server.fate(nth > 1);
        if let Some(hold) = schedule(fate, hold, &stats) {
            let up = peer.upstream.clone();
            if hold.is_zero() {
                let _ = up.send(&buf[..n]).await;
            } else {
                let data = buf[..n].to_vec();
                spawn(&tasks, async move {
                    tokio::time::sleep(hold).await;
                    let _ = up.send(&data).await;
                });
            }
        }
    }
}

/// Forwards the server's datagrams for one client back to it.
async fn server_side(
    front: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    path: Arc<Path>,
    stats: Arc<RelayStats>,
    tasks: Arc<Mutex<JoinSet<()>>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(n) = upstream.recv(&mut buf).await else {
            return;
        };
        let Some(hold) = schedule(path.fate(true), Duration::ZERO, &stats) else {
            continue;
        };
        if hold.is_zero() {
            let _ = front.send_to(&buf[..n], client).await;
        } else {
            let (f, data) = (front.clone(), buf[..n].to_vec());
            spawn(&tasks, async move {
                tokio::time::sleep(hold).await;
                let _ = f.send_to(&data, client).await;
            });
        }
    }
}

/// When to send a datagram (`None`: never), counting what happens.
fn schedule(fate: Fate, hold: Duration, stats: &RelayStats) -> Option<Duration> {
    if !hold.is_zero() {
        stats.delayed.fetch_add(1, Ordering::Relaxed);
    }
    let hold = match fate {
        Fate::Drop => {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Fate::Hold(d) => {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            hold + d
        }
        Fate::Send => hold,
    };
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
    Some(hold)
}

/// What a datagram's (coalesced) QUIC packets are.
#[derive(Debug, Default)]
pub struct Kinds {
    pub zero_rtt: bool,
    /// A Handshake or 1-RTT packet: the handshake is completing or done.
    pub completes: bool,
}

pub fn packet_kinds(mut d: &[u8]) -> Kinds {
    let mut k = Kinds::default();
    while let Some(&first) = d.first() {
        if first & 0x80 == 0 {
            k.completes = true; // short header: 1-RTT, the rest of the datagram
            break;
        }
        let ty = (first >> 4) & 0x03;
        match ty {
            1 => k.zero_rtt = true,
            2 => k.completes = true,
            3 => break, // Retry
            _ => {}
        }
        match long_packet_len(d, ty) {
            Some(len) if len <= d.len() => d = &d[len..],
            _ => break,
        }
    }
    k
}

/// The length of the QUIC v1 long-header packet at the start of `d`.
fn long_packet_len(d: &[u8], ty: u8) -> Option<usize> {
    let mut i = 5;
    i += 1 + *d.get(i)? as usize;
    i += 1 + *d.get(i)? as usize;
    if ty == 0 {
        let (token_len, n) = varint(d.get(i..)?)?;
        i += n + token_len;
    }
    let (len, n) = varint(d.get(i..)?)?;
    Some(i + n + len)
}

fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let mut v = u64::from(first & 0x3f);
    for byte in b.get(1..len)? {
        v = (v << 8) | u64::from(*byte);
    }
    Some((v as usize, len))
}
