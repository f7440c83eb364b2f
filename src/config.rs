//! Configuration: the TOML file a user writes, with documented defaults.
//!
//! [`Config::from_toml`] runs the two stages: decoding (`load.rs`) expands
//! `${VAR}` / `${VAR:-default}` and reports unknown keys and type errors with
//! their TOML path, then `validate.rs` checks the meaning; every problem
//! found by either is reported at once (`problem.rs`).

mod cluster;
mod load;
pub mod prices;
mod problem;
mod protection;
mod resilience;
mod spend;
mod trace;
mod types;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cluster::{ClusterConfig, OnRedisError};
pub(crate) use load::load_section;
pub use problem::{ConfigError, Problem};
pub use protection::{
    AbuseConfig, AuditConfig, AuthConfig, CorsConfig, NetworkConfig, RateLimitConfig,
};
pub use resilience::{
    AdmissionConfig, BreakerConfig, HealthCheckConfig, RetryConfig, Strategy, TargetConfig,
};
pub use spend::{PriceConfig, SpendConfig, TeamConfig};
pub use trace::{Resolved as TracingResolved, TracingConfig, TrustIncoming};
pub use types::{Addresses, ByteSize, Duration, Secret};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub quic: QuicConfig,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub retry: RetryConfig,
    pub admission: AdmissionConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub network: NetworkConfig,
    pub abuse: AbuseConfig,
    pub cors: CorsConfig,
    pub audit: AuditConfig,
    pub cluster: ClusterConfig,
    pub spend: SpendConfig,
    pub tracing: TracingConfig,
    pub providers: Vec<ProviderConfig>,
    pub routes: Vec<RouteConfig>,
    /// Prices in USD per million tokens, over the bundled table.
    pub prices: Vec<PriceConfig>,
    /// Teams and their budgets.
    pub teams: Vec<TeamConfig>,
}

/// `[server]`: the public listener (TCP for HTTP/1.1 + HTTP/2, UDP for HTTP/3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address, or list of addresses, for both TCP and UDP. Default both
    /// loopbacks, `["127.0.0.1:8443", "[::1]:8443"]` (browsers send QUIC for
    /// `localhost` to `::1`). An address whose family the host lacks (no
    /// IPv6) is logged and skipped while another one binds.
    pub listen: Addresses,
    /// How long in-flight requests may run after a shutdown signal. Default 30s.
    pub shutdown_timeout: Duration,
    /// Largest request body accepted, counted on the bytes received. Default 8MB.
    pub max_request_body: ByteSize,
    /// Add a `Server-Timing` header (gateway and upstream durations). Default false.
    pub server_timing: bool,
    /// Time allowed to receive a whole request body (408 after). Default 30s.
    pub request_timeout: Duration,
    /// On a shutdown signal, `/ready` answers 503 at once, but the public
    /// listeners keep accepting for this long before the drain (so a load
    /// balancer or Kubernetes stops sending new connections first); then
    /// `shutdown_timeout` applies. Give the process at least
    /// `drain_delay + shutdown_timeout` to stop. Default 0s.
    pub drain_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Addresses(vec![
                SocketAddr::from(([127, 0, 0, 1], 8443)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8443)),
            ]),
            shutdown_timeout: Duration::secs(30),
            max_request_body: ByteSize::mib(8),
            server_timing: false,
            request_timeout: Duration::secs(30),
            drain_delay: Duration::secs(0),
        }
    }
}

/// `[tls]`: the certificate served on both listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Relative paths are relative to the config file.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When the files do not exist, generate a development CA and certificate
    /// for `dev_hosts` (never use this in production). Default false.
    pub generate_dev_cert: bool,
    /// Host names the generated development certificate is valid for.
    pub dev_hosts: Vec<String>,
    /// More certificates, chosen by the client's SNI among the DNS names
    /// (wildcards included) each certificate holds; `cert` serves the rest.
    pub certificates: Vec<CertPair>,
}

/// `[[tls.certificates]]`: one more certificate chain and its key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::from("certs/cert.pem"),
            key: PathBuf::from("certs/key.pem"),
            generate_dev_cert: false,
            dev_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            certificates: Vec::new(),
        }
    }
}

/// Congestion controller for QUIC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    Cubic,
    Newreno,
    Bbr,
}

