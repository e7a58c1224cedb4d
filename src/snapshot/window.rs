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
//!
//! **The commit race.** PostgreSQL writes a transaction's commit record to the WAL before the transaction becomes
//! visible to new snapshots. A transaction whose commit record precedes the low watermark (so the stream shows it
//! before the window opens) can still be invisible to the chunk's read, if its backend had not yet left the
//! process array when the read took its snapshot: the chunk would then carry the row as it was before that
//! transaction, and publish it after the transaction's own change. The worker reads each chunk in one transaction
//! together with `pg_current_snapshot()`, whose in-progress list names every transaction the read did not see; the
//! tap remembers the transactions it saw commit, and a chunk whose read missed one that committed before its low
//! watermark is not published: its worker is told ([`Handover::ReadAgain`]) and reads the same chunk again in a new
//! window, which sees the transaction. The race needs a backend descheduled between writing its commit and leaving
//! the process array; under CPU contention it recurs (a 2-core machine running the test suite met it about once a
//! second), so it costs one chunk's read, never the session: restarting the session per race, with the reconnect
//! back-off growing, once kept a snapshot from ever finishing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::change::{Change, LogicalMessage, Op};
use crate::ident::TableName;
use crate::lsn::Lsn;

use super::ledger::Mutation;
use super::{chunk, Handover, Snapshots, BACKFILL_PREFIX, WATERMARK_PREFIX};
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
    /// How many commits the tap had seen when the low watermark arrived: a commit numbered below it precedes the
    /// window.
    opened_after: u64,
    /// Raw-event key JSON of every row a change touched while the chunk was read.
    keys: HashSet<Vec<u8>>,
    truncated: bool,
}

/// A snapshot row to publish: its `read` change, and its key and `after` JSON when its worker encoded them.
#[derive(Debug)]
pub struct SnapshotRow {
    pub change: Change,
    pub encoded: Option<crate::encode::EncodedRow>,
}

/// Held by the sink task.
pub struct Tap {
    shared: Arc<Snapshots>,
    windows: HashMap<u64, Window>,
    at_commit: Vec<Mutation>,
    /// The rows the last [`Tap::message`] returned end their table's snapshot (Debezium's `snapshot` marker).
    table_done: bool,
    /// The latest commits seen, `(commit number, xid)`, oldest first, at most [`RECENT_COMMITS`].
    recent: VecDeque<(u64, u32)>,
    /// Commits seen so far (the next commit's number).
    commits: u64,
}

/// How many of the latest commits the tap remembers for the commit race (module docs): a race is between commits a
/// few scheduling slices apart, far fewer than this.
const RECENT_COMMITS: usize = 65_536;

/// A window whose low watermark came within this many commits of the oldest remembered one cannot be checked
/// (the commits just before it are forgotten): its chunk is read again, like a raced one.
const RACE_MARGIN: u64 = 4_096;

/// A watermark or request that cannot be handled (stops the pipeline).
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("snapshot watermark: {0}")]
    Invalid(String),
}

