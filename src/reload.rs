//! Hot reload: re-read the configuration file, check it completely (config,
//! certificate, runtime state), and only then swap the new state in. New
//! requests and connections use it; in-flight ones finish on the old one; no
//! listener closes. `h3gate check` runs the same [`prepare`], so it gives the
//! same verdict a reload would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, ConfigError, Problem};
use crate::listener::quic;
use crate::metrics;
use crate::shutdown::Shutdown;
use crate::state::SharedState;
use crate::state::{BuildError, State};
use crate::tls::{self, CertStore, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    State(#[from] BuildError),
    #[error(transparent)]
    Quic(#[from] quic::QuicSetupError),
}

impl ReloadError {
    /// Every problem, each with its TOML path where it has one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ReloadError::Config(e) if !e.problems().is_empty() => e.problems().to_vec(),
            other => vec![Problem {
                path: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

/// A configuration that passed every check, ready to be swapped in.
pub struct Candidate {
    pub state: State,
    /// `None` when the development certificate is still to be generated.
    pub cert: Option<tls::CertSet>,
}

/// Loads and checks everything a configuration file implies. `generate`
/// allows creating the development certificate (serving); `check` does not
/// write files.
pub fn prepare(path: &Path, generate: bool) -> Result<Candidate, ReloadError> {
    let config = Config::load(path)?;
    let pending_dev_cert =
        config.tls.generate_dev_cert && !config.tls.cert.exists() && !config.tls.key.exists();
    let cert = if pending_dev_cert && !generate {
        None
    } else {
        Some(tls::load_certs(&config.tls)?)
    };
    if config.quic.enabled {
        // The transport parameters must be acceptable to quinn.
        quic::transport_config(&config.quic)?;
    }
    let state = State::build(config)?;
    Ok(Candidate { state, cert })
}

/// What a successful reload did.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    /// Changed settings that only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// Applies reloads to a running gateway, one at a time.
pub struct Reloader {
    path: PathBuf,
    state: SharedState,
    certs: Arc<CertStore>,
    endpoints: quic::Endpoints,
    shutdown: Shutdown,
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        state: SharedState,
        certs: Arc<CertStore>,
        endpoints: quic::Endpoints,
        shutdown: Shutdown,
    ) -> Self {
        Reloader {
            path,
            state,
            certs,
            endpoints,
            shutdown,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the file and swaps in the result, or keeps the running
    /// configuration and says why. Logged and counted either way.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let before = self.state.load_full();
        let path = self.path.clone();
        let candidate = tokio::task::spawn_blocking(move || prepare(&path, true))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let result = candidate.and_then(|c| self.apply(c));
        let problems: Vec<String> = match &result {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        };
        // Recorded in the audit log of the configuration that was running.
        before.audit().record(crate::audit::Entry {
            action: "config_reload",
            actor: "operator",
            result: if result.is_ok() { "ok" } else { "rejected" },
            request_id: None,
            client_ip: None,
            key_id: None,
            details: serde_json::json!({"problems": problems}),
        });
        match &result {
            Ok(report) => {
                metrics::config_reload("ok");
                tracing::info!(restart_required = ?report.restart_required, "configuration reloaded");
            }
            Err(e) => {
                metrics::config_reload("error");
                let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
                tracing::error!(
                    ?problems,
                    "configuration reload rejected; the running configuration stays"
                );
            }
        }
        result
    }

    fn apply(&self, candidate: Candidate) -> Result<ReloadReport, ReloadError> {
        let old = self.state.load_full();
        let new = candidate.state.config.clone();
        let restart_required = restart_required(&old.config, &new);
        if let Some(certs) = candidate.cert {
            self.certs.replace(certs);
        }
        if !self.endpoints.is_empty() && transport_changed(&old.config, &new) {
            // A new TLS config means a new (empty) ticket store: tickets
            // promising the old limits are not resumed with 0-RTT. One
            // store for every endpoint, so a ticket resumes on any of them.
            let tickets = self.endpoints.tickets();
            let tls = tls::quic_server_config(self.certs.clone(), &new.quic, tickets)?;
            self.endpoints.reconfigure(&new.quic, tls)?;
        }
        let mut state = candidate.state;
        state.inherit(&old);
        state.start_tasks(&self.shutdown);
        // The old state (and its health checks) goes when its last request ends.
        self.state.store(Arc::new(state));
        Ok(ReloadReport { restart_required })
    }
}

fn transport_changed(old: &Config, new: &Config) -> bool {
    old.quic != new.quic
}

/// Settings a running process cannot change, by TOML path.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |path: &str, changed: bool| {
        if changed {
            out.push(path.to_string());
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check("quic.enabled", old.quic.enabled != new.quic.enabled);
    check(
        "quic.udp_recv_buffer",
        old.quic.udp_recv_buffer != new.quic.udp_recv_buffer,
    );
    check(
        "quic.udp_send_buffer",
        old.quic.udp_send_buffer != new.quic.udp_send_buffer,
    );
    // An endpoint's connection IDs and stateless-reset key are fixed while
    // it runs (and the Retry/NEW_TOKEN key is kept with them).
    let (oc, nc) = (&old.cluster, &new.cluster);
    check("cluster.node_id", oc.node_id != nc.node_id);
    check(
        "cluster.server_id_len",
        oc.server_id_len != nc.server_id_len,
    );
    check(
        "cluster.config_rotation",
        oc.config_rotation != nc.config_rotation,
    );
    check("cluster.secret", oc.secret != nc.secret);
    check("cluster.redis_url", oc.is_shared() != nc.is_shared());
    // The spend file is read once, at start (reading it again would add
    // what is already counted).
    check("spend.file", old.spend.file != new.spend.file);
    check("admin.enabled", old.admin.enabled != new.admin.enabled);
    check("admin.listen", old.admin.listen != new.admin.listen);
    check("log.format", old.log.format != new.log.format);
    check("log.level", old.log.level != new.log.level);
    for p in &out {
        tracing::warn!(setting = %p, "changed in the configuration file; takes effect after a restart");
    }
    out
}
