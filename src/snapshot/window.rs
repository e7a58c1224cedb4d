//! The stream side of the snapshot: watermark windows (DBLog) and backfill requests, seen in stream order by the
//! sink task.
//!
//! For each chunk a worker writes a low watermark, reads the chunk, and writes a high watermark, each a
//! transactional logical decoding message. Between the two, the stream shows every change committed while the
//! chunk was read; [`Tap::observe`] collects the keys those changes touched. At the high watermark the chunk's rows
//! whose key was touched are dropped (the stream already carried a newer image, or the row's deletion), the rest are
//! emitted as `read` changes inside the high watermark's transaction. So:
//! - a snapshot row is never older than a change already published for its key (every change committed before the
//!   chunk's read is published before the chunk, every later one after it or instead of the row);
//! - a row deleted while the chunk was read never reappears;
//! - the chunk's rows share the high watermark transaction's place in the ack tracker, so the checkpoint passes it
//!   only when Kafka holds them all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::change::{Change, LogicalMessage, Op};
use crate::ident::TableName;
use crate::lsn::Lsn;

use super::ledger::Mutation;
use super::{chunk, Snapshots, BACKFILL_PREFIX, WATERMARK_PREFIX};
use crate::checkpoint::Job;

/// A watermark message's content.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Watermark {
    pub slot: String,
    /// Random per replication session: watermarks of an earlier session or another instance are not ours.
    pub run: String,
    pub chunk: u64,
    /// `low` or `high`.
    pub mark: String,
    /// Table OID (low watermarks).
    #[serde(default)]
    pub oid: u32,
}

/// A backfill request's content (written by `ficus backfill`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BackfillRequest {
    pub slot: String,
    pub schema: String,
    pub table: String,
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

struct Window {
    oid: u32,
    /// Raw-event key JSON of every row a change touched while the chunk was read.
    keys: HashSet<Vec<u8>>,
    truncated: bool,
}

/// Held by the sink task.
pub struct Tap {
    shared: Arc<Snapshots>,
    windows: HashMap<u64, Window>,
    at_commit: Vec<Mutation>,
    /// The rows the last [`Tap::message`] returned end their table's snapshot (Debezium's `snapshot` marker).
    table_done: bool,
}

/// A watermark or request that cannot be handled.
#[derive(Debug, thiserror::Error)]
#[error("snapshot watermark: {0}")]
pub struct TapError(String);

impl Tap {
    pub fn new(shared: Arc<Snapshots>) -> Tap {
        Tap { shared, windows: HashMap::new(), at_commit: Vec::new(), table_done: false }
    }

    /// Whether the last row the last [`Tap::message`] returned is the last row of its table's snapshot (the chunk
    /// was the table's last: fewer rows than the chunk size).
    pub fn table_done(&self) -> bool {
        self.table_done
    }

    /// Whether `prefix` is one of the snapshot's control messages (never routed to rules).
    pub fn is_control(prefix: &str) -> bool {
        matches!(prefix, WATERMARK_PREFIX | BACKFILL_PREFIX)
    }

    /// Notes the keys a change touches while a window on its table is open. Free when no window is open.
    pub fn observe(&mut self, change: &Change) {
        if self.windows.is_empty() {
            return;
        }
        for w in self.windows.values_mut().filter(|w| w.oid == change.table.oid) {
            if change.op == Op::Truncate {
                w.truncated = true;
                continue;
            }
            for row in [&change.before, &change.after].into_iter().flatten() {
                if let Ok(Some(key)) = crate::encode::key_json(&change.table, row) {
                    w.keys.insert(key);
                }
            }
        }
    }

