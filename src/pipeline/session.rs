//! One replication session: resume point (checkpoint, slot, Kafka checkpoint), the destination, the source, route,
//! checkpoint, snapshot and monitor tasks, then the drain in shutdown order and the final checkpoint and status
//! update.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpointing::{checkpoint_loop, CheckpointWriter};
use super::error::{replication_error, state_error};
use super::monitor::report_loop;
use super::output::Destination;
use super::route_task::route_loop;
use super::startup::wait_for_broker;
use super::{Output, PipelineError, RunOptions};
use crate::check::resume;
use crate::checkpoint::{CheckpointStamp, FileCheckpointStore, SnapshotAt};
use crate::config::conninfo::ConnInfo;
use crate::config::{Config, Delivery, SnapshotMode};
use crate::encode::SourceInfo;
use crate::health::Health;
use crate::ident::quote_ident;
use crate::kafka::exactly_once::{self, KafkaTxn};
use crate::kafka::KafkaSink;
use crate::lsn::Lsn;
use crate::postgres::admin;
use crate::postgres::control::{self};
use crate::postgres::replication::ReplicationConnection;
use crate::progress::Progress;
use crate::router::Router;
use crate::rules::{RuleSet, Rules};
use crate::snapshot::{Ledger, Snapshots};
use crate::source::{Batch, Source};

/// One replication stream from the checkpoint until shutdown or an error: connect, start at the checkpoint, run
/// source, sink and checkpoint tasks, then drain and write the final checkpoint and status update.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_session(
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
    // Read per session: a promotion ends recovery, and the next session may write again.
    let recovery = control::in_recovery(client).await?;
    let (slot_name, start, store, snapshot_state) = if dry_run {
        // A temporary slot disappears with this connection: nothing of the dry run stays on the server.
        let name = format!("ficus_dry_run_{}", std::process::id());
        let create = repl.create_logical_slot(&name, true);
        let created = if recovery { logged_standby_wait(&name, create).await } else { create.await };
        let created = created.map_err(replication_error)?;
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
                Some(s) => match s.invalidated() {
                    Some(why) => resume::SlotState::Invalidated(why),
                    None => resume::SlotState::Usable { confirmed: s.confirmed_flush.unwrap_or(Lsn::INVALID) },
                },
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
            let unfinished = state.as_ref().is_some_and(|s| !s.jobs.is_empty());
            if recovery && (plan_now || unfinished) {
                let what = if plan_now {
                    "a snapshot is planned on this start"
                } else {
                    "a snapshot or backfill is unfinished"
                };
                return Err(PipelineError::Config(format!("{what}, but {}", crate::snapshot::SNAPSHOT_ON_STANDBY)));
            }
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
                    let version: i32 = control::setting(client, "server_version_num").await?.parse().unwrap_or(0);
                    let failover = config.source.failover_slot.wanted(version).map_err(PipelineError::Config)?;
                    // PostgreSQL refuses failover for a slot created on a standby (the preflight refused `true`).
                    let created = if recovery {
                        logged_standby_wait(&config.source.slot, admin::create_slot(client, &config.source.slot, false))
                            .await?
                    } else {
                        admin::create_slot(client, &config.source.slot, failover).await?
                    };
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
        false => Some(plan_snapshots(config, snapshot_state, plan_now, recovery)?),
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
    let (tx, rx) = mpsc::channel::<Batch>(crate::source::CHANNEL_BATCHES);

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
            .with_receive_timeout(config.source.receive_timeout_secs)
            .with_control(client)
            .with_status(health.clone());
    let snapshot_task = snapshots.as_ref().map(|s| {
        let settings = crate::snapshot::CopySettings {
            workers: config.snapshot.workers,
            chunk_size: config.snapshot.chunk_size,
            split_min_rows: config.snapshot.split_min_rows,
            changes: Arc::new(config.changes.clone()),
        };
        s.start(info.clone(), settings, health.clone(), stop.clone())
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
    recovery: bool,
) -> Result<Arc<Snapshots>, PipelineError> {
    let captured = config.captured_tables().map_err(|e| PipelineError::Config(e.to_string()))?;
    // A request written on the primary replicates to a standby's stream; it is refused there, with the reason.
    let refuse_requests = match (recovery, config.snapshot.backfill_requests) {
        (true, _) => Some(crate::snapshot::SNAPSHOT_ON_STANDBY.to_string()),
        (false, false) => Some("snapshot.backfill_requests is false".to_string()),
        (false, true) => None,
    };
    let snapshots = Snapshots::new(
        &config.source.slot,
        &config.source.publication,
        captured.clone(),
        refuse_requests,
        Ledger::new(state),
    );
    if plan_now {
        let tables = config.snapshot.tables(&captured).map_err(|e| PipelineError::Config(e.to_string()))?;
        tracing::info!(tables = tables.len(), "snapshot planned");
        snapshots.plan(&tables);
    }
    Ok(snapshots)
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

/// Creating a slot on a standby (PostgreSQL 16+) waits for the primary's next running-transactions record, which an
/// idle primary may not write for a long time: said in the log at once and every 30 s while `create` lasts, with the
/// statement that ends the wait, rather than hanging silently.
async fn logged_standby_wait<T, E>(
    slot: &str,
    create: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    const WAITING: &str =
        "creating the slot on a standby: PostgreSQL waits for the primary's next running-transactions \
         record; run SELECT pg_log_standby_snapshot(); on the primary to end the wait";
    tracing::info!(slot, "{WAITING}");
    tokio::pin!(create);
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            created = &mut create => return created,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                tracing::warn!(slot, waited_secs = started.elapsed().as_secs(), "still {WAITING}");
            }
        }
    }
}
