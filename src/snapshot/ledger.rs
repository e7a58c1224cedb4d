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

use crate::checkpoint::{Job, SnapshotState};
use crate::lsn::Lsn;

/// A change to the state, effective once the flushed LSN reaches the transaction that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// A chunk of job `job` is in the pipeline: resume after `after`; `finished` = it was the last one.
    Chunk { job: u64, after: Option<Vec<String>>, rows: u64, finished: bool },
    /// A new job (backfill request).
    Add(Job),
}

impl SnapshotState {
    fn apply(&mut self, m: Mutation) {
        match m {
            Mutation::Chunk { job, after, rows, finished } => {
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
            jobs.push(Job { id, schema: t.schema.clone(), table: t.name.clone(), filter: None, after: None, rows: 0 });
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
        ledger.record(Lsn(100), Mutation::Chunk { job: 0, after: Some(vec!["10".into()]), rows: 10, finished: false });
        ledger.record(Lsn(200), Mutation::Chunk { job: 0, after: Some(vec!["20".into()]), rows: 10, finished: false });
        ledger.record(Lsn(300), Mutation::Chunk { job: 0, after: None, rows: 0, finished: true });

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
            }),
        );
        ledger.record(Lsn(500), Mutation::Chunk { job: 1, after: None, rows: 0, finished: true });
        ledger.record(Lsn(600), Mutation::Chunk { job: 2, after: None, rows: 3, finished: true });
        assert!(!ledger.complete_at(Lsn(500)));
        assert!(ledger.complete_at(Lsn(600)));
        let s = ledger.durable().unwrap();
        assert_eq!((s.jobs.len(), s.next_job, s.finished_jobs), (0, 3, 3));
        // Round trip through the checkpoint's JSON.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotState>(&json).unwrap(), s);
    }
}
