//! exactly_once: the Kafka transaction around one or more whole source transactions and their checkpoint.
//!
//! **Guarantees.** A Kafka transaction is opened before the first record after the previous commit, holds only whole
//! source transactions (it is committed only at a source commit boundary), and ends with the checkpoint record of
//! the last source transaction in it; PostgreSQL is told about a position ([`Progress::release`]) only after the
//! commit returned. A crash anywhere before that leaves an aborted (invisible to read_committed) Kafka transaction
//! and a checkpoint that still points before it, so the restart publishes each event exactly once. A single huge
//! source transaction streams inside one Kafka transaction: nothing is buffered in memory.

use crate::checkpoint::{CheckpointStamp, SnapshotAt, SnapshotState};
use std::time::{Duration, Instant};

use super::{checkpoint_topic, KafkaSink, SinkError};
use crate::lsn::Lsn;
use crate::progress::{Progress, TxSeq};

/// Source transactions per Kafka transaction before a commit is due.
const MAX_SOURCE_TXNS: u32 = 1000;
/// Record bytes per Kafka transaction before a commit is due (checked at source commit boundaries).
const MAX_BYTES: usize = 16 << 20;
/// Age of an open Kafka transaction after which a commit is due (it bounds the added latency).
pub const LINGER: Duration = Duration::from_millis(100);

/// When the open Kafka transaction is due for a commit: after [`MAX_SOURCE_TXNS`] source transactions, or
/// [`MAX_BYTES`] of records, or [`LINGER`] after it was opened — whichever comes first — and only at a source commit
/// boundary. Pure (the caller passes the time), so the triggers are unit-tested without a broker or a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CommitTriggers {
    opened_at: Instant,
    source_txns: u32,
    /// Key + value bytes produced in the open Kafka transaction.
    bytes: usize,
}

impl CommitTriggers {
    /// A Kafka transaction opened at `now`.
    fn opened(now: Instant) -> CommitTriggers {
        CommitTriggers { opened_at: now, source_txns: 0, bytes: 0 }
    }

    /// Records of `bytes` went into the transaction. Never a commit by itself: mid source transaction a commit would
    /// split it.
    fn produced(&mut self, bytes: usize) {
        self.bytes += bytes;
    }

    /// A source transaction ended inside the Kafka transaction at `now`: whether the Kafka transaction must commit.
    fn source_committed(&mut self, now: Instant) -> bool {
        self.source_txns += 1;
        self.source_txns >= MAX_SOURCE_TXNS
            || self.bytes >= MAX_BYTES
            || now.saturating_duration_since(self.opened_at) >= LINGER
    }

    /// When the age trigger fires (the sink commits an idle open transaction then).
    fn due_at(&self) -> Instant {
        self.opened_at + LINGER
    }
}

/// The open Kafka transaction, if any.
pub struct KafkaTxn {
    sink: KafkaSink,
    topic: String,
    stamp: CheckpointStamp,
    open: bool,
    /// Counters of the open Kafka transaction (stale while none is open).
    triggers: CommitTriggers,
    /// End LSN and tracker id of the last source transaction committed inside the open Kafka transaction.
    last: Option<(Lsn, TxSeq)>,
    /// The last server position seen (keepalive) while a Kafka transaction was open: confirmable with its commit.
    idle_while_open: Option<Lsn>,
    /// Snapshot progress, recorded with each checkpoint.
    snapshot_at: Option<SnapshotAt>,
}

impl KafkaTxn {
    pub fn new(sink: KafkaSink, topic: String, stamp: CheckpointStamp, snapshot_at: Option<SnapshotAt>) -> KafkaTxn {
        KafkaTxn {
            sink,
            topic,
            stamp,
            open: false,
            triggers: CommitTriggers::opened(Instant::now()),
            last: None,
            idle_while_open: None,
            snapshot_at,
        }
    }

    /// The transactional producer.
    pub fn producer(&self) -> &KafkaSink {
        &self.sink
    }

    /// When the open Kafka transaction is due for a commit (`None` when none is open).
    pub fn due_at(&self) -> Option<tokio::time::Instant> {
        self.open.then(|| tokio::time::Instant::from_std(self.triggers.due_at()))
    }

