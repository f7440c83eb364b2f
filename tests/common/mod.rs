//! The whole gateway in-process on port 0 (TCP, UDP and admin), in front of
//! the test upstream, with a freshly generated development CA.
#![allow(dead_code, unused_imports)]

pub mod bedrock;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod keys;
pub mod otlp;
pub mod python;
pub mod raw_tls;
pub mod relay;
pub mod spend;
pub mod sse;
pub mod tools;
pub mod upstream;
pub mod wait;

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use h3gate::config::Config;
use h3gate::server::{self, Listeners, StartError};

pub use client::{Client, Proto, TestBody};
pub use upstream::Upstream;
pub use wait::wait_until;

/// A fake credential for the upstream; the tests check it never leaks.
pub const UPSTREAM_KEY: &str = "test-upstream-credential-0000";
/// The admin token of every test gateway (fake).
pub const ADMIN_TOKEN: &str = "test-admin-token-not-real-0123";

pub struct Gateway {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub admin: SocketAddr,
    pub ca: Vec<u8>,
    pub upstream: Upstream,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), StartError>>>,
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The test configuration; the `{…}` placeholders are filled in.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "10s"
max_request_body = "64KB"

[tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"

[log]
format = "human"

[admin]
token = "{admin_token}"

[auth]
required = false
keys_file = "{dir}/keys.json"

[rate_limit]
per_ip_rpm = 0

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream}"
api_key = "{key}"
models = ["gpt-4o-mini"]
headers = { "x-extra-header" = "test-extra" }

[[providers]]
name = "slowprov"
kind = "openai"
base_url = "{upstream}"
timeouts = { first_byte = "300ms" }

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://{dead}/v1"
timeouts = { connect = "1s" }

[[providers]]
name = "mock"
kind = "mock"
models = ["mock-1"]

[[providers]]
name = "local"
kind = "ollama"
base_url = "{upstream}"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{upstream}"
api_key = "{key}"
default_max_tokens = 333

[[routes]]
model = "gpt-*"
targets = ["up"]

[[routes]]
model = "status-*"
targets = ["up"]

[[routes]]
model = "gated"
targets = ["up"]

[[routes]]
model = "endless"
targets = ["up"]

[[routes]]
model = "drop-mid-stream"
targets = ["up"]

[[routes]]
model = "slow"
targets = ["slowprov"]

[[routes]]
model = "dead"
targets = ["dead"]

[[routes]]
model = "failover"
targets = ["dead", "up"]

[[routes]]
model = "mock-*"
targets = ["mock"]

[[routes]]
model = "reloadme"
targets = ["up"]

[[routes]]
model = "llama*"
targets = ["local"]

[[routes]]
model = "claude-status-529"
targets = [{ provider = "claude", model = "status-529" }]

[[routes]]
model = "claude-*"
targets = ["claude"]

[[routes]]
model = "cross-family"
targets = [{ provider = "claude", model = "status-529" }, { provider = "up", model = "gpt-4o-mini" }]

[[routes]]
model = "lenient-*"
targets = ["claude"]
drop_unsupported_params = true
"#;

