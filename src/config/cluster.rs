//! `[cluster]`: N replicas behaving as one gateway through a shared Redis
//! (or Valkey). Unset (`redis_url` empty), the gateway is one node with its
//! state in memory, as in the embedded default.

use serde::{Deserialize, Serialize};

use super::{Duration, Secret};

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT/DB`, `rediss://…` (TLS), or `unix:///PATH?db=N`.
    /// Empty: one node, no shared state.
    pub redis_url: String,
    /// The CA certificates (PEM) that verify Redis' certificate with
    /// `rediss://`, for a private CA; unset: the system's roots. Relative
    /// to the config file.
    pub ca_file: Option<std::path::PathBuf>,
    /// The Redis password (AUTH), e.g. `"${H3GATE_REDIS_PASSWORD}"`; empty =
    /// none, or the one in the URL.
    pub password: Secret,
    /// The replicas' shared secret, e.g. `"${H3GATE_CLUSTER_SECRET}"`: at
    /// least 32 bytes, as 64 hex digits or base64. The keys that must be the
    /// same on every replica are derived from it: the encryption of the
    /// session tickets stored in Redis, the QUIC stateless-reset key and the
    /// Retry/NEW_TOKEN token key. Required with `redis_url`; allowed without
    /// (shared QUIC keys for a CID-aware balancer without Redis).
    pub secret: Secret,
    /// Every Redis key the gateway writes starts with this. Default `h3gate:`.
    pub key_prefix: String,
    /// A Redis call that takes longer has failed. Default 50ms.
    pub timeout: Duration,
    /// When Redis cannot answer: `local` (default) serves with this
    /// replica's own limits (the limits multiply by the replica count
    /// meanwhile); `deny` refuses requests that need a rate-limit decision
    /// (503).
    pub on_redis_error: OnRedisError,
    /// How long a key's concurrency slot (a lease in Redis) outlives the
    /// replica holding it: live leases are renewed every third of it, so a
    /// crashed replica's slots are free again within it. Default 30s; at
    /// least 1s; the same on every replica.
    pub lease_ttl: Duration,
    /// This replica's server id in its QUIC connection IDs (QUIC-LB
    /// plaintext scheme), so a CID-aware load balancer routes a connection's
    /// packets to it. Unset (or `""`): random connection IDs. An integer, or
    /// a string holding one (`"${H3GATE_NODE_ID}"`, e.g. a StatefulSet
    /// pod's index). Unique per replica; fixed until the process restarts.
    #[serde(deserialize_with = "int_or_string")]
    pub node_id: Option<u64>,
    /// Bytes of `node_id` in a connection ID, 1 to 15. Default 2.
    pub server_id_len: u8,
    /// The QUIC-LB config rotation codepoint, 0 to 6. Default 0.
    pub config_rotation: u8,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            ca_file: None,
            password: Secret::default(),
            secret: Secret::default(),
            key_prefix: "h3gate:".into(),
            timeout: Duration::millis(50),
            on_redis_error: OnRedisError::Local,
            lease_ttl: Duration::secs(30),
            node_id: None,
            server_id_len: 2,
            config_rotation: 0,
        }
    }
}

impl ClusterConfig {
    /// Whether the replicas share state through Redis.
    pub fn is_shared(&self) -> bool {
        !self.redis_url.is_empty()
    }
}

/// An optional integer written as one or as a string of decimal digits
/// (what `${VAR}` expansion produces); an empty string is unset (what
/// `"${VAR:-}"` gives when VAR is not set).
fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(u64),
        Text(String),
    }
    match Option::<IntOrString>::deserialize(d)? {
        None => Ok(None),
        Some(IntOrString::Int(n)) => Ok(Some(n)),
        Some(IntOrString::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(IntOrString::Text(t)) => t.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("expected a non-negative integer, found {t:?}"))
        }),
    }
}

/// What the gateway does while Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// This replica's own in-memory state decides (fail open to local).
    #[default]
    Local,
    /// Refuse what needs a shared decision (503 `rate_limiter_unavailable`).
    Deny,
}

/// The shortest shared secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl ClusterConfig {
    /// The shared secret's bytes (64+ hex digits, or base64 of 32+ bytes);
    /// `Ok(None)` when none is set.
    pub fn secret_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        let text = self.secret.expose().trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bytes = decode_hex(text)
            .or_else(|| decode_base64(text))
            .ok_or("must be hex or base64")?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "must hold at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Some(bytes))
    }

    /// The largest node id `server_id_len` bytes hold.
    pub fn max_node_id(&self) -> u64 {
        match self.server_id_len {
            0 => 0,
            n if n >= 8 => u64::MAX,
            n => (1u64 << (8 * u32::from(n))) - 1,
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let c = match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        };
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(s: &str) -> ClusterConfig {
        ClusterConfig {
            secret: Secret::new(s),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn secrets_are_hex_or_base64_of_32_bytes_at_least() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(with_secret(&hex).secret_bytes().unwrap().unwrap()[31], 0xff);
        let b64 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(with_secret(b64).secret_bytes().unwrap().unwrap().len(), 32);
        assert!(with_secret("abcd").secret_bytes().is_err());
        assert!(with_secret("not a secret!").secret_bytes().is_err());
        assert_eq!(with_secret("").secret_bytes(), Ok(None));
    }

    #[test]
    fn node_ids_come_as_integers_or_expanded_strings() {
        let parse = |v: &str| toml::from_str::<ClusterConfig>(&format!("node_id = {v}"));
        assert_eq!(parse("7").unwrap().node_id, Some(7));
        assert_eq!(parse("\"12\"").unwrap().node_id, Some(12));
        let err = parse("\"h3gate-2\"").unwrap_err().to_string();
        assert!(err.contains("non-negative integer"), "{err}");
        assert!(parse("-1").is_err());
        assert_eq!(toml::from_str::<ClusterConfig>("").unwrap().node_id, None);
        assert_eq!(parse("\"\"").unwrap().node_id, None);
    }

    #[test]
    fn node_ids_fit_their_length() {
        let c = ClusterConfig::default();
        assert_eq!(c.max_node_id(), 0xffff);
    }
}