    /// Call before producing a record: opens a Kafka transaction if none is open.
    pub fn before_send(&mut self, bytes: usize) -> Result<(), SinkError> {
        if !self.open {
            self.sink.begin_transaction()?;
            tracing::debug!("kafka transaction begun");
            self.open = true;
            self.triggers = CommitTriggers::opened(Instant::now());
        }
        self.triggers.produced(bytes);
        Ok(())
    }

    /// A source transaction ended (its records, if any, were produced). Commits when due.
    pub async fn source_committed(&mut self, tx: TxSeq, end: Lsn, progress: &Progress) -> Result<(), SinkError> {
        if !self.open {
            // Nothing of it went to Kafka, nothing before it is pending: it is done.
            progress.release(end);
            return Ok(());
        }
        self.last = Some((end, tx));
        if self.triggers.source_committed(Instant::now()) {
            self.commit(progress).await?;
        }
        Ok(())
    }

    /// A server position with no transaction open: confirmable at once unless a Kafka transaction is pending.
    pub fn idle(&mut self, at: Lsn, progress: &Progress) {
        if self.open {
            // Released with the commit: the server may not send this position again while nothing changes.
            self.idle_while_open = Some(at);
        } else {
            progress.release(at);
        }
    }

    /// Commits the open Kafka transaction with the checkpoint of its last source transaction, then releases that
    /// position to PostgreSQL.
    pub async fn commit(&mut self, progress: &Progress) -> Result<(), SinkError> {
        if !self.open {
            return Ok(());
        }
        if let Some((end, tx)) = self.last {
            let snapshot = self.snapshot_at.as_ref().and_then(|at| at(end));
            let record = checkpoint_topic::record(&self.topic, &self.stamp.at(end, snapshot));
            self.sink.send(tx, &record).await?;
        }
        let t = Instant::now();
        self.sink.commit_transaction(Duration::from_secs(60)).await?;
        // Test builds only: a crash here leaves the Kafka transaction (and its checkpoint record) committed and
        // PostgreSQL unconfirmed — the restart must resume after it (tests/pipeline/crash_points.rs).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("exactly-once-after-kafka-commit", |_| {
            eprintln!("failpoint exactly-once-after-kafka-commit: aborting");
            std::process::abort()
        });
        tracing::debug!(
            source_txns = self.triggers.source_txns,
            bytes = self.triggers.bytes,
            last = self.last.map(|l| l.0.to_string()),
            took_ms = t.elapsed().as_millis() as u64,
            "kafka transaction committed"
        );
        self.open = false;
        let end = self.last.take().map(|l| l.0).into_iter().chain(self.idle_while_open.take()).max();
        if let Some(end) = end {
            progress.release(end);
        }
        Ok(())
    }

    /// Aborts the open Kafka transaction (after an error or on a shutdown in the middle of a source transaction).
    pub async fn abort(&mut self) {
        if self.open {
            self.sink.abort_transaction(Duration::from_secs(30)).await;
            self.open = false;
            self.last = None;
            self.idle_while_open = None;
        }
    }
}

/// The checkpoint topic of `config` (`kafka.checkpoint_topic`, default `<changes.topic_prefix>.checkpoints`).
pub fn checkpoint_topic_name(config: &crate::config::Config) -> String {
    config.kafka.checkpoint_topic.clone().unwrap_or_else(|| format!("{}.checkpoints", config.changes.topic_prefix))
}

/// The transactional id of the instance streaming `slot`.
pub fn transactional_id(slot: &str) -> String {
    format!("ficus-{slot}")
}

