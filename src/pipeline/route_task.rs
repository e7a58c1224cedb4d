//! The route task: routes every change and message into records and hands them, in stream order, to the session's
//! [`Destination`] (Kafka, the null output of benchmarks, or stdout in a dry run); commits transactions to the ack
//! tracker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::monitor::publish_counts;
use super::output::Destination;
use super::PipelineError;
use crate::health::Health;
use crate::kafka::SinkError;
use crate::lsn::Lsn;
use crate::progress::Progress;
use crate::record::Record;
use crate::router::Router;
use crate::snapshot::Tap;
use crate::source::{Batch, SourceEvent};

/// Routes every event and hands records to Kafka in order; returns after the channel closed and the producer flushed.
pub(super) async fn route_loop(
    mut rx: mpsc::Receiver<Batch>,
    mut router: Router,
    mut destination: Destination,
    progress: Arc<Progress>,
    stop: CancellationToken,
    health: Arc<Health>,
    mut tap: Option<Tap>,
) -> Result<(), PipelineError> {
    let mut reported = std::time::Instant::now();
    let mut unpublished = false;
    let mut current = None;
    let result = async {
        let mut records: Vec<Record> = Vec::with_capacity(4);
        let mut commit_time_us = 0i64;
        // The xid of the transaction being routed (the snapshot tap remembers which committed, see snapshot::window),
        // and whether it changed a row: one that did not (a snapshot watermark, another worker's included) cannot
        // make a chunk stale, and remembering it would fail the commit race check for nothing.
        let mut xid = 0u32;
        let mut changed_rows = false;
        loop {
            // exactly_once: commit an open Kafka transaction that waited long enough, at a source commit boundary.
            // The deadline counts from the transaction's start, so a stream of keepalives cannot postpone it.
            let due = destination.commit_due_at().filter(|_| current.is_none());
            // Counts not yet in /status are published once the stream pauses, not only with the next change.
            let publish_at = tokio::time::Instant::from_std(reported + Duration::from_millis(250));
            let batch = tokio::select! {
                b = rx.recv() => b,
                _ = tokio::time::sleep_until(due.unwrap_or(publish_at)), if due.is_some() => {
                    destination.commit(&progress).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(publish_at), if unpublished => {
                    reported = std::time::Instant::now();
                    unpublished = false;
                    publish_counts(&health, &router, commit_time_us);
                    continue;
                }
            };
            let Some(batch) = batch else { break };
            for event in batch {
                match event {
                    // A dry run confirms nothing: its transactions never enter the progress tracker.
                    SourceEvent::Begin(_) if !destination.confirms() => current = Some(crate::progress::TxSeq(0)),
                    SourceEvent::Begin(meta) => {
                        current = Some(progress.begin_at(meta.commit_time_us));
                        commit_time_us = meta.commit_time_us;
                        xid = meta.xid;
                        changed_rows = false;
                    }
                    SourceEvent::Change(change) => {
                        let tx = current.ok_or_else(|| PipelineError::Route {
                            lsn: change.lsn,
                            message: "change outside a transaction".into(),
                        })?;
                        if let Some(tap) = &mut tap {
                            tap.observe(&change);
                        }
                        changed_rows = true;
                        records.clear();
                        router.route(&change, &mut records).map_err(route_error(change.lsn))?;
                        destination.send(tx, &records, change.lsn).await?;
                    }
                    SourceEvent::Message(message) => {
                        let tx = current.ok_or_else(|| PipelineError::Route {
                            lsn: message.lsn,
                            message: "message outside a transaction".into(),
                        })?;
                        if let (Some(tap), true) = (&mut tap, Tap::is_control(&message.prefix)) {
                            // A high watermark releases its chunk's rows here, in the watermark's transaction.
                            let rows = tap.message(&message).map_err(route_error(message.lsn))?;
                            let (n, table_done) = (rows.len(), tap.table_done());
                            for (i, row) in rows.into_iter().enumerate() {
                                records.clear();
                                let last = table_done && i + 1 == n;
                                let change = &row.change;
                                router
                                    .route_snapshot_row(change, last, row.encoded.as_ref(), &mut records)
                                    .map_err(route_error(change.lsn))?;
                                destination.send(tx, &records, change.lsn).await?;
                            }
                            continue;
                        }
                        records.clear();
                        router.route_message(&message, &mut records).map_err(route_error(message.lsn))?;
                        destination.send(tx, &records, message.lsn).await?;
                    }
                    SourceEvent::Commit { end_lsn } => {
                        let Some(tx) = current.take() else { continue };
                        // The END records of transaction metadata (Debezium's, ficus's own), inside the transaction they end.
                        records.clear();
                        router.route_commit(&mut records);
                        if !records.is_empty() {
                            destination.send(tx, &records, end_lsn).await?;
                        }
                        if destination.confirms() {
                            if let Some(tap) = &mut tap {
                                if changed_rows {
                                    tap.committed(xid);
                                }
                                tap.commit(end_lsn);
                            }
                            progress.commit_at(tx, end_lsn, commit_time_us);
                        }
                        destination.source_committed(tx, end_lsn, &progress).await?;
                    }
                    SourceEvent::Idle(at) => {
                        progress.idle(at);
                        destination.idle(at, &progress);
                    }
                }
            }
            if let Some(e) = delivery_failure(&progress) {
                return Err(e);
            }
            // Counts for /status, at most four times a second.
            if reported.elapsed() >= Duration::from_millis(250) {
                reported = std::time::Instant::now();
                unpublished = false;
                publish_counts(&health, &router, commit_time_us);
            } else {
                unpublished = true;
            }
        }
        // The stream ended cleanly: commit what is complete.
        if current.is_none() {
            destination.commit(&progress).await?;
        }
        Ok(())
    }
    .await;
    // A failure, or a shutdown in the middle of a source transaction: nothing uncommitted may become visible.
    destination.abort().await;
    publish_counts(&health, &router, 0);
    for d in router.dropped() {
        tracing::info!(table = %d.table, count = d.count, "changes no rule turned into an event and not published as raw changes (dropped on purpose)");
    }
    for (i, rule) in router.rules().rules().iter().enumerate() {
        let st = router.rules().stats(i);
        tracing::info!(rule = %rule.name, version = rule.version, events = st.events, dlq = st.dlq, skipped = st.skipped, "rule counts");
    }
    if result.is_err() {
        stop.cancel();
        // Keep draining so the source never blocks on a full channel while it shuts down.
        while rx.recv().await.is_some() {}
    }
    destination.flush(&progress).await;
    if let Some(e) = delivery_failure(&progress) {
        return Err(e);
    }
    result
}

/// The first delivery failure, as the error that stops (permanent) or restarts (transient) the session.
fn delivery_failure(progress: &Progress) -> Option<PipelineError> {
    let f = progress.failure()?;
    Some(PipelineError::Sink(if progress.failure_is_transient() {
        SinkError::Retriable(f)
    } else {
        SinkError::Delivery(f)
    }))
}

/// A routing failure of the change or message at `lsn`.
fn route_error<E: std::fmt::Display>(lsn: Lsn) -> impl Fn(E) -> PipelineError {
    move |e| PipelineError::Route { lsn, message: e.to_string() }
}
