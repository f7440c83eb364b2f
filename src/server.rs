//! Starting and stopping the gateway: bind (or take) the sockets, build the
//! state, run the listeners until the shutdown token fires, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listener::http::HttpListener;
use crate::listener::quic::{self, QuicListener};
use crate::listener::SharedState;
use crate::reload::Reloader;
use crate::shutdown::Shutdown;
use crate::state::State;
use crate::tls::{self, CertStore};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    State(#[from] crate::state::BuildError),
    #[error(transparent)]
    Quic(#[from] quic::QuicSetupError),
    #[error("socket setup: {0}")]
    Io(#[from] std::io::Error),
}

/// The sockets the gateway serves on, bound before it starts (tests bind port 0).
pub struct Listeners {
    /// HTTPS: HTTP/1.1 and HTTP/2.
    pub tcp: std::net::TcpListener,
    /// HTTP/3; `None` serves no HTTP/3.
    pub udp: Option<std::net::UdpSocket>,
    /// Admin endpoints; `None` serves none.
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds what the configuration asks for: TCP and UDP on `server.listen`,
    /// and the admin address.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let listen = config.server.listen;
        let tcp = bind_tcp(listen, "the HTTPS listener (TCP)")?;
        let udp = if config.quic.enabled {
            Some(bind_udp(listen)?)
        } else {
            None
        };
        let admin = if config.admin.enabled {
            Some(bind_tcp(config.admin.listen, "the admin listener")?)
        } else {
            None
        };
        Ok(Listeners { tcp, udp, admin })
    }
}

fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    let err = |source| StartError::Bind {
        what: "the HTTP/3 listener (UDP)",
        addr,
        source,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )
    .map_err(err)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

/// Runs the gateway on `listeners` until `stop` is cancelled, then drains:
/// stop accepting, GOAWAY on HTTP/2 and HTTP/3, let in-flight requests and
/// streams finish for up to `server.shutdown_timeout`, then close.
///
/// With `reload_from`, SIGHUP and `POST /admin/reload` re-read that file.
pub async fn run(
    config: Config,
    listeners: Listeners,
    stop: CancellationToken,
    reload_from: Option<PathBuf>,
) -> Result<(), StartError> {
    // Without the recorder every metric is a no-op (`[admin] metrics = false`).
    let prometheus = config.admin.metrics.then(crate::metrics::install);
    let loaded = tls::load_certs(&config.tls)?;
    if let Some(expiry) = loaded.earliest_expiry() {
        crate::metrics::certificate_expiry(expiry);
    }
    let certs = Arc::new(CertStore::new(loaded));
    let quic_config = config.quic.clone();
    let state: SharedState = Arc::new(ArcSwap::from_pointee(State::build(config)?));
    let shutdown = Shutdown::new(stop);
    state.load().start_tasks(&shutdown);

    // HTTP/3 first: the HTTPS listener advertises its port.
    let mut endpoint = None;
    if let Some(udp) = listeners.udp {
        let ep = quic::endpoint(
            udp,
            &quic_config,
            tls::quic_server_config(certs.clone(), &quic_config)?,
        )?;
        tracing::info!(addr = %ep.local_addr()?, "HTTP/3 listening (QUIC)");
        let listener = QuicListener {
            state: state.clone(),
            shutdown: shutdown.clone(),
            conns: Arc::default(),
        };
        shutdown.spawn(listener.serve(ep.clone()));
        endpoint = Some(ep);
    }

    listeners.tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpListener::from_std(listeners.tcp)?;
    tracing::info!(addr = %tcp.local_addr()?, "HTTPS listening (HTTP/1.1, HTTP/2)");
    let h3_port = match &endpoint {
        Some(ep) => Some(ep.local_addr()?.port()),
        None => None,
    };
    let https = HttpListener {
        tls: Arc::new(tls::tcp_server_config(certs.clone())?),
        state: state.clone(),
        h3_port,
        shutdown: shutdown.clone(),
    };
    shutdown.spawn(https.serve(tcp));

    shutdown.spawn(tls::watch(state.clone(), certs.clone(), shutdown.clone()));
    let reloader = reload_from.map(|path| {
        Arc::new(Reloader::new(
            path,
            state.clone(),
            certs.clone(),
            endpoint.clone(),
            shutdown.clone(),
        ))
    });
    if let Some(r) = &reloader {
        shutdown.spawn(reload_on_sighup(r.clone(), shutdown.clone()));
    }

    if let Some(admin) = listeners.admin {
        admin.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(admin)?;
        tracing::info!(addr = %listener.local_addr()?, "admin listening");
        let admin = crate::admin::Admin {
            state: state.clone(),
            prometheus: prometheus.clone(),
            reloader,
            shutdown: shutdown.clone(),
        };
        shutdown.spawn(admin.serve(listener));
    }
    if let Some(prometheus) = prometheus {
        // Histograms need periodic upkeep when rendered on demand.
        let upkeep = shutdown.clone();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = upkeep.draining() => break,
                    _ = tick.tick() => prometheus.run_upkeep(),
                }
            }
        });
    }

    shutdown.draining().await;
    // The grace period as currently configured (a reload may have changed it).
    let grace = state.load().config.server.shutdown_timeout.get();
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    let clean = shutdown.drain(grace).await;
    if let Some(ep) = endpoint {
        ep.close(quinn::VarInt::from_u32(0x100), b"shutdown");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ep.wait_idle()).await;
    }
    tracing::info!(clean, "stopped");
    Ok(())
}

/// Reloads on every SIGHUP until the drain starts.
async fn reload_on_sighup(reloader: Arc<Reloader>, shutdown: Shutdown) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.draining() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = reloader.reload().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (reloader, shutdown);
}
