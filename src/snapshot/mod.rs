//! Snapshots and backfills: existing rows brought into the stream, resumably, with no gap or stale row at the
//! hand-over to streaming (the DBLog watermark algorithm; Debezium calls it incremental snapshots).
//!
//! ```text
//!  workers (one connection each) ── low watermark, COPY chunk, high watermark ──▶ PostgreSQL WAL
//!      │ chunk rows (one per worker in memory)                                         │ stream
//!      └──────────────────────────────▶ Tap (in the sink task) ◀──────────────────────┘
//!                                        drops rows changed meanwhile, emits the rest as `read` changes
//! ```
//!
//! - [`config`]: `snapshot:` keys.
//! - [`chunk`]: the chunk's SQL and the COPY text parser; the `--where` guard.
//! - [`window`]: the stream side — watermark windows and backfill requests ([`Tap`]).
//! - [`worker`]: copies tables chunk by chunk.
//! - [`ledger`]: the progress persisted in the checkpoint, effective only once Kafka holds the chunk.
//! - [`report`]: progress logs, metrics, `/status`, and the terminal progress bar.
//!
//! **Guarantees.** Streaming never pauses for a snapshot. A snapshot row is never published after a newer change
//! of the same key, and a row deleted during the copy does not reappear. No transaction lasts longer than one chunk.
//! After a crash the copy resumes after the last chunk Kafka acknowledged (the chunk in flight is read again).
//! Tables are copied in parallel (`snapshot.workers`). A table of at least `snapshot.split_min_rows` rows is split
//! into key ranges (by sampled values of its first key column) that the workers copy in parallel; each range has
//! its own cursor in the checkpoint and each chunk its own watermark window, so the guarantees above hold per range
//! (a change touches one key, hence one range; windows of one table may overlap, each drops the keys changed while
//! it was open). Workers encode the rows they read (raw JSON events): the route task only assembles events.

pub mod chunk;

pub mod ledger;
pub mod report;
pub mod window;
mod worker;

pub use crate::config::snapshot::OnGap;
pub use worker::no_key_message;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::change::{Row, Table};
use crate::config::conninfo::ConnInfo;
use crate::ident::TableName;

pub use crate::checkpoint::{Job, KeyRange, SnapshotState};
pub use ledger::Ledger;
pub use window::{BackfillRequest, Tap};

pub use crate::change::{BACKFILL_PREFIX, WATERMARK_PREFIX};

/// Snapshot failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot connection failed or broke: the pipeline reconnects and the copy resumes.
    #[error("snapshot connection: {0}")]
    Connect(String),
    #[error("snapshot: {what}: {message}")]
    Sql { what: &'static str, message: String, transient: bool },
    /// This job cannot go on (table dropped, no key, bad filter): it is dropped with an error.
    #[error("snapshot: {0}")]
    Definite(String),
}

impl SnapshotError {
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Connect(_) => true,
            SnapshotError::Sql { transient, .. } => *transient,
            SnapshotError::Definite(_) => false,
        }
    }

    fn sql(what: &'static str) -> impl Fn(tokio_postgres::Error) -> SnapshotError {
        move |e| {
            // Errors with an SQLSTATE outside the connection classes are about this statement; a closed connection
            // or I/O error has none (or class 08, 57P0x: shutdown, crash) and is worth a reconnect.
            let code = e.code().map(|c| c.code().to_string());
            let transient = match &code {
                None => true,
                Some(c) => crate::postgres::sqlstate::is_transient(c),
            };
            let message = match e.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => e.to_string(),
            };
            SnapshotError::Sql { what, message, transient }
        }
    }
}

