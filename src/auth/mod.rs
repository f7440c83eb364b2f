//! Client API keys: `h3g_` + 256 random bits, shown once; only their
//! SHA-256 and metadata (scopes, models, expiry, limits) are stored.
//!
//! Where the keys live:
//! - **One node** (no `[cluster]`): the keys file is the store. It is
//!   written atomically and watched: a change (the CLI, the admin API, an
//!   edit by hand) applies within about a second; a file that cannot be
//!   parsed keeps the last good set (and is fatal at start).
//! - **A cluster** (`[cluster] redis_url`): Redis is the source of truth
//!   (see [`shared`]); each replica's keys file is its local mirror and its
//!   seed. A change made on any replica (admin API, or the CLI with the
//!   cluster's configuration) is written to Redis and every replica pulls it
//!   within a poll (250 ms). Changes merge: a revocation is final, otherwise
//!   the higher revision wins, so no order of merges brings a revoked key
//!   back. While Redis is unreachable, authentication goes on from the local
//!   copy and admin changes apply on the replica that took them (answered
//!   `202`, "pending"), reaching Redis when it answers again; the CLI, which
//!   serves nobody locally, refuses instead.
//!
//! Either way authentication is a synchronous lookup in memory: never a
//! file or a Redis call on the request path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::clock::now_secs;
use crate::cluster::Cluster;
use crate::error::GatewayError;
use crate::glob::glob_match;
use crate::provider::Endpoint;

mod file;
mod ops;
pub mod shared;

pub use file::{
    cli_files, create, edit, read_file, revoke, unknown_team_warning, valid_name, CliFiles,
    KeyEdit, KeysFile, NewKey,
};
pub use ops::{open_cluster, Changed, Created};

/// One key's record (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub name: String,
    /// Obfuscated form for display and logs, e.g. `h3g_abcd****wxyz`.
    pub id: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// chat, embeddings, models; empty = all.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Model globs this key may use; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// Requests per minute; `None` = the configured default.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute; `None` = the configured default.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Requests in flight at once; `None` = the admission default.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// The team whose budget this key's spend also counts against
    /// (`[[teams]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// USD per `budget_period`; `None` = no USD budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// Tokens (prompt + completion) per `budget_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// `1d`, `month` or a rolling `Nd`/`Nh`; `None` = `month`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<crate::spend::Period>,
    /// Incremented by every change (1 at creation; 0 in files written
    /// before revisions): the higher revision wins a merge.
    #[serde(default)]
    pub revision: u64,
    /// When the last change was made (Unix seconds); breaks a tie of revisions.
    #[serde(default)]
    pub updated_at: u64,
}

/// The scope an endpoint needs.
pub fn scope_of(endpoint: Option<Endpoint>) -> &'static str {
    match endpoint {
        Some(
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Responses
            | Endpoint::StoredResponse
            | Endpoint::DeleteResponse
            | Endpoint::ResponseInputItems
            | Endpoint::CancelResponse
            | Endpoint::GenerateContent,
        ) => "chat",
        Some(Endpoint::Embeddings) => "embeddings",
        Some(Endpoint::Model) | None => "models",
    }
}

