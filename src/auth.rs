//! Client API keys: `h3g_` + 256 random bits, shown once; the keys file
//! keeps only their SHA-256 and metadata (scopes, models, expiry, limits).
//! The file is written atomically (temp file, fsync, rename, mode 0600) and
//! watched: a revoked key stops working within about a second; a file that
//! cannot be parsed keeps the last good set (and is fatal at start).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::clock::now_secs;
use crate::error::GatewayError;
use crate::files::write_atomic;
use crate::glob::glob_match;
use crate::provider::Endpoint;

/// One key's record in the keys file (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

/// The scope an endpoint needs.
pub fn scope_of(endpoint: Option<Endpoint>) -> &'static str {
    match endpoint {
        Some(
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Messages
            | Endpoint::CountTokens,
        ) => "chat",
        Some(Endpoint::Embeddings) => "embeddings",
        Some(Endpoint::Model) | None => "models",
    }
}

impl KeyRecord {
    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == scope)
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| glob_match(g, model))
    }

    fn usable(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
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
}

/// The files the `h3gate keys` commands use, from a configuration file:
/// `[auth] keys_file` (`None` when unset) and `[audit] file`. Only those
/// two sections are read, so keys can be created before the rest of the
/// configuration (provider keys, certificates) is in place.
pub fn cli_files(
    config: &Path,
) -> Result<(Option<PathBuf>, Option<PathBuf>), crate::config::ConfigError> {
    use crate::config::load_section;
    let (auth, base): (crate::config::AuthConfig, _) = load_section(config, "auth")?;
    let (audit, _): (crate::config::AuditConfig, _) = load_section(config, "audit")?;
    Ok((
        auth.keys_file.map(|f| base.join(f)),
        audit.file.map(|f| base.join(f)),
    ))
}

pub fn read_file(path: &Path) -> Result<KeysFile, KeysError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeysError::Read(path.into(), e))?;
    if text.trim().is_empty() {
        return Ok(KeysFile::default());
    }
    serde_json::from_str(&text).map_err(|e| KeysError::Parse(path.into(), e.to_string()))
}

fn save(path: &Path, file: &KeysFile) -> Result<(), KeysError> {
    let json = serde_json::to_vec_pretty(file).map_err(|e| KeysError::Invalid(e.to_string()))?;
    write_atomic(path, &json).map_err(|e| KeysError::Write(path.into(), e))
}

/// What `keys create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub models: Vec<String>,
    pub expires_in: Option<Duration>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
}

const SCOPES: [&str; 3] = ["chat", "embeddings", "models"];

/// Creates a key, stores its hash, and returns the key (shown once) and its record.
pub fn create(path: &Path, new: NewKey) -> Result<(String, KeyRecord), KeysError> {
    if new.name.is_empty()
        || !new
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(KeysError::Invalid(
            "a key name is letters, digits, '-', '_' or '.'".into(),
        ));
    }
    if let Some(bad) = new.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(KeysError::Invalid(format!(
            "unknown scope {bad:?} (chat, embeddings, models)"
        )));
    }
    let mut file = if path.exists() {
        read_file(path)?
    } else {
        KeysFile::default()
    };
    if file
        .keys
        .iter()
        .any(|k| k.name == new.name && k.revoked_at.is_none())
    {
        return Err(KeysError::Invalid(format!(
            "a key named {:?} already exists",
            new.name
        )));
    }
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| KeysError::Invalid("the system random generator failed".into()))?;
    let key = format!("h3g_{}", hex(&raw));
    let now = now_secs();
    let record = KeyRecord {
        name: new.name,
        id: obfuscate(&key),
        sha256: hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref()),
        scopes: new.scopes,
        models: new.models,
        created_at: now,
        expires_at: new.expires_in.map(|d| now + d.as_secs()),
        revoked_at: None,
        rpm: new.rpm,
        tpm: new.tpm,
        max_concurrent: new.max_concurrent,
    };
    file.keys.push(record.clone());
    save(path, &file)?;
    Ok((key, record))
}

