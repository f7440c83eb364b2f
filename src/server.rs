//! Starting and stopping the gateway: bind (or take) the sockets, build the
//! state, start the listeners (HTTP/3, HTTPS, admin) and the background
//! tasks (certificate watch, reload on SIGHUP, metrics upkeep), run until
//! the shutdown token fires, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::tickets::TicketHub;
use crate::config::Config;
use crate::listener::http::HttpListener;
use crate::listener::quic::{self, QuicListener};
use crate::reload::Reloader;
use crate::shutdown::Shutdown;
use crate::state::SharedState;
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
    #[error(transparent)]
    Spend(#[from] crate::usage::file::FileError),
    #[error("socket setup: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: none of its addresses ({addrs}) could be bound on this host")]
    NoAddress { what: &'static str, addrs: String },
    /// Not a start failure: the gateway ran, but its drain was forced
    /// (requests still running after `server.shutdown_timeout` were cut).
    #[error("the drain was forced: requests still running after server.shutdown_timeout ({0:?}) were cut")]
    DrainForced(std::time::Duration),
}

/// The sockets the gateway serves on, bound before it starts (tests bind port 0).
pub struct Listeners {
    /// HTTPS: HTTP/1.1 and HTTP/2, one per address.
    pub tcp: Vec<std::net::TcpListener>,
    /// HTTP/3, one per address; empty serves no HTTP/3.
    pub udp: Vec<std::net::UdpSocket>,
    /// Admin endpoints; empty serves none.
    pub admin: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// One socket of each kind (what tests bind on port 0).
    pub fn single(
        tcp: std::net::TcpListener,
        udp: Option<std::net::UdpSocket>,
        admin: Option<std::net::TcpListener>,
    ) -> Listeners {
        Listeners {
            tcp: vec![tcp],
            udp: udp.into_iter().collect(),
            admin: admin.into_iter().collect(),
        }
    }

    /// Binds what the configuration asks for: TCP and UDP on every
    /// `server.listen` address, and the admin addresses. An address whose
    /// family the host lacks (no IPv6, say) is logged and skipped as long as
    /// another address of the same listener binds.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let mut admin = Vec::new();
        for &addr in config.server.listen.iter() {
            let Some(t) = skip_missing_family(bind_tcp(addr, "the HTTPS listener (TCP)"))? else {
                continue;
            };
            tcp.push(t);
            if config.quic.enabled {
                udp.extend(skip_missing_family(bind_udp(addr))?);
            }
        }
        if config.admin.enabled {
            for &addr in config.admin.listen.iter() {
                admin.extend(skip_missing_family(bind_tcp(addr, "the admin listener"))?);
            }
        }
        let none = |what, addrs: &crate::config::Addresses| StartError::NoAddress {
            what,
            addrs: addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        if tcp.is_empty() || (config.quic.enabled && udp.is_empty()) {
            return Err(none("server.listen", &config.server.listen));
        }
        if config.admin.enabled && admin.is_empty() {
            return Err(none("admin.listen", &config.admin.listen));
        }
        Ok(Listeners { tcp, udp, admin })
    }
}

/// A bind that failed only because the host lacks the address family (or
/// the address) becomes a warning; any other failure stays fatal.
fn skip_missing_family<T>(bound: Result<T, StartError>) -> Result<Option<T>, StartError> {
    match bound {
        Ok(t) => Ok(Some(t)),
        Err(StartError::Bind { what, addr, source })
            if matches!(
                source.kind(),
                std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
            ) || source.raw_os_error() == Some(97) =>
        {
            // 97: EAFNOSUPPORT (no IPv6 in this kernel or namespace).
            tracing::warn!(%addr, error = %source, "cannot bind {what} on this address (the host lacks it); skipped");
            Ok(None)
        }
        Err(e) => Err(e),
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
/// `/ready` answers 503 at once; after `server.drain_delay` (the public
/// listeners still accept meanwhile) stop accepting, GOAWAY on HTTP/2 and
/// HTTP/3, let in-flight requests and streams finish for up to
/// `server.shutdown_timeout`, then close. The admin listener answers until
/// the end. A forced drain (requests cut at the deadline) returns
/// [`StartError::DrainForced`].
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
    let quic_config = config.quic.clone();
    let cluster_config = config.cluster.clone();
    let state = State::build(config)?;
    // Before anything is served: requests count on top of what was spent.
    state.restore_spend()?;
    let state: SharedState = Arc::new(ArcSwap::from_pointee(state));
    let shutdown = Shutdown::new(stop);
    let gateway = Gateway {
        tickets: ticket_hub(&state, &shutdown),
        state,
        certs: Arc::new(CertStore::new(loaded)),
        shutdown,
    };
    gateway.state.load().start_tasks(&gateway.shutdown);

    // HTTP/3 first: the HTTPS listener advertises its port.
    let endpoints = gateway.start_quic(listeners.udp, &quic_config, &cluster_config)?;
    gateway.start_https(listeners.tcp, endpoints.port(), &quic_config)?;
    gateway.shutdown.spawn(tls::watch(
        gateway.state.clone(),
        gateway.certs.clone(),
        gateway.shutdown.clone(),
    ));
    let reloader = gateway.start_reloader(reload_from, &endpoints);
    gateway.start_admin(listeners.admin, prometheus.clone(), reloader)?;
    if let Some(prometheus) = prometheus {
        gateway
            .shutdown
            .spawn(metrics_upkeep(prometheus, gateway.shutdown.clone()));
    }

    gateway.shutdown.signalled().await;
    gateway.drain(endpoints).await
}

/// What every part of a running gateway shares.
struct Gateway {
    state: SharedState,
    certs: Arc<CertStore>,
    shutdown: Shutdown,
    /// The replicas' shared session tickets (with `[cluster]` at start).
    tickets: Option<TicketHub>,
}

/// With a cluster, the stores of session tickets the replicas share; they
/// follow the cluster a reload installs. Whether tickets are shared is
/// decided at start (`cluster.redis_url` added or removed needs a restart
/// for them).
fn ticket_hub(state: &SharedState, shutdown: &Shutdown) -> Option<TicketHub> {
    state.load().cluster.as_ref()?;
    let state = state.clone();
    let source = Arc::new(move || state.load().cluster.clone());
    Some(TicketHub::new(source, shutdown.clone()))
}

impl Gateway {
    /// The HTTP/3 endpoints, one per UDP socket, with one TLS configuration
    /// (and ticket store), one set of connection counts and the QUIC keys
    /// of `[cluster]` for all.
    fn start_quic(
        &self,
        udp: Vec<std::net::UdpSocket>,
        quic_config: &crate::config::QuicConfig,
        cluster: &crate::config::ClusterConfig,
    ) -> Result<quic::Endpoints, StartError> {
        if udp.is_empty() {
            return Ok(quic::Endpoints::default());
        }
        let quic_tls =
            tls::quic_server_config(self.certs.clone(), quic_config, self.tickets.as_ref())?;
        let quic = QuicListener {
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
            conns: Arc::default(),
        };
        Ok(quic::Endpoints::start(
            udp,
            quic_config,
            cluster,
            quic_tls,
            &quic,
            self.tickets.clone(),
        )?)
    }

    /// The HTTPS listeners (HTTP/1.1, HTTP/2), advertising HTTP/3 on
    /// `h3_port`; one TLS configuration and one set of connection counts.
    fn start_https(
        &self,
        tcp: Vec<std::net::TcpListener>,
        h3_port: Option<u16>,
        quic_config: &crate::config::QuicConfig,
    ) -> Result<(), StartError> {
        let sessions = self
            .tickets
            .as_ref()
            .map(|hub| tls::tcp_sessions(hub, quic_config));
        let https = HttpListener {
            tls: Arc::new(tls::tcp_server_config(self.certs.clone(), sessions)?),
            state: self.state.clone(),
            h3_port,
            shutdown: self.shutdown.clone(),
            conns: Arc::default(),
        };
        for tcp in tcp {
            tcp.set_nonblocking(true)?;
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            tracing::info!(addr = %tcp.local_addr()?, "HTTPS listening (HTTP/1.1, HTTP/2)");
            self.shutdown.spawn(https.clone().serve(tcp));
        }
        Ok(())
    }

    /// With a configuration file, the reloader (SIGHUP and `POST
    /// /admin/reload`).
    fn start_reloader(
        &self,
        reload_from: Option<PathBuf>,
        endpoints: &quic::Endpoints,
    ) -> Option<Arc<Reloader>> {
        let reloader = Arc::new(Reloader::new(
            reload_from?,
            self.state.clone(),
            self.certs.clone(),
            endpoints.clone(),
            self.shutdown.clone(),
        ));
        self.shutdown
            .spawn(reload_on_sighup(reloader.clone(), self.shutdown.clone()));
        Some(reloader)
    }

    /// The admin listeners; they answer until the process exits.
    fn start_admin(
        &self,
        listeners: Vec<std::net::TcpListener>,
        prometheus: Option<PrometheusHandle>,
        reloader: Option<Arc<Reloader>>,
    ) -> Result<(), StartError> {
        let admin = crate::admin::Admin {
            state: self.state.clone(),
            prometheus,
            reloader,
            shutdown: self.shutdown.clone(),
        };
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(addr = %listener.local_addr()?, "admin listening");
            let admin = admin.clone();
            self.shutdown
                .spawn_until_exit(crate::listener::admin::serve(
                    listener,
                    self.state.clone(),
                    self.shutdown.clone(),
                    move |req| {
                        let admin = admin.clone();
                        async move { admin.route(req).await }
                    },
                ));
        }
        Ok(())
    }

    /// After the shutdown signal: not ready for `server.drain_delay`, then
    /// the drain of up to `server.shutdown_timeout`, then the close.
    async fn drain(self, endpoints: quic::Endpoints) -> Result<(), StartError> {
        // As currently configured (a reload may have changed them).
        let (delay, grace) = {
            let s = &self.state.load().config.server;
            (s.drain_delay.get(), s.shutdown_timeout.get())
        };
        if !delay.is_zero() {
            tracing::info!(delay = ?delay, "shutting down: not ready; still accepting for drain_delay");
            tokio::time::sleep(delay).await;
        }
        tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
        let clean = self.shutdown.drain(grace).await;
        endpoints.close().await;
        self.shutdown.exit().await;
        tracing::info!(clean, "stopped");
        if clean {
            Ok(())
        } else {
            Err(StartError::DrainForced(grace))
        }
    }
}

/// Histograms need periodic upkeep when rendered on demand.
async fn metrics_upkeep(prometheus: PrometheusHandle, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.draining() => break,
            _ = tick.tick() => prometheus.run_upkeep(),
        }
    }
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
