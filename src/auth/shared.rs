//! Keys in a cluster: Redis is the source of truth. Layout (after
//! `[cluster] key_prefix`, `h3gate:` by default):
//!
//! - `keys`: a hash, field = the key's SHA-256 (hex), value = its record
//!   as JSON (the key itself is never stored anywhere);
//! - `keys:names`: a hash, name → SHA-256 of the live key of that name
//!   (names stay unique, checked atomically at creation);
//! - `keys:version`, `keys:epoch`: see [`crate::cluster::sync`].
//!
//! Every write goes through one merge script, applying
//! [`KeyRecord::supersedes`]: a revocation is final, otherwise the higher
//! revision wins. Records are never deleted (a revocation is a tombstone),
//! so merging any replica's copy, however old, brings no revoked key back.
//!
//! A replica polls the version (every 250 ms; one `MGET`) and pulls the
//! hash when it changed, replacing its set and rewriting its keys file
//! (the mirror) off the request path. It merges everything it holds into
//! Redis at start, whenever it finds the epoch missing or new (Redis
//! restarted without persistence: every replica re-seeds it), after a
//! change made while Redis was unreachable, and when its keys file was
//! changed by hand or by `h3gate keys --keys-file`.

use std::sync::{Arc, LazyLock};

use super::file::{live_named, new_record, save, KeysFile};
use super::{index, Changed, Created, KeyRecord, Keys, KeysError, NewKey, Offline};
use crate::cluster::sync::{self, SetKeys, Sharing, Stamp, Step, Tracker};
use crate::cluster::{Cluster, ClusterError};
use crate::metrics::CLUSTER_SYNCS;

/// Records per merge call: each call stays short (Redis runs one script
/// at a time, and every replica's rate limits wait behind it).
const BATCH: usize = 200;

/// KEYS: hash, version, epoch, names. ARGV: epoch, mode (`merge` or
/// `create`), then (sha, json) pairs. Answers the epoch, the version, and
/// per record `1` (written), `0` (what Redis has supersedes it) or `-1`
/// (create: the name is taken by a live key).
const MERGE_LUA: &str = r#"
local function revoked(r) return r.revoked_at ~= nil and r.revoked_at ~= cjson.null end
local function num(x) if type(x) == 'number' then return x end return 0 end
local function live(sha)
  local j = redis.call('HGET', KEYS[1], sha)
  return j and not revoked(cjson.decode(j))
