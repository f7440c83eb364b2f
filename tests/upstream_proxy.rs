//! The upstream client honours the environment's proxies, as reqwest did
//! before it (src/provider/transport.rs): an `http://` upstream through
//! `HTTP_PROXY` as an absolute-form request with the proxy's credentials,
//! an `https://` one through a `CONNECT` tunnel of `HTTPS_PROXY`, hosts in
//! `NO_PROXY` directly — over HTTP/3, HTTP/2 and HTTP/1.1.
//!
//! The variables are the process's, so this file is its own test binary
//! and every case in it sets the same ones before a gateway starts; the
//! test clients (localhost) and the default provider (127.0.0.1) are in
//! `NO_PROXY`, and the proxied providers use names only the proxy resolves.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::{Gateway, Proto};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

over_every_protocol!(
    an_http_upstream_goes_through_http_proxy_with_its_credentials,
    an_https_upstream_goes_through_a_connect_tunnel,
    a_host_in_no_proxy_is_reached_directly,
);

/// What the proxy was asked: each connection's first request line and its
/// `Proxy-Authorization`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A forward proxy on its own thread (it outlives each test's runtime):
/// absolute-form requests are relayed to their host; a `CONNECT` is
/// recorded and refused (403), as a proxy's policy would.
fn proxy() -> &'static Seen {
    static PROXY: OnceLock<Seen> = OnceLock::new();
    PROXY.get_or_init(|| {
        let seen = Seen::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let record = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (conn, _) = listener.accept().await.unwrap();
                    tokio::spawn(relay(conn, record.clone()));
                }
            });
        });
        // Set once, before any gateway (and its upstream client) exists.
        std::env::set_var("HTTP_PROXY", format!("http://proxyuser:proxypass@{addr}"));
        std::env::set_var("HTTPS_PROXY", format!("http://proxyuser:proxypass@{addr}"));
        // The test clients reach the gateway as localhost, the default
        // provider is on 127.0.0.1.
        std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
        seen
    })
}

async fn relay(mut conn: tokio::net::TcpStream, seen: Seen) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let Ok(n) = conn.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let line = text.lines().next().unwrap_or_default().to_string();
    let auth = text.lines().find_map(|l| {
        let (name, value) = l.split_once(": ")?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.to_string())
    });
    seen.lock().unwrap().push((line.clone(), auth));
    if line.starts_with("CONNECT ") {
        let _ = conn
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    // `POST http://upstream.test:port/path HTTP/1.1`: relay the bytes to
    // that port on 127.0.0.1 (the proxy resolves the name, the gateway
    // never does; the server takes the absolute form).
    let Some(port) = line
        .split(' ')
        .nth(1)
        .and_then(|u| u.strip_prefix("http://upstream.test:"))
        .and_then(|u| u.split('/').next())
    else {
        return;
    };
    let Ok(mut up) = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await else {
        return;
    };
    if up.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
    }
}

fn lines_for(seen: &Seen, needle: &str) -> Vec<(String, Option<String>)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(l, _)| l.contains(needle))
        .cloned()
        .collect()
}

fn chat(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// `Basic base64("proxyuser:proxypass")`.
const AUTH: &str = "Basic cHJveHl1c2VyOnByb3h5cGFzcw==";

async fn an_http_upstream_goes_through_http_proxy_with_its_credentials(p: Proto) {
    let seen = proxy();
    let extra = r#"
[[providers]]
name = "proxied-{p}"
kind = "openai"
base_url = "http://upstream.test:{port}/v1"
api_key = "test-proxied-key"

[[routes]]
model = "proxied-{p}"
targets = [{ provider = "proxied-{p}", model = "gpt-4o-mini" }]
"#;
    let gw = Gateway::start().await;
    let extra = extra
        .replace("{p}", &p.tag())
        .replace("{port}", &gw.upstream.addr.port().to_string());
    gw.edit_config(|t| t + &extra);
    assert_eq!(gw.reload().await.0, 200);
    let client = gw.client(p).await;
    let model = format!("proxied-{}", p.tag());
    let resp = client.post_json("/v1/chat/completions", chat(&model)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json().await["choices"][0]["message"]["role"],
        "assistant"
    );
    let url = format!(
        "POST http://upstream.test:{}/v1/chat/completions HTTP/1.1",
        gw.upstream.addr.port()
    );
    let through = lines_for(seen, &url);
    assert!(!through.is_empty(), "{:?}", seen.lock().unwrap());
    assert!(
        through.iter().all(|(_, a)| a.as_deref() == Some(AUTH)),
        "{through:?}"
    );
    // The upstream got the call, with the provider's key (not the proxy's).
    let last = gw.upstream.seen().last().cloned().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.headers["authorization"].to_str().unwrap(),
        "Bearer test-proxied-key"
    );
}

async fn an_https_upstream_goes_through_a_connect_tunnel(p: Proto) {
    let seen = proxy();
    let host = format!("tunnel-{}.example.invalid", p.tag());
    let extra = format!(
        r#"
[[providers]]
name = "tunnelled-{p}"
kind = "openai"
base_url = "https://{host}/v1"
api_key = "test-tunnelled-key"

[[routes]]
model = "tunnelled-{p}"
targets = [{{ provider = "tunnelled-{p}", model = "gpt-4o-mini" }}]
"#,
        p = p.tag()
    );
    let gw = Gateway::start().await;
    gw.edit_config(|t| t + &extra);
    assert_eq!(gw.reload().await.0, 200);
    let client = gw.client(p).await;
    let resp = client
        .post_json(
            "/v1/chat/completions",
            chat(&format!("tunnelled-{}", p.tag())),
        )
        .await;
    // The proxy refused the tunnel: a connect failure, told in OpenAI's
    // shape, and the host never resolved by the gateway itself.
    assert_eq!(resp.status, 502);
    let body = resp.json().await;
    assert!(body["error"]["message"].is_string(), "{body}");
    let tunnels = lines_for(seen, &format!("CONNECT {host}:443 HTTP/1.1"));
    assert!(!tunnels.is_empty(), "{:?}", seen.lock().unwrap());
    assert!(
        tunnels.iter().all(|(_, a)| a.as_deref() == Some(AUTH)),
        "{tunnels:?}"
    );
}

async fn a_host_in_no_proxy_is_reached_directly(p: Proto) {
    let seen = proxy();
    let gw = Gateway::start().await;
    // The default provider is on 127.0.0.1, which NO_PROXY names.
    let client = gw.client(p).await;
    let resp = client
        .post_json("/v1/chat/completions", chat("gpt-4o-mini"))
        .await;
    assert_eq!(resp.status, 200);
    let port = gw.upstream.addr.port().to_string();
    let through: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, _)| l.contains(&format!("127.0.0.1:{port}")))
        .cloned()
        .collect();
    assert!(through.is_empty(), "{through:?}");
    assert!(!gw.upstream.seen().is_empty());
}
