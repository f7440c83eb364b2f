//! The export queue: spans are queued without waiting (a full queue drops
//! them, counted) and sent in batches by one task, over OTLP/HTTP with the
//! async reqwest client, off every request's path.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::mpsc;

use crate::config::{TracingConfig, TracingResolved};
use crate::metrics::TRACE_SPANS;

/// How long the last export at exit may take.
const LAST_EXPORT: Duration = Duration::from_secs(3);

pub struct Exporter {
    tx: OnceLock<mpsc::Sender<SpanData>>,
    settings: Settings,
}

#[derive(Clone)]
struct Settings {
    cfg: TracingConfig,
    resolved: TracingResolved,
}

impl Exporter {
    pub fn new(cfg: &TracingConfig, resolved: TracingResolved) -> Exporter {
        Exporter {
            tx: OnceLock::new(),
            settings: Settings {
                cfg: cfg.clone(),
                resolved,
            },
        }
    }

    /// Queues a finished span; dropped (and counted) when the queue is full.
    pub fn push(&self, span: SpanData) {
        let queued = self.tx.get().is_some_and(|tx| tx.try_send(span).is_ok());
        if !queued {
            TRACE_SPANS.with(["dropped"]).increment(1);
        }
    }

    pub fn start(&self, shutdown: &crate::shutdown::Shutdown) {
        let s = &self.settings;
        let exporter = match build(s) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "tracing: cannot build the OTLP exporter; spans are dropped");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(s.cfg.queue_size);
        if self.tx.set(tx).is_err() {
            return;
        }
        let task = Batcher {
            exporter,
            rx,
            batch: s.cfg.batch_size,
            interval: s.cfg.export_interval.get(),
            timeout: s.cfg.export_timeout.get(),
        };
        shutdown.spawn_until_exit(task.run(shutdown.clone()));
    }
}

fn build(s: &Settings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let timeout = s.cfg.export_timeout.get();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("h3gate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let headers: HashMap<String, String> = s
        .cfg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(timeout)
        .with_headers(headers);
    if let Some(endpoint) = &s.resolved.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let mut exporter = builder.build().map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(s.resolved.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

struct Batcher {
    exporter: opentelemetry_otlp::SpanExporter,
    rx: mpsc::Receiver<SpanData>,
    batch: usize,
    interval: Duration,
    timeout: Duration,
}

impl Batcher {
    async fn run(mut self, shutdown: crate::shutdown::Shutdown) {
        let mut buf = Vec::with_capacity(self.batch);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut buf, self.batch) => {
                    if n == 0 {
                        // Every sender is gone (a reloaded state's tracer).
                        break;
                    }
                    if buf.len() >= self.batch {
                        self.export(&mut buf, self.timeout).await;
                    }
                }
                _ = tick.tick() => {
                    if !buf.is_empty() {
                        self.export(&mut buf, self.timeout).await;
                    }
                }
                // The drain is over: what is queued goes now.
                _ = shutdown.exiting() => {
                    self.rx.close();
                    while let Ok(span) = self.rx.try_recv() {
                        buf.push(span);
                    }
                    break;
                }
            }
        }
        while !buf.is_empty() {
            let rest = buf.split_off(buf.len().min(self.batch));
            self.export(&mut buf, LAST_EXPORT).await;
            buf = rest;
        }
    }

    async fn export(&self, buf: &mut Vec<SpanData>, timeout: Duration) {
        let spans = std::mem::take(buf);
        let n = spans.len() as u64;
        match tokio::time::timeout(timeout, self.exporter.export(spans)).await {
            Ok(Ok(())) => TRACE_SPANS.with(["exported"]).increment(n),
            Ok(Err(e)) => {
                TRACE_SPANS.with(["failed"]).increment(n);
                tracing::debug!(error = %e, spans = n, "tracing: export failed");
            }
            Err(_) => {
                TRACE_SPANS.with(["failed"]).increment(n);
                tracing::debug!(spans = n, "tracing: export timed out");
            }
        }
    }
}
