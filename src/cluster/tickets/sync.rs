//! A ticket store's Redis side: the writer (sealed `SET` + `PUBLISH`,
//! deletes), the subscriber (the other replicas' tickets and takes), the
//! claim of a taken ticket, and the messages between replicas.
//!
//! Redis layout, under `[cluster] key_prefix`:
//! - `ticket:{quic|tcp}:{sha256(id) hex}`: the session, sealed, for the
//!   ticket's lifetime; `taken` (for 10 minutes) once a QUIC claim took it.
//! - channel `tickets:{quic|tcp}`: `s` + origin + hash + sealed session (a
//!   new ticket), or `d` + origin + hash (a ticket taken).
//!
//! The sealed plaintext is the issuer's transport fingerprint, then rustls'
//! session value; the seal's context is the Redis key.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::cache::{Hash, Issued};
use super::{Conf, Confirmation, Tickets};
use crate::cluster::Cluster;

/// How long Redis keeps a ticket: the lifetime rustls gives its stateful
/// tickets (24 h). A replica deletes its tickets sooner, when its own
/// cache evicts them.
const TICKET_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// What a claim leaves in place of the session, and for how long: a replay
/// within that time is counted as one (after it, as unknown: still held).
const TAKEN: &[u8] = b"taken";
const TAKEN_TTL_MS: u64 = 10 * 60 * 1000;
/// Writes sent in one pipeline, at most.
const BATCH: usize = 64;
/// Bound on connecting and subscribing; wait before trying again.
const SUBSCRIBE_BOUND: Duration = Duration::from_secs(2);
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);
/// How often a subscriber checks that its store and cluster are current.
const CHECK_EVERY: Duration = Duration::from_secs(1);

const VERSION: u8 = 1;
const STORED: u8 = b's';
const DROPPED: u8 = b'd';

/// What the writer does.
pub enum Op {
    /// Share a ticket issued here (unless a take got to it first).
    Store {
        key: Hash,
        value: Vec<u8>,
        issued: Arc<Issued>,
    },
    /// A TCP take: delete, and tell the others.
    Drop(Hash),
    /// Evicted here: delete.
    Forget(Hash),
}

/// `h3gate_cluster_syncs_total{what="ticket",result}`.
pub fn counted(result: &'static str) {
    crate::metrics::CLUSTER_SYNCS
        .with(["ticket", result])
        .increment(1);
}

/// `h3gate_cluster_tickets_total{result}`, and the fallback when Redis
/// could not decide (early requests held).
pub fn confirmed(c: Confirmation) {
    crate::metrics::CLUSTER_TICKETS
        .with([c.as_str()])
        .increment(1);
    if c == Confirmation::Failed {
        crate::metrics::CLUSTER_FALLBACKS
            .with(["ticket", "hold"])
            .increment(1);
    }
}

fn message(kind: u8, origin: u64, key: &Hash, sealed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(2 + 8 + 32 + sealed.len());
    m.extend_from_slice(&[VERSION, kind]);
    m.extend_from_slice(&origin.to_be_bytes());
    m.extend_from_slice(key);
    m.extend_from_slice(sealed);
    m
}

/// (kind, origin, hash, rest) of a message; `None` if malformed.
fn parse(m: &[u8]) -> Option<(u8, u64, Hash, &[u8])> {
    let (&[version, kind], rest) = m.split_first_chunk::<2>()?;
    let (origin, rest) = rest.split_first_chunk::<8>()?;
    let (key, rest) = rest.split_first_chunk::<32>()?;
    (version == VERSION).then_some((kind, u64::from_be_bytes(*origin), *key, rest))
}

