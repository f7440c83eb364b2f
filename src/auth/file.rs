//! The keys file: the store of a single node, and each replica's local
//! mirror (and seed) in a cluster. Written atomically (temp file, fsync,
//! rename, mode 0600). The changes themselves (a new record, a revocation,
//! an edit) are plain functions of records, shared with the Redis store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{hex, obfuscate, KeyRecord, KeysError};
use crate::clock::now_secs;
use crate::files::write_atomic;
use crate::spend::Period;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

/// What the `h3gate keys` commands read from a configuration file:
/// `[auth] keys_file`, `[audit] file` and `[cluster]`.
#[derive(Debug)]
pub struct CliFiles {
    pub keys: Option<PathBuf>,
    pub audit: Option<PathBuf>,
    pub cluster: crate::config::ClusterConfig,
    /// The names under `[[teams]]` (`None` when that section is not valid:
    /// the keys commands then warn about no team).
    pub teams: Option<Vec<String>>,
}

/// The files the `h3gate keys` commands use, from a configuration file.
/// Only `[auth]`, `[audit]`, `[cluster]` and `[[teams]]` are read, so keys
/// can be created before the rest of the configuration (provider keys,
/// certificates) is in place.
pub fn cli_files(config: &Path) -> Result<CliFiles, crate::config::ConfigError> {
    use crate::config::load_section;
    let (auth, base): (crate::config::AuthConfig, _) = load_section(config, "auth")?;
    let (audit, _): (crate::config::AuditConfig, _) = load_section(config, "audit")?;
    let (cluster, _): (crate::config::ClusterConfig, _) = load_section(config, "cluster")?;
    let teams = load_section::<Vec<crate::config::TeamConfig>>(config, "teams")
        .ok()
        .map(|(t, _)| t.into_iter().map(|t| t.name).collect());
    Ok(CliFiles {
        keys: auth.keys_file.map(|f| base.join(f)),
        audit: audit.file.map(|f| base.join(f)),
        cluster,
        teams,
    })
}

pub fn read_file(path: &Path) -> Result<KeysFile, KeysError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeysError::Read(path.into(), e))?;
    if text.trim().is_empty() {
        return Ok(KeysFile::default());
    }
    serde_json::from_str(&text).map_err(|e| KeysError::Parse(path.into(), e.to_string()))
}

pub(super) fn save(path: &Path, file: &KeysFile) -> Result<(), KeysError> {
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
    /// The team whose budget this key's spend also counts against.
    pub team: Option<String>,
    /// USD per `budget_period`.
    pub budget: Option<f64>,
    /// Tokens per `budget_period`.
    pub budget_tokens: Option<u64>,
    /// Default `month`.
    pub budget_period: Option<Period>,
}

/// What `keys edit` / `PATCH /admin/keys/NAME` changes: `None` leaves a
/// field as it is; `Some(None)` clears it (no expiry, the default limit).
#[derive(Debug, Clone, Default)]
pub struct KeyEdit {
    pub scopes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    /// From now.
    pub expires_in: Option<Option<Duration>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub max_concurrent: Option<Option<u32>>,
    pub team: Option<Option<String>>,
    pub budget: Option<Option<f64>>,
    pub budget_tokens: Option<Option<u64>>,
    /// `Some(None)`: the default (`month`).
    pub budget_period: Option<Option<Period>>,
}

const SCOPES: [&str; 3] = ["chat", "embeddings", "models"];

fn check_scopes(scopes: &[String]) -> Result<(), KeysError> {
    match scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        Some(bad) => Err(KeysError::Invalid(format!(
            "unknown scope {bad:?} (chat, embeddings, models)"
        ))),
        None => Ok(()),
    }
}

pub use crate::spend::valid_name;

/// The warning for a key naming a team `[[teams]]` lacks (`known` says
/// which it has): allowed, as its spend is still recorded by team.
pub fn unknown_team_warning(team: Option<&str>, known: impl Fn(&str) -> bool) -> Option<String> {
    let team = team.filter(|t| !known(t))?;
    Some(format!(
        "team {team:?} is not in [[teams]]: its spend is recorded, no team budget applies"
    ))
}

fn check_team(team: Option<&str>) -> Result<(), KeysError> {
    match team {
        Some(t) if !valid_name(t) => Err(KeysError::Invalid(format!(
            "team {t:?}: a team name is letters, digits, '-', '_' or '.'"
        ))),
        _ => Ok(()),
    }
}

fn check_budget(usd: Option<f64>, tokens: Option<u64>) -> Result<(), KeysError> {
    if let Some(b) = usd.filter(|b| !b.is_finite() || *b <= 0.0) {
        return Err(KeysError::Invalid(format!(
            "budget {b}: a budget is a number of USD greater than 0"
        )));
    }
    if tokens == Some(0) {
        return Err(KeysError::Invalid(
            "budget_tokens 0: a tokens budget is greater than 0".into(),
        ));
    }
    Ok(())
}

