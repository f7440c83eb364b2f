//! A provider's credentials, in the header its kind takes them in.
//!
//! - A key pool: `api_key` and `api_keys = [...]`, spread round-robin over
//!   the keys that may serve. A key answered 429 rests for the answer's
//!   `Retry-After` (1 s without one); a key answered 401 or 403 rests until
//!   the next reload (a new pool). Each rest is logged with the key's id
//!   (`key-` and 8 hex digits of its SHA-256, never the key) and counted.
//! - Or a bearer token read from `token_file`, read again when the file
//!   changes (workload-identity tokens are rotated in place), checked at
//!   most once a second.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::config::Secret;

/// How long a key answered 429 without a `Retry-After` rests.
const DEFAULT_REST: Duration = Duration::from_secs(1);

/// How often a token file is looked at for a change.
const TOKEN_FILE_CHECK: Duration = Duration::from_secs(1);

/// The upstream's `retry-after-ms` or `retry-after` (seconds), if any.
/// (HTTP-date values are not used by LLM providers and are ignored.)
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(ms) = get("retry-after-ms").filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after")
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 86_400.0)
        .map(Duration::from_secs_f64)
}

/// Milliseconds since the first call: the clock rests are kept on.
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The id a key is logged and counted by: not the key, not reversible.
pub fn key_id(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("key-{hex}")
}

struct PoolKey {
    value: HeaderValue,
    id: String,
    /// Resting until this [`now_ms`] (0: not resting).
    rest_until: AtomicU64,
    /// Answered 401/403: out until reload.
    refused: AtomicBool,
}

/// Which credential a request goes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The provider has no credentials (e.g. a local server).
    Anonymous,
    /// Pool key `index`, sent as this header value.
    Key(usize, HeaderValue),
    /// Every key is resting after a 429: the soonest is back in this long.
    Resting(Duration),
    /// Every key was refused (401/403) since the last reload.
    Refused,
}

/// A provider's credentials (see the module's documentation).
pub struct Credentials {
    provider: String,
    header: HeaderName,
    /// `Bearer ` for an `Authorization` header, else empty.
    prefix: &'static str,
    keys: Vec<PoolKey>,
    next: AtomicUsize,
    file: Option<TokenFile>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("header", &self.header)
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .field("file", &self.file.as_ref().map(|f| &f.path))
            .finish()
    }
}