/// `[quic]`: the HTTP/3 endpoint and its transport tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuicConfig {
    /// Serve HTTP/3 on UDP. Default true.
    pub enabled: bool,
    /// Flow-control window per stream. Default 6MB.
    pub stream_receive_window: ByteSize,
    /// Flow-control window per connection (never unbounded). Default 15MB.
    pub receive_window: ByteSize,
    /// Data buffered for sending per connection. Default 15MB.
    pub send_window: ByteSize,
    /// Concurrent requests per connection. Default 100.
    pub max_concurrent_bidi_streams: u32,
    /// Concurrent unidirectional streams (HTTP/3 needs at least 3). Default 100.
    pub max_concurrent_uni_streams: u32,
    /// Close a connection idle this long. Default 30s.
    pub idle_timeout: Duration,
    /// Send keep-alive packets this often (unset: never).
    pub keep_alive_interval: Option<Duration>,
    /// UDP socket receive buffer. Default 8MB.
    pub udp_recv_buffer: ByteSize,
    /// UDP socket send buffer. Default 8MB.
    pub udp_send_buffer: ByteSize,
    /// Largest request header section accepted (HTTP/3 SETTINGS). Default 64KB.
    pub max_field_section_size: ByteSize,
    /// cubic | newreno | bbr. Default cubic.
    pub congestion: Congestion,
    /// Probe for a larger path MTU. Default true.
    pub mtu_discovery: bool,
    /// `ma=` of the Alt-Svc header advertising HTTP/3. Default 24h.
    pub alt_svc_max_age: Duration,
    /// QUIC Retry for unvalidated addresses: always | never | under_load
    /// (when more than `retry_threshold` handshakes are pending). Default under_load.
    pub address_validation: AddressValidation,
    /// Pending handshakes above which `under_load` sends Retry. Default 128.
    pub retry_threshold: u32,
    /// Handshakes in progress at once (quinn's `max_incoming`). Default 1024.
    pub max_incoming: u32,
    /// Bytes buffered per pending connection. Default 64KB.
    pub incoming_buffer: ByteSize,
    /// Open QUIC connections at once; beyond, refused. Default 10000.
    pub max_connections: u32,
    /// Open QUIC connections per source address. Default 64.
    pub max_connections_per_ip: u32,
    /// Time allowed for the QUIC/TLS handshake. Default 10s.
    pub handshake_timeout: Duration,
    /// Accept 0-RTT early data from resuming clients (replay-safe: see
    /// `early_unsafe`). Default true; false refuses early data entirely.
    pub zero_rtt: bool,
    /// Non-safe methods (POST…) received before the handshake completes:
    /// `wait` for it (a replay never completes it) or `reject` with 425. Default wait.
    pub early_unsafe: EarlyUnsafe,
    /// Largest body an early safe request may carry; beyond, it waits for the handshake. Default 16KB.
    pub max_early_data: ByteSize,
    /// Session tickets remembered for resumption (single use). Default 8192.
    pub session_cache_size: u32,
}

/// What to do with a non-idempotent request that arrived as early data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyUnsafe {
    Wait,
    Reject,
}

/// When the QUIC listener asks clients to prove their address (Retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressValidation {
    Always,
    Never,
    UnderLoad,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            enabled: true,
            stream_receive_window: ByteSize::mib(6),
            receive_window: ByteSize::mib(15),
            send_window: ByteSize::mib(15),
            max_concurrent_bidi_streams: 100,
            max_concurrent_uni_streams: 100,
            idle_timeout: Duration::secs(30),
            keep_alive_interval: None,
            udp_recv_buffer: ByteSize::mib(8),
            udp_send_buffer: ByteSize::mib(8),
            max_field_section_size: ByteSize::kib(64),
            congestion: Congestion::Cubic,
            mtu_discovery: true,
            alt_svc_max_age: Duration::secs(86_400),
            address_validation: AddressValidation::UnderLoad,
            retry_threshold: 128,
            max_incoming: 1024,
            incoming_buffer: ByteSize::kib(64),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            handshake_timeout: Duration::secs(10),
            zero_rtt: true,
            early_unsafe: EarlyUnsafe::Wait,
            max_early_data: ByteSize::kib(16),
            session_cache_size: 8192,
        }
    }
}

