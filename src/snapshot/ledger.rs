//! Snapshot progress as the checkpoint records it.
//!
//! **Guarantee:** the snapshot state written with a checkpoint at LSN `F` describes exactly what is in Kafka up to
//! `F`. Every change to the state — a chunk handed to the pipeline, a backfill requested — is recorded with the end
//! LSN of the transaction that carried it (the chunk's high watermark, the request message) and only becomes part of
//! the durable state once the flushed LSN passed it. After a crash the copy therefore resumes right after the last
//! chunk Kafka acknowledged completely: the chunk in flight is read again, no earlier one is.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::ident::TableName;

use crate::checkpoint::{Job, KeyRange, SnapshotState};
use crate::lsn::Lsn;

/// A change to the state, effective once the flushed LSN reaches the transaction that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// A chunk of job `job` (of its key range `range`, if split) is in the pipeline: resume after `after`;
    /// `finished` = it was the last one of the job (of the range). Without `range`, `finished` ends the job.
    Chunk { job: u64, range: Option<usize>, after: Option<Vec<String>>, rows: u64, finished: bool },
    /// Job `job` is copied in these key ranges from now on. A plan, not work done: recorded effective at once.
    Split { job: u64, ranges: Vec<KeyRange> },
    /// A new job (backfill request).
    Add(Job),
}

impl SnapshotState {
    fn apply(&mut self, m: Mutation) {
        match m {
            Mutation::Chunk { job, range: Some(r), after, rows, finished } => {
                let Some(i) = self.jobs.iter().position(|j| j.id == job) else { return };
                let j = &mut self.jobs[i];
                let Some(range) = j.ranges.get_mut(r) else { return };
                if after.is_some() {
                    range.after = after;
                }
                range.done |= finished;
                j.rows += rows;
                if j.ranges.iter().all(|r| r.done) {
                    self.jobs.remove(i);
                    self.finished_jobs += 1;
                }
            }
            Mutation::Split { job, ranges } => {
                // Only a job not started yet is split: its one cursor would not fit any range.
                if let Some(j) = self.jobs.iter_mut().find(|j| j.id == job && j.after.is_none() && j.ranges.is_empty())
                {
                    j.ranges = ranges;
                }
            }
            Mutation::Chunk { job, range: None, after, rows, finished } => {
                if let Some(i) = self.jobs.iter().position(|j| j.id == job) {
                    if finished {
                        self.jobs.remove(i);
                        self.finished_jobs += 1;
                    } else {
                        let j = &mut self.jobs[i];
                        if after.is_some() {
                            j.after = after;
                        }
                        j.rows += rows;
                    }
                }
            }
            Mutation::Add(job) => {
                self.next_job = self.next_job.max(job.id + 1);
                self.jobs.push(job);
            }
        }
    }
}

/// The durable state plus the mutations not yet covered by the flushed LSN.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `None`: no snapshot was ever planned (mode `never`, no backfill yet): the checkpoint has no `snapshot`.
    durable: Option<SnapshotState>,
    pending: VecDeque<(Lsn, Mutation)>,
    /// Next job id to hand out (ahead of the durable state while requests are in flight).
    next_job: u64,
}

