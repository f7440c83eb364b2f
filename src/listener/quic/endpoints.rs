//! The running QUIC endpoints as one value: started together, reconfigured
//! together on reload, closed together at the end of a drain. Nothing above
//! the listener holds a `quinn::Endpoint`.

use std::sync::Arc;

use super::{endpoint, server_config, tickets, QuicKeys, QuicListener, QuicSetupError};
use crate::cluster::tickets::TicketHub;
use crate::config::{ClusterConfig, QuicConfig};

/// HTTP/3's `H3_NO_ERROR`: the code a connection is closed with when the
/// gateway stops (RFC 9114, section 8.1).
const H3_NO_ERROR: u32 = 0x100;

/// Every endpoint the gateway serves HTTP/3 on (none when QUIC is off),
/// and the QUIC keys they were started with: `[cluster]`'s node id and
/// secret take effect at start, and a reload keeps them (a changed one is
/// reported as needing a restart).
#[derive(Clone, Default)]
pub struct Endpoints {
    all: Vec<quinn::Endpoint>,
    keys: Arc<QuicKeys>,
    /// The cluster's shared session tickets, when the gateway started with
    /// one: every TLS configuration's store comes from it, and every
    /// connection's crypto reports the ticket it resumed with.
    tickets: Option<TicketHub>,
}

impl Endpoints {
    /// An endpoint on each socket, all sharing one TLS configuration (one
    /// ticket store, so a ticket resumes on any of them) and the QUIC keys
    /// of `cluster`, each served by `listener`. With `tickets`, `tls` holds
    /// the cluster's store.
    pub fn start(
        sockets: Vec<std::net::UdpSocket>,
        cfg: &QuicConfig,
        cluster: &ClusterConfig,
        tls: rustls::ServerConfig,
        listener: &QuicListener,
        tickets: Option<TicketHub>,
    ) -> Result<Endpoints, QuicSetupError> {
        let keys = Arc::new(QuicKeys::from_cluster(cluster).map_err(QuicSetupError::Cluster)?);
        keys.log(cluster);
        let mut all = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let ep = endpoint(socket, cfg, tls.clone(), &keys)?;
            if tickets.is_some() {
                // Before serving: a connection accepted under the plain
                // configuration would just not resume (the shared store
                // hands QUIC tickets to wrapped handshakes only).
                ep.set_server_config(Some(tickets::wrap(server_config(cfg, tls.clone(), &keys)?)));
            }
            tracing::info!(addr = %ep.local_addr()?, "HTTP/3 listening (QUIC)");
            listener.shutdown.spawn(listener.clone().serve(ep.clone()));
            all.push(ep);
        }
        Ok(Endpoints { all, keys, tickets })
    }

    /// The cluster's ticket stores, for a reload's new TLS configuration.
    pub fn tickets(&self) -> Option<&TicketHub> {
        self.tickets.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The UDP port of the first endpoint: what `Alt-Svc` advertises.
    pub fn port(&self) -> Option<u16> {
        self.all.first()?.local_addr().ok().map(|a| a.port())
    }

    /// New connections get `tls` and the transport of `cfg`; open ones keep
    /// what they have. The token key stays: tokens issued before a reload
    /// still validate after it.
    pub fn reconfigure(
        &self,
        cfg: &QuicConfig,
        tls: rustls::ServerConfig,
    ) -> Result<(), QuicSetupError> {
        let mut server = server_config(cfg, tls, &self.keys)?;
        if self.tickets.is_some() {
            server = tickets::wrap(server);
        }
        for ep in &self.all {
            ep.set_server_config(Some(server.clone()));
        }
        Ok(())
    }

    /// Closes every connection left after the drain (`H3_NO_ERROR`) and
    /// waits, briefly, for the peers to be told.
    pub async fn close(&self) {
        for ep in &self.all {
            ep.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"shutdown");
        }
        for ep in &self.all {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ep.wait_idle()).await;
        }
    }
}
