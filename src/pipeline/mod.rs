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
use crate::check::resume;
mod output;
mod route_task;
mod tables;

pub use monitor::HEARTBEAT_PREFIX;

use crate::check::Report;
use crate::checkpoint::{CheckpointError, CheckpointStamp, FileCheckpointStore, SnapshotAt};
use crate::config::conninfo::ConnInfo;
use crate::config::{Config, Delivery, SnapshotMode, ValueFormat};
use crate::encode::SourceInfo;
use crate::health::Health;
use crate::ident::quote_ident;
use crate::kafka::exactly_once::{self, KafkaTxn};
use crate::kafka::{KafkaSink, SinkError};
use crate::lsn::Lsn;
use crate::postgres::admin;
use crate::postgres::control::{self, ControlError};
use crate::postgres::replication::{ReplicationConnection, ReplicationError};
use crate::postgres::value_binary;
use crate::progress::Progress;
use crate::router::Router;
use crate::rules::{RuleSet, Rules};
use crate::snapshot::{Ledger, Snapshots};
use crate::source::{Batch, Source, SourceError};
use checkpointing::{checkpoint_loop, CheckpointWriter};
use monitor::{heartbeat_loop, monitor_server, report_loop};
use output::Destination;
use route_task::route_loop;

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
    /// A task panicked or was cancelled: a bug in ficus, reported as one (exit 1) rather than as a data problem.
    #[error("internal error (please report it): {0}")]
    Internal(String),
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
            PipelineError::Control(_)
            | PipelineError::Postgres(_)
            | PipelineError::Source(_)
            | PipelineError::Transient(_) => "replication",
            PipelineError::Sink(_) => "delivery",
            PipelineError::Checkpoint(_) => "checkpoint",
            PipelineError::Route { .. } => "rule",
            PipelineError::Internal(_) => "internal",
        }
    }

    /// The exit-code rule of docs/configuration.md, in one place: 2 for what the operator fixes before rerunning —
    /// configuration, preflight, ficus's own state at start (`state.dir`, checkpoint, slot gaps: all reported as
    /// [`PipelineError::Config`]), Kafka settings librdkafka refuses — and 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Config(_) | PipelineError::Preflight(_) => 2,
            PipelineError::Sink(SinkError::Config(_) | SinkError::ForeignCheckpoint(_)) => 2,
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