/// A new key and its record (revision 1), or why the request is invalid.
pub(super) fn new_record(new: NewKey) -> Result<(String, KeyRecord), KeysError> {
    if !valid_name(&new.name) {
        return Err(KeysError::Invalid(
            "a key name is letters, digits, '-', '_' or '.'".into(),
        ));
    }
    check_scopes(&new.scopes)?;
    check_team(new.team.as_deref())?;
    check_budget(new.budget, new.budget_tokens)?;
    if new.budget_period.is_some() && new.budget.is_none() && new.budget_tokens.is_none() {
        return Err(KeysError::Invalid(
            "a budget period needs a budget or budget_tokens".into(),
        ));
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
        expires_at: new.expires_in.map(|d| now.saturating_add(d.as_secs())),
        revoked_at: None,
        rpm: new.rpm,
        tpm: new.tpm,
        max_concurrent: new.max_concurrent,
        team: new.team,
        budget: new.budget,
        budget_tokens: new.budget_tokens,
        budget_period: new.budget_period,
        revision: 1,
        updated_at: now,
    };
    Ok((key, record))
}

impl KeyEdit {
    pub fn is_empty(&self) -> bool {
        self.scopes.is_none()
            && self.models.is_none()
            && self.expires_in.is_none()
            && self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_concurrent.is_none()
            && self.team.is_none()
            && self.budget.is_none()
            && self.budget_tokens.is_none()
            && self.budget_period.is_none()
    }

    pub fn check(&self) -> Result<(), KeysError> {
        if self.is_empty() {
            return Err(KeysError::Invalid(
                "nothing to change: give scopes, models, expires, rpm, tpm, max_concurrent, \
                 team, budget, budget_tokens or budget_period"
                    .into(),
            ));
        }
        check_scopes(self.scopes.as_deref().unwrap_or_default())?;
        check_team(self.team.clone().flatten().as_deref())?;
        check_budget(self.budget.flatten(), self.budget_tokens.flatten())
    }

    /// `rec` with this edit applied, as its next revision.
    pub(super) fn applied(&self, rec: &KeyRecord) -> KeyRecord {
        let now = now_secs();
        let mut out = rec.clone();
        if let Some(s) = &self.scopes {
            out.scopes = s.clone();
        }
        if let Some(m) = &self.models {
            out.models = m.clone();
        }
        if let Some(e) = self.expires_in {
            out.expires_at = e.map(|d| now.saturating_add(d.as_secs()));
        }
        out.rpm = self.rpm.unwrap_or(out.rpm);
        out.tpm = self.tpm.unwrap_or(out.tpm);
        out.max_concurrent = self.max_concurrent.unwrap_or(out.max_concurrent);
        if let Some(t) = &self.team {
            out.team = t.clone();
        }
        out.budget = self.budget.unwrap_or(out.budget);
        out.budget_tokens = self.budget_tokens.unwrap_or(out.budget_tokens);
        out.budget_period = self.budget_period.unwrap_or(out.budget_period);
        out.revision = rec.revision + 1;
        out.updated_at = now;
        out
    }
}

/// `rec` revoked, as its next revision.
pub(super) fn revoked(rec: &KeyRecord) -> KeyRecord {
    let now = now_secs();
    KeyRecord {
        revoked_at: Some(now),
        revision: rec.revision + 1,
        updated_at: now,
        ..rec.clone()
    }
}

/// The live (not revoked) records named `name`: more than one only when
/// two replicas created the same name while Redis was unreachable.
pub(super) fn live_named<'a>(
    records: impl IntoIterator<Item = &'a KeyRecord>,
    name: &str,
) -> Vec<&'a KeyRecord> {
    records
        .into_iter()
        .filter(|k| k.name == name && k.revoked_at.is_none())
        .collect()
}

fn load_or_empty(path: &Path) -> Result<KeysFile, KeysError> {
    if path.exists() {
        read_file(path)
    } else {
        Ok(KeysFile::default())
    }
}

/// Creates a key in the file, stores its hash, and returns the key (shown
/// once) and its record.
pub fn create(path: &Path, new: NewKey) -> Result<(String, KeyRecord), KeysError> {
    let mut file = load_or_empty(path)?;
    if !live_named(&file.keys, &new.name).is_empty() {
        return Err(KeysError::Taken(new.name));
    }
    let (key, record) = new_record(new)?;
    file.keys.push(record.clone());
    save(path, &file)?;
    Ok((key, record))
}

/// Marks the live keys named `name` revoked (kept for the record). Errors
/// if there is none. Returns the first.
pub fn revoke(path: &Path, name: &str) -> Result<KeyRecord, KeysError> {
    change(path, name, revoked)
}

/// Applies `edit` to the live keys named `name`. Returns the first.
pub fn edit(path: &Path, name: &str, edit: &KeyEdit) -> Result<KeyRecord, KeysError> {
    edit.check()?;
    change(path, name, |r| edit.applied(r))
}

fn change(
    path: &Path,
    name: &str,
    f: impl Fn(&KeyRecord) -> KeyRecord,
) -> Result<KeyRecord, KeysError> {
    let mut file = read_file(path)?;
    let mut first = None;
    for k in file
        .keys
        .iter_mut()
        .filter(|k| k.name == name && k.revoked_at.is_none())
    {
        *k = f(k);
        first.get_or_insert_with(|| k.clone());
    }
    let first = first.ok_or_else(|| KeysError::NoSuchKey(name.into()))?;
    save(path, &file)?;
    Ok(first)
}