impl KeyRecord {
    /// The key's own budget, if it has one.
    pub fn own_budget(&self) -> Option<crate::spend::Budget> {
        let b = crate::spend::Budget {
            usd: self.budget,
            tokens: self.budget_tokens,
            period: self.budget_period.unwrap_or(crate::spend::Period::Month),
        };
        (!b.is_empty()).then_some(b)
    }

    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == scope)
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| glob_match(g, model))
    }

    fn usable(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    /// Whether this record replaces `old` (the same key) in a merge: a
    /// revocation is final; otherwise the higher (revision, updated_at).
    /// The merge script in [`shared`] applies the same rule in Redis.
    pub fn supersedes(&self, old: &KeyRecord) -> bool {
        match (old.revoked_at.is_some(), self.revoked_at.is_some()) {
            (true, _) => false,
            (false, true) => true,
            (false, false) => (self.revision, self.updated_at) > (old.revision, old.updated_at),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the keys file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the keys file {0} is not valid: {1}")]
    Parse(PathBuf, String),
    #[error("cannot write the keys file {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("no active key named {0:?}")]
    NoSuchKey(String),
    #[error("a key named {0:?} already exists")]
    Taken(String),
    #[error("the key {0:?} was changed on another replica meanwhile; read it again and retry")]
    Conflict(String),
    #[error("the cluster's redis is unreachable ({0}); nothing was changed")]
    Unavailable(String),
}

/// `h3g_abcd****wxyz`: enough to tell keys apart, useless to an attacker.
pub fn obfuscate(key: &str) -> String {
    let body = key.strip_prefix("h3g_").unwrap_or(key);
    if body.len() < 12 {
        return "h3g_****".into();
    }
    format!("h3g_{}****{}", &body[..4], &body[body.len() - 4..])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Keyed by the SHA-256 of a key (not attacker-chosen): foldhash, not SipHash.
type ByHash = HashMap<String, Arc<KeyRecord>, foldhash::fast::RandomState>;

/// The live key set, swapped atomically on every change.
pub struct Keys {
    /// The store (one node) or the mirror (cluster); `None` for the CLI
    /// working on a cluster, which keeps no local copy.
    path: Option<PathBuf>,
    by_hash: ArcSwap<ByHash>,
    stamp: std::sync::Mutex<Stamp>,
    shared: Option<shared::Shared>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("path", &self.path)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

fn index(records: Vec<KeyRecord>) -> ByHash {
    records
        .into_iter()
        .map(|k| (k.sha256.clone(), Arc::new(k)))
        .collect()
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The file's stamp now, and its records if it changed since `last`
/// (`None`: the same, missing, or broken — logged).
fn read_if_changed(path: &Path, last: Stamp) -> (Stamp, Option<KeysFile>) {
    let now = stamp(path);
    if now == last || now.is_none() {
        return (now, None);
    }
    match read_file(path) {
        Ok(file) => (now, Some(file)),
        Err(e) => {
            tracing::error!(error = %e, "keys file rejected; the previous keys stay in force");
            (now, None)
        }
    }
}

/// While Redis is unreachable, a change through [`Keys`]:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// applies here at once and is merged into Redis when it answers (a replica);
    ApplyLocally,
    /// is refused with [`KeysError::Unavailable`] (the CLI).
    Refuse,
}

impl Keys {
    /// One node: loads the keys file; at start an unreadable file is fatal.
    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let st = stamp(path);
        let file = read_file(path)?;
        Ok(Keys {
            path: Some(path.to_path_buf()),
            by_hash: ArcSwap::from_pointee(index(file.keys)),
            stamp: std::sync::Mutex::new(st),
            shared: None,
        })
    }

    /// A cluster: Redis is the store; `mirror` (when given) is loaded as
    /// the local copy and seed (missing = none yet; unparsable = fatal),
    /// and kept in step with Redis. Nothing reaches Redis before
    /// [`Keys::watch`] (or a change) runs.
    pub fn shared(
        mirror: Option<&Path>,
        cluster: Arc<Cluster>,
        offline: Offline,
    ) -> Result<Keys, KeysError> {
        let (records, st) = match mirror {
            Some(p) if p.exists() => (read_file(p)?.keys, stamp(p)),
            _ => (Vec::new(), None),
        };
        Ok(Keys {
            path: mirror.map(Path::to_path_buf),
            by_hash: ArcSwap::from_pointee(index(records)),
            stamp: std::sync::Mutex::new(st),
            shared: Some(shared::Shared::new(cluster, offline)),
        })
    }

    /// The file's records if it changed since last looked at (`None`: the
    /// same, or missing). A broken file is logged and skipped.
    fn file_changed(&self) -> Option<KeysFile> {
        let path = self.path.as_deref()?;
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        let (now, file) = read_if_changed(path, *last);
        *last = now;
        file
    }

    /// One node: re-reads the file if it changed; keeps the last good set
    /// if it is broken. (A cluster merges the file instead, in [`Keys::watch`].)
    pub fn refresh(&self) {
        if self.shared.is_some() {
            return;
        }
        if let Some(file) = self.file_changed() {
            let n = file.keys.len();
            self.by_hash.store(Arc::new(index(file.keys)));
            tracing::info!(keys = n, "keys file reloaded");
        }
    }

    /// Until `stop` or the drain: watches the file (every 500 ms) and, in a
    /// cluster, keeps the set in step with Redis (every 250 ms).
    pub async fn watch(
        self: Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut odd = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shutdown.draining() => return,
                _ = tick.tick() => {}
            }
            odd = !odd;
            if odd {
                let me = self.clone();
                let changed = tokio::task::spawn_blocking(move || match me.shared {
                    None => {
                        me.refresh();
                        None
                    }
                    Some(_) => me.file_changed(),
                })
                .await
                .ok()
                .flatten();
                if let (Some(file), Some(sh)) = (changed, &self.shared) {
                    sh.merge_file(&self, file.keys).await;
                }
            }
            if let Some(sh) = &self.shared {
                sh.tick(&self).await;
            }
        }
    }

    /// The key presented (`Authorization: Bearer` or `x-api-key`), if valid.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<KeyRecord>, GatewayError> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(GatewayError::Unauthorized)?;
        let digest =
            hex(ring::digest::digest(&ring::digest::SHA256, presented.as_bytes()).as_ref());
        // A map lookup by hash: the comparison is over digests, not secrets.
        let keys = self.by_hash.load();
        match keys.get(&digest) {
            Some(k) if k.usable(now_secs()) => Ok(k.clone()),
            _ => Err(GatewayError::Unauthorized),
        }
    }

    /// Every record held here (revoked ones included), by name.
    pub fn list(&self) -> Vec<Arc<KeyRecord>> {
        let mut v: Vec<_> = self.by_hash.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.created_at.cmp(&b.created_at)));
        v
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether Redis is the store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Adds or replaces `records` in the set held here.
    fn upsert(&self, records: &[KeyRecord]) {
        let mut next = ByHash::clone(&self.by_hash.load());
        for r in records {
            next.insert(r.sha256.clone(), Arc::new(r.clone()));
        }
        self.by_hash.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests;
