//! The hardened QUIC edge: per-address and total connection caps refuse
//! cheaply; address validation with Retry works end to end.

mod common;

use common::{chat, Client, Gateway, Proto};
use h3gate::config::AddressValidation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_cap_refuses_the_extra_connection() {
    let gw = Gateway::start_with(|c| c.quic.max_connections_per_ip = 1).await;
    let first = gw.client(Proto::H3).await;
    assert_eq!(first.get("/health").await.status, 200);
    let local = "127.0.0.1".parse().unwrap();
    let refused = Client::try_connect_from(Proto::H3, gw.tcp, gw.udp, &gw.ca, local).await;
    assert!(
        refused.is_err(),
        "a second connection from the same address is refused"
    );
    let other = Client::try_connect_from(
        Proto::H3,
        gw.tcp,
        gw.udp,
        &gw.ca,
        "127.0.0.2".parse().unwrap(),
    )
    .await
    .expect("another address still connects");
    assert_eq!(other.get("/health").await.status, 200);
    assert_eq!(
        first
            .post_json("/v1/chat/completions", chat("gpt-ok", false))
            .await
            .status,
        200,
        "the first keeps working"
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "h3gate_quic_connections_refused_total{reason=\"max_connections_per_ip\"}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_cap_refuses_beyond_it() {
    let gw = Gateway::start_with(|c| c.quic.max_connections = 1).await;
    let first = gw.client(Proto::H3).await;
    assert_eq!(first.get("/health").await.status, 200);
    let second = Client::try_connect_from(
        Proto::H3,
        gw.tcp,
        gw.udp,
        &gw.ca,
        "127.0.0.2".parse().unwrap(),
    )
    .await;
    assert!(second.is_err());
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_validates_addresses_end_to_end() {
    let gw = Gateway::start_with(|c| c.quic.address_validation = AddressValidation::Always).await;
    let c = gw.client(Proto::H3).await;
    let resp = c
        .post_json("/v1/chat/completions", chat("gpt-ok", true))
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp.text().await.contains("[DONE]"));
    let sent = gw.metric("h3gate_quic_retry_sent_total").await;
    assert!(
        sent >= 1.0,
        "a Retry was sent and the client came back: {sent}"
    );
}

over_every_protocol!(
    certificate_change_is_seen_by_new_connections_while_old_ones_stream,
    certificates_are_chosen_by_sni
);

/// `[[tls.certificates]]`: the name a client asks for picks the certificate
/// (exact name, then wildcard); other names get the default one.
async fn certificates_are_chosen_by_sni(p: Proto) {
    let extra = tempfile::tempdir().unwrap();
    let mut cas = Vec::new();
    let mut pairs = Vec::new();
    for (i, host) in ["api.example.test", "*.wild.test"].iter().enumerate() {
        let g = h3gate::tls::generate_dev_cert(&[host.to_string()]).unwrap();
        let dir = extra.path().join(i.to_string());
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        g.write(&dir, &cert, &key).unwrap();
        cas.push(g.ca_pem);
        pairs.push(h3gate::config::CertPair { cert, key });
    }
    let gw = Gateway::start_with(|c| c.tls.certificates = pairs).await;
    let local = "127.0.0.1".parse().unwrap();
    let get = |ca: Vec<u8>, host: &'static str| async move {
        let c = Client::try_connect_named(p, gw.tcp, gw.udp, &ca, local, host).await?;
        c.try_request(http::Method::GET, "/health", &[], common::TestBody::Empty)
            .await
            .map(|r| r.status)
    };
    assert_eq!(
        get(cas[0].clone().into_bytes(), "api.example.test").await,
        Ok(200)
    );
    assert_eq!(
        get(cas[1].clone().into_bytes(), "a.wild.test").await,
        Ok(200)
    );
    assert_eq!(
        get(gw.ca.clone(), "localhost").await,
        Ok(200),
        "the default certificate"
    );
    assert!(
        get(gw.ca.clone(), "api.example.test").await.is_err(),
        "not the default certificate for a configured name"
    );
    assert!(
        get(cas[1].clone().into_bytes(), "a.b.wild.test")
            .await
            .is_err(),
        "a wildcard covers one label"
    );
}

/// Replacing the certificate files: new connections (on both listeners) get
/// the new certificate within seconds; a connection already open keeps
/// streaming.
async fn certificate_change_is_seen_by_new_connections_while_old_ones_stream(p: Proto) {
    let gw = Gateway::start().await;
    let old = gw.client(p).await;
    let mut stream = old
        .post_json("/v1/chat/completions", chat("gated", true))
        .await;
    stream.chunk().await.unwrap().unwrap();

    let dir = gw.config_path.parent().unwrap();
    let renewed = h3gate::tls::generate_dev_cert(&["localhost".into()]).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    renewed
        .write(
            scratch.path(),
            &scratch.path().join("cert.pem"),
            &scratch.path().join("key.pem"),
        )
        .unwrap();
    // Rename into place: the watcher never sees half a file.
    for f in ["key.pem", "cert.pem"] {
        std::fs::rename(scratch.path().join(f), dir.join(f)).unwrap();
    }
    let local = "127.0.0.1".parse().unwrap();
    let mut seen = false;
    for _ in 0..60 {
        if let Ok(c) =
            Client::try_connect_from(p, gw.tcp, gw.udp, renewed.ca_pem.as_bytes(), local).await
        {
            if c.try_request(http::Method::GET, "/health", &[], common::TestBody::Empty)
                .await
                .is_ok()
            {
                seen = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "a new connection trusting only the new CA gets through"
    );
    gw.upstream.release();
    assert!(
        stream.text().await.contains("[DONE]"),
        "the old connection kept streaming"
    );
}
