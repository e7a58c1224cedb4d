//! Wiring: preflight → slot and publication → replication stream → router → Kafka → progress → checkpoint.
//!
//! ```text
//!  source task ──bounded mpsc (batches)──▶ sink task ──librdkafka──▶ broker
//!      ▲                                     │ delivery callbacks
//!      └── flushed LSN (watch) ◀── Progress ◀┘──▶ checkpoint task (state.dir)
//! ```
//!
//! **Shutdown order** (SIGTERM/SIGINT, or a fatal error in any stage): the source stops reading and hands over what
//! it holds → the sink drains the channel and flushes the producer → the final standby status update reports the
//! flushed LSN → the final checkpoint is written. One [`CancellationToken`] is cloned into every task.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod checkpointing;
mod monitor;
mod sink;

pub use monitor::HEARTBEAT_PREFIX;

use crate::checkpoint::{CheckpointError, FileCheckpointStore};
use crate::config::{quote_ident, Config, Delivery, SnapshotMode, ValueFormat};
use crate::kafka::exactly_once::{self, KafkaTxn};
use crate::snapshot::{Ledger, Snapshots};
use crate::encode::SourceInfo;
use crate::health::Health;
use crate::kafka::{KafkaSink, SinkError};
use crate::lsn::Lsn;
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::control::{self, ControlError, Report};
use crate::postgres::replication::{ReplicationConnection, ReplicationError};
use crate::postgres::value_binary;
use crate::progress::Progress;
use crate::router::Router;
use crate::rules::RuleSet;
use crate::source::{Batch, Source, SourceError};
use checkpointing::{checkpoint_loop, CheckpointWriter};
use monitor::{heartbeat_loop, monitor_server, report_loop};
use sink::{sink_loop, Sink};

/// Why the pipeline stopped. [`PipelineError::exit_code`] maps it to the CLI's exit code.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("preflight failed:\n{0}")]
    Preflight(Report),
    #[error("control connection: {0}")]
    Control(#[from] ControlError),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("Kafka: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("routing change at {lsn}: {message}")]
    Route { lsn: Lsn, message: String },
    /// The connection to PostgreSQL broke or the slot is busy: ficus reconnects with backoff.
    #[error("PostgreSQL: {0}")]
    Transient(String),
}

