//! A minimal HTTP/3 client for trying h3gate by hand:
//!
//! ```text
//! cargo run --example h3_client -- https://localhost:8443/v1/models
//! cargo run --example h3_client -- https://localhost:8443/v1/chat/completions \
//!     '{"model":"mock-gpt","stream":true,"messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Trusts `certs/ca.pem` (the quickstart's development CA; override with
//! `H3_CA=path`). Prints the status and headers to stderr, and the body to
//! stdout as it streams in.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let url: http::Uri = args
        .next()
        .ok_or("usage: h3_client URL [JSON_BODY]")?
        .parse()?;
    let body = args.next();
    let host = url.host().ok_or("URL needs a host")?.to_string();
    let port = url.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or("cannot resolve host")?;

    let ca = std::env::var("H3_CA").unwrap_or_else(|_| "certs/ca.pem".into());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca)? {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let bind = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let mut endpoint = quinn::Endpoint::client(bind.parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )));
    let conn = endpoint.connect(addr, &host)?.await?;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });

    let method = if body.is_some() { "POST" } else { "GET" };
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(())?;
    let mut stream = send.send_request(req).await?;
    if let Some(b) = body {
        stream.send_data(Bytes::from(b)).await?;
    }
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    eprintln!("{:?} {}", resp.version(), resp.status());
    for (k, v) in resp.headers() {
        eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
    }
    let mut out = std::io::stdout();
    while let Some(mut chunk) = stream.recv_data().await? {
        out.write_all(&chunk.copy_to_bytes(chunk.remaining()))?;
        out.flush()?;
    }
    drop(send);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}
