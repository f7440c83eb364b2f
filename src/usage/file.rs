//! The spend file (`[spend] file`, one node without `[cluster]`): the
//! usage history's hourly buckets and the budgets' counters, as JSON.
//!
//! Written by [`super::Keeper`]'s task, off the request path, with
//! [`crate::files::write_atomic`] (a temporary file beside it, fsync,
//! rename, fsync of the directory): a crash at any moment leaves the last
//! complete file, never a partial one. Read back once at start, before the
//! gateway serves; a file that cannot be read is a start-up error (never
//! silently replaced by an empty one), a missing one starts empty.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rate_limit::{BudgetCounter, MemoryLimiter};
use crate::spend::history::{BucketKey, Sums};

/// The format this build writes (and the newest it reads).
pub const VERSION: u32 = 1;

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The format ([`VERSION`]).
    pub version: u32,
    /// When it was written (Unix seconds).
    #[serde(default)]
    pub saved_at: u64,
    /// The usage history: `[bucket, sums]`, oldest first.
    #[serde(default)]
    pub buckets: Vec<(BucketKey, Sums)>,
    /// The in-memory limiter's budget counters.
    #[serde(default)]
    pub budgets: Vec<BudgetCounter>,
}

/// The spend file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("spend file {0}: cannot read it: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("spend file {0}: not a spend file h3gate can read ({1}); restore it from a backup, or move it away to start with no recorded spend")]
    Parse(PathBuf, String),
    #[error("spend file {0}: format {1} was written by a newer h3gate (this one reads format {VERSION})")]
    Version(PathBuf, u32),
}

/// The file's contents; `None` when there is no file yet (an empty file
/// counts as none too, like an empty keys file).
pub fn read(path: &Path) -> Result<Option<Saved>, FileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::Read(path.into(), e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| FileError::Parse(path.into(), e.to_string()))?;
    if saved.version > VERSION || saved.version == 0 {
        return Err(FileError::Version(path.into(), saved.version));
    }
    Ok(Some(saved))
}

/// Writes `saved` atomically (see the module documentation).
pub fn write(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    crate::files::write_atomic(path, &bytes)
}

/// Reads the file into the history and the in-memory limiter's budget
/// counters (at start, before serving), then forgets the buckets older
/// than `retention` seconds before `now`. Returns how many buckets it read.
pub fn load_into(
    path: &Path,
    history: &crate::spend::History,
    limiter: Option<&MemoryLimiter>,
    retention: u64,
    now: u64,
) -> Result<usize, FileError> {
    let Some(saved) = read(path)? else {
        return Ok(0);
    };
    let n = saved.buckets.len();
    history.restore(saved.buckets);
    if let Some(l) = limiter {
        l.restore_budgets(&saved.budgets);
    }
    history.expire(now.saturating_sub(retention));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::{History, Spent, Usage};

    fn spent(at: u64, key: &str, model: &str) -> Spent {
        Spent {
            at,
            key: Some(key.into()),
            team: Some("eng".into()),
            model: model.into(),
            provider: "up".into(),
            usage: Usage {
                input: 100,
                output: 20,
                cached_input: 40,
                cache_write: 0,
            },
            cost: 1_500,
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.json");
        let h = History::default();
        h.record(&spent(1_796_083_200, "alice", "gpt-4o"));
        h.record(&spent(1_796_083_201, "alice", "gpt-4o"));
        h.record(&spent(1_796_090_000, "bob", "claude"));
        let saved = Saved {
            version: VERSION,
            saved_at: 1,
            buckets: h.buckets(),
            budgets: Vec::new(),
        };
        write(&path, &saved).unwrap();
        assert_eq!(read(&path).unwrap(), Some(saved));
        let again = History::default();
        let n = load_into(&path, &again, None, 400 * 86_400, 1_796_090_000).unwrap();
        assert_eq!(n, 2);
        assert_eq!(again.buckets(), h.buckets());
    }

    #[test]
    fn missing_and_empty_files_start_empty_and_others_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.json");
        assert_eq!(read(&path).unwrap(), None);
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read(&path).unwrap(), None);
        std::fs::write(&path, r#"{"version":1,"buckets":[["#).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("not a spend file"), "{e}");
        std::fs::write(&path, r#"{"version":9}"#).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("newer h3gate"), "{e}");
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot read it"), "{e}");
    }

    #[test]
    fn old_buckets_are_expired_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.json");
        let h = History::default();
        h.record(&spent(1_000_000, "old", "m"));
        h.record(&spent(2_000_000, "new", "m"));
        let saved = Saved {
            version: VERSION,
            buckets: h.buckets(),
            ..Saved::default()
        };
        write(&path, &saved).unwrap();
        let again = History::default();
        load_into(&path, &again, None, 500_000, 2_000_000).unwrap();
        let keys: Vec<String> = again.buckets().into_iter().map(|(k, _)| k.key).collect();
        assert_eq!(keys, ["new"]);
    }
}