/// The value of one series (`name{labels}` as printed) in a Prometheus
/// text exposition; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn init_logs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// An address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Gateway {
    pub async fn start() -> Gateway {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test configuration, changed by `tweak` first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Gateway {
        init_logs();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let dev =
            h3gate::tls::generate_dev_cert(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        dev.write(
            dir.path(),
            &dir.path().join("cert.pem"),
            &dir.path().join("key.pem"),
        )
        .unwrap();
        let text = CONFIG
            .replace("{upstream}", &upstream.base_url())
            .replace("{dead}", &dead_addr().to_string())
            .replace("{dir}", &dir.path().display().to_string())
            .replace("{key}", UPSTREAM_KEY)
            .replace("{admin_token}", ADMIN_TOKEN);
        std::fs::write(dir.path().join("keys.json"), "").unwrap();
        let config_path = dir.path().join("h3gate.toml");
        std::fs::write(&config_path, text).unwrap();
        let mut config = Config::load(&config_path).expect("test config is valid");
        tweak(&mut config);

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tcp_addr, udp_addr, admin_addr) = (
            tcp.local_addr().unwrap(),
            udp.local_addr().unwrap(),
            admin.local_addr().unwrap(),
        );
        let listeners = Listeners::single(tcp, Some(udp), Some(admin));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::run(
            config,
            listeners,
            stop.clone(),
            Some(config_path.clone()),
        ));
        Gateway {
            tcp: tcp_addr,
            udp: udp_addr,
            admin: admin_addr,
            ca: dev.ca_pem.into_bytes(),
            upstream,
            stop,
            task: Some(task),
            config_path,
            _dir: dir,
        }
    }

    /// The test gateway with `extra` appended to its configuration file and
    /// reloaded (so new settings are read from the file, as a user writes
    /// them). `{p}` in it becomes the protocol's name (metrics are per
    /// process: each protocol's case names its own providers), `{upstream}`
    /// the test upstream's base URL and `{addr}` its address.
    pub async fn with_config(p: Proto, extra: &str) -> Gateway {
        let gw = Gateway::start().await;
        let extra = extra
            .replace("{p}", &p.tag())
            .replace("{upstream}", &gw.upstream.base_url())
            .replace("{addr}", &gw.upstream.addr.to_string());
        gw.edit_config(|t| t + &extra);
        let (status, body) = gw.reload().await;
        assert_eq!(status, 200, "reload: {body}");
        gw
    }

    pub async fn client(&self, proto: Proto) -> Client {
        Client::connect(proto, self.tcp, self.udp, &self.ca).await
    }

    /// Edits the configuration file in place.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(text)).unwrap();
    }

    /// `POST /admin/reload`: the status and JSON answer.
    pub async fn reload(&self) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/admin/reload", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
        )
    }

    /// `GET /metrics` with `token` as the bearer (none: no `Authorization`):
    /// the status and the body.
    pub async fn scrape(&self, token: Option<&str>) -> (u16, String) {
        let mut req = reqwest::Client::new().get(format!("http://{}/metrics", self.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The `/metrics` exposition (with the admin token).
    pub async fn metrics_text(&self) -> String {
        let (status, text) = self.scrape(Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }

    /// The value of the series written exactly `series` (name and labels),
    /// 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text().await, series)
    }

    /// `GET /ready` on the admin listener: the status and the JSON body.
    pub async fn ready(&self) -> (u16, serde_json::Value) {
        let resp = reqwest::get(format!("http://{}/ready", self.admin))
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Starts the graceful drain (like SIGTERM).
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits for the gateway to finish its drain (bounded).
    pub async fn stopped(&mut self) -> Result<(), StartError> {
        let task = self.task.take().expect("already stopped");
        tokio::time::timeout(std::time::Duration::from_secs(20), task)
            .await
            .expect("gateway did not stop within 20 s")
            .expect("gateway task panicked")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A chat request body.
/// Arms the mock provider's test-only panic (for checking containment) and
/// returns the model name that triggers it. Process-wide, but harmless to
/// other tests: only a request for that reserved model panics.
pub fn armed_panic_model() -> &'static str {
    use h3gate::provider::mock;
    mock::PANIC_SWITCH.store(true, std::sync::atomic::Ordering::Relaxed);
    mock::PANIC_MODEL
}

pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "max_tokens": 5,
    })
}

/// Generates one `#[tokio::test]` per protocol for each case `fn(Proto)`.
#[macro_export]
macro_rules! over_every_protocol {
    ($($case:ident),* $(,)?) => {
        mod h3 { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case($crate::common::Proto::H3).await } )* }
        mod h2 { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case($crate::common::Proto::H2).await } )* }
        mod http1 { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case($crate::common::Proto::H1).await } )* }
    };
}

/// A log writer into a shared buffer, for tests that read the gateway's
/// log lines (`tracing_subscriber`'s `with_writer`).
pub struct SharedWriter(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
