//! One connection's worth of a run: connect the control connection, run the preflight (a blocking problem stops
//! here, before anything is created), make sure the publication exists, choose binary or text values (from the
//! columns the stream sends), then run replication sessions next to the monitors and the table watch until shutdown or an error.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;

use tokio_util::sync::CancellationToken;

use super::monitor::{heartbeat_loop, monitor_server};
use super::session::stream_session;
use super::{tables, Output, PipelineError, RunOptions};
use crate::config::conninfo::ConnInfo;
use crate::config::{Config, ValueFormat};
use crate::health::Health;
use crate::kafka::KafkaSink;
use crate::postgres::admin;
use crate::postgres::control::{self};
use crate::postgres::value::binary;
use crate::rules::Rules;
use crate::source::SourceError;

pub(super) async fn run_with(
    config: &Config,
    rules: &Arc<Rules>,
    options: &RunOptions,
    shutdown: &CancellationToken,
    health: &Arc<Health>,
    standby: bool,
) -> Result<(), PipelineError> {
    let config = config.clone();
    let info = ConnInfo::parse(&config.source.url).map_err(|e| PipelineError::Config(format!("source.url: {e}")))?;
    // A hot standby (`standby`: the slot was busy at the last attempt) retries quietly: what it said once stays true.
    if standby {
        tracing::debug!(url = %info.redacted(), slot = %config.source.slot, "connecting to PostgreSQL");
    } else {
        tracing::info!(url = %info.redacted(), slot = %config.source.slot, "connecting to PostgreSQL");
    }
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
            if standby {
                tracing::debug!(check = %item.title, fix = item.fix.as_deref().unwrap_or(""), "{}", item.detail);
            } else {
                tracing::warn!(check = %item.title, fix = item.fix.as_deref().unwrap_or(""), "{}", item.detail);
            }
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
            return Err(PipelineError::SlotBusy(format!("{}: {}", failures[0].title, failures[0].detail)));
        }
        return Err(PipelineError::Preflight(report));
    }
    if standby {
        tracing::info!(slot = %config.source.slot, "the replication slot is free: this hot standby takes over");
    }
    // A standby (capture from a standby, 16+) cannot write: the preflight refused a publication gap there, and the
    // heartbeat is off (its line in the preflight says how to run it on the primary instead).
    let recovery = control::in_recovery(&client).await?;
    if !recovery {
        admin::ensure_publication(&client, &config).await?;
    }
    // A dry run streams text values: switching to text later would need a new temporary slot, losing what the
    // server wrote in between.
    let mut binary = !dry_run && binary_values_possible(&client, &config, &catalog).await?;
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
    let heartbeat = (config.source.heartbeat_interval_secs > 0 && options.output != Output::DryRun && !recovery)
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

/// Whether the stream can request binary values: `source.value_format: auto` and every column the stream sends has a
/// type [`binary::supports`]. Columns never sent (virtual generated ones; stored generated ones the publication does
/// not publish; those outside a column list) do not count. Logs why not otherwise.
async fn binary_values_possible(
    client: &tokio_postgres::Client,
    config: &Config,
    catalog: &control::Catalog,
) -> Result<bool, PipelineError> {
    if config.source.value_format == ValueFormat::Text {
        return Ok(false);
    }
    for (table, info) in &catalog.tables {
        let sent = control::published_columns(client, &config.source.publication, table, info).await?;
        if let Some(c) = info.columns.iter().find(|c| sent.contains(&c.name) && !binary::supports(c.type_oid)) {
            tracing::info!(
                table = %table,
                column = %c.name,
                r#type = %c.type_name,
                "streaming text values: this column's type has no binary mapping"
            );
            return Ok(false);
        }
    }
    Ok(true)
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

/// Waits until the broker answers, retrying with jittered exponential backoff (readiness stays false meanwhile).
pub(super) async fn wait_for_broker(
    sink: &KafkaSink,
    brokers: &str,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let mut delays = backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build();
    let mut waiting: Option<std::time::Instant> = None;
    loop {
        match sink.probe(Duration::from_secs(5)).await {
            Ok(n) => {
                match waiting {
                    Some(since) => {
                        tracing::info!(brokers, count = n, waited_secs = since.elapsed().as_secs(), "Kafka reachable")
                    }
                    None => tracing::info!(brokers, count = n, "Kafka reachable"),
                }
                return Ok(());
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                // Said once, with the fix; the retries are debug lines (no log storm however long it lasts).
                if waiting.is_none() {
                    waiting = Some(std::time::Instant::now());
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "Kafka not reachable yet: waiting for the brokers before streaming (not ready meanwhile); \
                         check kafka.brokers, that the brokers run and are reachable from here (listeners, DNS, \
                         firewall), and kafka.properties for TLS/SASL"
                    );
                } else {
                    tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "Kafka still not reachable");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