/// Where an exactly_once session resumes: after the checkpoint committed in Kafka when it is ahead of `start` (the
/// file checkpoint or the slot), with the snapshot progress recorded next to it. Creates the topic if missing.
///
/// The checkpoint is read only after this instance's transactional id was initialised: that fences a previous
/// instance and makes the broker abort its open transaction first, so the read can never see a checkpoint that is
/// about to be aborted (whatever the broker's read_committed implementation does with open transactions).
pub async fn resume_point(
    config: &crate::config::Config,
    stamp: &CheckpointStamp,
    start: Lsn,
    snapshot: Option<SnapshotState>,
) -> Result<(Lsn, Option<SnapshotState>), SinkError> {
    let topic = checkpoint_topic_name(config);
    checkpoint_topic::ensure(&config.kafka, &topic).await.map_err(SinkError::Retriable)?;
    let fence = KafkaSink::with_transactional_id(
        &config.kafka,
        std::sync::Arc::new(Progress::new(Lsn::INVALID)),
        Some(&transactional_id(&config.source.slot)),
    )?;
    fence.init_transactions(Duration::from_secs(60)).await?;
    drop(fence);
    let (kafka, t, slot) = (config.kafka.clone(), topic.clone(), config.source.slot.clone());
    let committed = tokio::task::spawn_blocking(move || checkpoint_topic::read(&kafka, &t, &slot))
        .await
        .map_err(|e| SinkError::Retriable(e.to_string()))?
        .map_err(|e| SinkError::Retriable(format!("reading checkpoint topic {topic}: {e}")))?;
    let committed = match committed {
        Some(cp) if !cp.belongs_to(stamp) => {
            return Err(SinkError::ForeignCheckpoint(format!(
                "checkpoint topic {topic} holds a checkpoint for slot {} of system {} database {}, not for this \
                 source (system {} database {}): resuming from it would skip or repeat changes; give each source \
                 its own kafka.checkpoint_topic (or changes.topic_prefix)",
                cp.slot, cp.system_id, cp.database, stamp.system_id, stamp.database
            )))
        }
        Some(cp) => Some((cp.lsn().map_err(|e| SinkError::ForeignCheckpoint(e.to_string()))?, cp.snapshot)),
        None => None,
    };
    // Everything up to the Kafka checkpoint is committed in Kafka: skip it even if PostgreSQL was not told.
    Ok(match committed {
        Some((cp, snap)) if cp > start => {
            tracing::info!(checkpoint = %cp, "resuming after the checkpoint committed in Kafka");
            (cp, snap.or(snapshot))
        }
        _ => (start, snapshot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three documented triggers (docs/guarantees.md): 1000 source transactions, 16 MiB, 100 ms — each alone,
    /// with the other two far from firing. The limits are spelled out here rather than taken from the constants, so
    /// a changed limit fails too.
    #[test]
    fn commits_after_1000_source_transactions() {
        let t0 = Instant::now();
        let mut t = CommitTriggers::opened(t0);
        for i in 1..1000 {
            t.produced(100);
            assert!(!t.source_committed(t0), "due after {i} source transactions");
        }
        assert!(t.source_committed(t0), "not due after 1000 source transactions");
    }

    #[test]
    fn commits_at_the_source_commit_after_16_mib() {
        let t0 = Instant::now();
        let mut t = CommitTriggers::opened(t0);
        t.produced((16 << 20) - 1);
        assert!(!t.source_committed(t0), "due below 16 MiB");
        // Crossing 16 MiB inside a source transaction commits at its end, not before (no split transaction).
        t.produced(1);
        t.produced(5 << 20);
        assert!(t.source_committed(t0), "not due at the source commit after 16 MiB");
        // A single huge source transaction is one Kafka transaction however large: the check is at its commit only.
        let mut huge = CommitTriggers::opened(t0);
        huge.produced(1 << 30);
        assert!(huge.source_committed(t0));
    }

    #[test]
    fn commits_at_the_first_source_commit_100_ms_after_opening() {
        let t0 = Instant::now();
        let mut t = CommitTriggers::opened(t0);
        t.produced(10);
        assert!(!t.source_committed(t0 + Duration::from_millis(99)), "due before 100 ms");
        assert_eq!(t.due_at(), t0 + Duration::from_millis(100), "the sink's idle commit fires at 100 ms");
        assert!(t.source_committed(t0 + Duration::from_millis(100)), "not due at 100 ms");
        // A clock that looks earlier than the opening (a caller passing an older instant) is not "due".
        let mut late = CommitTriggers::opened(t0 + Duration::from_secs(1));
        assert!(!late.source_committed(t0));
    }

    #[test]
    fn a_new_transaction_starts_counting_from_zero() {
        let t0 = Instant::now();
        let mut t = CommitTriggers::opened(t0);
        t.produced(20 << 20);
        for _ in 0..5000 {
            t.source_committed(t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let mut next = CommitTriggers::opened(t1);
        next.produced(10);
        assert!(!next.source_committed(t1), "{next:?}");
    }
}
