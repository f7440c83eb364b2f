//! Session tickets shared by the replicas: a ticket one replica issues
//! resumes at any other, and gives 0-RTT early data at most once in the
//! whole cluster.
//!
//! rustls calls its session store synchronously, inside the handshake, on
//! whatever thread drives the connection: nothing there may wait for Redis.
//! So the store ([`Tickets`], one for QUIC and one for TCP) answers rustls
//! from its local, bounded cache only, and Redis is used around it:
//!
//! - `put` (a ticket issued here) keeps the session locally and queues it
//!   (a bounded channel, never waited on) for the writer task, which seals it
//!   (AES-256-GCM under the cluster secret, bound to its Redis key), `SET`s
//!   it with the ticket's lifetime and `PUBLISH`es it; every replica's
//!   subscriber adds it to its own cache.
//! - `take` (a QUIC client resuming) removes the session locally and lets
//!   rustls resume — but early data is not served yet: the take starts an
//!   asynchronous, atomic claim in Redis (`SET key "taken" XX PX … GET`: the
//!   old value comes back exactly once) and the connection's early requests
//!   wait for its answer, bounded by `[cluster] timeout`. First use: served
//!   early as on one node. Taken already (a replay), unknown, or Redis
//!   failing: held until the handshake completes, which a replayed flight
//!   never does (RFC 8470). The claim also publishes the take, so the other
//!   replicas forget the ticket and a later replay there gets a full
//!   handshake, early data refused by TLS itself.
//! - A ticket taken here before the writer shared it was never seen by any
//!   other replica: that take is its first use, without asking Redis (so a
//!   replica keeps its own 0-RTT while Redis is down).
//!
//! Which connection took a ticket: the QUIC listener runs every step of a
//! handshake inside [`capturing`], which arms a thread-local slot around
//! rustls' synchronous call; `take` fills it with the ticket's [`Claim`].
//! The QUIC store hands out nothing outside such a step, so a ticket can
//! never resume a connection that would not wait for its claim.
//!
//! TCP has no early data, so a TCP take needs no confirmation: it removes
//! the session and deletes and unpublishes it in the background. TLS 1.2
//! session ids (`get`) are shared the same way.
//!
//! Pub/sub only widens where a ticket resumes: a missed message costs a
//! full handshake (a ticket not received) or a claim that says "taken" (a
//! removal not received), never a second early use. Only the issuing
//! replica writes a ticket, and it deletes it from Redis when its own cache
//! evicts it, so Redis holds about as many tickets as one replica's cache.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::shutdown::Shutdown;

mod cache;
mod sync;

use cache::{Cache, Hash, Issued};

/// The cluster the gateway runs with now (a reload may replace it).
pub type ClusterSource = Arc<dyn Fn() -> Option<Arc<Cluster>> + Send + Sync>;

/// Queued Redis writes, at most; beyond, a ticket stays local (counted).
const WRITE_QUEUE: usize = 4096;

/// Which listener's sessions a store holds (separate keys and channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Quic,
    Tcp,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Quic => "quic",
            Kind::Tcp => "tcp",
        }
    }
}

/// What builds the shared ticket stores (one per TLS configuration).
#[derive(Clone)]
pub struct TicketHub {
    source: ClusterSource,
    shutdown: Shutdown,
    /// The store each kind uses now: a new one retires the one before.
    current: Arc<Mutex<Vec<Arc<Tickets>>>>,
}

impl std::fmt::Debug for TicketHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketHub").finish_non_exhaustive()
    }
}

impl TicketHub {
    pub fn new(source: ClusterSource, shutdown: Shutdown) -> TicketHub {
        TicketHub {
            source,
            shutdown,
            current: Arc::default(),
        }
    }

