//! A Python virtual environment with real clients (the official OpenAI and
//! Anthropic SDKs, httpx with HTTP/2, aioquic), created on first use under
//! `target/sdk-venv` from the pinned `tests/sdk/requirements.txt`. Test
//! binaries running at once share it through a lock directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, installing it if needed. Panics, with the install
/// line, when this machine has no `python3`: a test never passes by skipping.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("sdk-venv");
    let bin = venv.join("bin").join("python");
    let reqs = std::fs::read_to_string(root().join("tests/sdk/requirements.txt")).unwrap();
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == reqs) {
        return bin;
    }
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        // Never a silent pass: the real-client tests need it.
        panic!("python3 is required for the real-client tests: apt-get install -y python3 python3-venv");
    }
    let _lock = Lock::take(&venv.with_extension("lock"));
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == reqs) {
        return bin;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("run the installer");
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv));
    run(std::process::Command::new(&bin)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(root().join("tests/sdk/requirements.txt")));
    std::fs::write(&marker, reqs).unwrap();
    bin
}

/// A directory created atomically; a stale one (a crashed run) is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> Lock {
        let deadline = SystemTime::now() + Duration::from_secs(900);
        loop {
            if std::fs::create_dir_all(path.parent().unwrap()).is_ok()
                && std::fs::create_dir(path).is_ok()
            {
                return Lock(path.to_path_buf());
            }
            let stale = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
            if stale {
                let _ = std::fs::remove_dir(path);
                continue;
            }
            assert!(SystemTime::now() < deadline, "gave up waiting for {path:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a script from `tests/sdk/` with the venv's python; returns its
/// stdout, panicking with its output if it fails or takes over 3 minutes.
pub async fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let child = tokio::process::Command::new(python)
        .arg(root().join("tests/sdk").join(script))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .expect("script finished in time")
        .expect("script ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