    /// Handles a control message; returns the snapshot rows to publish now (at a high watermark).
    pub fn message(&mut self, message: &LogicalMessage) -> Result<Vec<Change>, TapError> {
        self.table_done = false;
        if message.prefix == BACKFILL_PREFIX {
            self.request(message);
            return Ok(Vec::new());
        }
        let Ok(mark) = serde_json::from_slice::<Watermark>(&message.content) else {
            tracing::warn!(lsn = %message.lsn, "ignoring a malformed snapshot watermark");
            return Ok(Vec::new());
        };
        if mark.slot != self.shared.slot || mark.run != self.shared.run {
            // Another instance's, or one of an earlier session of ours whose chunk is read again.
            return Ok(Vec::new());
        }
        match mark.mark.as_str() {
            "low" => {
                self.windows.insert(mark.chunk, Window { oid: mark.oid, keys: HashSet::new(), truncated: false });
                Ok(Vec::new())
            }
            "high" => self.high(mark.chunk, message),
            other => Err(TapError(format!("unknown mark {other:?} at {}", message.lsn))),
        }
    }

    fn high(&mut self, id: u64, message: &LogicalMessage) -> Result<Vec<Change>, TapError> {
        let window = self.windows.remove(&id).ok_or_else(|| {
            TapError(format!("high watermark of chunk {id} at {} without its low watermark", message.lsn))
        })?;
        let chunk = self.shared.take_chunk(id).ok_or_else(|| {
            TapError(format!("high watermark of chunk {id} at {} but no chunk was read", message.lsn))
        })?;
        let total = chunk.rows.len();
        let table = chunk.table.clone();
        let mut out = Vec::with_capacity(if window.truncated { 0 } else { total });
        if !window.truncated {
            for row in chunk.rows {
                if !window.keys.is_empty() {
                    if let Ok(Some(key)) = crate::encode::key_json(&table, &row) {
                        if window.keys.contains(&key) {
                            continue;
                        }
                    }
                }
                let position = message.position.saturating_add(1 + out.len() as u32);
                out.push(Change {
                    op: Op::Read,
                    table: table.clone(),
                    before: None,
                    before_is_key_only: false,
                    after: Some(row),
                    lsn: message.lsn,
                    position,
                    tx: message.tx.clone(),
                });
            }
        }
        if out.len() < total {
            tracing::debug!(chunk = id, table = %table.qualified_name(), superseded = total - out.len(), "snapshot rows superseded by changes during the read");
        }
        self.table_done = chunk.finished && !out.is_empty();
        self.at_commit.push(Mutation::Chunk {
            job: chunk.job,
            after: chunk.after,
            rows: total as u64,
            finished: chunk.finished,
        });
        // The worker may read its next chunk now.
        let _ = chunk.taken.send(());
        Ok(out)
    }