/// A chunk read by a worker, waiting for its high watermark in the stream.
pub(crate) struct ReadyChunk {
    pub job: u64,
    pub table: Arc<Table>,
    pub rows: Vec<Row>,
    /// The rows' key and `after` JSON, encoded by the worker (one per row), when the events are raw JSON; `None`
    /// otherwise, or when a row did not encode (the route task then reports that row's error).
    pub encoded: Option<Vec<crate::encode::EncodedRow>>,
    /// Key of the last row read (the next chunk starts after it); `None` for an empty chunk.
    pub after: Option<Vec<String>>,
    /// The key range the chunk belongs to (split tables).
    pub range: Option<usize>,
    /// Fewer rows than the chunk size: the table (its key range) is done.
    pub finished: bool,
    /// Split tables: the ranges whose last chunk the stream has not reached yet, shared by the job's chunks; the
    /// last one reached ends the table's snapshot.
    pub ranges_left: Option<Arc<AtomicUsize>>,
    /// Transactions the read's snapshot saw in progress (their low 32 bits, as pgoutput sends xids): the commit race
    /// check in `window`.
    pub unseen: Vec<u32>,
    /// Tells the worker the sink took the rows, or that the chunk must be read again.
    pub taken: oneshot::Sender<Handover>,
}

/// What became of a chunk at its high watermark (sent to its worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handover {
    /// Published (or dropped whole by a `TRUNCATE`): the worker reads the next chunk.
    Taken,
    /// Not published: its read missed a transaction that committed before its low watermark (the commit race,
    /// `window` module docs). The worker reads the same chunk again, in a new window.
    ReadAgain,
}

/// Progress of one job, for logs, metrics and `/status`.
#[derive(Debug, Clone)]
pub(crate) struct JobProgress {
    pub table: TableName,
    pub filter: Option<String>,
    pub state: JobState,
    pub rows: u64,
    /// Rows copied before this session (resumed jobs).
    pub rows_before: u64,
    pub estimated: Option<u64>,
    pub started: Option<Instant>,
    /// When the job finished (or failed) in this session: its rate stops there.
    pub ended: Option<Instant>,
    pub last_logged: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobState {
    Queued,
    Running,
    Done,
    Failed(String),
}

/// Shared by the workers, the sink's [`Tap`], the checkpoint writer and the reporter for one replication session.
pub struct Snapshots {
    pub(crate) slot: String,
    /// The publication: a snapshot row has the columns the stream publishes (`control::published_columns`).
    pub(crate) publication: String,
    /// Random per session; tags this session's watermarks.
    pub(crate) run: String,
    pub(crate) ledger: Ledger,
    pub(crate) captured: Vec<TableName>,
    /// Why backfill requests in the stream are refused (`snapshot.backfill_requests: false`, a standby), if they are.
    pub(crate) refuse_requests: Option<String>,
    chunks: Mutex<HashMap<u64, ReadyChunk>>,
    chunk_ids: AtomicU64,
    queue: Mutex<Queue>,
    wake: Notify,
    pub(crate) progress: Mutex<BTreeMap<u64, JobProgress>>,
}

#[derive(Default)]
struct Queue {
    units: VecDeque<Unit>,
    /// Tables being copied: one job per table at a time (a backfill of a table waits for its running snapshot, so
    /// they never race to publish the same key), its key ranges by several workers.
    active: HashMap<TableName, Active>,
}

/// What a worker copies: a job, or one key range of a split job.
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    pub job: Job,
    pub range: Option<usize>,
    /// Shared by the units of one split job (see [`ReadyChunk::ranges_left`]).
    pub ranges_left: Option<Arc<AtomicUsize>>,
}

struct Active {
    job: u64,
    /// The job's units not finished in this session (queued or being copied).
    units_left: usize,
}

/// Settings of the copy workers (`snapshot:` keys).
#[derive(Debug, Clone)]
pub struct CopySettings {
    pub workers: u32,
    pub chunk_size: u32,
    /// Tables of at least this many rows (estimated) are split into key ranges; 0: never.
    pub split_min_rows: u64,
    /// `changes:`: workers encode the key and `after` of rows of a table whose raw events are the row's JSON
    /// unaltered ([`ChangesConfig::publishes_unaltered_json`]); other tables' rows would be encoded for nothing.
    pub changes: Arc<crate::config::ChangesConfig>,
}

