//! HTTP/3 on UDP: a quinn endpoint tuned from `[quic]`, an h3 server per
//! connection, and the adapter between an h3 request stream and the
//! pipeline's streamed request and response.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::caps::ConnCounts;
use crate::config::{AddressValidation, Congestion, QuicConfig};
use crate::metrics;
use crate::shutdown::Shutdown;
use crate::state::SharedState;

mod endpoints;
pub mod lb;
mod request;
mod streams;
mod tickets;

pub use endpoints::Endpoints;
pub use lb::QuicKeys;

use request::{request, StreamCtx};
use streams::Stops;

type H3Conn = h3::server::Connection<streams::Connection, Bytes>;

#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error("[quic] {0} is out of range")]
    Range(&'static str),
    #[error("TLS configuration cannot be used for QUIC: {0}")]
    Crypto(String),
    #[error("[cluster] QUIC keys: {0}")]
    Cluster(String),
    #[error("cannot start the QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Applies the configured UDP socket buffers, reads them back and warns,
/// with the fix, when the kernel capped them.
pub fn configure_udp_buffers(socket: &std::net::UdpSocket, cfg: &QuicConfig) {
    let sock = socket2::SockRef::from(socket);
    let want_recv = cfg.udp_recv_buffer.as_usize();
    let want_send = cfg.udp_send_buffer.as_usize();
    let _ = sock.set_recv_buffer_size(want_recv);
    let _ = sock.set_send_buffer_size(want_send);
    // Linux reports twice the usable size it granted.
    let got_recv = sock.recv_buffer_size().unwrap_or(0);
    let got_send = sock.send_buffer_size().unwrap_or(0);
    if got_recv < want_recv {
        tracing::warn!(
            requested = want_recv,
            granted = got_recv,
            "the kernel capped the UDP receive buffer; HTTP/3 throughput may suffer. Fix: sysctl -w net.core.rmem_max={want_recv}"
        );
    }
    if got_send < want_send {
        tracing::warn!(
            requested = want_send,
            granted = got_send,
            "the kernel capped the UDP send buffer; HTTP/3 throughput may suffer. Fix: sysctl -w net.core.wmem_max={want_send}"
        );
    }
}

/// The transport parameters from `[quic]`.
pub fn transport_config(cfg: &QuicConfig) -> Result<TransportConfig, QuicSetupError> {
    let varint = |v: u64, what| VarInt::from_u64(v).map_err(|_| QuicSetupError::Range(what));
    let mut t = TransportConfig::default();
    t.stream_receive_window(varint(
        cfg.stream_receive_window.get(),
        "stream_receive_window",
    )?)
    .receive_window(varint(cfg.receive_window.get(), "receive_window")?)
    .send_window(cfg.send_window.get())
    .max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_concurrent_bidi_streams))
    .max_concurrent_uni_streams(VarInt::from_u32(cfg.max_concurrent_uni_streams))
    .max_idle_timeout(Some(
        IdleTimeout::try_from(cfg.idle_timeout.get())
            .map_err(|_| QuicSetupError::Range("idle_timeout"))?,
    ))
    .keep_alive_interval(cfg.keep_alive_interval.map(|d| d.get()));
    if !cfg.mtu_discovery {
        t.mtu_discovery_config(None);
    }
    match cfg.congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Newreno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    Ok(t)
}

/// The endpoint's server configuration: TLS and transport from `[quic]`,
/// Retry and NEW_TOKEN tokens sealed with `keys` (shared by the replicas
/// with a cluster secret). Also what a reload installs for new connections.
pub fn server_config(
    cfg: &QuicConfig,
    tls: rustls::ServerConfig,
    keys: &QuicKeys,
) -> Result<quinn::ServerConfig, QuicSetupError> {
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::new(Arc::new(crypto), keys.token_key());
    server
        .transport_config(Arc::new(transport_config(cfg)?))
        .max_incoming(cfg.max_incoming as usize)
        .incoming_buffer_size(cfg.incoming_buffer.get());
    Ok(server)
}

