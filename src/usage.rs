//! The usage history and budget counters beyond the process, off the
//! request path ([`Keeper`]), and reading them back for `/admin/usage`,
//! `/admin/budgets` ([`report`]) and `h3gate usage` ([`cli`]) — [`Source`]:
//! one question, whichever store answers. The buckets themselves are
//! [`crate::spend::History`]'s (a leaf); this module knows where they go.
//!
//! One task per process (started once, kept across reloads like the
//! limiter; it runs until exit, not just until the drain, so requests that
//! end during the drain count). Every second:
//! - one node with `[spend] file`: when the history or the in-memory
//!   limiter's budget counters changed, the file is written
//!   ([`file`]: atomically). After a slow write the next one waits
//!   nine times as long, so a large history costs the disk at most a tenth
//!   of its time. Once more at exit.
//! - with `[cluster]`: the buckets recorded since are added to Redis
//!   ([`shared`]); once more at exit.
//! - one node, hourly: buckets older than `[spend] retention` are
//!   forgotten (Redis expires its days itself).
//!
//! Whether spend goes to Redis is decided when the gateway starts (adding
//! or removing `cluster.redis_url` needs a restart); so is the file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

pub mod cli;
pub mod file;
pub mod report;
pub mod shared;

use crate::cluster::{Cluster, ClusterError};
use crate::config::SpendConfig;
use crate::rate_limit::{BudgetCounter, MemoryLimiter};
use crate::shutdown::Shutdown;
use crate::spend::history::{summarise, BucketKey, Query, Row, Sums};
use crate::spend::{History, Spend};

const EVERY: Duration = Duration::from_secs(1);
const EXPIRE_EVERY: u64 = 3600;

/// The keeping task's handle, kept across reloads (`State::inherit`):
/// what it works with is the running state's, updated by every
/// [`Keeper::start`] (a reload may bring a new limiter or cluster).
#[derive(Debug, Default)]
pub struct Keeper {
    started: AtomicBool,
    /// The spend file's last write failed.
    failing: AtomicBool,
    /// Spend goes to Redis (decided at the first start).
    shared: OnceLock<bool>,
    retention: AtomicU64,
    limiter: Mutex<Option<Arc<MemoryLimiter>>>,
    cluster: Mutex<Option<Arc<Cluster>>>,
}

impl Keeper {
    fn limiter(&self) -> Option<Arc<MemoryLimiter>> {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn retention(&self) -> u64 {
        self.retention.load(Ordering::Relaxed)
    }

    fn budgets(&self) -> Vec<BudgetCounter> {
        self.limiter()
            .map(|l| l.budget_counters())
            .unwrap_or_default()
    }
}

impl Keeper {
    /// Starts keeping `spend` (once; later calls, from reloads, hand the
    /// task the new state's limiter, cluster and retention). `limiter` is
    /// the in-memory limiter whose budget counters the file keeps (one node).
    pub fn start(
        self: &Arc<Self>,
        spend: &Arc<Spend>,
        cfg: &SpendConfig,
        limiter: Option<Arc<MemoryLimiter>>,
        cluster: Option<Arc<Cluster>>,
        shutdown: &Shutdown,
    ) {
        let k = self;
        k.retention
            .store(cfg.retention.get().as_secs(), Ordering::Relaxed);
        let shared = *k.shared.get_or_init(|| cluster.is_some());
        *k.limiter.lock().unwrap_or_else(|p| p.into_inner()) = limiter;
        *k.cluster.lock().unwrap_or_else(|p| p.into_inner()) = cluster;
        if k.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if shared {
            spend.history.set_cap(shared::PENDING_CAP);
            if let Some(f) = &cfg.file {
                tracing::warn!(file = %f.display(), "[spend] file is not used with cluster.redis_url: spend is kept in redis");
            }
        }
        // What the file holds already (as it was read back at start).
        let writer = (!shared)
            .then(|| cfg.file.clone())
            .flatten()
            .map(|path| Writer {
                path,
                changes: spend.history.changes(),
                budgets: k.budgets(),
                not_before: Instant::now(),
                failing: false,
            });
        shutdown.spawn_until_exit(run(
            self.clone(),
            spend.clone(),
            writer,
            shared,
            shutdown.clone(),
        ));
    }

    /// Whether the spend file's last write failed (`/ready` says so).
    pub fn file_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Where the usage history is read: Redis when spend goes there
    /// (with `history`'s pending buckets), else `history` itself.
    pub fn source<'a>(&self, history: &'a History) -> Source<'a> {
        match self.cluster().filter(|_| self.shared.get() == Some(&true)) {
            Some(cluster) => Source::Redis {
                cluster,
                pending: Some(history),
                max_days: self.retention() / 86_400 + 1,
            },
            None => Source::Memory(history),
        }
    }
}

