//! Where a session's records go: the [`Destination`] and the contract every destination keeps.
//!
//! **Contract** (what the route task may rely on, whichever destination):
//! - [`Destination::send`] takes the records of one change or message in stream order and keeps that order per
//!   key. A record counts for its source transaction `tx` in the ack tracker ([`Progress`]): the transaction's end
//!   becomes confirmable only once every record of it and of every transaction before it is acknowledged.
//! - [`Destination::source_committed`] is called at every source commit, after its records were sent;
//!   [`Destination::idle`] with a server position outside any transaction (confirmable once nothing is pending).
//! - At the end of a session, what is complete is committed ([`Destination::commit`]) after a clean end of the
//!   stream, and anything uncommitted is aborted ([`Destination::abort`]), so it never becomes visible.
//!
//! The destinations:
//! - `Kafka` (`kafka.delivery: at_least_once`): the idempotent producer; acknowledgements arrive asynchronously
//!   through librdkafka's delivery callbacks. After a crash the transactions after the last checkpoint repeat.
//! - `KafkaTransactional` (`exactly_once`): the same producer inside Kafka transactions that also carry the
//!   checkpoint record; a source transaction is released to the tracker only when its Kafka transaction committed
//!   ([`KafkaTxn`]). read_committed consumers see each change once.
//! - `Null` (benchmarks): encodes everything, publishes nothing; a transaction is confirmable at its commit.
//! - `Print` (`--dry-run`): one JSON line per record on stdout; confirms nothing (its transactions never enter the
//!   tracker), so nothing is acknowledged to PostgreSQL.

use std::time::Duration;

use super::PipelineError;
use crate::kafka::exactly_once::KafkaTxn;
use crate::kafka::KafkaSink;
use crate::lsn::Lsn;
use crate::progress::{Progress, TxSeq};
use crate::record::Record;

/// Where the route task puts records.
pub(super) enum Destination {
    Kafka(KafkaSink),
    KafkaTransactional(KafkaTxn),
    Null,
    Print(std::io::BufWriter<std::io::Stdout>),
}

impl Destination {
    /// Whether the records' transactions are tracked and confirmed (not in a dry run).
    pub(super) fn confirms(&self) -> bool {
        !matches!(self, Destination::Print(_))
    }

    /// The producer, for the final flush (Kafka destinations only).
    fn producer(&self) -> Option<&KafkaSink> {
        match self {
            Destination::Kafka(sink) => Some(sink),
            Destination::KafkaTransactional(txn) => Some(txn.producer()),
            Destination::Null | Destination::Print(_) => None,
        }
    }

    /// exactly_once: when the open Kafka transaction is due for a commit.
    pub(super) fn commit_due_at(&self) -> Option<tokio::time::Instant> {
        match self {
            Destination::KafkaTransactional(txn) => txn.due_at(),
            _ => None,
        }
    }

    /// exactly_once: commits the open Kafka transaction (at a source commit boundary).
    pub(super) async fn commit(&mut self, progress: &Progress) -> Result<(), PipelineError> {
        if let Destination::KafkaTransactional(txn) = self {
            txn.commit(progress).await?;
        }
        Ok(())
    }

    /// Hands the records of one change or message to the destination, in order. exactly_once: a Kafka transaction
    /// is opened before the first record after a commit.
    pub(super) async fn send(&mut self, tx: TxSeq, records: &[Record], lsn: Lsn) -> Result<(), PipelineError> {
        match self {
            Destination::KafkaTransactional(txn) => {
                if !records.is_empty() {
                    txn.before_send(records.iter().map(Record::size).sum())?;
                }
                txn.producer().send_all(tx, records).await?;
            }
            Destination::Kafka(sink) => sink.send_all(tx, records).await?,
            // Nothing is published, so nothing is outstanding: the transaction is confirmable at its commit, as if
            // every record had been acknowledged at once (no per-record trip through the tracker's lock).
            Destination::Null => {}
            Destination::Print(out) => {
                for record in records {
                    print_record(out, record)
                        .map_err(|e| PipelineError::Route { lsn, message: format!("writing to stdout: {e}") })?;
                }
            }
        }
        Ok(())
    }

    /// A source transaction ended at `end` (its records were sent). Print: the lines are flushed.
    pub(super) async fn source_committed(
        &mut self,
        tx: TxSeq,
        end: Lsn,
        progress: &Progress,
    ) -> Result<(), PipelineError> {
        match self {
            Destination::Print(out) => std::io::Write::flush(out)
                .map_err(|e| PipelineError::Route { lsn: end, message: format!("writing to stdout: {e}") }),
            Destination::KafkaTransactional(txn) => Ok(txn.source_committed(tx, end, progress).await?),
            Destination::Kafka(_) | Destination::Null => Ok(()),
        }
    }

    /// A server position with no transaction open.
    pub(super) fn idle(&mut self, at: Lsn, progress: &Progress) {
        if let Destination::KafkaTransactional(txn) = self {
            txn.idle(at, progress);
        }
    }

    /// Aborts the open Kafka transaction, if any (after a failure, or a shutdown in the middle of a source
    /// transaction): nothing uncommitted becomes visible. A no-op after a commit.
    pub(super) async fn abort(&mut self) {
        if let Destination::KafkaTransactional(txn) = self {
            txn.abort().await;
        }
    }

    /// Waits up to 15 s for the producer to deliver what it holds (Kafka destinations). 15 s: with the source's
    /// wait for an interrupted transaction (10 s) a shutdown stays under 30 s.
    pub(super) async fn flush(&self, progress: &Progress) {
        let Some(sink) = self.producer() else { return };
        if let Err(e) = sink.flush(Duration::from_secs(15)).await {
            tracing::warn!(
                error = %e,
                in_flight = sink.in_flight(),
                confirmed_up_to = %progress.flushed(),
                "producer did not flush everything within 15 s; the changes after confirmed_up_to are not confirmed and \
                 the next start publishes them again"
            );
        }
    }
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