    /// A new store for `kind`, remembering up to `capacity` sessions,
    /// sharing tickets only with replicas whose transport settings have the
    /// same `fingerprint` (a client may send early data under the limits a
    /// ticket promised). The store it replaces stops syncing. Must run
    /// inside the tokio runtime.
    pub fn store(&self, kind: Kind, capacity: usize, fingerprint: u64) -> Arc<Tickets> {
        let conf = Arc::new(Conf {
            kind,
            source: self.source.clone(),
            origin: fastrand::u64(..),
            fingerprint,
            shutdown: self.shutdown.clone(),
            retired: CancellationToken::new(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let store = Arc::new(Tickets {
            conf: conf.clone(),
            cache: Mutex::new(Cache::new(capacity)),
            tx,
        });
        self.shutdown
            .spawn_until_exit(sync::writer(conf.clone(), rx));
        self.shutdown
            .spawn_until_exit(sync::subscriber(conf, Arc::downgrade(&store)));
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = current.iter().position(|s| s.conf.kind == kind) {
            current.remove(i).retire();
        }
        current.push(store.clone());
        store
    }
}

/// What a store's background tasks share with it.
struct Conf {
    kind: Kind,
    source: ClusterSource,
    /// Tells this store's messages from the other replicas'.
    origin: u64,
    fingerprint: u64,
    shutdown: Shutdown,
    /// Cancelled when a newer store of the same kind replaces this one.
    retired: CancellationToken,
}

impl Conf {
    fn key(&self, cluster: &Cluster, hash: &Hash) -> String {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        cluster.key(&format!("ticket:{}:{hex}", self.kind.as_str()))
    }

    fn channel(&self, cluster: &Cluster) -> String {
        cluster.key(&format!("tickets:{}", self.kind.as_str()))
    }
}

/// A rustls session store shared through the cluster (see the module).
pub struct Tickets {
    conf: Arc<Conf>,
    cache: Mutex<Cache>,
    tx: mpsc::Sender<sync::Op>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("kind", &self.conf.kind)
            .finish_non_exhaustive()
    }
}

impl Tickets {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn retire(&self) {
        self.conf.retired.cancel();
        self.cache().clear();
    }

    /// Queues a write; a full queue leaves the ticket local (counted).
    fn queue(&self, op: sync::Op) {
        if self.tx.try_send(op).is_err() {
            sync::counted("overflow");
        }
    }

    /// Entries evicted to make room: those this replica shared are deleted
    /// from Redis (the others evict them about as soon).
    fn evicted(&self, evicted: Vec<(Hash, cache::Entry)>) {
        for (key, entry) in evicted {
            if entry.issued.is_some_and(|i| !i.withdraw()) {
                self.queue(sync::Op::Forget(key));
            }
        }
    }

    /// Starts the claim of a ticket this replica may not be the only one
    /// to hold.
    fn claim(&self, key: Hash) -> Claim {
        let Some(cluster) = (self.conf.source)() else {
            return Claim::settled(Confirmation::Failed);
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Claim::settled(Confirmation::Failed);
        };
        // The call is bounded by the timeout; the wait also covers the
        // task being scheduled.
        let wait = cluster.config().timeout.get() * 2;
        let (tx, rx) = watch::channel(None);
        self.conf
            .shutdown
            .tracker()
            .spawn_on(sync::confirm(self.conf.clone(), cluster, key, tx), &runtime);
        Claim { answer: rx, wait }
    }
}

impl rustls::server::StoresServerSessions for Tickets {
    fn put(&self, id: Vec<u8>, value: Vec<u8>) -> bool {
        let key = cache::hash(&id);
        let issued = Arc::new(Issued::default());
        let evicted = self
            .cache()
            .insert(key, value.clone(), Some(issued.clone()));
        self.evicted(evicted);
        self.queue(sync::Op::Store { key, value, issued });
        true
    }

    fn get(&self, id: &[u8]) -> Option<Vec<u8>> {
        self.cache().get(&cache::hash(id)).map(|e| e.value.clone())
    }

    fn take(&self, id: &[u8]) -> Option<Vec<u8>> {
        if self.conf.kind == Kind::Quic && !capture::armed() {
            return None;
        }
        let key = cache::hash(id);
        let entry = self.cache().remove(&key)?;
        let never_shared = entry.issued.as_ref().is_some_and(|i| i.withdraw());
        match self.conf.kind {
            Kind::Quic if never_shared => {
                sync::confirmed(Confirmation::FirstUse);
                capture::record(Claim::settled(Confirmation::FirstUse));
            }
            Kind::Quic => capture::record(self.claim(key)),
            Kind::Tcp if never_shared => {}
            Kind::Tcp => self.queue(sync::Op::Drop(key)),
        }
        Some(entry.value)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// What Redis said about a ticket's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// This take was its first use in the cluster.
    FirstUse,
    /// Taken already, here or at another replica: a replay.
    Replayed,
    /// Not in Redis (expired, evicted, never written, or Redis restarted).
    Unknown,
    /// Redis did not answer in time, or failed.
    Failed,
}

impl Confirmation {
    fn as_str(self) -> &'static str {
        match self {
            Confirmation::FirstUse => "first_use",
            Confirmation::Replayed => "replayed",
            Confirmation::Unknown => "unknown",
            Confirmation::Failed => "error",
        }
    }
}

/// The claim of the ticket one QUIC connection resumed with.
#[derive(Debug, Clone)]
pub struct Claim {
    answer: watch::Receiver<Option<Confirmation>>,
    wait: Duration,
}

impl Claim {
    fn settled(c: Confirmation) -> Claim {
        Claim {
            answer: watch::channel(Some(c)).1,
            wait: Duration::ZERO,
        }
    }

    /// Whether the ticket's first use in the cluster is confirmed: waits
    /// for Redis' answer (bounded); false on anything but a first use.
    pub async fn first_use(&self) -> bool {
        let mut rx = self.answer.clone();
        let answer = tokio::time::timeout(self.wait, rx.wait_for(Option::is_some)).await;
        matches!(answer, Ok(Ok(v)) if *v == Some(Confirmation::FirstUse))
    }
}

pub use capture::capturing;

/// The thread-local slot that ties a `take` to the handshake step calling it.
mod capture {
    use std::cell::RefCell;

    use super::Claim;

    thread_local! {
        /// `Some` while a handshake step runs on this thread; then the claim
        /// of the ticket it took, if any.
        static SLOT: RefCell<Option<Option<Claim>>> = const { RefCell::new(None) };
    }

    /// Runs `f`, one synchronous step of a QUIC handshake: a ticket the
    /// QUIC store hands out meanwhile is this handshake's, and its claim
    /// is returned with `f`'s result.
    pub fn capturing<R>(f: impl FnOnce() -> R) -> (R, Option<Claim>) {
        /// Puts back what was there before, even if `f` panics.
        struct Restore(Option<Option<Claim>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let before = self.0.take();
                SLOT.with(|s| *s.borrow_mut() = before);
            }
        }
        let before = SLOT.with(|s| s.borrow_mut().replace(None));
        let restore = Restore(before);
        let out = f();
        let claim = SLOT.with(|s| s.borrow_mut().as_mut().and_then(Option::take));
        drop(restore);
        (out, claim)
    }

    pub(super) fn armed() -> bool {
        SLOT.with(|s| s.borrow().is_some())
    }

    pub(super) fn record(claim: Claim) {
        SLOT.with(|s| {
            if let Some(slot) = s.borrow_mut().as_mut() {
                *slot = Some(claim);
            }
        });
    }
}

#[cfg(test)]
mod tests;
