//! A cluster for the tests: a real Redis (Debian's `redis-server`, started
//! here on a unix socket in a temp dir, no persistence) and gateway
//! replicas as separate processes of the built binary (the metrics recorder
//! is process-wide: in-process replicas would merge their metrics).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{Client, Proto};
use super::tools::require_tool;
use super::{ADMIN_TOKEN, UPSTREAM_KEY};

pub const REDIS_INSTALL: &str = "apt-get install -y redis-server";

/// The cluster secret of the tests (not a real one: a fixed test pattern).
pub const TEST_SECRET: &str = "7465737420736563726574206e6f74207265616c20303132333435363738393a";

/// A Redis server of the test's own, on a unix socket.
pub struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// With TLS: the server's extra arguments and its TLS port.
    tls: Option<(Vec<std::ffi::OsString>, u16)>,
}

impl Redis {
    /// Starts `redis-server` (fails with its install line when missing) and
    /// waits until it answers.
    pub fn start() -> Redis {
        let mut r = Redis {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
        };
        r.start_again();
        r
    }

    /// Also serves TLS on 127.0.0.1 with `cert`/`key` (PEM), besides the
    /// unix socket the test itself uses. Bind and retry: a random port is
    /// tried until redis-server binds it (never "find a free port, then
    /// start").
    pub fn start_tls(cert: &Path, key: &Path) -> Redis {
        let mut r = Redis {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
        };
        for _ in 0..20 {
            let port = fastrand::u16(20_000..60_000);
            let args = [
                "--tls-port".into(),
                port.to_string().into(),
                "--tls-cert-file".into(),
                cert.into(),
                "--tls-key-file".into(),
                key.into(),
                "--tls-auth-clients".into(),
                "no".into(),
            ];
            r.tls = Some((args.to_vec(), port));
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server could not bind a TLS port in 20 tries");
    }

    /// `rediss://127.0.0.1:PORT/0`, with [`Redis::start_tls`].
    pub fn tls_url(&self) -> String {
        let (_, port) = self.tls.as_ref().expect("started with TLS");
        format!("rediss://127.0.0.1:{port}/0")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `unix:///…/redis.sock`: what `[cluster] redis_url` gets.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// (Re)starts the server on the same socket, empty (no persistence).
    pub fn start_again(&mut self) {
        assert!(self.spawn(), "redis-server exited at start");
    }

    /// Starts the server; false when it exited at once (its TLS port was
    /// taken), true once it answers.
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "redis is running");
        let bin = require_tool("redis-server", REDIS_INSTALL);
        let tls_args = self
            .tls
            .as_ref()
            .map(|(a, _)| a.clone())
            .unwrap_or_default();
        let child = Command::new(bin)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(self.dir.path())
            .args(tls_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_err() {
            if let Ok(Some(_)) = self.child.as_mut().map_or(Ok(None), |c| c.try_wait()) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Kills the server (SIGKILL: what a crash looks like).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Stops the server without killing it (SIGSTOP: a Redis that is slow,
    /// not dead — its socket still accepts, nothing answers).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT): it runs what queued meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let kill = require_tool("kill", "apt-get install -y procps");
        let ok = Command::new(kill)
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    fn ping(&self) -> redis::RedisResult<String> {
        let mut c = redis::Client::open(self.url())?.get_connection()?;
        redis::cmd("PING").query(&mut c)
    }

    /// A synchronous connection for the test to look at the stored state.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One gateway process.
pub struct Replica {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    child: Child,
    log: PathBuf,
}

/// The configuration of a test replica: `{…}` placeholders filled by
/// [`Replica::spawn`]; `extra` is appended (more sections, or providers).
pub const REPLICA_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "5s"

[tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"

[quic]
zero_rtt = true

[log]
format = "json"
level = "info,h3gate=debug"

[admin]
listen = "127.0.0.1:0"
token = "{admin_token}"

[auth]
required = true
keys_file = "{keys_file}"

[rate_limit]
per_ip_rpm = 0

[cluster]
redis_url = "{redis_url}"
secret = "{secret}"
node_id = {node_id}

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream}"
api_key = "{upstream_key}"
models = ["gpt-4o-mini"]

[[providers]]
name = "mock"
kind = "mock"
models = ["mock-1"]

[[routes]]
model = "gpt-*"
targets = ["up"]

[[routes]]
model = "mock-*"
targets = ["mock"]
"#;

/// What a replica is started with.
pub struct ReplicaSpec<'a> {
    /// The shared directory: `cert.pem`/`key.pem`/`ca.pem` (see [`dev_cert`]).
    pub dir: &'a Path,
    pub redis_url: &'a str,
    pub node_id: u64,
    pub upstream: &'a str,
    /// Appended to the configuration (it may override nothing above:
    /// TOML refuses a section twice, so tests add what the base lacks).
    pub extra: &'a str,
    /// Replaces text of the base configuration, `(from, to)`.
    pub replace: &'a [(&'a str, &'a str)],
}

/// Writes the dev certificate the replicas share into `dir`; the CA PEM.
pub fn dev_cert(dir: &Path) -> Vec<u8> {
    let dev = h3gate::tls::generate_dev_cert(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    dev.write(dir, &dir.join("cert.pem"), &dir.join("key.pem"))
        .unwrap();
    dev.ca_pem.into_bytes()
}

impl Replica {
    /// Starts `h3gate serve` with `spec` and waits until its three
    /// listeners are up (their ports, bound to 0, read from its log).
    pub fn spawn(spec: &ReplicaSpec<'_>) -> Replica {
        super::init_logs();
        let name = format!("replica-{}", spec.node_id);
        let keys_file = spec.dir.join(format!("{name}-keys.json"));
        if !keys_file.exists() {
            std::fs::write(&keys_file, "").unwrap();
        }
        let mut text = REPLICA_CONFIG
            .replace("{dir}", &spec.dir.display().to_string())
            .replace("{keys_file}", &keys_file.display().to_string())
            .replace("{redis_url}", spec.redis_url)
            .replace("{secret}", TEST_SECRET)
            .replace("{node_id}", &spec.node_id.to_string())
            .replace("{upstream}", spec.upstream)
            .replace("{upstream_key}", UPSTREAM_KEY)
            .replace("{admin_token}", ADMIN_TOKEN);
        for (from, to) in spec.replace {
            assert!(text.contains(from), "the replica config has no `{from}`");
            text = text.replace(from, to);
        }
        text.push_str(spec.extra);
        let config_path = spec.dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, text).unwrap();
        let log = spec.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_h3gate"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("h3gate starts");
        let mut r = Replica {
            tcp: dead(),
            udp: dead(),
            admin: dead(),
            config_path,
            child,
            log,
        };
        r.wait_listening();
        r
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let find = |what: &str| {
                text.lines()
                    .filter(|l| l.contains(what))
                    .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .and_then(|v| v["addr"].as_str()?.parse().ok())
            };
            if let (Some(t), Some(u), Some(a)) = (
                find("HTTPS listening"),
                find("HTTP/3 listening"),
                find("admin listening"),
            ) {
                (self.tcp, self.udp, self.admin) = (t, u, a);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the replica exited ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self, proto: Proto, ca: &[u8]) -> Client {
        Client::connect(proto, self.tcp, self.udp, ca).await
    }

    /// The replica's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> String {
        self.admin_request(reqwest::Method::GET, "/metrics", None)
            .await
            .1
    }

    /// The value of one series (`name{labels}` as printed), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric_value(&self.metrics().await, series)
    }

    /// An admin request with the token: (status, body).
    pub async fn admin_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let mut req = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("admin listener answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// An admin request with the token and a raw JSON `body` (which may be
    /// anything: hostile input), as the listener answered it.
    pub async fn admin_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
    }

    /// `GET /ready`: (status, body).
    pub async fn ready(&self) -> (u16, serde_json::Value) {
        let (s, b) = self
            .admin_request(reqwest::Method::GET, "/ready", None)
            .await;
        (s, serde_json::from_str(&b).unwrap_or_default())
    }
}

fn dead() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