impl Tap {
    pub fn new(shared: Arc<Snapshots>) -> Tap {
        Tap {
            shared,
            windows: HashMap::new(),
            at_commit: Vec::new(),
            table_done: false,
            recent: VecDeque::new(),
            commits: 0,
        }
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
    pub fn message(&mut self, message: &LogicalMessage) -> Result<Vec<SnapshotRow>, TapError> {
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
                let window =
                    Window { oid: mark.oid, opened_after: self.commits, keys: HashSet::new(), truncated: false };
                self.windows.insert(mark.chunk, window);
                Ok(Vec::new())
            }
            "high" => self.high(mark.chunk, message),
            other => Err(TapError::Invalid(format!("unknown mark {other:?} at {}", message.lsn))),
        }
    }

    fn high(&mut self, id: u64, message: &LogicalMessage) -> Result<Vec<SnapshotRow>, TapError> {
        let window = self.windows.remove(&id).ok_or_else(|| {
            TapError::Invalid(format!("high watermark of chunk {id} at {} without its low watermark", message.lsn))
        })?;
        let chunk = self.shared.take_chunk(id).ok_or_else(|| {
            TapError::Invalid(format!("high watermark of chunk {id} at {} but no chunk was read", message.lsn))
        })?;
        if let Some(xid) = self.raced(&window, &chunk.unseen) {
            let missed = if xid == 0 {
                "a transaction it cannot check (too many commits since)".into()
            } else {
                format!("transaction {xid}")
            };
            tracing::info!(chunk = id, table = %chunk.table.qualified_name(), "snapshot chunk not published: its read did not see {missed}, which committed before the chunk's low watermark; the chunk is read again");
            metrics::counter!(crate::metrics::SNAPSHOT_CHUNKS_READ_AGAIN, "table" => chunk.table.qualified_name())
                .increment(1);
            let _ = chunk.taken.send(Handover::ReadAgain);
            return Ok(Vec::new());
        }
        let total = chunk.rows.len();
        let table = chunk.table.clone();
        let mut out = Vec::with_capacity(if window.truncated { 0 } else { total });
        if !window.truncated {
            let mut encoded = chunk.encoded.map(Vec::into_iter);
            for row in chunk.rows {
                let encoded = encoded.as_mut().and_then(Iterator::next);
                if !window.keys.is_empty() {
                    // The worker's key JSON is key_json's, so it matches the keys the window collected.
                    let key = match encoded.as_ref().and_then(|e| e.key()) {
                        Some(k) => Some(std::borrow::Cow::Borrowed(k)),
                        None => crate::encode::key_json(&table, &row).ok().flatten().map(std::borrow::Cow::Owned),
                    };
                    if key.is_some_and(|k| window.keys.contains(k.as_ref())) {
                        continue;
                    }
                }
                let position = message.position.saturating_add(1 + out.len() as u32);
                let change = Change {
                    op: Op::Read,
                    table: table.clone(),
                    before: None,
                    before_is_key_only: false,
                    after: Some(row),
                    lsn: message.lsn,
                    position,
                    tx: message.tx.clone(),
                };
                out.push(SnapshotRow { change, encoded });
            }
        }
        if out.len() < total {
            tracing::debug!(chunk = id, table = %table.qualified_name(), superseded = total - out.len(), "snapshot rows superseded by changes during the read");
        }
        // A split table's snapshot ends with the last of its ranges to end in the stream.
        let table_ended = chunk.finished && chunk.ranges_left.is_none_or(|left| left.fetch_sub(1, Relaxed) == 1);
        self.table_done = table_ended && !out.is_empty();
        self.at_commit.push(Mutation::Chunk {
            job: chunk.job,
            range: chunk.range,
            after: chunk.after,
            rows: total as u64,
            finished: chunk.finished,
        });
        // The worker may read its next chunk now.
        let _ = chunk.taken.send(Handover::Taken);
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
        if let Some(why) = &self.shared.refuse_requests {
            return refuse(why.clone());
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
            ranges: Vec::new(),
        };
        tracing::info!(table = %table, filter = job.filter.as_deref().unwrap_or(""), job = job.id, "backfill requested");
        self.at_commit.push(Mutation::Add(job));
    }

    /// The transaction that carried the control messages committed: their effects count from `end_lsn` on.
    /// A transaction the chunk's read did not see (`unseen`, its snapshot's in-progress list) that the stream showed
    /// committing before the window opened; `Some(0)` when the commits before the window are no longer remembered
    /// and `unseen` is not empty (it cannot be checked).
    fn raced(&self, window: &Window, unseen: &[u32]) -> Option<u32> {
        // Test builds: `snapshot-commit-race=return` makes a chunk look raced (the race itself needs a backend
        // descheduled at the wrong moment, which a test cannot arrange).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("snapshot-commit-race", |_| Some(0));
        if unseen.is_empty() {
            return None;
        }
        if let Some(&(oldest, _)) = self.recent.front() {
            if oldest > 0 && oldest > window.opened_after.saturating_sub(RACE_MARGIN) {
                return Some(0);
            }
        }
        self.recent
            .iter()
            .take_while(|(n, _)| *n < window.opened_after)
            .find(|(_, xid)| unseen.contains(xid))
            .map(|(_, xid)| *xid)
    }

    /// A transaction that changed rows committed (in stream order). Remembered for the commit race while snapshots
    /// may run. Transactions without a row change (watermarks: with several workers another worker's are often in a
    /// chunk's in-progress list) need not be told: they cannot make a chunk row stale.
    pub fn committed(&mut self, xid: u32) {
        if self.recent.len() == RECENT_COMMITS {
            self.recent.pop_front();
        }
        self.recent.push_back((self.commits, xid));
        self.commits += 1;
    }

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
            json: Default::default(),
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
        let shared = Snapshots::new("s", "p", Vec::new(), None, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        // A change before the window is irrelevant: the chunk read sees its result.
        tap.observe(&change(Op::Update, None, Some(row("1", "0"))));
        assert!(tap.message(&message(&shared, 7, "low")).unwrap().is_empty());
        tap.observe(&change(Op::Update, None, Some(row("2", "5"))));
        tap.observe(&change(Op::Delete, Some(row("3", "")), None));
        let rows = vec![row("1", "0"), row("2", "4"), row("3", "9"), row("4", "1")];
        // As the worker encoded them: their key JSON is what the window's keys are compared with.
        let encoded = rows.iter().map(|r| crate::encode::EncodedRow::of(&table(), r).unwrap()).collect();
        let (chunk, mut took) = ready(rows, true);
        shared.put_chunk(7, ReadyChunk { encoded: Some(encoded), after: Some(vec!["4".into()]), ..chunk });
        let out = tap.message(&message(&shared, 7, "high")).unwrap();
        assert!(out.iter().all(|r| r.encoded.as_ref().unwrap().after() == br#"{"id":1,"n":0}"#
            || r.change.after.as_ref().unwrap()[0] != row("1", "")[0]));
        let out: Vec<Change> = out.into_iter().map(|r| r.change).collect();
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
        let shared = Snapshots::new("s", "p", Vec::new(), None, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        let mut other = message(&shared, 1, "low");
        other.content = Bytes::from_static(br#"{"slot":"s","run":"earlier","chunk":1,"mark":"high","oid":42}"#);
        assert!(tap.message(&other).unwrap().is_empty(), "an earlier session's watermark");
        tap.message(&message(&shared, 1, "low")).unwrap();
        tap.observe(&change(Op::Truncate, None, None));
        let (chunk, _took) = ready(vec![row("1", "0")], false);
        shared.put_chunk(1, chunk);
        assert!(tap.message(&message(&shared, 1, "high")).unwrap().is_empty());
        // A high watermark without its low one is an error, not a silent pass.
        assert!(tap.message(&message(&shared, 9, "high")).is_err());
    }

    /// The commit race (module docs): the chunk's read did not see transaction 77, which the stream showed
    /// committing before the low watermark — the chunk would carry the row as it was before 77 and publish it after
    /// 77's change. It is not published; its worker is told to read it again. 77
    /// committing after the low watermark is the ordinary case (its change is inside the window).
    #[test]
    fn a_chunk_whose_read_missed_a_commit_before_its_low_watermark_is_read_again() {
        let chunk = |shared: &Arc<Snapshots>, id: u64, unseen: Vec<u32>| {
            let (chunk, took) = ready(vec![row("1", "0")], false);
            shared.put_chunk(id, ReadyChunk { unseen, ..chunk });
            took
        };
        let shared = Snapshots::new("s", "p", Vec::new(), None, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        tap.committed(76);
        tap.committed(77);
        tap.message(&message(&shared, 1, "low")).unwrap();
        let mut took = chunk(&shared, 1, vec![77, 80]);
        assert!(tap.message(&message(&shared, 1, "high")).unwrap().is_empty(), "a raced chunk is not published");
        assert_eq!(took.try_recv(), Ok(Handover::ReadAgain));
        assert!(tap.at_commit.is_empty(), "nor recorded in the checkpoint");

        tap.message(&message(&shared, 2, "low")).unwrap();
        tap.committed(80);
        let mut took = chunk(&shared, 2, vec![80]);
        assert_eq!(tap.message(&message(&shared, 2, "high")).unwrap().len(), 1, "80 committed inside the window");
        assert_eq!(took.try_recv(), Ok(Handover::Taken));
    }

    /// When the commits just before a window are no longer remembered, a chunk with unseen transactions cannot be
    /// checked: read again rather than trusted.
    #[test]
    fn a_window_past_the_remembered_commits_is_not_trusted() {
        let shared = Snapshots::new("s", "p", Vec::new(), None, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        tap.committed(1);
        tap.message(&message(&shared, 1, "low")).unwrap();
        // More commits during the chunk's window than the tap remembers.
        for xid in 2..(RECENT_COMMITS as u32 + 10) {
            tap.committed(xid);
        }
        let (chunk, mut took) = ready(vec![row("1", "0")], false);
        shared.put_chunk(1, ReadyChunk { unseen: vec![1], ..chunk });
        assert!(tap.message(&message(&shared, 1, "high")).unwrap().is_empty());
        assert_eq!(took.try_recv(), Ok(Handover::ReadAgain));
    }

    /// A chunk of job 0, not split, with nothing unseen; and the receiver its worker waits on.
    fn ready(rows: Vec<Vec<Datum>>, finished: bool) -> (ReadyChunk, tokio::sync::oneshot::Receiver<Handover>) {
        let (taken, took) = tokio::sync::oneshot::channel();
        let chunk = ReadyChunk {
            job: 0,
            table: table(),
            rows,
            encoded: None,
            after: None,
            range: None,
            finished,
            ranges_left: None,
            unseen: Vec::new(),
            taken,
        };
        (chunk, took)
    }

    /// A split table's snapshot ends (Debezium's `last` marker) with the last range whose final chunk the stream
    /// reaches, whichever range that is; each chunk records its own range's cursor.
    #[test]
    fn a_split_table_ends_with_its_last_range_in_stream_order() {
        let shared = Snapshots::new("s", "p", Vec::new(), None, Ledger::new(None));
        let mut tap = Tap::new(shared.clone());
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(2));
        for (id, range) in [(1, 1), (2, 0)] {
            tap.message(&message(&shared, id, "low")).unwrap();
            let (chunk, _took) = ready(vec![row(&id.to_string(), "0")], true);
            shared.put_chunk(id, ReadyChunk { range: Some(range), ranges_left: Some(left.clone()), ..chunk });
            assert_eq!(tap.message(&message(&shared, id, "high")).unwrap().len(), 1);
            assert_eq!(tap.table_done(), id == 2, "chunk {id}");
            match &tap.at_commit[..] {
                [Mutation::Chunk { range: Some(r), finished: true, .. }] => assert_eq!(*r, range),
                other => panic!("{other:?}"),
            }
            tap.at_commit.clear();
        }
    }
}
