//! The checkpoint task: persists the flushed LSN (and the snapshot progress as of it) at most every
//! `state.checkpoint_interval_ms`; the pipeline writes the final one after the sink drained.
//!
//! **Guarantees:**
//! - Only positions the progress tracker published are written — in exactly_once mode, positions a committed Kafka
//!   transaction covers — so the file never points past what Kafka holds.
//! - PostgreSQL is confirmed only up to the last checkpoint that is durably on disk ([`CheckpointWriter::durable`]):
//!   the source's status updates read that position, not the flushed one. A failed write (full disk, read-only or
//!   removed `state.dir`) therefore stops the slot from advancing, so nothing the checkpoint alone records (snapshot
//!   and backfill progress) can be lost by a later crash. The failure is logged at ERROR, `/readyz` turns false with
//!   the reason, `ficus_checkpoint_failures_total` counts it, and the write is retried every interval until it
//!   succeeds (readiness comes back) or ficus stops. It follows that the slot's `confirmed_flush_lsn` never passes
//!   the checkpoint: a slot ahead of it was moved by something else (see `pipeline::resume`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::health::Health;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointError, CheckpointStamp, CheckpointStore, FileCheckpointStore, SnapshotAt};
use crate::lsn::Lsn;

/// Writes checkpoints for one source, skipping positions already written.
pub(super) struct CheckpointWriter {
    pub(super) store: FileCheckpointStore,
    pub(super) stamp: CheckpointStamp,
    pub(super) written: Lsn,
    /// Snapshot progress to record with each checkpoint (as of its LSN).
    pub(super) snapshot_at: Option<SnapshotAt>,
    /// The last position durably written; the source confirms to PostgreSQL only up to it.
    pub(super) durable: watch::Sender<Lsn>,
}

impl CheckpointWriter {
    pub(super) fn write_if_advanced(&mut self, lsn: Lsn) -> Result<(), CheckpointError> {
        if lsn <= self.written {
            return Ok(());
        }
        self.write(lsn)
    }

    pub(super) fn write(&mut self, lsn: Lsn) -> Result<(), CheckpointError> {
        self.store.store(&self.stamp.at(lsn, self.snapshot_at.as_ref().and_then(|at| at(lsn))))?;
        self.written = lsn;
        self.durable.send_replace(lsn);
        metrics::gauge!(crate::metrics::CHECKPOINT_LSN).set(lsn.0 as f64);
        tracing::debug!(lsn = %lsn, "checkpoint written");
        Ok(())
    }
}

/// Persists the flushed LSN until `stop` — at most once per `interval` while positions keep coming, at once after
/// a pause of 100 ms; the caller writes the final one after the sink drained. Each write (and its fsyncs) runs on
/// tokio's blocking pool, so a slow disk delays the checkpoint, never the stream. A failed write is reported (ERROR
/// log, readiness, metric) and retried every `interval`; the task itself never ends with an error, so a full disk
/// does not stop the stream — it stops the slot from advancing.
pub(super) async fn checkpoint_loop(
    mut writer: CheckpointWriter,
    mut flushed: watch::Receiver<Lsn>,
    interval: Duration,
    stop: CancellationToken,
    health: Arc<Health>,
) -> CheckpointWriter {
    let mut failing = false;
    let mut last_write: Option<tokio::time::Instant> = None;
    'run: loop {
        if !failing {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = flushed.changed() => if changed.is_err() { break },
            }
        }
        // While positions keep coming, one write per `interval`; once they pause for QUIET, the latest is written at
        // once — PostgreSQL is confirmed only up to the durable checkpoint, so the end of a burst must not wait for the
        // rest of the interval.
        loop {
            if last_write.is_none_or(|t| t.elapsed() >= interval) {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break 'run,
                _ = tokio::time::sleep(QUIET) => break,
                changed = flushed.changed() => if changed.is_err() { break 'run },
            }
        }
        let lsn = *flushed.borrow_and_update();
        // The write ends in two fsyncs, which take tens of milliseconds while the disk is busy (45–66 ms measured
        // next to a broker at 50k changes/s): on the blocking pool, not on one of the runtime's few worker
        // threads, where it stalled the source and route tasks once per interval.
        let h = health.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            let ok = writer.attempt(lsn, &h);
            (writer, ok)
        });
        let ok;
        (writer, ok) = match attempt.await {
            Ok(done) => done,
            // A panic in the write is the task's own panic, reported as such by whoever joins this task.
            Err(e) => std::panic::resume_unwind(e.try_into_panic().unwrap_or_else(|e| Box::new(e.to_string()))),
        };
        failing = !ok;
        last_write = Some(tokio::time::Instant::now());
        if failing {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
    writer
}

/// A pause in new flushed positions after which the latest is written without waiting for the interval.
const QUIET: Duration = Duration::from_millis(100);

impl CheckpointWriter {
    /// [`write_if_advanced`](Self::write_if_advanced) with the failure reported instead of returned: ERROR log,
    /// `/readyz` false with the reason, `ficus_checkpoint_failures_total`. Returns whether the checkpoint is durable.
    pub(super) fn attempt(&mut self, lsn: Lsn, health: &Health) -> bool {
        match self.write_if_advanced(lsn) {
            Ok(()) => {
                health.set_checkpoint_problem(None);
                true
            }
            Err(e) => {
                metrics::counter!(crate::metrics::CHECKPOINT_FAILURES).increment(1);
                tracing::error!(
                    error = %e,
                    durable = %self.written,
                    flushed = %lsn,
                    "checkpoint write failed; PostgreSQL stays confirmed only up to the last durable checkpoint \
                     (WAL is retained meanwhile); retrying — free space in or fix the permissions of state.dir"
                );
                health.set_checkpoint_problem(Some(e.to_string()));
                false
            }
        }
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    /// A slow checkpoint write (a busy disk's fsync; here the `checkpoint-mid-write` failpoint sleeping 1 s) must
    /// not hold up the other tasks of the runtime: on a current-thread runtime, a write done on the runtime's own
    /// thread stalls every task for its whole duration. The write still completes and becomes durable.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_checkpoint_write_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let (durable, mut durable_rx) = watch::channel(Lsn(0));
        let writer = CheckpointWriter {
            store: FileCheckpointStore::open(dir.path(), "slow").unwrap(),
            stamp: CheckpointStamp { system_id: "1".into(), database: "db".into(), slot: "slow".into() },
            written: Lsn(0),
            snapshot_at: None,
            durable,
        };
        let (flushed_tx, flushed) = watch::channel(Lsn(0));
        let stop = CancellationToken::new();
        fail::cfg("checkpoint-mid-write", "sleep(1000)").unwrap();
        let task =
            tokio::spawn(checkpoint_loop(writer, flushed, Duration::from_millis(10), stop.clone(), Health::new(None)));
        flushed_tx.send_replace(Lsn(0x100));
        // Five short sleeps while the write sleeps in the failpoint: ~50 ms when the runtime is free, >= 1 s when
        // the write occupies its thread.
        let started = std::time::Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stalled = started.elapsed();
        tokio::time::timeout(Duration::from_secs(10), durable_rx.wait_for(|l| *l == Lsn(0x100)))
            .await
            .expect("the checkpoint became durable")
            .unwrap();
        fail::remove("checkpoint-mid-write");
        stop.cancel();
        let writer = task.await.unwrap();
        assert_eq!(writer.written, Lsn(0x100));
        assert!(stalled < Duration::from_millis(700), "the runtime stalled for {stalled:?} during a checkpoint write");
    }
}