/// Sends the queued writes, a batch per round trip, until the store is
/// dropped or retired, or the process exits.
pub async fn writer(conf: Arc<Conf>, mut rx: mpsc::Receiver<Op>) {
    loop {
        let first = tokio::select! {
            op = rx.recv() => op,
            _ = conf.retired.cancelled() => None,
            _ = conf.shutdown.exiting() => None,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        write(&conf, batch).await;
    }
}

/// One batch. While Redis is down nothing is sent: a ticket then stays
/// this replica's alone (its local take is its first use), a TCP take's
/// delete is lost (a second resumption elsewhere, without early data, is
/// harmless) and an eviction's key expires on its own.
async fn write(conf: &Conf, batch: Vec<Op>) {
    let Some(cluster) = (conf.source)().filter(|c| c.is_up()) else {
        counted("local");
        return;
    };
    let channel = conf.channel(&cluster);
    let mut pipe = redis::pipe();
    let (mut sent, mut stored) = (0, 0);
    for op in batch {
        match op {
            Op::Store { key, value, issued } => {
                if !issued.share() {
                    continue;
                }
                let name = conf.key(&cluster, &key);
                let mut plain = conf.fingerprint.to_be_bytes().to_vec();
                plain.extend_from_slice(&value);
                let sealed = cluster.secret().seal(name.as_bytes(), &plain);
                let msg = message(STORED, conf.origin, &key, &sealed);
                pipe.cmd("SET").arg(&name).arg(sealed).arg("PX");
                pipe.arg(TICKET_TTL_MS).ignore();
                pipe.cmd("PUBLISH").arg(&channel).arg(msg).ignore();
                stored += 1;
            }
            Op::Drop(key) => {
                pipe.cmd("DEL").arg(conf.key(&cluster, &key)).ignore();
                let msg = message(DROPPED, conf.origin, &key, &[]);
                pipe.cmd("PUBLISH").arg(&channel).arg(msg).ignore();
            }
            Op::Forget(key) => {
                pipe.cmd("DEL").arg(conf.key(&cluster, &key)).ignore();
            }
        }
        sent += 1;
    }
    if sent == 0 {
        return;
    }
    match cluster.call_background::<()>("ticket_write", &pipe).await {
        Ok(()) => (0..stored).for_each(|_| counted("stored")),
        Err(e) => {
            counted("error");
            tracing::debug!(error = %e, "cluster: session tickets not shared");
        }
    }
}

/// The claim of a ticket taken here: atomically replaces the session with
/// `taken` and returns what was there (one round trip with the publish
/// that makes the other replicas forget it).
pub async fn confirm(
    conf: Arc<Conf>,
    cluster: Arc<Cluster>,
    key: Hash,
    tx: watch::Sender<Option<Confirmation>>,
) {
    let name = conf.key(&cluster, &key);
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg(&name).arg(TAKEN).arg("XX").arg("PX");
    pipe.arg(TAKEN_TTL_MS).arg("GET");
    let msg = message(DROPPED, conf.origin, &key, &[]);
    pipe.cmd("PUBLISH")
        .arg(conf.channel(&cluster))
        .arg(msg)
        .ignore();
    let answer = cluster
        .call::<(Option<Vec<u8>>,)>("ticket_take", &pipe)
        .await;
    let result = match answer {
        Ok((Some(v),)) if v == TAKEN => Confirmation::Replayed,
        Ok((Some(v),)) if cluster.secret().open(name.as_bytes(), &v).is_some() => {
            Confirmation::FirstUse
        }
        // Not a session sealed for this key: nothing to trust.
        Ok((Some(_),)) | Ok((None,)) => Confirmation::Unknown,
        Err(_) => Confirmation::Failed,
    };
    confirmed(result);
    tx.send_replace(Some(result));
}

/// How a subscription ended.
enum Ended {
    /// The store is gone or retired, or the process exits.
    Stop,
    /// The connection failed: subscribe again after a pause.
    Lost,
    /// A reload replaced the cluster: subscribe to the new one.
    Moved,
}

/// Keeps the store fed with the other replicas' tickets and takes while it
/// is current: subscribes (again after a failure, or to a reload's new
/// cluster), until the store is dropped or retired, or the process exits.
pub async fn subscriber(conf: Arc<Conf>, store: Weak<Tickets>) {
    loop {
        let ended = match (conf.source)() {
            Some(cluster) => listen(&conf, &cluster, &store).await,
            None => Ended::Lost,
        };
        match ended {
            Ended::Stop => return,
            Ended::Moved => continue,
            Ended::Lost => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
            _ = conf.retired.cancelled() => return,
            _ = conf.shutdown.exiting() => return,
        }
    }
}

async fn listen(conf: &Conf, cluster: &Arc<Cluster>, store: &Weak<Tickets>) -> Ended {
    let channel = conf.channel(cluster);
    let subscribe = async {
        let mut ps = cluster.client().get_async_pubsub().await?;
        ps.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>(ps)
    };
    let mut ps = match tokio::time::timeout(SUBSCRIBE_BOUND, subscribe).await {
        Ok(Ok(ps)) => ps,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cluster: cannot subscribe to session tickets");
            return Ended::Lost;
        }
        Err(_) => return Ended::Lost,
    };
    counted("subscribed");
    let mut messages = ps.on_message();
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { return Ended::Lost };
                let Some(store) = store.upgrade() else { return Ended::Stop };
                store.received(m.get_payload_bytes());
            }
            _ = check.tick() => {
                if store.strong_count() == 0 {
                    return Ended::Stop;
                }
                if !(conf.source)().is_some_and(|c| Arc::ptr_eq(&c, cluster)) {
                    return Ended::Moved;
                }
            }
            _ = conf.retired.cancelled() => return Ended::Stop,
            _ = conf.shutdown.exiting() => return Ended::Stop,
        }
    }
}

impl Tickets {
    /// A message from the channel: another replica's new ticket (added
    /// here if it opens and was issued under the same transport settings),
    /// or a take (the ticket forgotten here).
    pub(super) fn received(&self, m: &[u8]) {
        let Some((kind, origin, key, sealed)) = parse(m) else {
            counted("skipped");
            return;
        };
        if origin == self.conf.origin {
            return;
        }
        match kind {
            STORED => self.received_ticket(key, sealed),
            DROPPED => {
                if self.cache().remove(&key).is_some() {
                    counted("dropped");
                }
            }
            _ => counted("skipped"),
        }
    }

    fn received_ticket(&self, key: Hash, sealed: &[u8]) {
        let Some(cluster) = (self.conf.source)() else {
            return;
        };
        let name = self.conf.key(&cluster, &key);
        let opened = cluster.secret().open(name.as_bytes(), sealed);
        let Some(value) = opened.as_deref().and_then(|p| {
            let (fp, value) = p.split_first_chunk::<8>()?;
            (u64::from_be_bytes(*fp) == self.conf.fingerprint).then_some(value)
        }) else {
            counted("skipped");
            return;
        };
        let evicted = {
            let mut cache = self.cache();
            if cache.contains(&key) {
                return;
            }
            cache.insert(key, value.to_vec(), None)
        };
        self.evicted(evicted);
        counted("received");
    }
}

#[cfg(test)]
pub(super) fn test_message(stored: bool, origin: u64, key: &Hash, sealed: &[u8]) -> Vec<u8> {
    message(if stored { STORED } else { DROPPED }, origin, key, sealed)
}
