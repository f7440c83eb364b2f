//! A small Chrome DevTools Protocol client: JSON commands over one
//! websocket, answers matched by id, events fanned out to subscribers.
//! Sessions (pages) share the browser's websocket (`flatten` mode).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long a command may take before it is reported as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A CDP event: its session (`None` for the browser), method and params.
#[derive(Debug, Clone)]
pub struct Event {
    pub session: Option<String>,
    pub method: String,
    pub params: Value,
}

pub struct Cdp {
    next_id: AtomicU64,
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    tasks: Vec<JoinHandle<()>>,
}

impl Cdp {
    /// Connects to the browser's `ws://…/devtools/browser/…` endpoint.
    pub async fn connect(url: &str) -> Result<Cdp, String> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("DevTools websocket {url}: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(4096);
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let (p, ev) = (pending.clone(), events.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    let answer = match v.get("error") {
                        Some(e) => Err(e.to_string()),
                        None => Ok(v["result"].clone()),
                    };
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(answer);
                    }
                } else if let Some(method) = v["method"].as_str() {
                    let _ = ev.send(Event {
                        session: v["sessionId"].as_str().map(String::from),
                        method: method.to_string(),
                        params: v["params"].clone(),
                    });
                }
            }
            // The browser is gone: fail every command still waiting.
            p.lock().unwrap().clear();
        });
        Ok(Cdp {
            next_id: AtomicU64::new(1),
            out,
            pending,
            events,
            tasks: vec![writer, reader],
        })
    }

    /// Sends `method` (to `session`, or the browser) and waits for its result.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out
            .send(msg.to_string())
            .map_err(|_| format!("{method}: the DevTools connection is closed"))?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the browser went away")),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("{method}: no answer within {COMMAND_TIMEOUT:?}"))
            }
        }
    }

    /// Events from now on (subscribe before the command that causes them).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
