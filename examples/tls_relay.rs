//! The floor for any proxy in the benchmark: a TLS-terminating TCP relay that
//! does nothing else — no HTTP parsing, auth, limits or metrics. It decrypts
//! what the client sends and copies the bytes to the upstream (and back), so
//! its added latency is what the machine's topology (one more process, on the
//! other core, two more hops over loopback) and TLS cost on their own.
//!
//! ```text
//! cargo run --release --example tls_relay -- LISTEN UPSTREAM CERT KEY
//! ```
//!
//! ALPN offers `h2` and `http/1.1`; the bytes go to UPSTREAM unchanged, so the
//! upstream must speak both (`bench_upstream` does: HTTP/1.1 and h2c).

use std::path::PathBuf;
use std::sync::Arc;

use h3gate::config::TlsConfig;
use h3gate::tls::{load_certs, tcp_server_config, CertStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, cert, key] = args.as_slice() else {
        return Err("usage: tls_relay LISTEN UPSTREAM CERT KEY".into());
    };
    let tls = TlsConfig {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        ..TlsConfig::default()
    };
    let store = Arc::new(CertStore::new(load_certs(&tls)?));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tcp_server_config(store, None)?));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let upstream = upstream.clone();
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut client) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}