    fn request(&mut self, message: &LogicalMessage) {
        let req = match serde_json::from_slice::<BackfillRequest>(&message.content) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(lsn = %message.lsn, error = %e, "ignoring a malformed backfill request");
                return;
            }
        };
        if req.slot != self.shared.slot {
            return;
        }
        let table = TableName { schema: req.schema.clone(), name: req.table.clone() };
        let refuse =
            |why: String| tracing::error!(table = %table, lsn = %message.lsn, "backfill request refused: {why}");
        if !self.shared.accept_requests {
            return refuse("snapshot.backfill_requests is false".into());
        }
        if !self.shared.captured.contains(&table) {
            return refuse("the table is not in source.tables".into());
        }
        if let Some(f) = &req.filter {
            if let Err(e) = chunk::check_filter(f) {
                return refuse(format!("the --where condition {e}"));
            }
        }
        let job = Job {
            id: self.shared.ledger.next_id(),
            schema: req.schema,
            table: req.table,
            filter: req.filter,
            after: None,
            rows: 0,
        };
        tracing::info!(table = %table, filter = job.filter.as_deref().unwrap_or(""), job = job.id, "backfill requested");
        self.at_commit.push(Mutation::Add(job));
    }

    /// The transaction that carried the control messages committed: their effects count from `end_lsn` on.
    pub fn commit(&mut self, end_lsn: Lsn) {
        for m in self.at_commit.drain(..) {
            if let Mutation::Add(job) = &m {
                self.shared.enqueue(job.clone());
            }
            self.shared.ledger.record(end_lsn, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::change::{Column, Datum, Table, TxMeta};
    use crate::snapshot::{Ledger, ReadyChunk};

    fn table() -> Arc<Table> {
        let col = |name: &str, is_key| Column { name: name.into(), type_oid: 23, type_modifier: -1, is_key };
        Arc::new(Table {
            oid: 42,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![col("id", true), col("n", false)],
            replica_identity: b'd',
        })
    }

    fn row(id: &str, n: &str) -> Vec<Datum> {
        vec![Datum::Text(Bytes::copy_from_slice(id.as_bytes())), Datum::Text(Bytes::copy_from_slice(n.as_bytes()))]
    }

    fn message(shared: &Snapshots, chunk: u64, mark: &str) -> LogicalMessage {
        let w = Watermark { slot: shared.slot.clone(), run: shared.run.clone(), chunk, mark: mark.into(), oid: 42 };
        LogicalMessage {
            prefix: WATERMARK_PREFIX.into(),
            content: Bytes::from(serde_json::to_vec(&w).unwrap()),
            lsn: Lsn(100),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1, commit_lsn: Lsn(101), commit_time_us: 0 }),
        }
    }

    fn change(op: Op, before: Option<Vec<Datum>>, after: Option<Vec<Datum>>) -> Change {
        Change {
            op,
            table: table(),
            before,
            before_is_key_only: false,
            after,
            lsn: Lsn(50),
            position: 0,
            tx: Arc::new(TxMeta { xid: 2, commit_lsn: Lsn(60), commit_time_us: 0 }),
        }
    }

    #[test]
    fn rows_changed_between_the_watermarks_are_not_emitted() {
        let shared = Snapshots::new("s", Vec::new(), true, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        // A change before the window is irrelevant: the chunk read sees its result.
        tap.observe(&change(Op::Update, None, Some(row("1", "0"))));
        assert!(tap.message(&message(&shared, 7, "low")).unwrap().is_empty());
        tap.observe(&change(Op::Update, None, Some(row("2", "5"))));
        tap.observe(&change(Op::Delete, Some(row("3", "")), None));
        let (taken, mut took) = tokio::sync::oneshot::channel();
        let rows = vec![row("1", "0"), row("2", "4"), row("3", "9"), row("4", "1")];
        shared.put_chunk(
            7,
            ReadyChunk { job: 0, table: table(), rows, after: Some(vec!["4".into()]), finished: true, taken },
        );
        let out = tap.message(&message(&shared, 7, "high")).unwrap();
        let ids: Vec<_> = out.iter().map(|c| c.after.as_ref().unwrap()[0].clone()).collect();
        assert_eq!(ids, vec![row("1", "")[0].clone(), row("4", "")[0].clone()]);
        assert!(out.iter().all(|c| c.op == Op::Read && c.tx.commit_lsn == Lsn(101)));
        assert_eq!(out.iter().map(|c| c.position).collect::<Vec<_>>(), vec![1, 2], "positions follow the watermark");
        assert!(took.try_recv().is_ok(), "the worker is told");
        // The chunk counts once its transaction is flushed.
        tap.commit(Lsn(120));
        assert!(!shared.ledger.complete_at(Lsn(119)));
        assert!(shared.ledger.complete_at(Lsn(120)));
    }

    #[test]
    fn a_truncate_during_the_read_drops_the_chunk_and_foreign_watermarks_are_ignored() {
        let shared = Snapshots::new("s", Vec::new(), true, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        let mut other = message(&shared, 1, "low");
        other.content = Bytes::from_static(br#"{"slot":"s","run":"earlier","chunk":1,"mark":"high","oid":42}"#);
        assert!(tap.message(&other).unwrap().is_empty(), "an earlier session's watermark");
        tap.message(&message(&shared, 1, "low")).unwrap();
        tap.observe(&change(Op::Truncate, None, None));
        let (taken, _took) = tokio::sync::oneshot::channel();
        shared.put_chunk(
            1,
            ReadyChunk { job: 0, table: table(), rows: vec![row("1", "0")], after: None, finished: false, taken },
        );
        assert!(tap.message(&message(&shared, 1, "high")).unwrap().is_empty());
        // A high watermark without its low one is an error, not a silent pass.
        assert!(tap.message(&message(&shared, 9, "high")).is_err());
    }
}