impl PipelineError {
    /// Worth reconnecting for (connection loss, server restart, slot held by another instance); everything else is
    /// definite and stops ficus.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Transient(_) => true,
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Control(e) => e.is_transient(),
            PipelineError::Sink(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The `kind` label of `ficus_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Config(_) | PipelineError::Preflight(_) => "config",
            PipelineError::Control(_) | PipelineError::Postgres(_) | PipelineError::Source(_) | PipelineError::Transient(_) => {
                "replication"
            }
            PipelineError::Sink(_) => "delivery",
            PipelineError::Checkpoint(_) => "checkpoint",
            PipelineError::Route { .. } => "rule",
        }
    }

    /// 2 for configuration and preflight problems (fix and rerun), 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Config(_) | PipelineError::Preflight(_) => 2,
            PipelineError::Sink(SinkError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// Where records go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// The configured Kafka cluster.
    #[default]
    Kafka,
    /// Encode everything, publish nothing, acknowledge at once (benchmarks: measures the pipeline without a broker).
    Null,
    /// `ficus run --dry-run`: stream from a temporary slot, print every record as one JSON line on stdout,
    /// publish nothing, confirm nothing, write no checkpoint.
    DryRun,
}

/// Options beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub output: Output,
}

fn replication_error(e: ReplicationError) -> PipelineError {
    match &e {
        // The control connection authenticated, so this is a replication-specific grant (pg_hba.conf
        // `replication` lines do not apply to logical replication, but a role without LOGIN/REPLICATION does).
        ReplicationError::Auth { .. } => PipelineError::Config(format!("source.url: {e}")),
        ReplicationError::Server { sqlstate, .. } if sqlstate.starts_with("28") || sqlstate == "3D000" => {
            PipelineError::Config(format!("source.url: {e}"))
        }
        _ if e.is_transient() => PipelineError::Transient(e.to_string()),
        _ => PipelineError::Postgres(e.to_string()),
    }
}

/// Runs the pipeline until `shutdown` is cancelled (returns `Ok`) or a stage fails.
pub async fn run(config: Config, options: RunOptions, shutdown: CancellationToken) -> Result<(), PipelineError> {
    let health = Health::new(crate::metrics::install());
    let server_stop = CancellationToken::new();
    let server = match config.health.listen {
        Some(addr) => Some(
            crate::health::serve(addr, health.clone(), server_stop.clone())
                .await
                .map_err(|e| PipelineError::Config(format!("health.listen: cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let result = run_with_reconnects(&config, &options, &shutdown, &health).await;
    match &result {
        Err(e) => {
            metrics::counter!(crate::metrics::ERRORS, "kind" => e.kind()).increment(1);
            health.set_fatal(e.to_string());
        }
        Ok(()) => health.set_streaming(false),
    }
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    result
}

/// Runs until shutdown or a definite error, reconnecting after transient ones (connection loss, server restart,
/// slot busy) with jittered exponential backoff (0.5 s doubling to `source.reconnect_max_delay_secs`, reset after a
/// minute of streaming).
/// Nothing is lost across a reconnect: the stream resumes from the slot's confirmed position, which never passes
/// what Kafka acknowledged.
async fn run_with_reconnects(
    config: &Config,
    options: &RunOptions,
    shutdown: &CancellationToken,
    health: &Arc<Health>,
) -> Result<(), PipelineError> {
    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(config.source.reconnect_max_delay_secs.max(1)))
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    loop {
        let started = std::time::Instant::now();
        match run_with(config, options, shutdown, health).await {
            Err(e) if e.is_transient() && !shutdown.is_cancelled() && options.output != Output::DryRun => {
                if started.elapsed() > Duration::from_secs(60) {
                    delays = backoff();
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(config.source.reconnect_max_delay_secs));
                metrics::counter!(crate::metrics::RECONNECTS).increment(1);
                metrics::counter!(crate::metrics::ERRORS, "kind" => e.kind()).increment(1);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other,
        }
    }
}

async fn run_with(config: &Config, options: &RunOptions, shutdown: &CancellationToken, health: &Arc<Health>) -> Result<(), PipelineError> {
    let config = config.clone();
    let info = ConnInfo::parse(&config.source.url).map_err(|e| PipelineError::Config(format!("source.url: {e}")))?;
    tracing::info!(url = %info.redacted(), slot = %config.source.slot, "connecting to PostgreSQL");
    let (client, connection) = info.connect_control().await.map_err(|e| {
        if e.is_certificate_problem() {
            PipelineError::Config(format!(
                "source.url: {e} (check sslrootcert, and that the server certificate names the host of source.url; sslmode=verify-ca checks the CA but not the name)"
            ))
        } else if e.is_configuration_problem() {
            PipelineError::Config(format!("source.url: {e} (check user, password, database and pg_hba.conf)"))
        } else {
            // The server is down or unreachable: wait for it.
            PipelineError::Transient(e.to_string())
        }
    })?;

    let (mut report, catalog) = control::preflight(&client, &config).await?;
    let dry_run = options.output == Output::DryRun;
    if dry_run {
        // A dry run streams from a temporary slot of its own: the configured slot may be busy with the real ficus.
        report.items.retain(|item| !item.title.starts_with("replication slot "));
    }
    for item in &report.items {
        if item.status == control::Status::Warn {
            tracing::warn!(check = %item.title, fix = item.fix.as_deref().unwrap_or(""), "{}", item.detail);
        }
    }
    if report.is_blocking() {
        // The slot held by another process is the one blocker worth waiting for: a second ficus next to a running
        // one is a hot standby that takes over when the first stops.
        let failures = report.failures();
        if failures.iter().all(|f| f.title.starts_with("replication slot ") && f.detail.contains("in use by another process")) {
            return Err(PipelineError::Transient(format!("{}: {}", failures[0].title, failures[0].detail)));
        }
        return Err(PipelineError::Preflight(report));
    }
    control::ensure_publication(&client, &config).await?;
    let slot_created = !dry_run && control::ensure_slot(&client, &config.source.slot).await?;
    if slot_created {
        tracing::info!(slot = %config.source.slot, "created replication slot");
    }

    let mut binary = binary_values_possible(&config, &catalog);
    let sessions = async {
        let mut first = true;
        loop {
            let first_session = std::mem::replace(&mut first, false);
            if !first_session {
                metrics::counter!(crate::metrics::RECONNECTS).increment(1);
            }
            // A fresh slot means a fresh capture: the initial snapshot is planned (and checkpointed) in that session.
            let fresh = slot_created && first_session;
            let session = stream_session(&config, &info, &client, catalog.clone(), options, shutdown, binary, fresh, health).await;
            health.set_streaming(false);
            match session {
                Err(PipelineError::Source(SourceError::NeedsTextValues { table, column, type_oid })) if binary => {
                    tracing::warn!(
                        table,
                        column,
                        type_oid,
                        "a captured column's type has no binary mapping (the table changed); restarting the stream with text values"
                    );
                    binary = false;
                    wait_for_slot_release(&client, &config.source.slot).await?;
                }
                other => break other,
            }
        }
    };
    let monitor_slot = if options.output == Output::DryRun { None } else { Some(config.source.slot.as_str()) };
    let heartbeat = (config.source.heartbeat_interval_secs > 0 && options.output != Output::DryRun)
        .then(|| Duration::from_secs(config.source.heartbeat_interval_secs));
    let result = tokio::select! {
        r = sessions => r,
        () = monitor_server(&client, monitor_slot, health) => unreachable!("the monitor runs until the sessions end"),
        () = heartbeat_loop(&client, heartbeat) => unreachable!("the heartbeat runs until the sessions end"),
    };
    drop(client);
    connection.abort();
    result
}

/// Whether the stream can request binary values: `source.value_format: auto` and every captured column has a
/// type [`value_binary::supports`]. Logs why not otherwise.
fn binary_values_possible(config: &Config, catalog: &control::Catalog) -> bool {
    if config.source.value_format == ValueFormat::Text {
        return false;
    }
    for (table, info) in &catalog.tables {
        if let Some(c) = info.columns.iter().find(|c| !value_binary::supports(c.type_oid)) {
            tracing::info!(
                table = %table,
                column = %c.name,
                r#type = %c.type_name,
                "streaming text values: this column's type has no binary mapping"
            );
            return false;
        }
    }
    true
}

/// After our own replication connection closed, the server needs a moment to end its walsender and release the
/// slot; starting again before that fails with "replication slot is active".
async fn wait_for_slot_release(client: &tokio_postgres::Client, slot: &str) -> Result<(), PipelineError> {
    for _ in 0..100 {
        match control::slot_info(client, slot).await? {
            Some(info) if info.active_pid.is_some() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return Ok(()),
        }
    }
    Err(PipelineError::Postgres(format!("replication slot {slot} is still active 10 s after ficus closed its stream")))
}

/// One replication stream from the checkpoint until shutdown or an error: connect, start at the checkpoint, run
/// source, sink and checkpoint tasks, then drain and write the final checkpoint and status update.
async fn stream_session(
    config: &Config,
    info: &ConnInfo,
    client: &tokio_postgres::Client,
    catalog: control::Catalog,
    options: &RunOptions,
    shutdown: &CancellationToken,
    binary: bool,
    slot_created: bool,
    health: &Arc<Health>,
) -> Result<(), PipelineError> {
    let mut repl = ReplicationConnection::connect(info).await.map_err(replication_error)?;
    let system = repl.identify_system().await.map_err(replication_error)?;
    let database = system.dbname.clone().unwrap_or_else(|| info.dbname.clone());
    let dry_run = options.output == Output::DryRun;
    let (slot_name, start, store, snapshot_state) = if dry_run {
        // A temporary slot disappears with this connection: nothing of the dry run stays on the server.
        let name = format!("ficus_dry_run_{}", std::process::id());
        let created = repl.create_logical_slot(&name, true).await.map_err(replication_error)?;
        tracing::info!(slot = %name, lsn = %created.consistent_point, "dry run: temporary slot; records are printed, nothing is published or confirmed");
        (name, created.consistent_point, None, None)
    } else {
        let mut store = FileCheckpointStore::open(&config.state.dir, &config.source.slot)?;
        let checkpoint = store.load_for(&system.systemid, &database, &config.source.slot)?;
        let slot = control::slot_info(client, &config.source.slot).await?;
        let confirmed = slot.as_ref().and_then(|s| s.confirmed_flush).unwrap_or(Lsn::INVALID);
        let (checkpoint, snapshot_state) = match checkpoint {
            Some((lsn, snapshot)) => (Some(lsn), snapshot),
            None => (None, None),
        };
        let start = match checkpoint {
            Some(cp) => {
                if cp < confirmed {
                    // We wrote the checkpoint before the server recorded our last status update, or the other way
                    // round; both are flushed positions, the server resumes from its own.
                    tracing::info!(checkpoint = %cp, confirmed_flush = %confirmed, "slot is ahead of the checkpoint");
                }
                cp.max(confirmed)
            }
            None => {
                tracing::info!(confirmed_flush = %confirmed, path = %store.path().display(), "no checkpoint yet; starting at the slot's position");
                confirmed
            }
        };
        (config.source.slot.clone(), start, Some(store), snapshot_state)
    };
    let eos = config.kafka.delivery == Delivery::ExactlyOnce && options.output == Output::Kafka;
    let (start, snapshot_state) = if eos {
        exactly_once::resume_point(config, start, snapshot_state).await?
    } else {
        (start, snapshot_state)
    };
    let (snapshots, planned_now) = match dry_run {
        true => (None, false),
        false => {
            let (s, planned) = plan_snapshots(config, &catalog, snapshot_state, slot_created)?;
            (Some(s), planned)
        }
    };

    let progress = Arc::new(if eos { Progress::gated(start) } else { Progress::new(start) });
    let mut probe = None;
    let mut kafka_txn = None;
    let sink = match options.output {
        Output::Kafka => {
            // One transactional id per slot: a second instance fences the first (which then stops).
            let txn_id = eos.then(|| exactly_once::transactional_id(&config.source.slot));
            let sink = KafkaSink::with_transactional_id(&config.kafka, progress.clone(), txn_id.as_deref())?;
            wait_for_broker(&sink, &config.kafka.brokers, shutdown).await?;
            if eos {
                sink.init_transactions(Duration::from_secs(60)).await?;
                kafka_txn = Some(KafkaTxn::new(
                    sink.clone(),
                    exactly_once::checkpoint_topic_name(config),
                    config.source.slot.clone(),
                    system.systemid.clone(),
                    database.clone(),
                    snapshots.clone(),
                ));
            }
            probe = Some(sink.clone());
            Sink::Kafka(sink)
        }
        Output::Null => Sink::Null,
        Output::DryRun => Sink::Print(std::io::BufWriter::new(std::io::stdout())),
    };
    if shutdown.is_cancelled() {
        return Ok(());
    }

    let publication = quote_ident(&config.source.publication);
    let stream = repl
        .start_logical_replication(
            &slot_name,
            start,
            &[
                ("proto_version", "1"),
                ("publication_names", publication.as_str()),
                ("messages", "true"),
                ("binary", if binary { "true" } else { "false" }),
            ],
        )
        .await
        .map_err(replication_error)?;
    tracing::info!(slot = %slot_name, lsn = %start, system = %system.systemid, binary_values = binary, "streaming");
    health.update(|s| {
        s.slot = slot_name.clone();
        s.database = database.clone();
        s.system = system.systemid.clone();
    });
    if probe.is_none() {
        health.set_broker(None);
    }
    health.set_streaming(true);

    let source_info = SourceInfo { system: system.systemid.clone(), database: database.clone(), slot: config.source.slot.clone() };
    let rules = RuleSet::compile(config).map_err(|e| PipelineError::Config(e.to_string()))?;
    for w in rules.warnings() {
        tracing::warn!("{w}");
    }
    let router = Router::new(config, source_info, rules);
    let stop = shutdown.child_token();
    let (tx, rx) = mpsc::channel::<Batch>(64);

    let tap = snapshots.as_ref().map(|s| crate::snapshot::Tap::new(s.clone()));
    let sink_task = tokio::spawn(sink_loop(rx, router, sink, kafka_txn, progress.clone(), stop.clone(), health.clone(), tap));
    let reporter = tokio::spawn(report_loop(health.clone(), progress.clone(), probe, stop.clone()));
    let checkpoint_task = store.map(|store| -> Result<_, PipelineError> {
        let mut writer = CheckpointWriter {
            store,
            system_id: system.systemid.clone(),
            database: database.clone(),
            slot: config.source.slot.clone(),
            written: start,
            snapshots: snapshots.clone(),
        };
        if planned_now {
            // The plan must survive a crash before the first chunk: the slot exists now, so the next start would
            // not plan again.
            writer.write(start)?;
        }
        Ok(tokio::spawn(checkpoint_loop(writer, progress.subscribe(), config.checkpoint_interval(), stop.clone())))
    });
    let checkpoint_task = checkpoint_task.transpose().inspect_err(|_| stop.cancel())?;

    let source = Source::new(
        stream,
        tx,
        progress.subscribe(),
        catalog,
        start,
        Duration::from_secs(config.source.status_interval_secs),
    )
    .with_binary_values(binary);
    let snapshot_task = snapshots.as_ref().map(|s| {
        s.start(info.clone(), config.snapshot.workers, config.snapshot.chunk_size, health.clone(), stop.clone())
    });
    if let (Some(s), SnapshotMode::InitialOnly) = (&snapshots, config.snapshot.mode) {
        tokio::spawn(exit_when_copied(s.clone(), progress.clone(), stop.clone()));
    }
    let source_result = source.run(stop.clone()).await;
    stop.cancel();
    let snapshot_result = match snapshot_task {
        Some(task) => task.await.unwrap_or_else(|e| Err(crate::snapshot::SnapshotError::Connect(e.to_string()))),
        None => Ok(()),
    };
    let _ = reporter.await;

    let sink_result = sink_task.await.unwrap_or_else(|e| Err(PipelineError::Postgres(format!("sink task: {e}"))));
    let flushed = progress.flushed();
    let checkpoint_result = match checkpoint_task {
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(CheckpointError::Corrupt(e.to_string())))
            .and_then(|mut writer| writer.write_if_advanced(flushed)),
        None => Ok(()),
    };

    let source_result = match source_result {
        Ok(stopped) => {
            // Final status update: the server may now drop WAL up to what Kafka holds.
            let mut stream = stopped.stream;
            let r = stream.send_status(stopped.received.max(flushed), flushed, flushed, false).await;
            if let Err(e) = r.and(stream.finish().await) {
                tracing::warn!(error = %e, "final status update failed; the server resumes from its last confirmed position");
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    tracing::info!(flushed = %flushed, "stopped");

    sink_result?;
    checkpoint_result?;
    source_result?;
    snapshot_result.map_err(|e| if e.is_transient() { PipelineError::Transient(e.to_string()) } else { PipelineError::Postgres(e.to_string()) })?;
    Ok(())
}

/// The snapshot state of this session: what the checkpoint recorded, plus the initial snapshot when `snapshot.mode`
/// asks for one and none was planned yet (first start). Tables without a key are refused here (exit 2).
fn plan_snapshots(
    config: &Config,
    catalog: &control::Catalog,
    state: Option<crate::snapshot::SnapshotState>,
    slot_created: bool,
) -> Result<(Arc<Snapshots>, bool), PipelineError> {
    let captured = config.captured_tables().map_err(|e| PipelineError::Config(e.to_string()))?;
    let planned = state.is_some();
    let snapshots = Snapshots::new(&config.source.slot, captured.clone(), config.snapshot.backfill_requests, Ledger::new(state));
    if config.snapshot.mode != SnapshotMode::Never && !planned && !slot_created {
        tracing::info!(
            "no initial snapshot: the slot existed before this start (another instance, or an earlier run, captured it); \
             use `ficus backfill` to copy a table"
        );
    }
    if config.snapshot.mode != SnapshotMode::Never && !planned && slot_created {
        let tables = config.snapshot.tables(&captured).map_err(|e| PipelineError::Config(e.to_string()))?;
        for t in &tables {
            if catalog.tables.get(t).is_some_and(|info| info.key_columns.is_empty()) {
                return Err(PipelineError::Config(format!("snapshot.tables: {}", crate::snapshot::no_key_message(t))));
            }
        }
        tracing::info!(tables = tables.len(), "initial snapshot planned");
        snapshots.plan(&tables);
        return Ok((snapshots, true));
    }
    Ok((snapshots, false))
}

/// `snapshot.mode: initial_only`: ends the session (exit 0) once every job is finished and in Kafka.
async fn exit_when_copied(snapshots: Arc<Snapshots>, progress: Arc<Progress>, stop: CancellationToken) {
    loop {
        if snapshots.complete_at(progress.flushed()) {
            tracing::info!("snapshot complete and in Kafka; exiting (snapshot.mode: initial_only)");
            stop.cancel();
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Waits until the broker answers, retrying with jittered exponential backoff (readiness stays false meanwhile).
async fn wait_for_broker(sink: &KafkaSink, brokers: &str, shutdown: &CancellationToken) -> Result<(), PipelineError> {
    let mut delays = backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build();
    loop {
        match sink.probe(Duration::from_secs(5)).await {
            Ok(n) => {
                tracing::info!(brokers, count = n, "Kafka reachable");
                return Ok(());
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Kafka not reachable yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
