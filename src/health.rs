//! HTTP endpoints on `health.listen` (docs/operations.md) and the state behind them.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 only while streaming, the broker answers and no fatal error happened; else 503 with the
//!   reason as text.
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]).
//! - `GET /status`: JSON — slot, LSNs, lag, last event time, per-table and per-rule counts, DLQ count.
//!
//! **Guarantee:** nothing here reveals a secret: the status holds no connection string, only the slot, database
//! and positions.
//!
//! **Guarantee: no client can hold the process.** A connection that sends nothing for [`READ_IDLE_TIMEOUT`] (a
//! half-sent request, an idle keep-alive) is closed, and so is every connection older than [`MAX_CONNECTION_AGE`]
//! once it waits for bytes (a client dribbling a request byte by byte). After the pipeline stopped, requests in
//! flight get [`SHUTDOWN_GRACE`] to finish, then every connection is dropped: the server never delays the exit by
//! more than that (docs/guarantees.md, "Shutdown").

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// The slot's `failover` flag (PostgreSQL 17+; `None` before): synchronized to standbys, survives a promotion.
    pub slot_failover: Option<bool>,
    /// The slot's `synced` flag (17+): it was synchronized from a former primary.
    pub slot_synced: Option<bool>,
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

/// A connection on which no byte arrives for this long while the server waits for one is closed.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection older than this is closed the next time the server waits for bytes on it (bounds a request sent one
/// byte at a time; probes and scrapers simply reconnect).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// After `shutdown`, how long requests in flight may take before every connection is dropped. Our handlers answer in
/// milliseconds; 2 s keeps SIGTERM-to-exit within the 30 s of docs/guarantees.md (the pipeline takes at most 10 s to
/// finish an interrupted transaction plus 15 s to flush, then the server gets this).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Binds `addr` (an error here is a configuration problem: the address is taken or not local) and serves the
/// endpoints until `shutdown`; the returned task ends at most [`SHUTDOWN_GRACE`] after it.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TimedListener(tokio::net::TcpListener::bind(addr).await?);
    tracing::info!(%addr, "health endpoints listening");
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(health);
    Ok(tokio::spawn(async move {
        let stop = shutdown.clone();
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
        // axum's graceful shutdown waits for every open connection, however long a client keeps one: bound it.
        tokio::select! {
            served = served => if let Err(e) = served {
                tracing::warn!(error = %e, "health endpoints stopped");
            },
            () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "health endpoints: connections still open after the shutdown grace; closing them");
            }
        }
    }))
}

/// A TCP listener whose connections time out (see the module docs).
struct TimedListener(tokio::net::TcpListener);

impl axum::serve::Listener for TimedListener {
    type Io = TimedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let opened = tokio::time::Instant::now();
        (TimedIo { io, opened, deadline: Box::pin(tokio::time::sleep(READ_IDLE_TIMEOUT)) }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose reads fail with `TimedOut` once it was idle for [`READ_IDLE_TIMEOUT`] or is older than
/// [`MAX_CONNECTION_AGE`]; hyper then closes it. Done at the socket because axum's `serve` gives hyper no timer (so
/// hyper's own header-read timeout never fires).
struct TimedIo {
    io: tokio::net::TcpStream,
    opened: tokio::time::Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedIo {
    /// Bytes moved: the idle clock starts again (never past the connection's maximum age).
    fn touch(&mut self) {
        let next = (tokio::time::Instant::now() + READ_IDLE_TIMEOUT).min(self.opened + MAX_CONNECTION_AGE);
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "health endpoint client sent nothing in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = serve(addr, Health::new(None), stop.clone()).await.unwrap();
        (addr, stop, task)
    }

    #[tokio::test]
    async fn a_half_sent_request_delays_shutdown_by_at_most_the_grace() {
        let (addr, stop, task) = start().await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /status HTTP/1.1\r\nHost: loc").await.unwrap();
        // A complete request on another connection is still answered.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        ok.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = tokio::time::Instant::now();
        stop.cancel();
        tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), task).await.expect("server bounded").unwrap();
        assert!(stopped.elapsed() >= SHUTDOWN_GRACE - Duration::from_millis(100), "{:?}", stopped.elapsed());
        drop(slow);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_read_timeout() {
        let (addr, _stop, _task) = start().await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
        let opened = tokio::time::Instant::now();
        let mut buf = Vec::new();
        // EOF or a reset: either way the server closed it.
        let closed = tokio::time::timeout(READ_IDLE_TIMEOUT + Duration::from_secs(3), slow.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the server kept the half-sent request open");
        assert!(opened.elapsed() >= READ_IDLE_TIMEOUT - Duration::from_millis(200), "{:?}", opened.elapsed());
    }
}
