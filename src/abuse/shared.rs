//! Denies in a cluster. Layout (after `[cluster] key_prefix`):
//!
//! - `denies`: a sorted set, member = the address, score = when its deny
//!   ends (Unix ms); `denies:made`: a hash, address → when that deny was
//!   made (Unix ms). Expired members are dropped by every merge.
//! - `denies:lifted`: a sorted set, member = the address, score = when it
//!   was last lifted (Unix ms), kept for `[abuse] deny_for`: a deny made
//!   before a lift is refused, so a replica merging its denies back (after
//!   Redis lost them, or when it starts) cannot undo a lift.
//! - `denies:version`, `denies:epoch`: see [`crate::cluster::sync`].
//!
//! A deny made here is applied at once and queued; this task merges the
//! queue into Redis right away (`ZADD GT`: the longest deny of an address
//! wins; a lift is a `ZREM` and a tombstone) and pulls the set when its
//! version moved (every 250 ms), so every replica enforces it within a
//! poll. While Redis is unreachable the queue waits, and each replica goes
//! on with what it knows. At start, and when Redis lost the set (a new
//! epoch), a replica merges every deny it holds back into it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use super::{entry_until, Abuse, Change, Denied};
use crate::cluster::sync::{self, now_ms, SetKeys, Sharing, Stamp, Step, Tracker};
use crate::cluster::{Cluster, ClusterError};
use crate::metrics::CLUSTER_SYNCS;
use crate::shutdown::Shutdown;

/// KEYS: set, version, epoch, made, lifted. ARGV: epoch, now (ms), how
/// long lifts are remembered (ms), then (address, expiry in ms or `-` for
/// a lift, when it was made or lifted) triples. Answers the epoch, the
/// version, and per triple 1 (changed) or 0.
const MERGE_LUA: &str = r#"
local now = tonumber(ARGV[2])
for _, ip in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[4], ip)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[3]))
local changed, out = 0, {}
for i = 4, #ARGV, 3 do
  local ip, untl, at = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local n = 0
  if untl == '-' then
    n = redis.call('ZREM', KEYS[1], ip)
    redis.call('HDEL', KEYS[4], ip)
    redis.call('ZADD', KEYS[5], 'GT', at, ip)
  else
    local lifted = redis.call('ZSCORE', KEYS[5], ip)
    if not (lifted and tonumber(lifted) >= at) then
      n = redis.call('ZADD', KEYS[1], 'GT', 'CH', untl, ip)
      if at > tonumber(redis.call('HGET', KEYS[4], ip) or '0') then
        redis.call('HSET', KEYS[4], ip, at)
      end
    end
  end
  changed = changed + n
  out[#out + 1] = tostring(n)
end
"#;

static MERGE: LazyLock<redis::Script> = LazyLock::new(|| sync::merge_script(MERGE_LUA));

/// How often Redis' set is polled.
const POLL: Duration = Duration::from_millis(250);

type Changes = Vec<(IpAddr, Change)>;

struct Redis {
    cluster: Arc<Cluster>,
    set: SetKeys,
    made: String,
    lifted: String,
}

/// An `Abuse`'s link to the cluster (none on a single node).
#[derive(Default)]
pub(super) struct Link {
    redis: ArcSwapOption<Redis>,
    wake: Notify,
    /// One sync at a time (the task's, or an admin request's).
    lock: tokio::sync::Mutex<()>,
    tracker: Tracker,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("attached", &self.is_attached())
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(super) fn is_attached(&self) -> bool {
        self.redis.load().is_some()
    }

    /// Has the task merge what is queued now.
    pub(super) fn wake(&self) {
        if self.is_attached() {
            self.wake.notify_one();
        }
    }

    /// Syncs with Redis now: `None` on a single node; else whether Redis
    /// had `lifted` denied (when given), and whether the sync happened.
    pub(super) async fn flush(
        &self,
        abuse: &Abuse,
        lifted: Option<IpAddr>,
    ) -> Option<(bool, Sharing)> {
        let redis = self.redis.load_full()?;
        if !redis.cluster.is_up() {
            return Some((false, Sharing::Pending));
        }
        let _one = self.lock.lock().await;
        match self.sync(abuse, &redis, lifted).await {
            Ok(there) => Some((there, Sharing::Shared)),
            Err(e) => {
                tracing::debug!(error = %e, "denies: sync with redis failed; retrying");
                Some((false, Sharing::Pending))
            }
        }
    }

    /// Merges the queued changes (and every deny held here, at start or
    /// when Redis lost the set), then pulls the set if it moved.
    async fn sync(
        &self,
        abuse: &Abuse,
        redis: &Redis,
        lifted: Option<IpAddr>,
    ) -> Result<bool, ClusterError> {
        let stamp = sync::poll(&redis.cluster, "denies_poll", &redis.set).await?;
        let step = self.tracker.step(&stamp);
        let changes: Changes = {
            let mut d = abuse.denied();
            let mut changes = std::mem::take(&mut d.unshared);
            if step == Step::Seed {
                for (ip, deny) in &d.map {
                    changes.entry(*ip).or_insert(Change::Deny(*deny));
                }
            }
            changes.into_iter().collect()
        };
        let mut there = false;
        if !changes.is_empty() || step == Step::Seed {
            let keep = abuse.cfg().deny_for.get();
            match merge(redis, &changes, keep).await {
                Ok(results) => {
                    there = changes.iter().zip(&results).any(|((ip, c), r)| {
                        Some(*ip) == lifted && matches!(c, Change::Lift(_)) && r == "1"
                    });
                    let what = if step == Step::Seed {
                        "seeded"
                    } else {
                        "pushed"
                    };
                    CLUSTER_SYNCS.with(["denies", what]).increment(1);
                }
                Err(e) => {
                    let mut d = abuse.denied();
                    for (ip, c) in changes {
                        d.unshared.entry(ip).or_insert(c);
                    }
                    CLUSTER_SYNCS.with(["denies", "failed"]).increment(1);
                    return Err(e);
                }
            }
        }
        if step != Step::Nothing || !changes.is_empty() {
            self.pull(abuse, redis).await?;
        }
        Ok(there)
    }

    /// Replaces the denies held here with Redis' (and what is still queued).
    async fn pull(&self, abuse: &Abuse, redis: &Redis) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("MGET")
            .arg(&redis.set.epoch)
            .arg(&redis.set.version)
            .cmd("ZRANGEBYSCORE")
            .arg(&redis.set.data)
            .arg(format!("({}", now_ms()))
            .arg("+inf")
            .arg("WITHSCORES")
            .cmd("HGETALL")
            .arg(&redis.made);
        type Reply = (
            Vec<Option<String>>,
            Vec<(String, f64)>,
            HashMap<String, u64>,
        );
        let (mut stamp, all, made): Reply =
            redis.cluster.call_background("denies_pull", &pipe).await?;
        let wall = now_ms();
        let mut map = Denied::new();
        for (ip, until) in all {
            let at = made.get(&ip).copied().unwrap_or(0);
            if let (Ok(ip), Some(deny)) =
                (ip.parse::<IpAddr>(), entry_until(until as u64, at, wall))
            {
                map.insert(ip, deny);
            }
        }
        let changed = {
            let mut d = abuse.denied();
            for (ip, c) in &d.unshared {
                match c {
                    Change::Deny(deny) => map.insert(*ip, *deny),
                    Change::Lift(_) => map.remove(ip),
                };
            }
            let expiries = |m: &Denied| -> HashMap<IpAddr, u64> {
                m.iter().map(|(ip, d)| (*ip, d.until_ms)).collect()
            };
            let changed = expiries(&d.map) != expiries(&map);
            d.map = map;
            changed
        };
        let version = stamp.pop().flatten();
        let epoch = stamp.pop().flatten();
        self.tracker.pulled(Stamp { epoch, version });
        CLUSTER_SYNCS.with(["denies", "pulled"]).increment(1);
        if changed {
            abuse.persist();
        }
        Ok(())
    }
}