/// Runs the pipeline until `shutdown` is cancelled (returns `Ok`) or a stage fails. `rules` are `config`'s rules,
/// compiled once by the caller (every session runs them with its own [`RuleSet`]).
pub async fn run(
    config: Config,
    rules: Arc<Rules>,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    for w in rules.warnings() {
        tracing::warn!("{w}");
    }
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
    let result = run_with_reconnects(&config, &rules, &options, &shutdown, &health).await;
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
    rules: &Arc<Rules>,
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
        match run_with(config, rules, options, shutdown, health).await {
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

async fn run_with(
    config: &Config,
    rules: &Arc<Rules>,
    options: &RunOptions,
    shutdown: &CancellationToken,
    health: &Arc<Health>,
) -> Result<(), PipelineError> {
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

    let (mut report, catalog) = crate::check::preflight::preflight(&client, &config, rules).await?;
    let dry_run = options.output == Output::DryRun;
    if dry_run {
        // A dry run streams from a temporary slot of its own: the configured slot may be busy with the real ficus.
        report.items.retain(|item| !item.title.starts_with("replication slot "));
    }
    for item in &report.items {
        if item.status == crate::check::Status::Warn {
            tracing::warn!(check = %item.title, fix = item.fix.as_deref().unwrap_or(""), "{}", item.detail);
        }
    }
    if report.is_blocking() {
        // The slot held by another process is the one blocker worth waiting for: a second ficus next to a running
        // one is a hot standby that takes over when the first stops.
        let failures = report.failures();
        if failures
            .iter()
            .all(|f| f.title.starts_with("replication slot ") && f.detail.contains("in use by another process"))
        {
            return Err(PipelineError::Transient(format!("{}: {}", failures[0].title, failures[0].detail)));
        }
        return Err(PipelineError::Preflight(report));
    }
    admin::ensure_publication(&client, &config).await?;
    // A dry run streams text values: switching to text later would need a new temporary slot, losing what the
    // server wrote in between.
    let mut binary = !dry_run && binary_values_possible(&config, &catalog);
    let session_stop = shutdown.child_token();
    let sessions = async {
        let mut first = true;
        loop {
            let first_session = std::mem::replace(&mut first, false);
            if !first_session {
                metrics::counter!(crate::metrics::RECONNECTS).increment(1);
            }
            let session =
                stream_session(&config, rules, &info, &client, catalog.clone(), options, &session_stop, binary, health)
                    .await;
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
    // The table watch stops the sessions through `session_stop` (they drain and write their final checkpoint) and
    // leaves its error here.
    let watch_error = std::sync::Mutex::new(None);
    let watch = async {
        if !dry_run {
            let e = tables::table_watch(&client, &config, &catalog, &session_stop).await;
            *watch_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = sessions => r,
        () = monitor_server(&client, monitor_slot, health) => unreachable!("the monitor runs until the sessions end"),
        () = heartbeat_loop(&client, heartbeat) => unreachable!("the heartbeat runs until the sessions end"),
        () = watch => unreachable!("the table watch leaves its error and waits"),
    };
    let result = match watch_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => result.and(Err(e)),
        None => result,
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
#[allow(clippy::too_many_arguments)]
async fn stream_session(
    config: &Config,
    rules: &Arc<Rules>,
    info: &ConnInfo,
    client: &tokio_postgres::Client,
    catalog: control::Catalog,
    options: &RunOptions,
    shutdown: &CancellationToken,
    binary: bool,
    health: &Arc<Health>,
) -> Result<(), PipelineError> {
    let mut repl = ReplicationConnection::connect(info).await.map_err(replication_error)?;
    let system = repl.identify_system().await.map_err(replication_error)?;
    let database = system.dbname.clone().unwrap_or_else(|| info.dbname.clone());
    let stamp = CheckpointStamp {
        system_id: system.systemid.clone(),
        database: database.clone(),
        slot: config.source.slot.clone(),
    };
    let dry_run = options.output == Output::DryRun;
    let (slot_name, start, store, snapshot_state) = if dry_run {
        // A temporary slot disappears with this connection: nothing of the dry run stays on the server.
        let name = format!("ficus_dry_run_{}", std::process::id());
        let created = repl.create_logical_slot(&name, true).await.map_err(replication_error)?;
        tracing::info!(slot = %name, lsn = %created.consistent_point, "dry run: temporary slot; records are printed, nothing is published or confirmed");
        (name, created.consistent_point, None, None)
    } else {
        let mut store = FileCheckpointStore::open(&config.state.dir, &config.source.slot).map_err(state_error)?;
        let checkpoint = store.load_for(&system.systemid, &database, &config.source.slot).map_err(state_error)?;
        (config.source.slot.clone(), Lsn::INVALID, Some(store), checkpoint)
    };
    let eos = config.kafka.delivery == Delivery::ExactlyOnce && options.output == Output::Kafka;
    let mut plan_now = false;
    let (start, snapshot_state) = match (&store, snapshot_state) {
        (None, _) => (start, None),
        (Some(store), file_checkpoint) => {
            // exactly_once: the Kafka checkpoint may be ahead of the file (PostgreSQL was not told yet).
            // Only a file checkpoint bounds the slot (PostgreSQL is confirmed up to it). exactly_once also confirms
            // idle positions past its Kafka checkpoint (no Kafka transaction records them), so with the file missing
            // the slot may lead the Kafka checkpoint without a gap.
            let slot_may_lead = eos && file_checkpoint.is_none();
            let (checkpoint, state) = match (eos, file_checkpoint) {
                (true, file) => {
                    let (lsn, state) = file.map_or((Lsn::INVALID, None), |(l, s)| (l, s));
                    // Creating the topic, fencing and reading wait for the broker (up to minutes when it is
                    // unreachable): a shutdown must not wait for them. Nothing was published or confirmed yet.
                    let (lsn, state) = tokio::select! {
                        resumed = exactly_once::resume_point(config, &stamp, lsn, state) => resumed?,
                        () = shutdown.cancelled() => return Ok(()),
                    };
                    ((lsn != Lsn::INVALID).then_some(lsn), state)
                }
                (false, Some((lsn, state))) => (Some(lsn), state),
                (false, None) => (None, None),
            };
            let slot = match control::slot_info(client, &config.source.slot).await? {
                None => resume::SlotState::Missing,
                Some(s) if s.wal_status.as_deref() == Some("lost") => resume::SlotState::Invalidated,
                Some(s) => resume::SlotState::Usable { confirmed: s.confirmed_flush.unwrap_or(Lsn::INVALID) },
            };
            let decision = resume::decide(
                checkpoint,
                slot,
                slot_may_lead,
                system.xlogpos,
                config.snapshot.on_gap,
                &config.source.slot,
                &store.path().display().to_string(),
            )
            .map_err(PipelineError::Config)?;
            if let Some(gap) = &decision.recovered_gap {
                tracing::warn!(gap = %gap, "snapshot.on_gap: resnapshot: re-snapshotting snapshot.tables");
            }
            // Every precondition of the plan (tables with a key) is checked before the slot is created.
            plan_now = decision.plan_snapshot
                && (config.snapshot.mode != SnapshotMode::Never || decision.recovered_gap.is_some());
            let state = if decision.plan_snapshot { None } else { state };
            if plan_now {
                let blockers = resume::snapshot_blockers(client, config, &catalog).await?;
                if let Some(b) = blockers.first() {
                    return Err(PipelineError::Config(format!(
                        "snapshot.tables: {} (a snapshot is planned on this start)",
                        b.message
                    )));
                }
            }
            if decision.drop_slot {
                tracing::warn!(slot = %config.source.slot, "dropping the invalidated replication slot");
                admin::drop_slot(client, &config.source.slot).await?;
            }
            let start = match decision.start {
                Some(lsn) => lsn,
                None => {
                    let created = admin::create_slot(client, &config.source.slot).await?;
                    tracing::info!(slot = %config.source.slot, lsn = %created, "created replication slot");
                    created
                }
            };
            if checkpoint.is_none() {
                tracing::info!(lsn = %start, path = %store.path().display(), "no checkpoint yet; starting at the slot's position");
            }
            (start, state)
        }
    };
    let snapshots = match dry_run {
        true => None,
        false => Some(plan_snapshots(config, snapshot_state, plan_now)?),
    };
    let snapshot_at = snapshots.clone().map(|s| -> SnapshotAt { Arc::new(move |lsn| s.ledger().settle(lsn)) });

    let progress = Arc::new(if eos { Progress::gated(start) } else { Progress::new(start) });
    let mut probe = None;
    let destination = match options.output {
        Output::Kafka => {
            // One transactional id per slot: a second instance fences the first (which then stops).
            let txn_id = eos.then(|| exactly_once::transactional_id(&config.source.slot));
            let sink = KafkaSink::with_transactional_id(&config.kafka, progress.clone(), txn_id.as_deref())?;
            wait_for_broker(&sink, &config.kafka.brokers, shutdown).await?;
            probe = Some(sink.clone());
            if eos {
                sink.init_transactions(Duration::from_secs(60)).await?;
                Destination::KafkaTransactional(KafkaTxn::new(
                    sink,
                    exactly_once::checkpoint_topic_name(config),
                    stamp.clone(),
                    snapshot_at.clone(),
                ))
            } else {
                Destination::Kafka(sink)
            }
        }
        Output::Null => Destination::Null,
        Output::DryRun => Destination::Print(std::io::BufWriter::new(std::io::stdout())),
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

    let source_info =
        SourceInfo { system: system.systemid.clone(), database: database.clone(), slot: config.source.slot.clone() };
    let router = Router::new(config, source_info, RuleSet::new(rules.clone()));
    let stop = shutdown.child_token();
    let (tx, rx) = mpsc::channel::<Batch>(64);

    let tap = snapshots.as_ref().map(|s| crate::snapshot::Tap::new(s.clone()));
    let sink_task =
        tokio::spawn(route_loop(rx, router, destination, progress.clone(), stop.clone(), health.clone(), tap));
    let reporter = tokio::spawn(report_loop(health.clone(), progress.clone(), probe, stop.clone()));
    // PostgreSQL is confirmed only up to the durable checkpoint (see `checkpointing`); without a store (dry run)
    // up to the flushed position.
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(start);
    let confirm = if store.is_some() { durable_rx.clone() } else { progress.subscribe() };
    let checkpoint_task = store.map(|store| -> Result<_, PipelineError> {
        let mut writer = CheckpointWriter {
            store,
            stamp: stamp.clone(),
            written: start,
            snapshot_at: snapshot_at.clone(),
            durable: durable_tx,
        };
        if plan_now {
            // The plan must survive a crash before the first chunk.
            writer.write(start)?;
        }
        Ok(tokio::spawn(checkpoint_loop(
            writer,
            progress.subscribe(),
            config.checkpoint_interval(),
            stop.clone(),
            health.clone(),
        )))
    });
    let checkpoint_task = checkpoint_task.transpose().inspect_err(|_| stop.cancel())?;

    let source =
        Source::new(stream, tx, confirm, catalog, start, Duration::from_secs(config.source.status_interval_secs))
            .with_binary_values(binary)
            .with_control(client);
    let snapshot_task = snapshots.as_ref().map(|s| {
        s.start(info.clone(), config.snapshot.workers, config.snapshot.chunk_size, health.clone(), stop.clone())
    });
    if let (Some(s), SnapshotMode::InitialOnly) = (&snapshots, config.snapshot.mode) {
        tokio::spawn(exit_when_copied(s.clone(), progress.clone(), stop.clone()));
    }
    let source_result = source.run(stop.clone()).await;
    stop.cancel();
    let snapshot_result = match snapshot_task {
        Some(task) => match task.await {
            Ok(r) => r.map_err(|e| {
                if e.is_transient() {
                    PipelineError::Transient(e.to_string())
                } else {
                    PipelineError::Postgres(e.to_string())
                }
            }),
            Err(e) => Err(PipelineError::Internal(format!("snapshot task: {e}"))),
        },
        None => Ok(()),
    };
    let _ = reporter.await;

    let sink_result = sink_task.await.unwrap_or_else(|e| Err(PipelineError::Internal(format!("sink task: {e}"))));
    let flushed = progress.flushed();
    // The final checkpoint, then the final status update up to what is durable.
    let (checkpoint_result, confirmed) = match checkpoint_task {
        Some(task) => match task.await {
            Ok(mut writer) => {
                let r = writer.write_if_advanced(flushed).map_err(PipelineError::from);
                if let Err(e) = &r {
                    tracing::error!(error = %e, durable = %writer.written, flushed = %flushed, "final checkpoint write failed; PostgreSQL stays confirmed up to the last durable checkpoint");
                }
                (r, writer.written)
            }
            Err(e) => (Err(PipelineError::Internal(format!("checkpoint task: {e}"))), *durable_rx.borrow()),
        },
        None => (Ok(()), flushed),
    };

    let source_result = match source_result {
        Ok(stopped) => {
            // Final status update: the server may now drop WAL up to what Kafka holds and the checkpoint records.
            let mut stream = stopped.stream;
            let r = stream.send_status(stopped.received.max(confirmed), confirmed, confirmed, false).await;
            if let Err(e) = r.and(stream.finish().await) {
                tracing::warn!(error = %e, "final status update failed; the server resumes from its last confirmed position");
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    tracing::info!(flushed = %flushed, confirmed = %confirmed, "stopped");

    sink_result?;
    checkpoint_result?;
    source_result?;
    snapshot_result?;
    Ok(())
}

/// The snapshot state of this session: what the checkpoint recorded, or a new plan of `snapshot.tables` when
/// [`resume::decide`] asks for one (no checkpoint yet, or the recovery from a gap).
fn plan_snapshots(
    config: &Config,
    state: Option<crate::snapshot::SnapshotState>,
    plan_now: bool,
) -> Result<Arc<Snapshots>, PipelineError> {
    let captured = config.captured_tables().map_err(|e| PipelineError::Config(e.to_string()))?;
    let snapshots =
        Snapshots::new(&config.source.slot, captured.clone(), config.snapshot.backfill_requests, Ledger::new(state));
    if plan_now {
        let tables = config.snapshot.tables(&captured).map_err(|e| PipelineError::Config(e.to_string()))?;
        tracing::info!(tables = tables.len(), "snapshot planned");
        snapshots.plan(&tables);
    }
    Ok(snapshots)
}

/// Problems with ficus's own state at start (state.dir unusable, checkpoint corrupt or of another source) are
/// fixed by the operator: exit 2 like any configuration problem.
fn state_error(e: CheckpointError) -> PipelineError {
    PipelineError::Config(format!("state.dir: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_rule() {
        let fix_and_rerun = [
            PipelineError::Config("state.dir: checkpoint I/O".into()),
            PipelineError::Preflight(Report::default()),
            PipelineError::Sink(SinkError::Config("sasl.pasword".into())),
            state_error(CheckpointError::Corrupt("not JSON".into())),
        ];
        for e in &fix_and_rerun {
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        let runtime = [
            PipelineError::Postgres("connection reset".into()),
            PipelineError::Transient("server restarting".into()),
            PipelineError::Internal("task panicked".into()),
            PipelineError::Checkpoint(CheckpointError::Corrupt("final write".into())),
            PipelineError::Sink(SinkError::Delivery("message too large".into())),
            PipelineError::Route { lsn: Lsn(1), message: "rule failed".into() },
        ];
        for e in &runtime {
            assert_eq!(e.exit_code(), 1, "{e}");
        }
    }
}
