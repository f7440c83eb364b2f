//! Which shared session ticket a QUIC connection resumed with.
//!
//! quinn drives rustls synchronously: each CRYPTO frame goes through
//! `Session::read_handshake`, and rustls asks the session store for the
//! client's ticket inside that call. The cluster's store answers from its
//! local cache and starts the ticket's claim in Redis; to know which
//! connection it was, quinn's crypto is wrapped so that every
//! `read_handshake` runs inside [`tickets::capturing`] (a thread-local slot
//! armed for that call only), and the claim it caught travels with the
//! connection's handshake data. The connection's early requests then wait
//! for the claim (`QuicHandshake::early_confirmed`).

use std::any::Any;
use std::sync::Arc;

use quinn::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, UnsupportedVersion};
use quinn::{ConnectionId, Side};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::TransportError;

use crate::cluster::tickets::{self, Claim};

/// `server` with its crypto wrapped to catch ticket claims. Only with the
/// cluster's store: it hands QUIC tickets out to wrapped handshakes alone.
pub fn wrap(mut server: quinn::ServerConfig) -> quinn::ServerConfig {
    server.crypto = Arc::new(Ticketed(server.crypto.clone()));
    server
}

/// The claim of the ticket `conn` resumed with: `None` on a full
/// handshake, or without a cluster (rustls' own single-use store decides).
pub fn claim(conn: &quinn::Connection) -> Option<Claim> {
    conn.handshake_data()?
        .downcast::<TicketedData>()
        .ok()?
        .claim
}

/// What the wrapped session reports as handshake data, in place of quinn's
/// own (ALPN, server name: nothing here reads them; the listener accepts
/// `h3` alone).
pub struct TicketedData {
    pub claim: Option<Claim>,
}

struct Ticketed(Arc<dyn crypto::ServerConfig>);

impl crypto::ServerConfig for Ticketed {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.0.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.0.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        Box::new(TicketedSession {
            inner: self.0.clone().start_session(version, params),
            claim: None,
        })
    }
}

struct TicketedSession {
    inner: Box<dyn crypto::Session>,
    claim: Option<Claim>,
}

impl crypto::Session for TicketedSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        // Ready when quinn's is: once the whole ClientHello was read.
        self.inner.handshake_data()?;
        Some(Box::new(TicketedData {
            claim: self.claim.clone(),
        }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let (result, claim) = tickets::capturing(|| self.inner.read_handshake(buf));
        if claim.is_some() {
            self.claim = claim;
        }
        result
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn crypto::PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}