impl Credentials {
    /// The pool of `keys` (empty ones left out), sent as `header:
    /// {prefix}{key}`; with `token_file`, its token instead.
    pub fn new(
        provider: &str,
        header: HeaderName,
        prefix: &'static str,
        keys: impl IntoIterator<Item = Secret>,
        token_file: Option<&Path>,
    ) -> Result<Credentials, String> {
        let mut pool: Vec<PoolKey> = Vec::new();
        for key in keys.into_iter().filter(|k| !k.is_empty()) {
            let mut value =
                HeaderValue::try_from(format!("{prefix}{}", key.expose())).map_err(|_| {
                    format!("provider {provider}: an API key contains invalid characters")
                })?;
            value.set_sensitive(true);
            let id = key_id(key.expose());
            if pool.iter().any(|k| k.id == id) {
                return Err(format!("provider {provider}: API key {id} is listed twice"));
            }
            pool.push(PoolKey {
                value,
                id,
                rest_until: AtomicU64::new(0),
                refused: AtomicBool::new(false),
            });
        }
        let file = token_file
            .map(|p| TokenFile::open(provider, p, prefix))
            .transpose()?;
        Ok(Credentials {
            provider: provider.to_string(),
            header,
            prefix,
            keys: pool,
            next: AtomicUsize::new(0),
            file,
        })
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// How many keys the pool holds (a token file counts as none).
    pub fn pool_size(&self) -> usize {
        self.keys.len()
    }

    /// The id of pool key `index`.
    pub fn id(&self, index: usize) -> &str {
        self.keys.get(index).map_or("", |k| &k.id)
    }

    /// The index of the key with this id, if the pool holds it.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    /// The credential for the next request: the token file's, else the
    /// next pool key that may serve (round-robin).
    pub fn pick(&self) -> Pick {
        if let Some(file) = &self.file {
            return match file.current() {
                Some(v) => Pick::Key(0, v),
                None => Pick::Refused,
            };
        }
        if self.keys.is_empty() {
            return Pick::Anonymous;
        }
        let now = now_ms();
        let n = self.keys.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut soonest: Option<u64> = None;
        for i in 0..n {
            let index = (start + i) % n;
            let key = &self.keys[index];
            if key.refused.load(Ordering::Relaxed) {
                continue;
            }
            let until = key.rest_until.load(Ordering::Relaxed);
            if until <= now {
                return Pick::Key(index, key.value.clone());
            }
            soonest = Some(soonest.map_or(until, |s: u64| s.min(until)));
        }
        match soonest {
            Some(until) => Pick::Resting(Duration::from_millis(until - now)),
            None => Pick::Refused,
        }
    }

    /// Pool key `index`, whatever its rest: for a call that must reach the
    /// key that made what it refers to (a stored response).
    pub fn pinned(&self, index: usize) -> Option<HeaderValue> {
        self.keys.get(index).map(|k| k.value.clone())
    }

    /// What an answer says of the key it was sent with, in a pool of more
    /// than one: 429 rests it for its `Retry-After`, 401/403 until reload.
    /// Returns whether the key was rested (so another may be tried). A
    /// single key is never rested: there is no other to serve meanwhile,
    /// and the target's own cooldown (429) and error (401) handle it.
    pub fn answered(&self, index: usize, status: StatusCode, headers: &HeaderMap) -> bool {
        if self.keys.len() < 2 || self.file.is_some() {
            return false;
        }
        let Some(key) = self.keys.get(index) else {
            return false;
        };
        let reason = match status.as_u16() {
            429 => {
                let rest = retry_after(headers).unwrap_or(DEFAULT_REST);
                let until = now_ms().saturating_add(rest.as_millis() as u64);
                key.rest_until.fetch_max(until, Ordering::Relaxed);
                tracing::warn!(provider = %self.provider, key = %key.id, rest_ms = rest.as_millis() as u64, "API key rate-limited upstream: resting it");
                "rate_limited"
            }
            401 | 403 => {
                if key.refused.swap(true, Ordering::Relaxed) {
                    return true;
                }
                tracing::error!(provider = %self.provider, key = %key.id, status = status.as_u16(), "API key refused upstream: out of the pool until reload");
                "refused"
            }
            _ => return false,
        };
        crate::metrics::PROVIDER_KEY_RESTS
            .with([self.provider.clone(), key.id.clone(), reason.to_string()])
            .increment(1);
        true
    }

    /// `header: {prefix}` is how this pool sends its keys.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }
}

/// A bearer token kept in a file that is replaced when it is rotated.
struct TokenFile {
    path: PathBuf,
    prefix: &'static str,
    provider: String,
    state: Mutex<TokenState>,
}

struct TokenState {
    checked: Instant,
    modified: Option<SystemTime>,
    len: u64,
    value: Option<HeaderValue>,
}

impl TokenFile {
    fn open(provider: &str, path: &Path, prefix: &'static str) -> Result<TokenFile, String> {
        let (modified, len, value) = read_token(path, prefix)
            .map_err(|e| format!("provider {provider}: token_file {}: {e}", path.display()))?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            prefix,
            provider: provider.to_string(),
            state: Mutex::new(TokenState {
                checked: Instant::now(),
                modified,
                len,
                value: Some(value),
            }),
        })
    }

    /// The token, read again when the file's time or size changed (looked
    /// at no more than once a second). A file that cannot be read keeps
    /// the last token (logged).
    fn current(&self) -> Option<HeaderValue> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= TOKEN_FILE_CHECK {
            s.checked = Instant::now();
            let meta = std::fs::metadata(&self.path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.as_ref().map_or(0, |m| m.len());
            if meta.is_some() && (modified != s.modified || len != s.len) {
                match read_token(&self.path, self.prefix) {
                    Ok((modified, len, value)) => {
                        (s.modified, s.len, s.value) = (modified, len, Some(value));
                        tracing::info!(provider = %self.provider, "token_file changed: token read again");
                    }
                    Err(e) => {
                        tracing::warn!(provider = %self.provider, file = %self.path.display(), error = %e, "token_file unreadable: the last token is kept");
                    }
                }
            }
        }
        s.value.clone()
    }
}

