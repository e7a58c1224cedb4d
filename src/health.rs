//! HTTP endpoints on `health.listen` (DESIGN.md "Metrics and endpoints") and the state behind them.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 only while streaming, the broker answers and no fatal error happened; else 503 with the
//!   reason as text.
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]).
//! - `GET /status`: JSON — slot, LSNs, lag, last event time, per-table and per-rule counts, DLQ count.
//!
//! **Guarantee:** nothing here reveals a secret: the status holds no connection string, only the slot, database
//! and positions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What the endpoints report; updated by the pipeline's stages.
pub struct Health {
    inner: Mutex<Inner>,
    prometheus: Option<PrometheusHandle>,
}

struct Inner {
    streaming: bool,
    /// `None` = the broker answered at the last probe (or no broker is used).
    broker_problem: Option<String>,
    fatal: Option<String>,
    /// `Some` while the last checkpoint write failed: nothing past the last durable checkpoint is confirmed.
    checkpoint_problem: Option<String>,
    status: Status,
}

/// The `/status` document.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub slot: String,
    pub database: String,
    pub system: String,
    pub streaming: bool,
    /// Last WAL position received from the server.
    pub received_lsn: Option<String>,
    /// Position confirmed to the server (everything before it is in Kafka).
    pub flushed_lsn: Option<String>,
    /// The server's current WAL end.
    pub server_wal_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: f64,
    pub retained_wal_bytes: Option<u64>,
    /// Commit time of the last transaction with a change (RFC 3339).
    pub last_event_time: Option<String>,
    pub producer_queue: u64,
    pub tables: BTreeMap<String, TableCounts>,
    pub rules: Vec<RuleCounts>,
    pub dlq_records: u64,
    /// Snapshot and backfill jobs: running, queued, and those finished since the start.
    pub snapshot: Vec<SnapshotJobStatus>,
}

/// One snapshot or backfill job in `/status`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotJobStatus {
    pub table: String,
    /// `ficus backfill --where`, if any.
    pub filter: Option<String>,
    /// `queued`, `running` or `done`.
    pub state: &'static str,
    pub rows: u64,
    /// From `pg_class.reltuples` (or a count for small tables); `None` when unknown.
    pub estimated_rows: Option<u64>,
    pub rows_per_second: f64,
    pub eta_seconds: Option<u64>,
}

/// Per-table counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableCounts {
    pub changes: u64,
    pub dropped: u64,
}

/// Per-rule counts.
#[derive(Debug, Clone, Serialize)]
pub struct RuleCounts {
    pub name: String,
    pub version: u32,
    pub events: u64,
    pub dlq: u64,
    pub skipped: u64,
}

impl Health {
    pub fn new(prometheus: Option<PrometheusHandle>) -> Arc<Health> {
        Arc::new(Health {
            inner: Mutex::new(Inner {
                streaming: false,
                broker_problem: Some("not checked yet".into()),
                fatal: None,
                checkpoint_problem: None,
                status: Status::default(),
            }),
            prometheus,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streaming started (`true`) or stopped.
    pub fn set_streaming(&self, on: bool) {
        self.lock().streaming = on;
        metrics::gauge!(crate::metrics::STREAMING).set(if on { 1.0 } else { 0.0 });
    }

    /// The broker answered (`None`) or not (the reason).
    pub fn set_broker(&self, problem: Option<String>) {
        self.lock().broker_problem = problem;
    }

    /// The last checkpoint write failed (the reason) or succeeded (`None`).
    pub fn set_checkpoint_problem(&self, problem: Option<String>) {
        self.lock().checkpoint_problem = problem;
    }

    /// A fatal error: readiness stays false until the process exits.
    pub fn set_fatal(&self, reason: String) {
        self.lock().fatal.get_or_insert(reason);
    }

    /// Changes the status document.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.lock().status);
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let inner = self.lock();
        if let Some(f) = &inner.fatal {
            return Err(format!("fatal error: {f}"));
        }
        if !inner.streaming {
            return Err("not streaming".into());
        }
        if let Some(b) = &inner.broker_problem {
            return Err(format!("Kafka not reachable: {b}"));
        }
        if let Some(c) = &inner.checkpoint_problem {
            return Err(format!("checkpoint not written: {c}"));
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        Status { streaming: inner.streaming, ..inner.status.clone() }
    }

    fn render_metrics(&self) -> String {
        self.prometheus.as_ref().map(|h| h.render()).unwrap_or_default()
    }

    /// Lets the recorder age out histogram windows (call every few seconds).
    pub fn upkeep(&self) {
        if let Some(h) = &self.prometheus {
            h.run_upkeep();
        }
    }
}

/// Binds `addr` (an error here is a configuration problem: the address is taken or not local) and serves the
/// endpoints until `shutdown`.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, shutdown: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health endpoints listening");
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(health);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "health endpoints stopped");
        }
    }))
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    match h.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics_text(State(h): State<Arc<Health>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render_metrics()).into_response()
}

async fn status(State(h): State<Arc<Health>>) -> Response {
    axum::Json(h.status()).into_response()
}