impl Ledger {
    /// Starts from what the checkpoint holds.
    pub fn new(durable: Option<SnapshotState>) -> Ledger {
        let next_job = durable.as_ref().map_or(0, |s| s.next_job);
        Ledger { inner: Mutex::new(Inner { durable, pending: VecDeque::new(), next_job }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The durable state (as loaded or settled).
    pub fn durable(&self) -> Option<SnapshotState> {
        self.lock().durable.clone()
    }

    /// Plans the initial snapshot: effective at once (it describes work to do, not work done).
    pub fn plan(&self, tables: &[TableName]) -> Vec<Job> {
        let mut inner = self.lock();
        let mut jobs = Vec::new();
        for t in tables {
            let id = inner.next_job;
            inner.next_job += 1;
            jobs.push(Job {
                id,
                schema: t.schema.clone(),
                table: t.name.clone(),
                filter: None,
                after: None,
                rows: 0,
                ranges: Vec::new(),
            });
        }
        let next_job = inner.next_job;
        let state = inner.durable.get_or_insert_with(SnapshotState::default);
        state.jobs.extend(jobs.iter().cloned());
        state.next_job = next_job;
        jobs
    }

    /// A fresh job id.
    pub fn next_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_job += 1;
        inner.next_job - 1
    }

    /// Records `m`, carried by the transaction ending at `end_lsn`.
    pub fn record(&self, end_lsn: Lsn, m: Mutation) {
        self.lock().pending.push_back((end_lsn, m));
    }

    /// Applies every mutation the flushed LSN covers; returns the state to write with a checkpoint at `flushed`.
    pub fn settle(&self, flushed: Lsn) -> Option<SnapshotState> {
        let mut inner = self.lock();
        while inner.pending.front().is_some_and(|(at, _)| *at <= flushed) {
            let (_, m) = inner.pending.pop_front().expect("checked");
            inner.durable.get_or_insert_with(SnapshotState::default).apply(m);
        }
        inner.durable.clone()
    }

    /// Whether every job is finished and in Kafka up to `flushed`.
    pub fn complete_at(&self, flushed: Lsn) -> bool {
        let state = self.settle(flushed);
        let inner = self.lock();
        inner.pending.is_empty() && state.is_none_or(|s| s.jobs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_count_only_once_flushed() {
        let ledger = Ledger::new(None);
        let t = |n: &str| TableName { schema: "public".into(), name: n.into() };
        let jobs = ledger.plan(&[t("a"), t("b")]);
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![0, 1]);
        ledger.record(
            Lsn(100),
            Mutation::Chunk { job: 0, range: None, after: Some(vec!["10".into()]), rows: 10, finished: false },
        );
        ledger.record(
            Lsn(200),
            Mutation::Chunk { job: 0, range: None, after: Some(vec!["20".into()]), rows: 10, finished: false },
        );
        ledger.record(Lsn(300), Mutation::Chunk { job: 0, range: None, after: None, rows: 0, finished: true });

        let s = ledger.settle(Lsn(150)).unwrap();
        assert_eq!(s.jobs[0].after, Some(vec!["10".to_string()]));
        assert_eq!(s.jobs[0].rows, 10);
        assert!(!ledger.complete_at(Lsn(150)));

        let s = ledger.settle(Lsn(300)).unwrap();
        assert_eq!(s.jobs.len(), 1);
        assert_eq!(s.jobs[0].table, "b");
        assert_eq!(s.finished_jobs, 1);

        let id = ledger.next_id();
        assert_eq!(id, 2);
        ledger.record(
            Lsn(400),
            Mutation::Add(Job {
                id,
                schema: "public".into(),
                table: "a".into(),
                filter: Some("x > 1".into()),
                after: None,
                rows: 0,
                ranges: Vec::new(),
            }),
        );
        ledger.record(Lsn(500), Mutation::Chunk { job: 1, range: None, after: None, rows: 0, finished: true });
        ledger.record(Lsn(600), Mutation::Chunk { job: 2, range: None, after: None, rows: 3, finished: true });
        assert!(!ledger.complete_at(Lsn(500)));
        assert!(ledger.complete_at(Lsn(600)));
        let s = ledger.durable().unwrap();
        assert_eq!((s.jobs.len(), s.next_job, s.finished_jobs), (0, 3, 3));
        // Round trip through the checkpoint's JSON.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotState>(&json).unwrap(), s);
    }

    /// A split job finishes when its last range does, each range keeping its own cursor; ranges complete in any
    /// order, and a job that already has a cursor is not split.
    #[test]
    fn key_ranges_keep_their_own_cursors() {
        let ledger = Ledger::new(None);
        let t = TableName { schema: "public".into(), name: "a".into() };
        ledger.plan(&[t.clone(), t]);
        let range = |from: Option<&str>, to: Option<&str>| KeyRange {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            after: None,
            done: false,
        };
        let ranges = vec![range(None, Some("100")), range(Some("100"), Some("200")), range(Some("200"), None)];
        ledger.record(Lsn::INVALID, Mutation::Split { job: 0, ranges: ranges.clone() });
        ledger.record(
            Lsn(10),
            Mutation::Chunk { job: 1, range: None, after: Some(vec!["5".into()]), rows: 5, finished: false },
        );
        ledger.record(Lsn(10), Mutation::Split { job: 1, ranges: ranges.clone() });
        let chunk = |range, after: &str, finished| Mutation::Chunk {
            job: 0,
            range: Some(range),
            after: Some(vec![after.to_string()]),
            rows: 10,
            finished,
        };
        ledger.record(Lsn(100), chunk(2, "250", false));
        ledger.record(Lsn(200), chunk(0, "50", false));
        ledger.record(Lsn(300), chunk(2, "299", true));
        ledger.record(Lsn(400), chunk(1, "199", true));
        let s = ledger.settle(Lsn(300)).unwrap();
        assert_eq!(
            s.jobs[0].ranges.iter().map(|r| (r.after.clone(), r.done)).collect::<Vec<_>>(),
            vec![(Some(vec!["50".to_string()]), false), (None, false), (Some(vec!["299".to_string()]), true),]
        );
        assert_eq!(s.jobs[0].rows, 30);
        assert!(s.jobs[1].ranges.is_empty(), "job 1 had a cursor: not split");
        // Round trip through the checkpoint's JSON with the ranges.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotState>(&json).unwrap(), s);
        ledger.record(Lsn(500), chunk(0, "99", true));
        let s = ledger.settle(Lsn(500)).unwrap();
        assert_eq!((s.jobs.len(), s.finished_jobs), (1, 1), "job 0 finished with its last range");
    }

    /// A checkpoint written before key ranges existed (one `after` per job) still loads and resumes from its cursor.
    #[test]
    fn checkpoints_without_ranges_resume_from_their_cursor() {
        let old = r#"{"jobs":[{"id":3,"schema":"public","table":"a","after":["41"],"rows":41}],"nextJob":4,"finishedJobs":0}"#;
        let s: SnapshotState = serde_json::from_str(old).unwrap();
        assert_eq!(s.jobs[0].after, Some(vec!["41".to_string()]));
        assert!(s.jobs[0].ranges.is_empty());
        let ledger = Ledger::new(Some(s));
        ledger.record(
            Lsn(10),
            Mutation::Chunk { job: 3, range: None, after: Some(vec!["51".into()]), rows: 10, finished: false },
        );
        let s = ledger.settle(Lsn(10)).unwrap();
        assert_eq!((s.jobs[0].after.clone(), s.jobs[0].rows), (Some(vec!["51".to_string()]), 51));
        assert!(!serde_json::to_string(&s).unwrap().contains("ranges"), "an unsplit job is written as before");
    }
}
