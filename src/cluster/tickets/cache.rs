//! The bounded local store behind a ticket store: entries by the SHA-256
//! of their id, the oldest evicted first (as rustls' own memory cache).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// The SHA-256 of a ticket (or TLS 1.2 session) id: what entries, Redis
/// keys and messages name a ticket by; the id itself never leaves rustls.
pub type Hash = [u8; 32];

pub fn hash(id: &[u8]) -> Hash {
    let d = ring::digest::digest(&ring::digest::SHA256, id);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Where an entry this replica issued is: only here (`PENDING`), handed to
/// Redis (`SHARED`), or gone before it was shared (`GONE`: taken or
/// evicted). Whichever of the writer and a handshake moves it out of
/// `PENDING` first decides: a ticket taken while still `PENDING` was never
/// seen by another replica, so its local take is its first use.
#[derive(Debug, Default)]
pub struct Issued(AtomicU8);

const PENDING: u8 = 0;
const SHARED: u8 = 1;
const GONE: u8 = 2;

impl Issued {
    /// The writer's claim: true when the entry may be shared now.
    pub fn share(&self) -> bool {
        self.move_from_pending(SHARED)
    }

    /// A take's (or an eviction's) claim: true when the entry was never
    /// shared, and now never will be.
    pub fn withdraw(&self) -> bool {
        self.move_from_pending(GONE)
    }

    fn move_from_pending(&self, to: u8) -> bool {
        self.0
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// One remembered session.
pub struct Entry {
    /// rustls' encoded session value (the resumption secret in it).
    pub value: Vec<u8>,
    /// Set when this replica issued it; `None` for one from another replica.
    pub issued: Option<Arc<Issued>>,
    generation: u64,
}

/// At most `capacity` entries; inserting beyond evicts the oldest.
pub struct Cache {
    map: HashMap<Hash, Entry>,
    /// Insertion order, with the generation each key had then (a key
    /// removed and inserted again is evicted by its newer position).
    order: VecDeque<(Hash, u64)>,
    capacity: usize,
    generation: u64,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        let capacity = capacity.max(1);
        Cache {
            map: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::new(),
            capacity,
            generation: 0,
        }
    }

    /// Inserts (or replaces) `key`; the entries evicted to make room.
    pub fn insert(
        &mut self,
        key: Hash,
        value: Vec<u8>,
        issued: Option<Arc<Issued>>,
    ) -> Vec<(Hash, Entry)> {
        self.generation += 1;
        let generation = self.generation;
        self.map.insert(
            key,
            Entry {
                value,
                issued,
                generation,
            },
        );
        self.order.push_back((key, generation));
        let mut evicted = Vec::new();
        while self.map.len() > self.capacity {
            let Some((k, g)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.generation == g) {
                if let Some(e) = self.map.remove(&k) {
                    evicted.push((k, e));
                }
            }
        }
        // Removed keys leave stale positions behind: drop them before
        // they outnumber the live ones.
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
        evicted
    }

    pub fn contains(&self, key: &Hash) -> bool {
        self.map.contains_key(key)
    }

    pub fn get(&self, key: &Hash) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &Hash) -> Option<Entry> {
        self.map.remove(key)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_goes_first_and_stale_positions_do_not_grow() {
        let mut c = Cache::new(2);
        assert!(c.insert(hash(b"a"), b"1".to_vec(), None).is_empty());
        assert!(c.insert(hash(b"b"), b"2".to_vec(), None).is_empty());
        let evicted = c.insert(hash(b"c"), b"3".to_vec(), None);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].0, hash(b"a"));
        assert!(c.contains(&hash(b"b")) && c.contains(&hash(b"c")));
        for i in 0..100u32 {
            let k = hash(&i.to_be_bytes());
            c.insert(k, vec![1], None);
            c.remove(&k);
        }
        assert!(c.order.len() <= 4 + 1, "{}", c.order.len());
        // The first insert evicted `b`; `c` stays, the rest were removed.
        assert_eq!(c.len(), 1);
        assert!(c.contains(&hash(b"c")));
    }

    #[test]
    fn a_pending_entry_is_shared_or_withdrawn_once() {
        let i = Issued::default();
        assert!(i.withdraw());
        assert!(!i.share(), "withdrawn first: never shared");
        let i = Issued::default();
        assert!(i.share());
        assert!(!i.withdraw(), "shared first: a take must ask Redis");
    }
}
