//! `[server] listen` and `[admin] listen` take several addresses: the
//! quickstart serves both loopbacks (browsers send QUIC for `localhost` to
//! `[::1]`), and an address the host cannot bind is logged and skipped
//! while another one binds.

mod common;

use std::net::SocketAddr;

use common::{chat, Client, Proto};
use h3gate::config::{Addresses, Config};
use h3gate::server::{self, Listeners, StartError};
use tokio_util::sync::CancellationToken;

fn addrs(list: &[&str]) -> Addresses {
    Addresses(list.iter().map(|a| a.parse().unwrap()).collect())
}

/// The test configuration with its listeners moved to `listen` / `admin`.
async fn with_listen(listen: &[&str], admin: &[&str]) -> (common::Gateway, Config) {
    // The harness's gateway gives us a valid config file (certificate, upstream).
    let gw = common::Gateway::start().await;
    let mut config = Config::load(&gw.config_path).unwrap();
    config.server.listen = addrs(listen);
    config.admin.listen = addrs(admin);
    (gw, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_listed_address_over_every_protocol() {
    let (gw, config) = with_listen(&["127.0.0.1:0", "[::1]:0"], &["127.0.0.1:0", "[::1]:0"]).await;
    let listeners = Listeners::bind(&config).unwrap();
    assert_eq!(
        (
            listeners.tcp.len(),
            listeners.udp.len(),
            listeners.admin.len()
        ),
        (2, 2, 2)
    );
    let tcp: Vec<SocketAddr> = listeners
        .tcp
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let udp: Vec<SocketAddr> = listeners
        .udp
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let admin: Vec<SocketAddr> = listeners
        .admin
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server::run(config, listeners, stop.clone(), None));
    for i in 0..2 {
        let source = tcp[i].ip();
        for proto in [Proto::H3, Proto::H2, Proto::H1] {
            let c = Client::connect_from(proto, tcp[i], udp[i], &gw.ca, source).await;
            let resp = c
                .post_json("/v1/chat/completions", chat("mock-1", false))
                .await;
            assert_eq!(resp.status, 200, "{proto:?} on {}", tcp[i]);
        }
        let ready = reqwest::get(format!("http://{}/health", admin[i]))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "admin on {}", admin[i]);
    }
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_host_lacks_is_skipped_not_fatal() {
    // 192.0.2.1 (TEST-NET-1) is on no interface here: EADDRNOTAVAIL.
    let (_gw, config) = with_listen(&["192.0.2.1:0", "127.0.0.1:0"], &["127.0.0.1:0"]).await;
    let listeners = Listeners::bind(&config).expect("the other address binds");
    assert_eq!((listeners.tcp.len(), listeners.udp.len()), (1, 1));

    let (_gw, config) = with_listen(&["192.0.2.1:0"], &["127.0.0.1:0"]).await;
    match Listeners::bind(&config) {
        Err(e @ StartError::NoAddress { .. }) => {
            assert!(e.to_string().contains("192.0.2.1"), "{e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("nothing could be bound: an error"),
    }
}
