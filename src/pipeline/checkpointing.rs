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
/// a pause of 100 ms; the caller writes the final one after the sink drained. A failed write is reported (ERROR log, readiness, metric) and retried every `interval`; the task itself
/// never ends with an error, so a full disk does not stop the stream — it stops the slot from advancing.
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
        failing = !writer.attempt(lsn, &health);
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
