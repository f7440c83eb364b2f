//! The cluster: replicas sharing their state through one Redis (or Valkey).
//!
//! [`Cluster`] is the one connection every shared part uses — the rate
//! limiter, keys, abuse denies, 0-RTT tickets. Each call is bounded by
//! `[cluster] timeout` and timed (`h3gate_cluster_redis_seconds`). A call
//! that fails marks the cluster down: until a probe (a `PING` every 250 ms)
//! answers again, calls fail at once, so a Redis outage costs the request
//! path nothing and each caller applies `[cluster] on_redis_error`. The
//! connection itself (redis' `ConnectionManager`) reconnects on its own.
//!
//! One `Cluster` lives for the process: a reload keeps it unless
//! `[cluster]` changed (see `State::inherit`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo};

use crate::config::{ClusterConfig, OnRedisError};
use crate::shutdown::Shutdown;

pub mod secret;
pub mod sync;
pub mod tickets;

pub use secret::ClusterSecret;

/// How often a down cluster is probed, and an up one checked.
const PROBE_DOWN: Duration = Duration::from_millis(250);
const PROBE_UP: Duration = Duration::from_secs(1);

/// The bound of [`Cluster::call_background`]: twenty request-path
/// timeouts, at least 1 s.
pub fn background_timeout(timeout: Duration) -> Duration {
    (timeout * 20).max(Duration::from_secs(1))
}

/// Redis could not answer: unreachable, too slow, or an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis ({op}): {message}")]
pub struct ClusterError {
    pub op: &'static str,
    pub message: String,
}

/// The shared Redis, as every shared part sees it.
pub struct Cluster {
    config: ClusterConfig,
    client: redis::Client,
    conn: ConnectionManager,
    secret: ClusterSecret,
    up: AtomicBool,
    /// The probe runs (started once, not again by a reload keeping it).
    started: AtomicBool,
    /// Changes once, at the first successful probe (see [`Cluster::ready`]).
    probed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster of `cfg`, or `None` without `redis_url`. Connects lazily
    /// (a replica starts, degraded, while Redis is down); must run inside
    /// the tokio runtime.
    pub fn connect(cfg: &ClusterConfig) -> Result<Option<Arc<Cluster>>, String> {
        if !cfg.is_shared() {
            return Ok(None);
        }
        let secret = cfg
            .secret_bytes()?
            .map(|b| ClusterSecret::new(&b))
            .ok_or("cluster.secret is required with redis_url")?;
        let url = cfg.redis_url.replacen("valkey://", "redis://", 1).replacen(
            "valkeys://",
            "rediss://",
            1,
        );
        let mut info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        if !cfg.password.is_empty() {
            let redis = info
                .redis_settings()
                .clone()
                .set_password(cfg.password.expose());
            info = info.set_redis_settings(redis);
        }
        let client = match &cfg.ca_file {
            // A private CA for rediss:// (else the system's roots).
            Some(path) => {
                let root = std::fs::read(path)
                    .map_err(|e| format!("cluster.ca_file {}: {e}", path.display()))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(info, certs)
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("cluster.redis_url: {e}"))?;
        let timeout = cfg.timeout.get();
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(background_timeout(timeout)))
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        Ok(Some(Arc::new(Cluster {
            config: cfg.clone(),
            client,
            conn,
            secret,
            up: AtomicBool::new(false),
            started: AtomicBool::new(false),
            probed: tokio::sync::watch::channel(false).0,
        })))
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// What to do while Redis cannot answer.
    pub fn policy(&self) -> OnRedisError {
        self.config.on_redis_error
    }

    /// The shared secret's derived keys.
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// A Redis key: the configured prefix, then `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.key_prefix)
    }

