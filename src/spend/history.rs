//! Usage history: hourly buckets per key, team, model and provider, kept
//! for `[spend] retention`. Recording is a map update in memory; where the
//! buckets are kept beyond the process is the store's (see [`History`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{usd, Nanos, Spent};

/// One bucket's identity: the hour (Unix seconds at its start) and whose.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    pub hour: u64,
    /// The key's name ("" without a key).
    pub key: String,
    /// The team's name ("" without a team).
    pub team: String,
    pub model: String,
    pub provider: String,
}

/// One bucket's sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_nanos: Nanos,
}

impl Sums {
    pub fn add(&mut self, o: &Sums) {
        // Saturating: the numbers come from upstreams' usage.
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.requests, o.requests);
        add(&mut self.input_tokens, o.input_tokens);
        add(&mut self.output_tokens, o.output_tokens);
        add(&mut self.cached_input_tokens, o.cached_input_tokens);
        add(&mut self.cache_write_tokens, o.cache_write_tokens);
        add(&mut self.cost_nanos, o.cost_nanos);
    }

    fn of(s: &Spent) -> Sums {
        Sums {
            requests: 1,
            input_tokens: s.usage.input,
            output_tokens: s.usage.output,
            cached_input_tokens: s.usage.cached_input,
            cache_write_tokens: s.usage.cache_write,
            cost_nanos: s.cost,
        }
    }
}

/// How `GET /admin/usage` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Model,
    Key,
    Team,
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "model" => GroupBy::Model,
            "key" => GroupBy::Key,
            "team" => GroupBy::Team,
            "day" => GroupBy::Day,
            _ => return None,
        })
    }
}

/// What to sum: `[from, to)` in Unix seconds, optionally one key or team.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub key: Option<String>,
    pub team: Option<String>,
    pub from: u64,
    pub to: u64,
    pub group_by: GroupBy,
}

/// One answer row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The group: a model, key or team name, or a day (`2026-12-01`).
    pub group: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
}

/// The buckets in memory: on one node the store itself (saved in
/// `[spend] file`); with `[cluster]` the buckets not yet added to Redis
/// (see [`super::shared`]), which takes them every second.
#[derive(Debug)]
pub struct History {
    buckets: Mutex<BTreeMap<BucketKey, Sums>>,
    /// Counts changes (what the spend file's writer looks at).
    changes: AtomicU64,
    /// Buckets held at most; a request that would add one more is not
    /// recorded (counted). Unbounded on one node (retention bounds it);
    /// bounded while Redis does not take the pending buckets.
    cap: AtomicUsize,
}

impl Default for History {
    fn default() -> Self {
        History {
            buckets: Mutex::default(),
            changes: AtomicU64::new(0),
            cap: AtomicUsize::new(usize::MAX),
        }
    }
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<BucketKey, Sums>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one request's spend to its hour's bucket.
    pub fn record(&self, s: &Spent) {
        let key = BucketKey {
            hour: s.at - s.at % 3600,
            key: s.key.as_deref().unwrap_or("").to_string(),
            team: s.team.as_deref().unwrap_or("").to_string(),
            model: s.model.to_string(),
            provider: s.provider.to_string(),
        };
        let mut map = self.lock();
        let room = map.len() < self.cap.load(Ordering::Relaxed);
        match map.get_mut(&key) {
            Some(sums) => sums.add(&Sums::of(s)),
            None if room => {
                map.insert(key, Sums::of(s));
            }
            None => {
                drop(map);
                crate::metrics::CLUSTER_SYNCS
                    .with(["usage", "dropped"])
                    .increment(1);
                return;
            }
        }
        drop(map);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes so far (records, restores, expiries): a writer saves when
    /// this moved.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Bounds the buckets held (see the field).
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every bucket out (the pending ones, for Redis).
    pub fn take(&self) -> Vec<(BucketKey, Sums)> {
        let taken = std::mem::take(&mut *self.lock());
        self.changes.fetch_add(1, Ordering::Relaxed);
        taken.into_iter().collect()
    }

    /// Adds saved buckets (the spend file's, at start).
    pub fn restore(&self, buckets: impl IntoIterator<Item = (BucketKey, Sums)>) {
        let mut map = self.lock();
        for (k, v) in buckets {
            map.entry(k).or_default().add(&v);
        }
        drop(map);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Every bucket, oldest first.
    pub fn buckets(&self) -> Vec<(BucketKey, Sums)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Forgets the buckets older than `before` (Unix seconds).
    pub fn expire(&self, before: u64) {
        let mut map = self.lock();
        let had = map.len();
        map.retain(|k, _| k.hour >= before);
        if map.len() != had {
            drop(map);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The rows `q` asks for, largest cost first (days: in order).
    pub fn query(&self, q: &Query) -> Vec<Row> {
        let map = self.lock();
        summarise(map.iter(), q)
    }
}

/// Sums buckets into `q`'s rows (shared by every store).
pub fn summarise<'a>(
    buckets: impl Iterator<Item = (&'a BucketKey, &'a Sums)>,
    q: &Query,
) -> Vec<Row> {
    let mut groups: BTreeMap<String, Sums> = BTreeMap::new();
    for (k, v) in buckets {
        if k.hour + 3600 <= q.from || k.hour >= q.to {
            continue;
        }
        if q.key.as_ref().is_some_and(|key| *key != k.key)
            || q.team.as_ref().is_some_and(|t| *t != k.team)
        {
            continue;
        }
        let group = match q.group_by {
            GroupBy::Model => k.model.clone(),
            GroupBy::Key => k.key.clone(),
            GroupBy::Team => k.team.clone(),
            GroupBy::Day => super::period::rfc3339(k.hour - k.hour % 86_400)[..10].to_string(),
        };
        groups.entry(group).or_default().add(v);
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|(group, s)| Row {
            group,
            requests: s.requests,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cached_input_tokens: s.cached_input_tokens,
            cache_write_tokens: s.cache_write_tokens,
            cost_usd: usd(s.cost_nanos),
        })
        .collect();
    if q.group_by != GroupBy::Day {
        rows.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then(a.group.cmp(&b.group))
        });
    }
    rows
}
