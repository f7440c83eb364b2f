//! What the shared sets (client keys, abuse denies) have in common: each
//! lives in Redis beside a *version* (incremented by every change) and an
//! *epoch* (a random id written when the set is first seeded). A replica
//! polls both (one `MGET`): a new version means "pull the set again"; a
//! missing or different epoch means Redis lost the set (a restart without
//! persistence, a flush, a failover to an empty replica) and this replica
//! must merge everything it holds back into it before pulling — so every
//! replica re-seeds, not only the first to notice.

use std::sync::Mutex;

use super::{Cluster, ClusterError};

/// Where a change made through one replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One node: the local file is the store.
    Local,
    /// Written to Redis: every replica has it within a poll.
    Shared,
    /// Applied on this replica only, Redis being unreachable; it is merged
    /// into Redis as soon as Redis answers again.
    Pending,
}

impl Sharing {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Local => "local",
            Sharing::Shared => "shared",
            Sharing::Pending => "pending",
        }
    }
}

/// The Redis keys of one shared set.
#[derive(Debug, Clone)]
pub struct SetKeys {
    pub data: String,
    pub version: String,
    pub epoch: String,
}

impl SetKeys {
    /// `{prefix}{name}`, `{prefix}{name}:version`, `{prefix}{name}:epoch`.
    pub fn new(cluster: &Cluster, name: &str) -> SetKeys {
        SetKeys {
            data: cluster.key(name),
            version: cluster.key(&format!("{name}:version")),
            epoch: cluster.key(&format!("{name}:epoch")),
        }
    }
}

/// A set's epoch and version as Redis has them (`None`: missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: Option<String>,
    pub version: Option<String>,
}

impl Stamp {
    /// From the `[epoch, version, …]` head a merge script returns.
    pub fn from_reply(reply: &[String]) -> Stamp {
        Stamp {
            epoch: reply.first().cloned(),
            version: reply.get(1).cloned(),
        }
    }
}

/// What a replica must do to catch up with Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing changed since the last pull.
    Nothing,
    /// Someone changed the set: pull it.
    Pull,
    /// Redis lost the set, or this replica never merged its own into it:
    /// merge everything held here, then pull.
    Seed,
}

/// The stamp of the last pull.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: Mutex<Option<Stamp>>,
}

impl Tracker {
    pub fn step(&self, now: &Stamp) -> Step {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match &*seen {
            Some(s) if now.epoch.is_some() && s.epoch == now.epoch => {
                if s.version == now.version {
                    Step::Nothing
                } else {
                    Step::Pull
                }
            }
            _ => Step::Seed,
        }
    }

    /// Records what a pull returned.
    pub fn pulled(&self, stamp: Stamp) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(stamp);
    }
}

/// The set's current stamp: one `MGET`.
pub async fn poll(
    cluster: &Cluster,
    op: &'static str,
    keys: &SetKeys,
) -> Result<Stamp, ClusterError> {
    let mut v: Vec<Option<String>> = cluster
        .call(
            op,
            redis::cmd("MGET")
                .arg(&keys.epoch)
                .arg(&keys.version)
                .clone(),
        )
        .await?;
    let version = v.pop().flatten();
    let epoch = v.pop().flatten();
    Ok(Stamp { epoch, version })
}

/// A fresh epoch id for a merge script to set when the epoch is missing.
pub fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The Lua prologue of a merge script: the epoch (`KEYS[3]`) is set from
/// `ARGV[1]` when missing, and that counts as a change of the version
/// (`KEYS[2]`). Leaves `epoch` defined.
const EPOCH_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
  redis.call('INCR', KEYS[2])
end
"#;

/// The Lua epilogue of a merge script: bumps the version when the body
/// changed anything (`changed`), and replies the epoch, the version, then
/// the body's per-change answers (`out`).
const REPLY_LUA: &str = r#"
if changed > 0 then redis.call('INCR', KEYS[2]) end
local reply = {epoch, redis.call('GET', KEYS[2]) or '0'}
for _, r in ipairs(out) do reply[#reply + 1] = r end
return reply
"#;

/// A merge script: [`EPOCH_LUA`], `body` (which sets `changed` and `out`),
/// then the reply.
pub fn merge_script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{EPOCH_LUA}{body}{REPLY_LUA}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(e: &str, v: &str) -> Stamp {
        Stamp {
            epoch: Some(e.into()),
            version: Some(v.into()),
        }
    }

    #[test]
    fn a_new_or_missing_epoch_seeds_a_new_version_pulls() {
        let t = Tracker::default();
        assert_eq!(t.step(&stamp("a", "1")), Step::Seed, "never pulled");
        t.pulled(stamp("a", "1"));
        assert_eq!(t.step(&stamp("a", "1")), Step::Nothing);
        assert_eq!(t.step(&stamp("a", "2")), Step::Pull);
        assert_eq!(t.step(&stamp("b", "1")), Step::Seed, "redis lost the set");
        assert_eq!(t.step(&Stamp::default()), Step::Seed, "redis is empty");
    }
}
