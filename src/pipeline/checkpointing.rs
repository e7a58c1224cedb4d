//! The checkpoint task: persists the flushed LSN (and the snapshot progress as of it) at most every
//! `state.checkpoint_interval_ms`; the pipeline writes the final one after the sink drained.
//!
//! **Guarantee:** only positions the progress tracker published are written — in exactly_once mode, positions a
//! committed Kafka transaction covers — so the file never points past what Kafka holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore, FileCheckpointStore};
use crate::lsn::Lsn;
use crate::snapshot::Snapshots;

/// Writes checkpoints for one source, skipping positions already written.
pub(super) struct CheckpointWriter {
    pub(super) store: FileCheckpointStore,
    pub(super) system_id: String,
    pub(super) database: String,
    pub(super) slot: String,
    pub(super) written: Lsn,
    /// Snapshot progress to record with each checkpoint (as of its LSN).
    pub(super) snapshots: Option<Arc<Snapshots>>,
}

impl CheckpointWriter {
    pub(super) fn write_if_advanced(&mut self, lsn: Lsn) -> Result<(), CheckpointError> {
        if lsn <= self.written {
            return Ok(());
        }
        self.write(lsn)
    }

    pub(super) fn write(&mut self, lsn: Lsn) -> Result<(), CheckpointError> {
        self.store.store(&Checkpoint {
            lsn: lsn.to_string(),
            system_id: self.system_id.clone(),
            database: self.database.clone(),
            slot: self.slot.clone(),
            written_at: chrono::Utc::now().to_rfc3339(),
            snapshot: self.snapshots.as_ref().and_then(|s| s.ledger().settle(lsn)),
        })?;
        self.written = lsn;
        metrics::gauge!(crate::metrics::CHECKPOINT_LSN).set(lsn.0 as f64);
        tracing::debug!(lsn = %lsn, "checkpoint written");
        Ok(())
    }
}

/// Persists the flushed LSN at most every `interval` until `stop`; the caller writes the final one after the sink
/// drained.
pub(super) async fn checkpoint_loop(
    mut writer: CheckpointWriter,
    mut flushed: watch::Receiver<Lsn>,
    interval: Duration,
    stop: CancellationToken,
) -> Result<CheckpointWriter, CheckpointError> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = flushed.changed() => if changed.is_err() { break },
        }
        let lsn = *flushed.borrow_and_update();
        writer.write_if_advanced(lsn)?;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    Ok(writer)
}
