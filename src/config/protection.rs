//! Configuration of edge protection: client keys, rate limits, network
//! filters, CORS and the audit log. Secure by default: auth is required
//! unless the file says otherwise.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Duration;

/// `[auth]`: client API keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Refuse requests without a valid key. Default true; running open must
    /// be said explicitly (`required = false`).
    pub required: bool,
    /// The keys file `h3gate keys` writes (hashes and metadata only). Relative
    /// paths are relative to the config file. Required when `required`.
    pub keys_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: true,
            keys_file: None,
        }
    }
}

/// `[rate_limit]`: token buckets per client address and the defaults for
/// keys that set no limits of their own (all decided together, after
/// authentication). Shared by the replicas with `[cluster]`, whose
/// `on_redis_error` says what happens while Redis cannot answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Requests per minute per client address; 0 = no limit. Default 600.
    pub per_ip_rpm: u32,
    /// Burst above the steady rate per address. Default 60.
    pub per_ip_burst: u32,
    /// Requests per minute for keys without their own `rpm`; 0 = none. Default 0.
    pub key_rpm: u32,
    /// Tokens per minute for keys without their own `tpm`; 0 = none. Default 0.
    pub key_tpm: u32,
    /// Estimated completion tokens when a request sets no `max_tokens`. Default 256.
    pub default_max_tokens: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_ip_rpm: 600,
            per_ip_burst: 60,
            key_rpm: 0,
            key_tpm: 0,
            default_max_tokens: 256,
        }
    }
}

/// `[network]`: address filters for the public listener. The client address
/// is the socket peer; `X-Forwarded-For` counts only from `trusted_proxies`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkConfig {
    /// When not empty, only these networks may connect.
    pub allow: Vec<IpNet>,
    /// Never these networks.
    pub deny: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Accepted `Host`/`:authority` names (port ignored); empty = any. Others get 421.
    pub hosts: Vec<String>,
    /// Address filters for the admin listener.
    pub admin_allow: Vec<IpNet>,
    pub admin_deny: Vec<IpNet>,
}

/// `[abuse]`: temporary deny of addresses that fail authentication or send
/// malformed requests too often.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AbuseConfig {
    pub enabled: bool,
    /// Failures from one address within `window` that trigger a deny. Default 20.
    pub max_failures: u32,
    /// Default 1m.
    pub window: Duration,
    /// How long the deny lasts. Default 15m.
    pub deny_for: Duration,
    /// Where denies persist across restarts (atomic writes). Unset: memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            enabled: true,
            max_failures: 20,
            window: Duration::secs(60),
            deny_for: Duration::secs(900),
            state_file: None,
        }
    }
}

/// `[cors]`: browser access. Empty `allowed_origins` = same-origin only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Exact origins like `https://app.example.com`, or `*` (never with credentials).
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    /// Preflight cache. Default 10m.
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            allowed_methods: vec!["GET".into(), "POST".into(), "OPTIONS".into()],
            allowed_headers: vec![
                "authorization".into(),
                "content-type".into(),
                "x-api-key".into(),
                "x-request-id".into(),
                "anthropic-version".into(),
            ],
            max_age: Duration::secs(600),
        }
    }
}

/// `[audit]`: security events as JSON lines (file mode 0600). Off unless `file` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    pub file: Option<PathBuf>,
}