/// Marks a key revoked (kept for the record). Errors if no live key has that name.
pub fn revoke(path: &Path, name: &str) -> Result<KeyRecord, KeysError> {
    let mut file = read_file(path)?;
    let now = now_secs();
    let record = file
        .keys
        .iter_mut()
        .find(|k| k.name == name && k.revoked_at.is_none())
        .ok_or_else(|| KeysError::Invalid(format!("no active key named {name:?}")))?;
    record.revoked_at = Some(now);
    let out = record.clone();
    save(path, &file)?;
    Ok(out)
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

/// The live key set, swapped atomically when the file changes.
pub struct Keys {
    path: PathBuf,
    by_hash: ArcSwap<HashMap<String, Arc<KeyRecord>>>,
    stamp: std::sync::Mutex<Option<(SystemTime, u64)>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn index(file: KeysFile) -> HashMap<String, Arc<KeyRecord>> {
    file.keys
        .into_iter()
        .map(|k| (k.sha256.clone(), Arc::new(k)))
        .collect()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Keys {
    /// Loads the file; at start an unreadable file is fatal.
    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let st = stamp(path);
        let file = read_file(path)?;
        Ok(Keys {
            path: path.to_path_buf(),
            by_hash: ArcSwap::from_pointee(index(file)),
            stamp: std::sync::Mutex::new(st),
        })
    }

    /// Re-reads the file if it changed; keeps the last good set if it is broken.
    pub fn refresh(&self) {
        let now = stamp(&self.path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return;
            }
            *last = now;
        }
        match read_file(&self.path) {
            Ok(file) => {
                let n = file.keys.len();
                self.by_hash.store(Arc::new(index(file)));
                tracing::info!(keys = n, "keys file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "keys file rejected; the previous keys stay in force")
            }
        }
    }

    /// Watches the file (every 500 ms) until `stop` or the drain.
    pub async fn watch(
        self: Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shutdown.draining() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.refresh()).await;
                }
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

    pub fn list(&self) -> Vec<Arc<KeyRecord>> {
        let mut v: Vec<_> = self.by_hash.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (key, rec) = create(
            &path,
            NewKey {
                name: "ci".into(),
                scopes: vec!["chat".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(key.starts_with("h3g_") && key.len() == 4 + 64);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "only the hash is stored");
        assert!(text.contains(&rec.sha256));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let keys = Keys::load(&path).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert_eq!(keys.authenticate(&h).unwrap().name, "ci");
        let mut h2 = HeaderMap::new();
        h2.insert("x-api-key", key.parse().unwrap());
        assert!(keys.authenticate(&h2).is_ok());
        assert!(
            create(
                &path,
                NewKey {
                    name: "ci".into(),
                    ..Default::default()
                }
            )
            .is_err(),
            "names are unique"
        );
        revoke(&path, "ci").unwrap();
        // Same second, same size: force the change to be seen.
        *keys.stamp.lock().unwrap() = None;
        keys.refresh();
        assert!(matches!(
            keys.authenticate(&h),
            Err(GatewayError::Unauthorized)
        ));
    }

    #[test]
    fn broken_file_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (key, _) = create(
            &path,
            NewKey {
                name: "a".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let keys = Keys::load(&path).unwrap();
        std::fs::write(&path, "{ not json").unwrap();
        *keys.stamp.lock().unwrap() = None;
        keys.refresh();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", key.parse().unwrap());
        assert!(keys.authenticate(&h).is_ok());
        assert!(Keys::load(&path).is_err(), "fatal at start");
    }

    #[test]
    fn obfuscation() {
        assert_eq!(obfuscate("h3g_0123456789abcdef"), "h3g_0123****cdef");
        assert_eq!(obfuscate("short"), "h3g_****");
    }
}
