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

use super::{Bucket, Correction, Limit};

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
        let release = Correction {
            bucket: self.bucket.clone(),
            limit: self.limit,
            delta: -1,
            lease: Some(self.id),
        };
        if self.queue.try_send(release).is_err() {
            crate::metrics::RATE_LIMIT_CORRECTIONS
                .with(["dropped"])
                .increment(1);
        }
    }
}
