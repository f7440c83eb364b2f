//! The store's local rules, with a cluster whose Redis never answers (the
//! end-to-end behaviour with a real Redis is in tests/cluster_tickets.rs).

use rustls::server::StoresServerSessions;

use super::*;
use crate::config::{ClusterConfig, Secret};

fn cluster() -> Arc<Cluster> {
    let cfg = ClusterConfig {
        redis_url: "unix:///nonexistent/h3gate-test.sock".into(),
        secret: Secret::new("11".repeat(32)),
        ..ClusterConfig::default()
    };
    Cluster::connect(&cfg).unwrap().unwrap()
}

fn hub(cluster: Option<Arc<Cluster>>) -> TicketHub {
    let shutdown = Shutdown::new(CancellationToken::new());
    TicketHub::new(Arc::new(move || cluster.clone()), shutdown)
}

#[tokio::test]
async fn a_quic_ticket_is_handed_out_only_to_a_capturing_handshake() {
    let store = hub(Some(cluster())).store(Kind::Quic, 8, 1);
    assert!(store.put(b"id".to_vec(), b"session".to_vec()));
    assert_eq!(store.take(b"id"), None, "not inside a handshake step");
    let (value, claim) = capturing(|| store.take(b"id"));
    assert_eq!(value.as_deref(), Some(&b"session"[..]));
    let claim = claim.expect("the take is the handshake's");
    // Taken before the writer shared it (Redis is down: it never will):
    // no other replica can hold it, so this is its first use.
    assert!(claim.first_use().await);
    let (again, none) = capturing(|| store.take(b"id"));
    assert!(again.is_none() && none.is_none(), "single use");
}

#[tokio::test]
async fn another_replicas_ticket_waits_for_redis_and_is_held_when_it_cannot_answer() {
    let cluster = cluster();
    let hub = hub(Some(cluster.clone()));
    let store = hub.store(Kind::Quic, 8, 7);
    let other = hub.store(Kind::Tcp, 8, 7);
    let key = cache::hash(b"remote id");
    let name = store.conf.key(&cluster, &key);
    let mut plain = 7u64.to_be_bytes().to_vec();
    plain.extend_from_slice(b"remote session");
    let sealed = cluster.secret().seal(name.as_bytes(), &plain);
    store.received(&sync::test_message(true, 99, &key, &sealed));
    let (value, claim) = capturing(|| store.take(b"remote id"));
    assert_eq!(value.as_deref(), Some(&b"remote session"[..]));
    assert!(
        !claim.unwrap().first_use().await,
        "unconfirmed: early requests are held"
    );
    // Sealed for the QUIC key, it does not open as a TCP session.
    other.received(&sync::test_message(true, 99, &key, &sealed));
    assert_eq!(other.take(b"remote id"), None);
}

#[tokio::test]
async fn tickets_from_other_transport_settings_or_keys_are_not_taken_in() {
    let cluster = cluster();
    let store = hub(Some(cluster.clone())).store(Kind::Quic, 8, 7);
    let key = cache::hash(b"id");
    let name = store.conf.key(&cluster, &key);
    let mut plain = 8u64.to_be_bytes().to_vec();
    plain.extend_from_slice(b"session");
    let other_settings = cluster.secret().seal(name.as_bytes(), &plain);
    store.received(&sync::test_message(true, 99, &key, &other_settings));
    let other_secret = crate::cluster::ClusterSecret::new(&[2u8; 32]);
    plain[..8].copy_from_slice(&7u64.to_be_bytes());
    let foreign = other_secret.seal(name.as_bytes(), &plain);
    store.received(&sync::test_message(true, 99, &key, &foreign));
    store.received(b"\x01s short");
    assert_eq!(capturing(|| store.take(b"id")).0, None);

    let ours = cluster.secret().seal(name.as_bytes(), &plain);
    store.received(&sync::test_message(true, 99, &key, &ours));
    store.received(&sync::test_message(false, 99, &key, &[]));
    assert_eq!(capturing(|| store.take(b"id")).0, None, "taken elsewhere");
}

#[tokio::test]
async fn tcp_sessions_resume_without_a_handshake_step_and_tls12_ids_stay() {
    let store = hub(Some(cluster())).store(Kind::Tcp, 8, 0);
    store.put(b"ticket".to_vec(), b"a".to_vec());
    store.put(b"session id".to_vec(), b"b".to_vec());
    assert_eq!(store.take(b"ticket").as_deref(), Some(&b"a"[..]));
    assert_eq!(store.take(b"ticket"), None);
    assert_eq!(store.get(b"session id").as_deref(), Some(&b"b"[..]));
    assert_eq!(store.get(b"session id").as_deref(), Some(&b"b"[..]));
}

#[tokio::test]
async fn a_newer_store_retires_the_one_before() {
    let hub = hub(None);
    let old = hub.store(Kind::Quic, 8, 1);
    old.put(b"id".to_vec(), b"v".to_vec());
    let new = hub.store(Kind::Quic, 8, 2);
    assert!(old.conf.retired.is_cancelled());
    assert_eq!(capturing(|| old.take(b"id")).0, None, "emptied");
    assert!(!new.conf.retired.is_cancelled());
    let tcp = hub.store(Kind::Tcp, 8, 0);
    assert!(!new.conf.retired.is_cancelled(), "another kind");
    drop(tcp);
}
