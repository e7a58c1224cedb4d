//! The sink task: routes every change and message into records and hands them, in stream order, to Kafka (or to
//! the null sink of benchmarks, or to stdout in a dry run); commits transactions to the ack tracker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::monitor::publish_counts;
use super::PipelineError;
use crate::health::Health;
use crate::kafka::exactly_once::KafkaTxn;
use crate::kafka::{KafkaSink, SinkError};
use crate::lsn::Lsn;
use crate::progress::Progress;
use crate::record::Record;
use crate::router::Router;
use crate::snapshot::Tap;
use crate::source::{Batch, SourceEvent};

/// Routes every event and hands records to Kafka in order; returns after the channel closed and the producer flushed.
pub(super) async fn sink_loop(
    mut rx: mpsc::Receiver<Batch>,
    mut router: Router,
    mut sink: Sink,
    mut kafka_txn: Option<KafkaTxn>,
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
        loop {
            // exactly_once: commit an open Kafka transaction that waited long enough, at a source commit boundary.
            // The deadline counts from the transaction's start, so a stream of keepalives cannot postpone it.
            let due = kafka_txn.as_ref().and_then(|t| t.due_at()).filter(|_| current.is_none());
            // Counts not yet in /status are published once the stream pauses, not only with the next change.
            let publish_at = tokio::time::Instant::from_std(reported + Duration::from_millis(250));
            let batch = tokio::select! {
                b = rx.recv() => b,
                _ = tokio::time::sleep_until(due.unwrap_or(publish_at)), if due.is_some() => {
                    if let Some(t) = kafka_txn.as_mut() {
                        t.commit(&progress).await?;
                    }
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
                    SourceEvent::Begin(_) if matches!(sink, Sink::Print(_)) => {
                        current = Some(crate::progress::TxSeq(0))
                    }
                    SourceEvent::Begin(meta) => {
                        current = Some(progress.begin());
                        commit_time_us = meta.commit_time_us;
                    }
                    SourceEvent::Change(change) => {
                        let tx = current.ok_or_else(|| PipelineError::Route {
                            lsn: change.lsn,
                            message: "change outside a transaction".into(),
                        })?;
                        if let Some(tap) = &mut tap {
                            tap.observe(&change);
                        }
                        records.clear();
                        router.route(&change, &mut records).map_err(route_error(change.lsn))?;
                        emit(&mut sink, &mut kafka_txn, &progress, tx, &records, change.lsn).await?;
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
                            for (i, change) in rows.into_iter().enumerate() {
                                records.clear();
                                let last = table_done && i + 1 == n;
                                router
                                    .route_snapshot_row(&change, last, &mut records)
                                    .map_err(route_error(change.lsn))?;
                                emit(&mut sink, &mut kafka_txn, &progress, tx, &records, change.lsn).await?;
                            }
                            continue;
                        }
                        records.clear();
                        router.route_message(&message, &mut records).map_err(route_error(message.lsn))?;
                        emit(&mut sink, &mut kafka_txn, &progress, tx, &records, message.lsn).await?;
                    }
                    SourceEvent::Commit { end_lsn } => {
                        // Debezium's transaction metadata END record, inside the transaction it ends.
                        records.clear();
                        router.route_commit(&mut records);
                        if let (Some(tx), false) = (current, records.is_empty()) {
                            emit(&mut sink, &mut kafka_txn, &progress, tx, &records, end_lsn).await?;
                        }
                        if let Sink::Print(out) = &mut sink {
                            current = None;
                            std::io::Write::flush(out).map_err(|e| PipelineError::Route {
                                lsn: end_lsn,
                                message: format!("writing to stdout: {e}"),
                            })?;
                        } else if let Some(tx) = current.take() {
                            if let Some(tap) = &mut tap {
                                tap.commit(end_lsn);
                            }
                            progress.commit_at(tx, end_lsn, commit_time_us);
                            if let Some(t) = kafka_txn.as_mut() {
                                t.source_committed(tx, end_lsn, &progress).await?;
                            }
                        }
                    }
                    SourceEvent::Idle(at) => {
                        progress.idle(at);
                        if let Some(t) = kafka_txn.as_mut() {
                            t.idle(at, &progress);
                        }
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
        if let (Some(t), None) = (kafka_txn.as_mut(), current) {
            t.commit(&progress).await?;
        }
        Ok(())
    }
    .await;
    if let Some(t) = kafka_txn.as_mut() {
        // A failure, or a shutdown in the middle of a source transaction: nothing uncommitted may become visible.
        t.abort().await;
    }
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
    if let Sink::Kafka(sink) = &sink {
        // 15 s: with the source's wait for an interrupted transaction (10 s) a shutdown stays under 30 s.
        let waited = sink.flush(Duration::from_secs(15)).await;
        if let Err(e) = waited {
            tracing::warn!(
                error = %e,
                in_flight = sink.in_flight(),
                confirmed_up_to = %progress.flushed(),
                "producer did not flush everything within 15 s; the changes after confirmed_up_to are not confirmed and \
                 the next start publishes them again"
            );
        }
    }
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

/// Hands the records of one change or message to the sink, in order. exactly_once: a Kafka transaction is opened
/// before the first record after a commit.
async fn emit(
    sink: &mut Sink,
    kafka_txn: &mut Option<KafkaTxn>,
    progress: &Progress,
    tx: crate::progress::TxSeq,
    records: &[Record],
    lsn: Lsn,
) -> Result<(), PipelineError> {
    if let (Some(t), false) = (kafka_txn.as_mut(), records.is_empty()) {
        t.before_send(records.iter().map(|r| r.payload.len() + r.key.as_ref().map_or(0, Vec::len)).sum())?;
    }
    for record in records {
        match sink {
            Sink::Kafka(sink) => sink.send(tx, record).await?,
            Sink::Null => {
                progress.add_message(tx);
                progress.ack(tx);
            }
            Sink::Print(out) => print_record(out, record)
                .map_err(|e| PipelineError::Route { lsn, message: format!("writing to stdout: {e}") })?,
        }
    }
    Ok(())
}

/// Where the sink task puts records.
pub(super) enum Sink {
    Kafka(KafkaSink),
    Null,
    Print(std::io::BufWriter<std::io::Stdout>),
}

/// One record as a JSON line: `{"topic", "key", "headers", "value"}`. The value is embedded as JSON when it is
/// JSON (every encoding ficus writes), else as a string.
fn print_record(out: &mut impl std::io::Write, record: &Record) -> std::io::Result<()> {
    use crate::postgres::value::write_json_string;
    let mut line = Vec::with_capacity(record.payload.len() + 256);
    line.extend_from_slice(b"{\"topic\":");
    write_json_string(&mut line, &record.topic);
    line.extend_from_slice(b",\"key\":");
    match &record.key {
        Some(k) => write_json_string(&mut line, &String::from_utf8_lossy(k)),
        None => line.extend_from_slice(b"null"),
    }
    line.extend_from_slice(b",\"headers\":{");
    for (i, (k, v)) in record.headers.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        write_json_string(&mut line, k);
        line.push(b':');
        write_json_string(&mut line, v.as_str());
    }
    line.extend_from_slice(b"},\"value\":");
    let start = line.len();
    if record.tombstone {
        line.extend_from_slice(b"null");
    } else {
        crate::encode::write_json_or_string(&mut line, &record.payload);
    }
    // One record per line: a `json` column keeps the line breaks it was written with. In valid JSON a raw line break
    // can only be insignificant whitespace (inside strings it is escaped), so dropping them changes no value.
    let value = line.split_off(start);
    line.extend(value.into_iter().filter(|b| !matches!(b, b'\n' | b'\r')));
    line.extend_from_slice(b"}\n");
    out.write_all(&line)
}
