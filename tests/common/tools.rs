//! System tools the real-client tests drive (Chromium, ngtcp2's client).
//! A missing tool fails the test with the line that installs it: a test
//! never passes by skipping.

use std::path::{Path, PathBuf};

/// Where Debian packages put tools that are not on `PATH`.
const EXTRA_DIRS: &[&str] = &[
    "/usr/libexec",
    "/usr/lib/ngtcp2/examples",
    "/usr/lib/chromium",
];

/// The path of the system tool `name` (a bare name searched on `PATH` and a
/// few package directories, or an absolute path). Panics with
/// `install_line` when it is missing.
pub fn require_tool(name: &str, install_line: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "this test needs `{name}`, which is not installed{}. Install it with: {install_line}",
            if std::env::var_os("CI").is_some() {
                " (CI: .ci/run installs it)"
            } else {
                ""
            }
        )
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let as_path = Path::new(name);
    if as_path.is_absolute() {
        return is_executable(as_path).then(|| as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The line that installs ngtcp2's example HTTP/3 client (`gtlsclient`).
pub const NGTCP2_INSTALL: &str = "apt-get install -y ngtcp2-client";

/// ngtcp2's `gtlsclient` (GnuTLS): an HTTP/3 stack independent of ours.
/// It does not verify the server certificate (it has no CA option).
pub struct Gtlsclient {
    exe: PathBuf,
}

/// What one `gtlsclient` process did.
#[derive(Debug, Default)]
pub struct H3Run {
    /// The response's `:status`, if a response arrived.
    pub status: Option<u16>,
    /// The response body (saved with `--download`).
    pub body: Option<Vec<u8>>,
    /// It sent 0-RTT packets.
    pub sent_0rtt: bool,
    /// The server refused its early data.
    pub early_rejected: bool,
    /// Killed after the bound on the whole run.
    pub timed_out: bool,
    pub exit: Option<i32>,
    /// The end of its log, for failure messages.
    pub log_tail: String,
}

impl H3Run {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.body.as_deref().unwrap_or_default()).into_owned()
    }
}

/// Bound on one `gtlsclient` process (its own idle timeout is shorter).
const RUN_BOUND: std::time::Duration = std::time::Duration::from_secs(20);

impl Gtlsclient {
    /// Panics with the install line when ngtcp2's client is missing.
    pub fn require() -> Gtlsclient {
        Gtlsclient {
            exe: require_tool("gtlsclient", NGTCP2_INSTALL),
        }
    }

    /// One request for `https://127.0.0.1:<port><path>` to `addr`, in a
    /// fresh process, with `extra` options (`--groups=…`, `-m POST`, …).
    pub async fn run(&self, addr: std::net::SocketAddr, path: &str, extra: &[String]) -> H3Run {
        let download = tempfile::tempdir().unwrap();
        let url = format!("https://{}:{}{path}", addr.ip(), addr.port());
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args([
            "--no-quic-dump",
            "--no-http-dump",
            "--exit-on-all-streams-close",
            "--timeout=3s",
            "--handshake-timeout=5s",
        ])
        .arg(format!("--download={}", download.path().display()))
        .args(extra)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
        let mut run = H3Run::default();
        let out = match tokio::time::timeout(RUN_BOUND, cmd.output()).await {
            Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {}: {e}", self.exe.display())),
            Err(_) => {
                run.timed_out = true;
                return run;
            }
        };
        run.exit = out.status.code();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in log.lines() {
            if let Some(rest) = line.split("[:status: ").nth(1) {
                run.status = rest.trim_end_matches(']').trim().parse().ok();
            }
            if line.contains(" type=0RTT ") && line.contains("pkt tx") {
                run.sent_0rtt = true;
            }
            if line.contains("Early data was rejected") {
                run.early_rejected = true;
            }
        }
        // The events (handshake, HTTP), not the per-packet trace.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                ![
                    "I0",
                    "Sent packet",
                    "Received packet",
                    "Set timer",
                    "Timer has",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .collect();
        run.log_tail = lines[lines.len().saturating_sub(25)..].join("\n");
        if let Ok(mut dir) = std::fs::read_dir(download.path()) {
            if let Some(Ok(entry)) = dir.next() {
                run.body = std::fs::read(entry.path()).ok();
            }
        }
        run
    }
}