/// Builds the quinn endpoint on an already-bound UDP socket, with the
/// stateless-reset key and connection IDs of `keys` (see [`lb`]).
pub fn endpoint(
    socket: std::net::UdpSocket,
    cfg: &QuicConfig,
    tls: rustls::ServerConfig,
    keys: &QuicKeys,
) -> Result<quinn::Endpoint, QuicSetupError> {
    configure_udp_buffers(&socket, cfg);
    let server = server_config(cfg, tls, keys)?;
    let endpoint = quinn::Endpoint::new(
        keys.endpoint_config(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(endpoint)
}

#[derive(Clone)]
pub struct QuicListener {
    pub state: SharedState,
    pub shutdown: Shutdown,
    pub conns: Arc<ConnCounts>,
}

impl QuicListener {
    /// Accepts connections until the drain starts, then refuses new ones.
    /// Caps and address validation are decided here, before any crypto work.
    pub async fn serve(self, endpoint: quinn::Endpoint) {
        loop {
            let incoming = tokio::select! {
                _ = self.shutdown.draining() => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let q = self.state.load().config.quic.clone();
            let ip = incoming.remote_address().ip();
            let slot = match self.conns.admit(
                ip,
                q.max_connections as usize,
                q.max_connections_per_ip as usize,
            ) {
                Ok(slot) => slot,
                Err(reason) => {
                    metrics::quic::refused(reason);
                    incoming.refuse();
                    continue;
                }
            };
            let retry = match q.address_validation {
                AddressValidation::Always => true,
                AddressValidation::Never => false,
                AddressValidation::UnderLoad => {
                    self.conns.pending.load(Ordering::Relaxed) >= q.retry_threshold as usize
                }
            };
            if retry && !incoming.remote_address_validated() && incoming.may_retry() {
                metrics::quic::retry_sent();
                let _ = incoming.retry();
                continue;
            }
            // Counted from now, not from when the task first runs: a burst
            // of Initials must see itself in the count that triggers Retry.
            let pending = PendingHandshake::new(&self.conns);
            let this = self.clone();
            self.shutdown.spawn(async move {
                this.connection(incoming, pending, q.handshake_timeout.get())
                    .await;
                drop(slot);
            });
        }
        endpoint.set_server_config(None);
        tracing::debug!("quic endpoint stopped accepting");
    }

    async fn connection(
        self,
        incoming: quinn::Incoming,
        pending: PendingHandshake,
        handshake_timeout: std::time::Duration,
    ) {
        let peer = incoming.remote_address();
        if self.shutdown.is_draining() {
            metrics::quic::refused("draining");
            incoming.refuse();
            return;
        }
        let zero_rtt = self.state.load().config.quic.zero_rtt;
        let begun = tokio::time::Instant::now();
        let handshake = tokio::select! {
            _ = self.shutdown.forced() => None,
            c = tokio::time::timeout(handshake_timeout, establish(incoming, zero_rtt)) => Some(c),
        };
        let (conn, accepted) = match handshake {
            None => return,
            Some(Ok(Ok(c))) => c,
            Some(Ok(Err(e))) => {
                metrics::quic::handshake_failed();
                tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                return;
            }
            Some(Err(_)) => {
                metrics::quic::handshake_failed();
                tracing::debug!(%peer, "QUIC handshake timed out");
                return;
            }
        };
        metrics::quic::accepted();
        // A 0-RTT connection stays a pending handshake until it completes.
        let pending = accepted.is_some().then_some(pending);
        let handshake = Arc::new(QuicHandshake {
            conn: conn.clone(),
            done: AtomicBool::new(accepted.is_none()),
            notify: tokio::sync::Notify::new(),
            early_seen: AtomicBool::new(false),
            claim: tickets::claim(&conn),
            begun,
            // With 0-RTT the handshake may not be over yet: set when it is.
            took: match accepted {
                None => std::sync::OnceLock::from(begun.elapsed()),
                Some(_) => std::sync::OnceLock::new(),
            },
        });
        let span = tracing::info_span!("conn", transport = "quic", remote = %peer, conn_id = conn.stable_id());
        let accepted = accepted.map(|a| (a, pending));
        self.serve_connection(conn.clone(), peer, handshake, accepted, handshake_timeout)
            .instrument(span)
            .await;
        let path = conn.stats().path;
        metrics::quic::closed(metrics::quic::PathStats {
            rtt: path.rtt,
            cwnd: path.cwnd,
            lost_packets: path.lost_packets,
            sent_packets: path.sent_packets,
        });
    }

    async fn serve_connection(
        &self,
        conn: quinn::Connection,
        peer: SocketAddr,
        handshake: Arc<QuicHandshake>,
        accepted: Option<(quinn::ZeroRttAccepted, Option<PendingHandshake>)>,
        handshake_timeout: std::time::Duration,
    ) {
        let handshake_deadline = tokio::time::Instant::now() + handshake_timeout;
        let (max_field_section_size, header_timeout, write_timeout) = {
            let state = self.state.load();
            (
                state.config.quic.max_field_section_size.get(),
                state.config.http.header_read_timeout.get(),
                state.config.http.write_timeout.get(),
            )
        };
        let stops = Arc::new(Stops::default());
        let Some(mut h3) = h3_connection(&conn, &stops, max_field_section_size).await else {
            return;
        };
        let new_stream = || StreamCtx {
            state: self.state.clone(),
            peer,
            handshake: handshake.clone(),
            conn: conn.clone(),
            stops: stops.clone(),
            header_timeout,
            write_timeout,
        };
        let requests = TaskTracker::new();
        let early = accepted.map(|(accepted, pending)| EarlyHandshake {
            accepted,
            pending,
            deadline: handshake_deadline,
        });
        let draining = self
            .accept_requests(&mut h3, &requests, &handshake, early, new_stream)
            .await;
        self.close(&conn, &requests, draining).await;
    }

    /// Spawns a task per request until the connection ends, the drain's
    /// GOAWAY has let its requests finish, or the shutdown is forced. With
    /// 0-RTT (`early`) the handshake finishes while requests are served:
    /// it is tracked, and bounded by its deadline; it counts as pending
    /// until then. Returns whether the drain started.
    async fn accept_requests(
        &self,
        h3: &mut H3Conn,
        requests: &TaskTracker,
        handshake: &QuicHandshake,
        early: Option<EarlyHandshake>,
        new_stream: impl Fn() -> StreamCtx,
    ) -> bool {
        let (mut accepted, mut pending, handshake_deadline) = match early {
            Some(e) => (Some(Box::pin(e.accepted)), e.pending, e.deadline),
            None => (None, None, tokio::time::Instant::now()),
        };
        let mut draining = false;
        loop {
            tokio::select! {
                _ = self.shutdown.draining(), if !draining => {
                    // GOAWAY: requests already received complete; no new ones start.
                    draining = true;
                    requests.close();
                    let _ = h3.shutdown(0).await;
                }
                _ = requests.wait(), if draining => break,
                _ = self.shutdown.forced() => break,
                _ = async { if let Some(a) = accepted.as_mut() { let _ = a.await; } }, if accepted.is_some() => {
                    accepted = None;
                    pending = None;
                    handshake.complete();
                }
                _ = tokio::time::sleep_until(handshake_deadline), if accepted.is_some() => {
                    metrics::quic::handshake_failed();
                    tracing::debug!("0-RTT connection did not complete its handshake in time");
                    break;
                }
                incoming = h3.accept() => match incoming {
                    Ok(Some(resolver)) => {
                        requests.spawn(request(resolver, new_stream()).in_current_span());
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !e.is_h3_no_error() {
                            tracing::debug!(error = %e, "HTTP/3 connection ended");
                        }
                        break;
                    }
                },
            }
        }
        drop(pending);
        draining
    }

    /// Waits for the connection's requests to finish, then closes it with
    /// H3_NO_ERROR (after a short linger when draining).
    async fn close(&self, conn: &quinn::Connection, requests: &TaskTracker, draining: bool) {
        requests.close();
        tokio::select! {
            _ = requests.wait() => {}
            _ = self.shutdown.forced() => {}
        }
        if draining {
            // The last responses may still be in flight: closing now would
            // discard them. Give the peer a few round trips to receive them
            // (or to close first itself).
            let linger = (conn.rtt() * 8).clamp(LINGER_MIN, LINGER_MAX);
            tokio::select! {
                _ = conn.closed() => {}
                _ = tokio::time::sleep(linger) => {}
                _ = self.shutdown.forced() => {}
            }
        }
        conn.close(VarInt::from_u32(H3_NO_ERROR), b"");
    }
}

/// A 0-RTT connection's unfinished handshake: what says when it completes,
/// its count as a pending handshake, and its deadline.
struct EarlyHandshake {
    accepted: quinn::ZeroRttAccepted,
    pending: Option<PendingHandshake>,
    deadline: tokio::time::Instant,
}

/// The h3 server side of a QUIC connection; `None` when its setup fails.
async fn h3_connection(
    conn: &quinn::Connection,
    stops: &Arc<Stops>,
    max_field_section_size: u64,
) -> Option<H3Conn> {
    match h3::server::builder()
        .max_field_section_size(max_field_section_size)
        .build(streams::Connection::new(conn.clone(), stops.clone()))
        .await
    {
        Ok(h3) => Some(h3),
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/3 setup failed");
            None
        }
    }
}

/// Accepts an incoming connection. With 0-RTT it returns before the
/// handshake completes, with the future that says when it does — but only
/// once the whole ClientHello has been processed: quinn's server grants
/// `into_0rtt` at once, and a ClientHello spanning several Initial packets
/// (any post-quantum key share: every Chromium) may not have arrived yet.
/// Until it has, the server knows neither the client's transport parameters
/// (so h3's control stream cannot open: the connection hangs) nor any key
/// to read early data with.
async fn establish(
    incoming: quinn::Incoming,
    zero_rtt: bool,
) -> Result<(quinn::Connection, Option<quinn::ZeroRttAccepted>), quinn::ConnectionError> {
    if !zero_rtt {
        return incoming.await.map(|c| (c, None));
    }
    let mut connecting = incoming.accept()?;
    connecting.handshake_data().await?;
    match connecting.into_0rtt() {
        Ok((conn, accepted)) => Ok((conn, Some(accepted))),
        Err(connecting) => connecting.await.map(|c| (c, None)),
    }
}

/// A connection counted as a pending handshake (what Retry and the
/// `max_incoming` cap see), from its first packet until its handshake
/// completes or it ends.
struct PendingHandshake(Arc<ConnCounts>);

impl PendingHandshake {
    fn new(counts: &Arc<ConnCounts>) -> Self {
        counts.pending.fetch_add(1, Ordering::Relaxed);
        PendingHandshake(counts.clone())
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A QUIC connection's handshake, as the pipeline sees it.
struct QuicHandshake {
    conn: quinn::Connection,
    done: AtomicBool,
    notify: tokio::sync::Notify,
    /// This connection has served an early request (counted once).
    early_seen: AtomicBool,
    /// The claim of the cluster-shared ticket it resumed with.
    claim: Option<crate::cluster::tickets::Claim>,
    /// When the connection arrived, and how long its handshake took.
    begun: tokio::time::Instant,
    took: std::sync::OnceLock<std::time::Duration>,
}

impl QuicHandshake {
    fn complete(&self) {
        let _ = self.took.set(self.begun.elapsed());
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

impl crate::exchange::Handshake for QuicHandshake {
    fn transport(&self) -> Option<crate::exchange::TransportFacts> {
        Some(crate::exchange::TransportFacts {
            rtt: self.conn.rtt(),
            zero_rtt: self.early_seen.load(Ordering::Relaxed),
            handshake: self.took.get().copied(),
        })
    }

    fn is_complete(&self) -> bool {
        // Keying material can be exported only once the handshake is
        // complete: exact even before the connection task has noticed.
        self.done.load(Ordering::Acquire)
            || self
                .conn
                .export_keying_material(&mut [0u8; 1], b"h3gate handshake probe", b"")
                .is_ok()
    }

    fn completed(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let notified = self.notify.notified();
                if self.is_complete() {
                    return;
                }
                // The notification, or a recheck: completion can also be seen
                // through the keying material before the task marks it.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(20), notified).await;
            }
        })
    }

    fn early_confirmed(&self) -> Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            match &self.claim {
                Some(claim) => claim.first_use().await,
                None => true,
            }
        })
    }
}

/// The HTTP/3 code for a clean close.
const H3_NO_ERROR: u32 = 0x100;

/// Bounds of the wait, during a drain, between a connection's last response
/// and its close.
const LINGER_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const LINGER_MAX: std::time::Duration = std::time::Duration::from_secs(2);