/// `[http]`: HTTP/1.1 and HTTP/2 over TLS on TCP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Largest request header section accepted. Default 64KB.
    pub max_header_bytes: ByteSize,
    /// Time allowed from accepting a connection to its first request's
    /// headers: the TLS handshake, the HTTP/1.1-or-HTTP/2 choice, an HTTP/2
    /// preface and SETTINGS. On HTTP/1.1 it also bounds the wait for each
    /// later request's headers. The same bound applies to HTTP/3: from a
    /// QUIC request stream's start to its whole header section (the QUIC
    /// handshake has its own `[quic] handshake_timeout`). Default 10s.
    pub header_read_timeout: Duration,
    /// Close a connection with no request in progress for this long: between
    /// requests on a kept-alive HTTP/1.1 connection (where
    /// `header_read_timeout` is the tighter bound when shorter), and an
    /// HTTP/2 connection with no open stream (GOAWAY). Default 60s.
    pub idle_timeout: Duration,
    /// Close a connection whose writes make no progress for this long (the
    /// client stopped reading and its TCP window is full); its requests end
    /// and their upstream requests are dropped. On HTTP/3 the same bound
    /// applies per stream: a response its client's flow control does not
    /// take for this long is reset. Default 30s.
    pub write_timeout: Duration,
    /// Send an HTTP/2 PING this often, and close the connection when one is
    /// not answered within the same time (finds dead peers, also while a
    /// stream waits for its first token). "0s" turns pings off. Default 30s.
    pub keep_alive_interval: Duration,
    /// Concurrent HTTP/2 streams per connection. Default 100.
    pub max_concurrent_streams: u32,
    /// HTTP/1.1 keep-alive. Default true.
    pub keep_alive: bool,
    /// Open TCP connections at once; beyond, new ones are closed right after
    /// accept, before any TLS work. Default 10000.
    pub max_connections: u32,
    /// Open TCP connections per client address, refused the same way.
    /// Default 256. Behind an L4 load balancer or NAT that hides client
    /// addresses every connection seems to come from the balancer's few
    /// addresses, so this becomes a cap on the balancer: raise it to
    /// `max_connections` there.
    pub max_connections_per_ip: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: ByteSize::kib(64),
            header_read_timeout: Duration::secs(10),
            idle_timeout: Duration::secs(60),
            write_timeout: Duration::secs(30),
            keep_alive_interval: Duration::secs(30),
            max_concurrent_streams: 100,
            keep_alive: true,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// `[admin]`: health, readiness and metrics on a separate (loopback) address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Serve the admin endpoints. Default true.
    pub enabled: bool,
    /// Address, or list of addresses. Default `127.0.0.1:9901`.
    pub listen: Addresses,
    /// Bearer token for `/metrics` (and admin actions). Required when
    /// `listen` is not a loopback address. Use `${H3GATE_ADMIN_TOKEN}`.
    pub token: Secret,
    /// Record and serve Prometheus metrics. Default true.
    pub metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: Addresses::one(SocketAddr::from(([127, 0, 0, 1], 9901))),
            token: Secret::default(),
            metrics: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[log]`: format and level (`RUST_LOG` overrides the level).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// human | json. Default json.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `h3gate=debug,info`. Default info.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI, or any OpenAI-compatible server (vLLM, Groq, LM Studio …) via `base_url`.
    Openai,
    /// Anthropic's Messages API (`x-api-key`, `anthropic-version`).
    Anthropic,
    /// Ollama through its OpenAI-compatible `/v1` (no key needed).
    Ollama,
    /// Built-in mock that answers like OpenAI or Anthropic, in-process.
    Mock,
    /// AWS Bedrock's Converse API (SigV4-signed; see `region`).
    Bedrock,
}

impl ProviderKind {
    /// The base URL used when the provider sets none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
            ProviderKind::Ollama => "http://127.0.0.1:11434/v1",
            // Bedrock's depends on the region (`provider::bedrock::base_url`).
            ProviderKind::Mock | ProviderKind::Bedrock => "",
        }
    }
}

/// `[[providers]]`: an upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL including the API version path. Default by kind:
    /// `https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `http://127.0.0.1:11434/v1` (ollama).
    pub base_url: String,
    /// Sent as `Authorization: Bearer` (Anthropic: `x-api-key`). Use `${OPENAI_API_KEY}`.
    pub api_key: Secret,
    /// Left out while `api_key` is empty (e.g. `"${ANTHROPIC_API_KEY:-}"`
    /// with the variable unset): routes skip it, and a route left without
    /// targets is dropped. For example configurations where only some
    /// provider keys are present. Default false (an empty key is sent as none).
    pub optional: bool,
    /// Extra headers sent with every request to this provider (values may
    /// hold secrets: they are never logged).
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// `anthropic-version` sent to Anthropic providers. Default `2023-06-01`.
    pub anthropic_version: String,
    /// `max_tokens` sent to an Anthropic provider when an OpenAI-style
    /// request sets none (Anthropic requires it). Default 4096.
    pub default_max_tokens: u32,
    /// Models this provider serves, listed by `/v1/models` for wildcard routes.
    pub models: Vec<String>,
    pub timeouts: ProviderTimeouts,
    /// Requests in flight to this provider at once; 0 = no cap. Default 0.
    pub max_concurrent: u32,
    pub breaker: BreakerConfig,
    /// Active health checks; off unless set.
    pub health_check: Option<HealthCheckConfig>,
    /// Behaviour of the built-in mock (kind = "mock" only).
    pub mock: MockConfig,
    /// Send the attempt's W3C `traceparent`/`tracestate` upstream (with
    /// `[tracing]` on), so the trace continues into the server. Default
    /// true, except for `openai` and `anthropic` at their public URLs.
    pub propagate_trace: Option<bool>,
    /// Bedrock: the region (else `AWS_REGION`, `AWS_DEFAULT_REGION`), and keys
    /// winning over `AWS_ACCESS_KEY_ID` … (those are read at every request).
    pub region: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Secret,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: String::new(),
            kind: ProviderKind::Openai,
            base_url: String::new(),
            api_key: Secret::default(),
            optional: false,
            headers: Default::default(),
            anthropic_version: "2023-06-01".into(),
            default_max_tokens: 4096,
            models: Vec::new(),
            timeouts: ProviderTimeouts::default(),
            max_concurrent: 0,
            breaker: BreakerConfig::default(),
            health_check: None,
            mock: MockConfig::default(),
            propagate_trace: None,
            region: String::new(),
            access_key_id: Secret::default(),
            secret_access_key: Secret::default(),
            session_token: Secret::default(),
        }
    }
}