async fn run(
    keeper: Arc<Keeper>,
    spend: Arc<Spend>,
    mut writer: Option<Writer>,
    shared: bool,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_expiry = 0;
    loop {
        let exiting = tokio::select! {
            biased;
            _ = shutdown.exiting() => true,
            _ = tick.tick() => false,
        };
        let now = crate::clock::now_secs();
        if !shared && now >= next_expiry {
            let retention = keeper.retention();
            spend.history.expire(now.saturating_sub(retention));
            next_expiry = now + EXPIRE_EVERY;
        }
        if shared {
            flush(&keeper, &spend).await;
        } else if let Some(w) = &mut writer {
            w.save_if_changed(&keeper, &spend, exiting).await;
        }
        if exiting {
            return;
        }
    }
}

/// The spend file's writer.
struct Writer {
    path: PathBuf,
    /// What the file holds: the history's changes and the budget counters
    /// at the last write.
    changes: u64,
    budgets: Vec<BudgetCounter>,
    not_before: Instant,
    failing: bool,
}

impl Writer {
    async fn save_if_changed(&mut self, keeper: &Keeper, spend: &Arc<Spend>, exiting: bool) {
        if !exiting && Instant::now() < self.not_before {
            return;
        }
        let changes = spend.history.changes();
        let budgets = keeper.budgets();
        if changes == self.changes && budgets == self.budgets {
            return;
        }
        let start = Instant::now();
        let (path, s) = (self.path.clone(), spend.clone());
        let saved_budgets = budgets.clone();
        let written = tokio::task::spawn_blocking(move || {
            let saved = file::Saved {
                version: file::VERSION,
                saved_at: crate::clock::now_secs(),
                buckets: s.history.buckets(),
                budgets: saved_budgets,
            };
            file::write(&path, &saved)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        self.not_before = Instant::now() + start.elapsed() * 9;
        match written {
            Ok(()) => {
                if self.failing {
                    tracing::info!(file = %self.path.display(), "spend file written again");
                }
                (self.changes, self.budgets, self.failing) = (changes, budgets, false);
                keeper.failing.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(file = %self.path.display(), error = %e, "cannot write the spend file; retrying every second (spend is kept in memory meanwhile)");
                }
                self.failing = true;
                keeper.failing.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Adds the pending buckets to Redis; what could not be added stays
/// pending.
async fn flush(keeper: &Keeper, spend: &Spend) {
    if spend.history.is_empty() {
        return;
    }
    let Some(cluster) = keeper.cluster() else {
        return;
    };
    let pending = spend.history.take();
    match shared::flush(&cluster, pending, keeper.retention()).await {
        Ok(()) => crate::metrics::CLUSTER_SYNCS
            .with(["usage", "pushed"])
            .increment(1),
        Err((e, rest)) => {
            crate::metrics::CLUSTER_SYNCS
                .with(["usage", "failed"])
                .increment(1);
            tracing::debug!(error = %e, pending = rest.len(), "usage not yet in redis; kept for the next try");
            spend.history.restore(rest);
        }
    }
}

/// Where the usage history is read from.
pub enum Source<'a> {
    /// One node: the buckets in memory (restored from the spend file).
    Memory(&'a History),
    /// With `[cluster]`: Redis' days, plus the buckets this replica has not
    /// sent yet (so its own last requests show at once).
    Redis {
        cluster: Arc<Cluster>,
        pending: Option<&'a History>,
        /// Days read at most (the retention's).
        max_days: u64,
    },
}

impl Source<'_> {
    /// The buckets that overlap `[from, to)` (Unix seconds), and maybe a
    /// few more around them ([`summarise`] filters).
    pub async fn buckets(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(BucketKey, Sums)>, ClusterError> {
        match self {
            Source::Memory(h) => Ok(h.buckets()),
            Source::Redis {
                cluster,
                pending,
                max_days,
            } => {
                let now = crate::clock::now_secs();
                let mut all = shared::read(cluster, from, to, *max_days, now).await?;
                if let Some(p) = pending {
                    all.extend(p.buckets());
                }
                Ok(all)
            }
        }
    }

    /// The rows `q` asks for.
    pub async fn query(&self, q: &Query) -> Result<Vec<Row>, ClusterError> {
        let buckets = self.buckets(q.from, q.to).await?;
        Ok(summarise(buckets.iter().map(|(k, v)| (k, v)), q))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Memory(_) => "memory",
            Source::Redis { .. } => "redis",
        }
    }
}

#[cfg(test)]
mod tests;