end
local changed, out = 0, {}
for i = 3, #ARGV, 2 do
  local sha, json = ARGV[i], ARGV[i + 1]
  local new = cjson.decode(json)
  local holder = redis.call('HGET', KEYS[4], new.name)
  if ARGV[2] == 'create' and holder and holder ~= sha and live(holder) then
    out[#out + 1] = '-1'
  else
    local take, old = true, redis.call('HGET', KEYS[1], sha)
    if old then
      old = cjson.decode(old)
      if revoked(old) then
        take = false
      elseif not revoked(new) then
        local a, b = num(new.revision), num(old.revision)
        take = a > b or (a == b and num(new.updated_at) > num(old.updated_at))
      end
    end
    if take then
      redis.call('HSET', KEYS[1], sha, json)
      changed = changed + 1
      if revoked(new) then
        if holder == sha then redis.call('HDEL', KEYS[4], new.name) end
      elseif not holder or (holder ~= sha and not live(holder)) then
        redis.call('HSET', KEYS[4], new.name, sha)
      end
    end
    out[#out + 1] = take and '1' or '0'
  end
end
"#;

static MERGE: LazyLock<redis::Script> = LazyLock::new(|| sync::merge_script(MERGE_LUA));

/// How a merge of changed records came out.
enum Merged {
    Written,
    /// Redis holds a record that supersedes one of them (pulled since).
    Superseded,
    /// `create`: a live key has the name.
    Taken,
}

/// A replica's (or the CLI's) link to the keys in Redis.
pub(super) struct Shared {
    cluster: Arc<Cluster>,
    set: SetKeys,
    names: String,
    offline: Offline,
    /// Held across every sync and change, so a pull never overwrites a
    /// change being made; holds "changes made here that Redis lacks".
    dirty: tokio::sync::Mutex<bool>,
    tracker: Tracker,
}

impl Shared {
    pub(super) fn new(cluster: Arc<Cluster>, offline: Offline) -> Shared {
        Shared {
            set: SetKeys::new(&cluster, "keys"),
            names: cluster.key("keys:names"),
            cluster,
            offline,
            dirty: tokio::sync::Mutex::new(false),
            tracker: Tracker::default(),
        }
    }

    /// The watcher's step: catch up with Redis (skipped while it is down).
    pub(super) async fn tick(&self, keys: &Keys) {
        if !self.cluster.is_up() {
            return;
        }
        let mut dirty = self.dirty.lock().await;
        if let Err(e) = self.sync(keys, &mut dirty).await {
            tracing::debug!(error = %e, "keys: sync with redis failed; retrying");
        }
    }

    /// Brings this set and Redis in step: merges what Redis lacks (a new
    /// epoch, or changes made here while it was down), then pulls if the
    /// version moved.
    async fn sync(&self, keys: &Keys, dirty: &mut bool) -> Result<(), ClusterError> {
        let stamp = sync::poll(&self.cluster, "keys_poll", &self.set).await?;
        let step = self.tracker.step(&stamp);
        let pushing = step == Step::Seed || *dirty;
        if pushing {
            let all: Vec<KeyRecord> = keys.list().iter().map(|r| (**r).clone()).collect();
            for batch in all.chunks(BATCH) {
                if let Err(e) = self.merge("merge", batch).await {
                    CLUSTER_SYNCS.with(["keys", "failed"]).increment(1);
                    return Err(e);
                }
            }
            *dirty = false;
            let what = if step == Step::Seed {
                "seeded"
            } else {
                "pushed"
            };
            CLUSTER_SYNCS.with(["keys", what]).increment(1);
            if step == Step::Seed {
                tracing::info!(
                    keys = all.len(),
                    "keys: merged this replica's keys into redis"
                );
            }
        }
        // After a push too: what Redis kept may not be what was pushed.
        if step != Step::Nothing || pushing {
            self.pull(keys, dirty).await?;
        }
        Ok(())
    }

    /// Runs the merge script over `records`.
    async fn merge(
        &self,
        mode: &str,
        records: &[KeyRecord],
    ) -> Result<(Stamp, Vec<String>), ClusterError> {
        let mut inv = MERGE.prepare_invoke();
        inv.key(&self.set.data)
            .key(&self.set.version)
            .key(&self.set.epoch)
            .key(&self.names)
            .arg(sync::new_epoch())
            .arg(mode);
        for r in records {
            inv.arg(&r.sha256)
                .arg(serde_json::to_string(r).unwrap_or_default());
        }
        let reply: Vec<String> = self.cluster.call_background("keys_merge", inv).await?;
        let results = reply.get(2..).unwrap_or_default().to_vec();
        Ok((Stamp::from_reply(&reply), results))
    }

    /// Replaces the set held here with Redis' (and the mirror, if it differs).
    async fn pull(&self, keys: &Keys, dirty: &mut bool) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("MGET")
            .arg(&self.set.epoch)
            .arg(&self.set.version)
            .cmd("HGETALL")
            .arg(&self.set.data);
        let (mut stamp, all): (Vec<Option<String>>, Vec<(String, String)>) =
            self.cluster.call_background("keys_pull", &pipe).await?;
        let mut records = Vec::with_capacity(all.len());
        let mut broken = 0usize;
        for (sha, json) in all {
            match serde_json::from_str::<KeyRecord>(&json) {
                Ok(r) if r.sha256 == sha => records.push(r),
                _ => broken += 1,
            }
        }
        if broken > 0 {
            tracing::error!(
                records = broken,
                "keys: records in redis that are not valid key records were left out"
            );
        }
        let next = index(records);
        let same = **keys.by_hash.load() == next;
        keys.by_hash.store(Arc::new(next));
        let version = stamp.pop().flatten();
        let epoch = stamp.pop().flatten();
        self.tracker.pulled(Stamp { epoch, version });
        CLUSTER_SYNCS.with(["keys", "pulled"]).increment(1);
        if !same {
            tracing::info!(keys = keys.by_hash.load().len(), "keys: pulled from redis");
            mirror(keys, dirty).await;
        }
        Ok(())
    }

    /// Records from the keys file (changed by hand, or by `h3gate keys
    /// --keys-file`) that supersede what is held here join the set and
    /// are merged into Redis at the next sync.
    pub(super) async fn merge_file(&self, keys: &Keys, records: Vec<KeyRecord>) {
        let mut dirty = self.dirty.lock().await;
        if absorb(keys, &records) {
            *dirty = true;
        }
        if index(records) != **keys.by_hash.load() {
            mirror(keys, &mut dirty).await;
        }
    }

    /// Merges `changed` into Redis, or (Redis unreachable) applies it here
    /// and leaves it for the next sync — or refuses, for the CLI.
    async fn commit(
        &self,
        keys: &Keys,
        dirty: &mut bool,
        online: bool,
        mode: &str,
        changed: &[KeyRecord],
    ) -> Result<(Merged, Sharing), KeysError> {
        let mut failure = None;
        if online {
            match self.merge(mode, changed).await {
                Ok((_, results)) if results.iter().all(|r| r == "1") => {
                    keys.upsert(changed);
                    mirror(keys, dirty).await;
                    return Ok((Merged::Written, Sharing::Shared));
                }
                Ok((_, results)) => {
                    let _ = self.pull(keys, dirty).await;
                    let how = if results.iter().any(|r| r == "-1") {
                        Merged::Taken
                    } else {
                        Merged::Superseded
                    };
                    return Ok((how, Sharing::Shared));
                }
                Err(e) => failure = Some(e),
            }
        }
        if self.offline == Offline::Refuse {
            let why = failure.map_or_else(|| "no answer".to_string(), |e| e.message);
            return Err(KeysError::Unavailable(why));
        }
        keys.upsert(changed);
        *dirty = true;
        mirror(keys, dirty).await;
        CLUSTER_SYNCS.with(["keys", "pending"]).increment(1);
        tracing::warn!(
            "keys: redis is unreachable; the change applies on this replica and reaches the others when redis answers"
        );
        Ok((Merged::Written, Sharing::Pending))
    }

    /// Creates a key: unique by name across the cluster.
    pub(super) async fn create(&self, keys: &Keys, new: NewKey) -> Result<Created, KeysError> {
        let (key, record) = new_record(new)?;
        let mut dirty = self.dirty.lock().await;
        let online = self.sync(keys, &mut dirty).await.is_ok();
        let held = keys.by_hash.load_full();
        if !live_named(held.values().map(|r| &**r), &record.name).is_empty() {
            return Err(KeysError::Taken(record.name));
        }
        let changed = [record];
        match self
            .commit(keys, &mut dirty, online, "create", &changed)
            .await?
        {
            (Merged::Written, sharing) => {
                let [record] = changed;
                Ok(Created {
                    key,
                    record,
                    sharing,
                })
            }
            (_, _) => Err(KeysError::Taken(changed[0].name.clone())),
        }
    }

    /// Applies `f` to the live keys named `name`. A revocation that finds
    /// the key revoked meanwhile is done; an edit that lost is a conflict.
    pub(super) async fn change(
        &self,
        keys: &Keys,
        name: &str,
        revoking: bool,
        f: impl Fn(&KeyRecord) -> KeyRecord,
    ) -> Result<Changed, KeysError> {
        let mut dirty = self.dirty.lock().await;
        let online = self.sync(keys, &mut dirty).await.is_ok();
        let held = keys.by_hash.load_full();
        let changed: Vec<KeyRecord> = live_named(held.values().map(|r| &**r), name)
            .into_iter()
            .map(f)
            .collect();
        if changed.is_empty() {
            return Err(KeysError::NoSuchKey(name.into()));
        }
        match self
            .commit(keys, &mut dirty, online, "merge", &changed)
            .await?
        {
            (Merged::Superseded | Merged::Taken, _) if !revoking => {
                Err(KeysError::Conflict(name.into()))
            }
            (_, sharing) => Ok(Changed {
                records: changed,
                sharing,
            }),
        }
    }

    /// The set after a sync; whether it is Redis' (else the local copy).
    pub(super) async fn current(&self, keys: &Keys) -> Sharing {
        let mut dirty = self.dirty.lock().await;
        match self.sync(keys, &mut dirty).await {
            Ok(()) => Sharing::Shared,
            Err(_) => Sharing::Pending,
        }
    }
}

/// Takes in the records (from the keys file) that supersede what is held
/// here; whether there were any.
fn absorb(keys: &Keys, records: &[KeyRecord]) -> bool {
    let held = keys.by_hash.load_full();
    let newer: Vec<KeyRecord> = records
        .iter()
        .filter(|r| held.get(&r.sha256).is_none_or(|h| r.supersedes(h)))
        .cloned()
        .collect();
    if newer.is_empty() {
        return false;
    }
    tracing::info!(keys = newer.len(), "keys: changes from the keys file");
    keys.upsert(&newer);
    true
}

/// Rewrites the keys file from the set held here (off the runtime's
/// workers), after taking in what was written to it meanwhile (so a change
/// made in the file is not overwritten); a failure is logged, the set in
/// memory stays authoritative.
async fn mirror(keys: &Keys, dirty: &mut bool) {
    let Some(path) = keys.path.clone() else {
        return;
    };
    let last = *keys.stamp.lock().unwrap_or_else(|p| p.into_inner());
    let p = path.clone();
    let seen = tokio::task::spawn_blocking(move || super::read_if_changed(&p, last)).await;
    if let Ok((_, Some(file))) = seen {
        if absorb(keys, &file.keys) {
            *dirty = true;
        }
    }
    let mut records: Vec<KeyRecord> = keys.list().iter().map(|r| (**r).clone()).collect();
    records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    let file = KeysFile { keys: records };
    let written =
        tokio::task::spawn_blocking(move || save(&path, &file).map(|()| super::stamp(&path))).await;
    match written {
        Ok(Ok(now)) => *keys.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now,
        Ok(Err(e)) => tracing::error!(error = %e, "keys: cannot write the local mirror"),
        Err(e) => tracing::error!(error = %e, "keys: the mirror writer failed"),
    }
}