impl Snapshots {
    /// `ledger` holds what the checkpoint recorded; its unfinished jobs are queued. Backfill requests in the stream
    /// are taken up unless `refuse_requests` says why not (logged at ERROR for each).
    pub fn new(
        slot: &str,
        publication: &str,
        captured: Vec<TableName>,
        refuse_requests: Option<String>,
        ledger: Ledger,
    ) -> Arc<Snapshots> {
        let run = format!("{:016x}", rand_u64());
        let shared = Arc::new(Snapshots {
            slot: slot.to_string(),
            publication: publication.to_string(),
            run,
            captured,
            refuse_requests,
            chunks: Mutex::new(HashMap::new()),
            chunk_ids: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            progress: Mutex::new(BTreeMap::new()),
            ledger,
        });
        for job in shared.ledger.durable().map(|s| s.jobs).unwrap_or_default() {
            shared.enqueue(job);
        }
        shared
    }

    /// Plans the initial snapshot of `tables` (first start).
    pub fn plan(&self, tables: &[TableName]) {
        for job in self.ledger.plan(tables) {
            self.enqueue(job);
        }
    }

    /// The ledger (the checkpoint writer settles it).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Starts `workers` copy workers and the progress reporter; they run until `stop`. The handle's error is a
    /// worker's connection failure (the pipeline reconnects).
    pub fn start(
        self: &Arc<Self>,
        info: ConnInfo,
        settings: CopySettings,
        health: Arc<crate::health::Health>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), SnapshotError>> {
        let shared = self.clone();
        tokio::spawn(async move {
            let reporter = tokio::spawn(report::run(shared.clone(), health, stop.clone()));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..settings.workers {
                set.spawn(worker::run(shared.clone(), info.clone(), settings.clone(), stop.clone()));
            }
            let mut result = Ok(());
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Err(e)) if result.is_ok() => {
                        // One broken connection ends the session; the others stop with it.
                        stop.cancel();
                        result = Err(e);
                    }
                    Err(e) if result.is_ok() => {
                        stop.cancel();
                        result = Err(SnapshotError::Connect(format!("snapshot worker: {e}")));
                    }
                    _ => {}
                }
            }
            let _ = reporter.await;
            result
        })
    }

    /// Whether no job is queued, running, or waiting for Kafka.
    pub fn complete_at(&self, flushed: crate::lsn::Lsn) -> bool {
        let q = self.lock_queue();
        q.units.is_empty() && q.active.is_empty() && self.ledger.complete_at(flushed)
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_progress(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, JobProgress>> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn enqueue(&self, job: Job) {
        self.lock_progress().insert(
            job.id,
            JobProgress {
                table: job.table_name(),
                filter: job.filter.clone(),
                state: JobState::Queued,
                rows: job.rows,
                rows_before: job.rows,
                estimated: None,
                started: None,
                ended: None,
                last_logged: None,
            },
        );
        self.lock_queue().units.push_back(Unit { job, range: None, ranges_left: None });
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Puts a unit back (worker stopped or lost its connection); the next session starts it from the checkpoint.
    fn requeue(&self, unit: Unit) {
        self.lock_queue().units.push_front(unit);
    }

    /// Queues the key ranges of `unit`'s job that are not done, but the first, which the caller copies: `unit`
    /// becomes that range. `None` when every range is done.
    fn take_ranges(&self, unit: &mut Unit) -> Option<()> {
        let open: Vec<usize> = (0..unit.job.ranges.len()).filter(|&i| !unit.job.ranges[i].done).collect();
        let (&first, rest) = open.split_first()?;
        let left = Arc::new(AtomicUsize::new(open.len()));
        unit.range = Some(first);
        unit.ranges_left = Some(left.clone());
        let mut q = self.lock_queue();
        if let Some(a) = q.active.get_mut(&unit.job.table_name()) {
            a.units_left += rest.len();
        }
        for &i in rest.iter().rev() {
            q.units.push_front(Unit { job: unit.job.clone(), range: Some(i), ranges_left: Some(left.clone()) });
        }
        drop(q);
        self.wake.notify_waiters();
        Some(())
    }

    /// The next unit whose table no other job is copying; `None` once `stop` fires.
    async fn next_unit(&self, stop: &CancellationToken) -> Option<Unit> {
        loop {
            let notified = self.wake.notified();
            {
                let mut q = self.lock_queue();
                let free = q.units.iter().position(|u| match q.active.get(&u.job.table_name()) {
                    None => true,
                    Some(a) => a.job == u.job.id,
                });
                if let Some(i) = free {
                    let unit = q.units.remove(i).expect("index from position");
                    q.active.entry(unit.job.table_name()).or_insert(Active { job: unit.job.id, units_left: 1 });
                    return Some(unit);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = notified => {}
            }
        }
    }

    fn job_started(&self, job: &Job, estimated: Option<u64>) {
        if let Some(p) = self.lock_progress().get_mut(&job.id) {
            p.state = JobState::Running;
            p.estimated = estimated;
            p.started = Some(Instant::now());
            p.last_logged = Some(Instant::now());
        }
    }

    fn chunk_done(&self, job: u64, table: &TableName, rows: u64) {
        metrics::counter!(crate::metrics::SNAPSHOT_ROWS, "table" => table.to_string()).increment(rows);
        if let Some(p) = self.lock_progress().get_mut(&job) {
            p.rows += rows;
        }
    }

    /// A unit is copied (every chunk handed over); the job is finished with its last unit.
    fn unit_finished(&self, unit: &Unit) {
        let done = {
            let mut q = self.lock_queue();
            match q.active.get_mut(&unit.job.table_name()) {
                Some(a) if a.job == unit.job.id => {
                    a.units_left = a.units_left.saturating_sub(1);
                    a.units_left == 0
                }
                _ => false,
            }
        };
        if done {
            self.end_job(&unit.job, JobState::Done);
        }
    }

    fn job_failed(&self, job: &Job, e: &SnapshotError) {
        tracing::error!(table = %job.table_name(), job = job.id, error = %e, "snapshot of table failed; the job is dropped (fix the cause, then request it again with `ficus backfill`)");
        // Dropping a job needs nothing in Kafka: effective at once.
        self.ledger.record(
            crate::lsn::Lsn::INVALID,
            ledger::Mutation::Chunk { job: job.id, range: None, after: None, rows: 0, finished: true },
        );
        // Its key ranges not started are dropped; one being copied runs to its end (its chunks no longer count in
        // the ledger: the job is gone), unless it fails the same way, as a dropped table's does.
        self.lock_queue().units.retain(|u| u.job.id != job.id);
        self.end_job(job, JobState::Failed(e.to_string()));
    }

    fn end_job(&self, job: &Job, state: JobState) {
        {
            let mut q = self.lock_queue();
            if q.active.get(&job.table_name()).is_some_and(|a| a.job == job.id) {
                q.active.remove(&job.table_name());
            }
        }
        if let Some(p) = self.lock_progress().get_mut(&job.id).filter(|p| !matches!(p.state, JobState::Failed(_))) {
            p.ended = Some(Instant::now());
            if state == JobState::Done {
                let secs = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                let (rate, _) = report::rate_and_eta(p);
                tracing::info!(table = %p.table, job = job.id, rows = p.rows, seconds = (secs * 10.0).round() / 10.0, rows_per_second = rate.round() as u64, "snapshot of table finished");
            }
            p.state = state;
        }
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn next_chunk_id(&self) -> u64 {
        self.chunk_ids.fetch_add(1, Ordering::Relaxed)
    }

    fn put_chunk(&self, id: u64, chunk: ReadyChunk) {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, chunk);
    }

    pub(crate) fn take_chunk(&self, id: u64) -> Option<ReadyChunk> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }
}

/// A random value for the session tag (no cryptographic need: it only tells sessions apart).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// Why `ficus backfill` wrote no request.
#[derive(Debug, thiserror::Error)]
pub enum BackfillRequestError {
    /// The request is not valid, or no instance would ever take it up: fix the command or the config (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// The server did not answer within [`BACKFILL_SESSION_SETTINGS`]' bounds (a table lock held by another session);
    /// the same command can succeed later (exit 1).
    #[error("{0}")]
    Busy(String),
}

/// Why a snapshot (initial, resumed, or a backfill) cannot run against a standby, and what to do instead.
pub const SNAPSHOT_ON_STANDBY: &str = "the server of source.url is a standby (in recovery): a snapshot or backfill \
     writes DBLog watermarks into the WAL (pg_logical_emit_message), which a standby cannot do. Set snapshot.mode: \
     never to stream changes from the slot's creation on (copy the existing rows from the primary by other means), or \
     run ficus against the primary for the snapshot";

/// Session settings for `ficus backfill`'s connection, so it never waits unboundedly: a table lock held by another
/// session (`LOCK TABLE`, `ALTER TABLE`, `VACUUM FULL`) fails the `--where` check after 5 s instead of hanging, and
/// no statement runs longer than 30 s.
pub const BACKFILL_SESSION_SETTINGS: &str = "SET lock_timeout = '5s'; SET statement_timeout = '30s'";

/// Writes a backfill request for the instance using `slot` (`ficus backfill`). The request travels through the
/// WAL: the running instance (or the next one to start) takes it up in stream order. Refuses when `slot` does not
/// exist in this database, since then no instance would ever see the request (a slot created later starts after
/// it). Run [`BACKFILL_SESSION_SETTINGS`] on `client` first.
pub async fn request_backfill(
    client: &tokio_postgres::Client,
    slot: &str,
    table: &TableName,
    filter: Option<&str>,
) -> Result<String, BackfillRequestError> {
    use BackfillRequestError::{Busy, Invalid};
    let recovery = crate::postgres::control::in_recovery(client).await.map_err(|e| Busy(e.to_string()))?;
    if recovery {
        return Err(Invalid(
            "the server of source.url is a standby (in recovery): a backfill writes its request and DBLog watermarks \
             into the WAL (pg_logical_emit_message), which a standby cannot do, so ficus capturing from a standby \
             cannot backfill. Copy the rows from the primary by other means, or capture from the primary"
                .to_string(),
        ));
    }
    let server_error = |what: &str, e: tokio_postgres::Error| {
        let text = e.as_db_error().map_or(e.to_string(), |d| d.message().to_string());
        match e.code().map(|c| c.code()) {
            // lock_not_available (lock_timeout), query_canceled (statement_timeout)
            Some("55P03") | Some("57014") => Busy(format!(
                "{what}: {table} is locked by another session ({text}): something holds a lock that blocks reading \
                 it (LOCK TABLE, ALTER TABLE, VACUUM FULL, ...); retry when it is released (pg_locks shows who holds \
                 it)"
            )),
            _ => Invalid(format!("{what}: {text}")),
        }
    };
    let slot_row = client
        .query_opt(
            "SELECT database::text, plugin::text, database = current_database() FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| server_error("reading pg_replication_slots", e))?;
    match slot_row {
        None => {
            return Err(Invalid(format!(
                "source.slot: replication slot {slot} does not exist on this server, so no ficus instance would ever \
                 take the request up (a slot created later starts after it). Start `ficus run` with this config first \
                 (it creates the slot; snapshot.mode decides whether it copies existing rows), then request the backfill"
            )))
        }
        Some(row) if !row.get::<_, Option<bool>>(2).unwrap_or(false) => {
            let db: Option<String> = row.get(0);
            return Err(Invalid(format!(
                "source.slot: replication slot {slot} belongs to database {}, not the database of source.url; a \
                 request written here would never reach it. Point source.url at that database",
                db.as_deref().unwrap_or("(none: a physical slot)")
            )));
        }
        Some(_) => {}
    }
    if let Some(f) = filter {
        chunk::check_filter(f).map_err(|e| Invalid(format!("--where {e}")))?;
        // Let the server check the condition now rather than fail the backfill later.
        client
            .execute(&format!("EXPLAIN SELECT 1 FROM {} WHERE ({f})", table.quoted()), &[])
            .await
            .map_err(|e| server_error(&format!("--where is not a valid condition on {table}"), e))?;
    }
    let content = serde_json::to_string(&BackfillRequest {
        slot: slot.to_string(),
        schema: table.schema.clone(),
        table: table.name.clone(),
        filter: filter.map(str::to_string),
    })
    .expect("a request serializes");
    let row = client
        .query_one("SELECT pg_logical_emit_message(true, $1, $2)::text", &[&BACKFILL_PREFIX, &content])
        .await
        .map_err(|e| server_error("writing the request", e))?;
    Ok(row.get(0))
}