/// Runs the merge script over `changes`; lifts are remembered for `keep`.
async fn merge(
    redis: &Redis,
    changes: &Changes,
    keep: Duration,
) -> Result<Vec<String>, ClusterError> {
    let mut inv = MERGE.prepare_invoke();
    inv.key(&redis.set.data)
        .key(&redis.set.version)
        .key(&redis.set.epoch)
        .key(&redis.made)
        .key(&redis.lifted)
        .arg(sync::new_epoch())
        .arg(now_ms())
        .arg(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
    for (ip, c) in changes {
        inv.arg(ip.to_string());
        match c {
            Change::Deny(d) => inv.arg(d.until_ms).arg(d.made_ms),
            Change::Lift(at) => inv.arg("-").arg(*at),
        };
    }
    let reply: Vec<String> = redis.cluster.call_background("denies_merge", inv).await?;
    Ok(reply.get(2..).unwrap_or_default().to_vec())
}

/// [`Abuse::share`].
pub(super) fn start(
    abuse: &Arc<Abuse>,
    cluster: Option<Arc<Cluster>>,
    stop: tokio_util::sync::CancellationToken,
    shutdown: &Shutdown,
) {
    let redis = cluster.map(|cluster| {
        Arc::new(Redis {
            set: SetKeys::new(&cluster, "denies"),
            made: cluster.key("denies:made"),
            lifted: cluster.key("denies:lifted"),
            cluster,
        })
    });
    let attached = redis.is_some();
    abuse.link.redis.store(redis);
    if !attached {
        abuse.denied().unshared.clear();
        return;
    }
    let me = Arc::downgrade(abuse);
    let sd = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            let Some(abuse) = me.upgrade() else { return };
            let _ = abuse.link.flush(&abuse, None).await;
            let wake = async { abuse.link.wake.notified().await };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sd.draining() => return,
                _ = wake => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
}
