//! The audit log: security events as JSON lines in a file (mode 0600,
//! created with its directory). Writes happen on a background task fed by a
//! bounded channel, so the request path never waits on the disk. Never a
//! secret, never a prompt or completion.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::shutdown::Shutdown;

/// One audit log entry: a security event.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub action: &'a str,
    /// Who: `admin-api`, `cli`, `signal`, or the obfuscated key id.
    pub actor: &'a str,
    pub result: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Entry<'_> {
    fn line(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "timestamp".into(),
                serde_json::Value::String(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                ),
            );
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}

#[derive(Debug, Clone, Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
}

impl Audit {
    /// Starts the writer for `file` (off when `None`).
    pub fn start(file: Option<&Path>, shutdown: &Shutdown) -> Audit {
        let Some(path) = file else {
            return Audit::default();
        };
        let (tx, mut rx) = mpsc::channel::<String>(4096);
        let path = path.to_path_buf();
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                let line = tokio::select! {
                    line = rx.recv() => line,
                    // Draining: write what is queued, then stop.
                    _ = sd.draining() => {
                        rx.close();
                        rx.recv().await
                    }
                };
                let Some(line) = line else { break };
                let p = path.clone();
                let _ = tokio::task::spawn_blocking(move || append(&p, &line)).await;
            }
        });
        Audit { tx: Some(tx) }
    }

    /// Queues an event; if the writer is far behind, the event is dropped
    /// and counted rather than slowing the request.
    pub fn record(&self, event: Entry<'_>) {
        if let Some(tx) = &self.tx {
            if tx.try_send(event.line()).is_err() {
                crate::metrics::AUDIT_DROPPED.get().increment(1);
            }
        }
    }
}

/// Appends one event directly (for the CLI).
pub fn append_now(file: &Path, event: Entry<'_>) {
    append(&file.to_path_buf(), &event.line());
}

fn append(path: &PathBuf, line: &str) {
    let result = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(path)?.write_all(line.as_bytes())
    })();
    if let Err(e) = result {
        tracing::error!(error = %e, file = %path.display(), "cannot write the audit log");
    }
}