/// The file's time, size and token (trimmed) as a header value.
fn read_token(path: &Path, prefix: &str) -> Result<(Option<SystemTime>, u64, HeaderValue), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the file is empty".into());
    }
    let mut value = HeaderValue::try_from(format!("{prefix}{token}"))
        .map_err(|_| "the token contains invalid characters".to_string())?;
    value.set_sensitive(true);
    Ok((meta.modified().ok(), meta.len(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(keys: &[&str]) -> Credentials {
        Credentials::new(
            "p",
            http::header::AUTHORIZATION,
            "Bearer ",
            keys.iter().map(|k| Secret::new(*k)),
            None,
        )
        .unwrap()
    }

    fn index(p: Pick) -> usize {
        match p {
            Pick::Key(i, _) => i,
            other => panic!("expected a key, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_spread_and_rest() {
        let p = pool(&["test-key-a", "test-key-b", "test-key-c"]);
        let picked: Vec<usize> = (0..6).map(|_| index(p.pick())).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("30"));
        assert!(p.answered(1, StatusCode::TOO_MANY_REQUESTS, &h));
        assert!(p.answered(2, StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        assert!(!p.answered(0, StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
        for _ in 0..5 {
            assert_eq!(index(p.pick()), 0);
        }
        assert!(p.answered(0, StatusCode::FORBIDDEN, &HeaderMap::new()));
        match p.pick() {
            Pick::Resting(d) => {
                assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
        assert!(p.answered(1, StatusCode::FORBIDDEN, &HeaderMap::new()));
        assert_eq!(p.pick(), Pick::Refused);
    }

    #[test]
    fn a_single_key_is_never_rested() {
        let p = pool(&["test-key-a"]);
        assert!(!p.answered(0, StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()));
        assert!(!p.answered(0, StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        assert_eq!(index(p.pick()), 0);
    }

    #[test]
    fn ids_name_keys_without_showing_them() {
        let p = pool(&["test-key-a", "", "test-key-b"]);
        assert_eq!(p.pool_size(), 2);
        let id = p.id(0);
        assert!(id.starts_with("key-") && id.len() == 12, "{id}");
        assert!(!id.contains("test"));
        assert_eq!(p.index_of(p.id(1)), Some(1));
        assert!(format!("{p:?}").contains(id));
        assert!(!format!("{p:?}").contains("test-key"));
        assert_eq!(pool(&[]).pick(), Pick::Anonymous);
        let twice = Credentials::new(
            "p",
            http::header::AUTHORIZATION,
            "",
            [Secret::new("k"), Secret::new("k")],
            None,
        );
        assert!(twice.unwrap_err().contains("twice"));
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("h3gate-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let c =
            Credentials::new("p", http::header::AUTHORIZATION, "Bearer ", [], Some(&path)).unwrap();
        assert_eq!(
            c.pick(),
            Pick::Key(0, HeaderValue::from_static("Bearer first-token"))
        );
        std::fs::write(&path, "second-token-longer").unwrap();
        // Looked at again after a second.
        c.file.as_ref().unwrap().state.lock().unwrap().checked -= TOKEN_FILE_CHECK;
        assert_eq!(
            c.pick(),
            Pick::Key(0, HeaderValue::from_static("Bearer second-token-longer"))
        );
        std::fs::remove_file(&path).unwrap();
        c.file.as_ref().unwrap().state.lock().unwrap().checked -= TOKEN_FILE_CHECK;
        assert_eq!(
            c.pick(),
            Pick::Key(0, HeaderValue::from_static("Bearer second-token-longer")),
            "a vanished file keeps the last token"
        );
        let missing = Credentials::new("p", http::header::AUTHORIZATION, "", [], Some(&path));
        assert!(missing.unwrap_err().contains("token_file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
