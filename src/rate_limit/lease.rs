//! Per-key concurrency leases on a shared backend: a request holds a
//! [`Lease`] (a slot in the key's set in Redis, with an expiry) from its
//! rate-limit decision to its end. The guard gives the slot back when it
//! drops — through the reconciler's queue, never by awaiting in `Drop` —
//! and while it lives the reconciler renews it (every third of the TTL), so
//! a long stream keeps its slot and a replica that dies holding slots loses
//! them within one TTL.
//!
//! [`Live`] is this replica's list of the leases it holds: what the
//! renewals send. Releases and renewals go through the same task, in order:
//! a lease given back is never renewed after its release was applied.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{Bucket, Claim, Correction, Kind, Limit};

/// A lease's id: random, unique across replicas (the member of the key's
/// set in Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u128);

impl LeaseId {
    pub fn random() -> LeaseId {
        LeaseId(fastrand::u128(..))
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The leases this replica holds now.
#[derive(Debug, Default)]
pub struct Live {
    held: Mutex<HashMap<LeaseId, Bucket>>,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Bucket>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What a renewal sends: every lease held now.
    pub fn snapshot(&self) -> Vec<(Bucket, LeaseId)> {
        self.lock().iter().map(|(id, b)| (b.clone(), *id)).collect()
    }
}

/// A request's concurrency slot on the shared backend: given back when it
/// drops (queued for the reconciler; a full queue leaves it to its TTL,
/// counted in `h3gate_rate_limit_corrections_total{result="dropped"}`).
#[derive(Debug)]
pub struct Lease {
    id: LeaseId,
    bucket: Bucket,
    limit: Limit,
    live: Arc<Live>,
    queue: mpsc::Sender<Correction>,
}

impl Lease {
    /// A lease the backend granted, held from now on.
    pub(super) fn hold(
        id: LeaseId,
        bucket: Bucket,
        limit: Limit,
        live: Arc<Live>,
        queue: mpsc::Sender<Correction>,
    ) -> Lease {
        live.lock().insert(id, bucket.clone());
        Lease {
            id,
            bucket,
            limit,
            live,
            queue,
        }
    }

    pub fn id(&self) -> LeaseId {
        self.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Out of the renewals first: a renewal taken after this line does
        // not have it, one taken before is applied before the release.
        self.live.lock().remove(&self.id);
        release(&self.queue, self.bucket.clone(), self.limit, self.id);
    }
}

/// Queues the release of lease `id` (a full queue leaves it to its TTL).
fn release(queue: &mpsc::Sender<Correction>, bucket: Bucket, limit: Limit, id: LeaseId) {
    let release = Correction {
        bucket,
        limit,
        delta: -1,
        lease: Some(id),
        window: None,
    };
    if queue.try_send(release).is_err() {
        crate::metrics::RATE_LIMIT_CORRECTIONS
            .with(["dropped"])
            .increment(1);
    }
}

/// A lease claim on its way to the backend. The script may run although
/// its answer never comes back — the call timed out while Redis stalled,
/// or the client went away meanwhile — and then it took a slot nobody
/// holds. Unless [`Claiming::answered`], dropping this gives that slot back
/// (a release of a lease never taken changes nothing; it is sent after the
/// claim, on the same connection, and retried until Redis answers).
#[derive(Debug)]
pub(super) struct Claiming {
    claim: Option<(Bucket, Limit, LeaseId)>,
    queue: mpsc::Sender<Correction>,
}

impl Claiming {
    /// The guard of the lease claim among `claims`, if there is one.
    pub(super) fn of(claims: &[Claim], queue: &mpsc::Sender<Correction>) -> Option<Claiming> {
        let c = claims.iter().find(|c| c.bucket.kind == Kind::Lease)?;
        Some(Claiming {
            claim: Some((c.bucket.clone(), c.limit, c.lease?)),
            queue: queue.clone(),
        })
    }

    /// The backend answered: a granted lease is held by its [`Lease`] from
    /// now on, a refused one took nothing.
    pub(super) fn answered(mut self) {
        self.claim = None;
    }
}

impl Drop for Claiming {
    fn drop(&mut self) {
        if let Some((bucket, limit, id)) = self.claim.take() {
            release(&self.queue, bucket, limit, id);
        }
    }
}
