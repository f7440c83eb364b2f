//! Debian's Chromium, headless, driven over the DevTools protocol: a fresh
//! profile per browser process, QUIC forced on chosen origins, the
//! gateway's development certificate trusted by its key (SPKI pin), and
//! a tiny local HTTP/1.1 origin to load pages from.
//!
//! One reusable piece: a test launches a [`Browser`], opens a [`Page`],
//! records its network responses with [`NetLog`], navigates to a page an
//! [`Origin`] serves and evaluates JavaScript in it.

pub mod cdp;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

pub use cdp::{Cdp, Event};

/// The line `.ci/run` (and a developer) installs Chromium with.
pub const CHROMIUM_INSTALL: &str = "apt-get install -y chromium";

/// How a browser process is started.
#[derive(Debug, Clone, Default)]
pub struct BrowserOptions {
    /// `host:port` origins Chromium speaks QUIC to without Alt-Svc.
    pub force_quic: Vec<SocketAddr>,
    /// Base64 SHA-256 SPKI hashes of certificates to accept (any issuer).
    pub trusted_spki: Vec<String>,
    /// Let pages call `chrome.benchmarking.closeConnections()` and friends.
    pub net_benchmarking: bool,
    pub extra_args: Vec<String>,
}

pub struct Browser {
    pub cdp: Cdp,
    child: tokio::process::Child,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    _stderr_task: JoinHandle<()>,
    _profile: tempfile::TempDir,
}

/// Chromium's command line: headless, quiet, a fresh profile in `profile`,
/// and what `opts` asks for.
fn chromium_args(opts: &BrowserOptions, profile: &std::path::Path) -> Vec<String> {
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--remote-debugging-port=0".into(),
        format!("--user-data-dir={}", profile.display()),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-dev-shm-usage".into(),
    ];
    if !opts.force_quic.is_empty() {
        let origins: Vec<String> = opts.force_quic.iter().map(|a| a.to_string()).collect();
        args.push(format!("--origin-to-force-quic-on={}", origins.join(",")));
    }
    if !opts.trusted_spki.is_empty() {
        args.push(format!(
            "--ignore-certificate-errors-spki-list={}",
            opts.trusted_spki.join(",")
        ));
    }
    if opts.net_benchmarking {
        args.push("--enable-net-benchmarking".into());
    }
    args.extend(opts.extra_args.iter().cloned());
    args.push("about:blank".into());
    args
}

/// Reads Chromium's stderr: keeps the last 60 lines in `tail` and sends
/// the DevTools websocket URL once it is printed.
fn watch_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> (JoinHandle<()>, tokio::sync::oneshot::Receiver<String>) {
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut url_tx = Some(url_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                if let Some(tx) = url_tx.take() {
                    let _ = tx.send(url.trim().to_string());
                }
            }
            if line.contains("dbus") {
                continue; // no system bus in a container: noise
            }
            let mut t = tail.lock().unwrap();
            t.push_back(line);
            if t.len() > 60 {
                t.pop_front();
            }
        }
    });
    (task, url_rx)
}

impl Browser {
    /// Starts Chromium (panics with the install line if missing) and
    /// connects to its DevTools websocket.
    pub async fn launch(opts: &BrowserOptions) -> Browser {
        let exe = super::tools::require_tool("chromium", CHROMIUM_INSTALL);
        Self::launch_exe(exe, opts).await
    }

    async fn launch_exe(exe: PathBuf, opts: &BrowserOptions) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(&exe)
            .args(chromium_args(opts, profile.path()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (stderr_task, url_rx) = watch_stderr(child.stderr.take().unwrap(), tail.clone());
        let url = match tokio::time::timeout(Duration::from_secs(30), url_rx).await {
            Ok(Ok(url)) => url,
            _ => {
                let _ = child.start_kill();
                let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
                panic!(
                    "Chromium printed no DevTools URL within 30 s; its stderr:\n{}",
                    tail.join("\n")
                );
            }
        };
        let cdp = Cdp::connect(&url).await.unwrap();
        Browser {
            cdp,
            child,
            stderr_tail: tail,
            _stderr_task: stderr_task,
            _profile: profile,
        }
    }

    /// Opens a new tab and attaches to it.
    pub async fn new_page(&self) -> Page<'_> {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap();
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await
            .unwrap();
        let session = attached["sessionId"].as_str().unwrap().to_string();
        let page = Page {
            browser: self,
            session,
        };
        for domain in ["Page.enable", "Runtime.enable"] {
            page.call(domain, json!({})).await.unwrap();
        }
        page
    }

    /// The last lines Chromium wrote to stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        let t = self.stderr_tail.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Asks Chromium to exit, and makes sure it did (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.cdp.call(None, "Browser.close", json!({})),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.kill_group();
        }
    }

    /// Kills the browser and its helper processes (its own process group).
    fn kill_group(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

/// A tab, attached in flattened mode (its commands carry its session id).
pub struct Page<'a> {
    browser: &'a Browser,
    pub session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser
            .cdp
            .call(Some(&self.session), method, params)
            .await
    }

    /// Starts recording this tab's network responses.
    pub async fn record_network(&self) -> NetLog {
        let mut events = self.browser.cdp.subscribe();
        let responses: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (r, session) = (responses.clone(), self.session.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.session.as_deref() == Some(session.as_str()) => {
                        if ev.method == "Network.responseReceived" {
                            r.lock().unwrap().push(ev.params["response"].clone());
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        self.call("Network.enable", json!({})).await.unwrap();
        NetLog { responses, task }
    }

    /// Navigates and waits (bounded) for the load event.
    pub async fn navigate(&self, url: &str) -> Result<(), String> {
        let mut events = self.browser.cdp.subscribe();
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(err) = nav["errorText"].as_str() {
            return Err(format!("navigating to {url}: {err}"));
        }
        let loaded = async {
            loop {
                match events.recv().await {
                    Ok(ev)
                        if ev.method == "Page.loadEventFired"
                            && ev.session.as_deref() == Some(self.session.as_str()) =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err("the browser went away".to_string()),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), loaded)
            .await
            .map_err(|_| format!("{url} did not load within 20 s"))?
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }
}

/// A tab's `Network.responseReceived` responses, as they come.
pub struct NetLog {
    responses: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl NetLog {
    /// `(url, protocol, status)` of every response so far.
    pub fn responses(&self) -> Vec<(String, String, u64)> {
        let r = self.responses.lock().unwrap();
        r.iter()
            .map(|v| {
                (
                    v["url"].as_str().unwrap_or_default().to_string(),
                    v["protocol"].as_str().unwrap_or_default().to_string(),
                    v["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for NetLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The base64 SHA-256 of the first certificate's SubjectPublicKeyInfo in
/// `cert_pem`: what `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256_base64(cert_pem: &[u8]) -> String {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A plain HTTP/1.1 server on 127.0.0.1 port 0 serving fixed pages (the
/// "local origin" a browser loads a test page from). Stops when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Origin {
    /// Serves `(path, content type, body)`; anything else is a 404.
    pub async fn serve(pages: Vec<(&'static str, &'static str, String)>) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pages = Arc::new(pages);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let pages = pages.clone();
                conns.spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let target = head.split_whitespace().nth(1).unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/");
                    let resp = match pages.iter().find(|(p, _, _)| *p == path) {
                        Some((_, ctype, body)) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    };
                    let _ = tcp.write_all(resp.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Origin { addr, task }
    }

    /// `http://127.0.0.1:port` (what the browser sends as `Origin`).
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.origin())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