    /// For a dedicated connection (a subscriber or a blocking read): the
    /// shared one must never wait on the server.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether the last call (or probe) reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Waits (at most `within`) for the first probe to reach Redis; whether
    /// it did. For start-up and tests: requests never wait for it.
    pub async fn ready(&self, within: Duration) -> bool {
        let mut rx = self.probed.subscribe();
        tokio::time::timeout(within, rx.wait_for(|p| *p))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            crate::metrics::CLUSTER_UP
                .get()
                .set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!("cluster: redis reachable, shared state in use");
            } else {
                tracing::warn!(policy = ?self.policy(), "cluster: redis unreachable; the failure policy applies until it answers");
            }
        }
        if up {
            self.probed.send_replace(true);
        }
    }

    /// Runs `cmd` (a command, a pipeline or a script invocation: anything
    /// [`Call`]) within the timeout. Fails at once while the cluster is down.
    pub async fn call<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: impl Call<T>,
    ) -> Result<T, ClusterError> {
        self.up_or_fail(op)?;
        self.call_now(op, cmd).await
    }

    /// [`Cluster::call`] even while down (the probe, and writes that must
    /// try anyway).
    pub async fn call_now<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: impl Call<T>,
    ) -> Result<T, ClusterError> {
        self.run(op, cmd, self.config.timeout.get(), true).await
    }

    /// For work off the request path (pulling a shared set, writing
    /// tickets, admin changes): a longer bound, [`background_timeout`], and
    /// a slow answer does not mark the cluster down — only a broken
    /// connection does — so a large pull never tips the request path into
    /// the failure policy. Fails at once while the cluster is down.
    pub async fn call_background<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: impl Call<T>,
    ) -> Result<T, ClusterError> {
        self.up_or_fail(op)?;
        let limit = background_timeout(self.config.timeout.get());
        self.run(op, cmd, limit, false).await
    }

    fn up_or_fail(&self, op: &'static str) -> Result<(), ClusterError> {
        if self.is_up() {
            return Ok(());
        }
        crate::metrics::CLUSTER_ERRORS.with([op]).increment(1);
        Err(ClusterError {
            op,
            message: "redis is down (waiting for a probe to answer)".into(),
        })
    }

    async fn run<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: impl Call<T>,
        limit: Duration,
        slow_is_down: bool,
    ) -> Result<T, ClusterError> {
        let start = Instant::now();
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(limit, cmd.run(&mut conn)).await;
        let err = |message: String| {
            crate::metrics::CLUSTER_ERRORS.with([op]).increment(1);
            ClusterError { op, message }
        };
        match answer {
            Ok(Ok(v)) => {
                crate::metrics::CLUSTER_CALL
                    .with([op])
                    .record(start.elapsed().as_secs_f64());
                self.set_up(true);
                Ok(v)
            }
            Ok(Err(e)) if is_reply_error(&e) => Err(err(e.to_string())),
            Ok(Err(e)) => {
                if !e.is_timeout() || slow_is_down {
                    self.set_up(false);
                }
                Err(err(e.to_string()))
            }
            Err(_) => {
                if slow_is_down {
                    self.set_up(false);
                }
                Err(err(format!("no answer within {limit:?}")))
            }
        }
    }

    /// Probes Redis until the process exits: often while down, rarely
    /// while up (a call that fails marks it down sooner). Once: a reload
    /// that keeps this cluster keeps its probe (and its gauge).
    pub fn start(self: &Arc<Self>, shutdown: &Shutdown) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        crate::metrics::CLUSTER_UP
            .get()
            .set(if self.is_up() { 1.0 } else { 0.0 });
        let me = Arc::downgrade(self);
        let sd = shutdown.clone();
        shutdown.spawn_until_exit(async move {
            loop {
                let Some(c) = me.upgrade() else { return };
                let _ = c.call_now::<String>("ping", redis::cmd("PING")).await;
                let wait = if c.is_up() { PROBE_UP } else { PROBE_DOWN };
                drop(c);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = sd.exiting() => return,
                }
            }
        });
    }
}

/// An error the server answered (a script's, a wrong type): Redis is up.
fn is_reply_error(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

/// What [`Cluster::call`] can run: a command, a pipeline, a script.
pub trait Call<T> {
    fn run(
        self,
        conn: &mut ConnectionManager,
    ) -> impl std::future::Future<Output = redis::RedisResult<T>> + Send;
}

impl<T: FromRedisValue + Send> Call<T> for redis::Cmd {
    async fn run(self, conn: &mut ConnectionManager) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

impl<T: FromRedisValue + Send> Call<T> for &redis::Pipeline {
    async fn run(self, conn: &mut ConnectionManager) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

impl<T: FromRedisValue + Send> Call<T> for redis::ScriptInvocation<'_> {
    async fn run(self, conn: &mut ConnectionManager) -> redis::RedisResult<T> {
        self.invoke_async(conn).await
    }
}
