//! Raw TLS connections to the gateway's TCP listener, from a chosen source
//! address, for the tests that speak HTTP/1.1 and HTTP/2 bytes by hand.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use h3gate::config::Duration as Dur;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Gateway;

/// Longest a test waits for something that should happen at once or after
/// a short configured timeout.
pub const BOUND: Duration = Duration::from_secs(10);
/// A short configured timeout, for the limits under test.
pub const SHORT: Dur = Dur::millis(300);

pub fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(tls)
}

/// A TCP connection from `source` to `addr`.
pub async fn tcp_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

pub async fn try_tls(
    gw: &Gateway,
    source: IpAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(gw.tcp, source).await;
    let connector = tokio_rustls::TlsConnector::from(tls_config(&gw.ca, alpn));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(BOUND, connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake hung")))
}

pub async fn tls(gw: &Gateway, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    try_tls(gw, [127, 0, 0, 1].into(), alpn)
        .await
        .expect("TLS handshake")
}

/// Reads until the server closes the connection (EOF or an error), within
/// `BOUND`; returns what was read, or `None` if it stayed open.
pub async fn read_until_closed(s: &mut TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.ok().map(|()| out)
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
pub const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