impl ProviderConfig {
    /// Whether trace context goes to this provider (see `propagate_trace`).
    pub fn propagates_trace(&self) -> bool {
        let public = !matches!(self.kind, ProviderKind::Ollama | ProviderKind::Mock)
            && self.base_url.is_empty();
        self.propagate_trace.unwrap_or(!public)
    }

    /// `base_url`, or the kind's default when unset.
    pub fn base_url(&self) -> &str {
        if self.base_url.is_empty() {
            self.kind.default_base_url()
        } else {
            &self.base_url
        }
    }
}

/// `[providers.timeouts]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderTimeouts {
    /// TCP + TLS connect. Default 5s.
    pub connect: Duration,
    /// From sending the request to the response headers. Default 60s.
    pub first_byte: Duration,
    /// Longest silence between two chunks of a response body. Default 60s.
    pub idle: Duration,
    /// Whole exchange, streaming included. Default 10m.
    pub total: Duration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        ProviderTimeouts {
            connect: Duration::secs(5),
            first_byte: Duration::secs(60),
            idle: Duration::secs(60),
            total: Duration::secs(600),
        }
    }
}

/// `[providers.mock]`: how the built-in mock answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MockConfig {
    /// Delay before the first token (or the whole non-streaming answer). Default 0s.
    pub first_token_latency: Duration,
    /// Streaming speed after the first token; 0 = as fast as possible. Default 0.
    pub tokens_per_second: u32,
    /// Tokens in an answer when the request sets no `max_tokens`. Default 16.
    pub completion_tokens: u32,
    /// Speak Bedrock's Converse API (JSON and event stream). Default false.
    pub converse: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            first_token_latency: Duration::secs(0),
            tokens_per_second: 0,
            completion_tokens: 16,
            converse: false,
        }
    }
}

/// `[[routes]]`: a model name (exact, glob like `gpt-*`, or `*`) and its targets, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteConfig {
    pub model: String,
    /// Providers, optionally with an upstream model name and a weight.
    pub targets: Vec<TargetConfig>,
    pub strategy: Strategy,
    /// While a streaming request waits for its first byte, send `: ping`
    /// SSE comments this often (this commits the 200 status). Off unless set.
    pub stream_keepalive: Option<Duration>,
    /// When a request is translated to another provider family, drop the
    /// parameters that family lacks instead of answering 400. Default false.
    pub drop_unsupported_params: bool,
}

/// The fuzz target's property, here so tests run it too: any text either
/// loads or is refused with at least one problem, and never panics.
#[doc(hidden)]
pub fn fuzz_check(text: &str) {
    match Config::from_toml(text, std::path::Path::new("/nonexistent"), &|_| None) {
        Ok(c) => {
            let _ = c.to_redacted_toml();
        }
        Err(e) => assert!(!e.problems().is_empty()),
    }
}

impl Config {
    /// Reads, expands, decodes and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = load::read(path)?;
        let base = path.parent().unwrap_or_else(|| std::path::Path::new("."));
        Config::from_toml(&text, base, &|k| std::env::var(k).ok())
    }

    /// Decodes and validates configuration text. Relative paths are resolved
    /// against `base_dir`; `${VAR}` is looked up with `env`.
    pub fn from_toml(
        text: &str,
        base_dir: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (config, mut problems) = load::decode_text(text, base_dir, env)?;
        problems.extend(validate::validate(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
