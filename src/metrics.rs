//! Metric names (all `ficus_`, units in the name, counters end in `_total`) and the Prometheus recorder.
//!
//! Stages record through the `metrics` facade; handles for labelled counters are created once per relation or rule
//! and cached, so the per-change cost is an atomic add. docs/operations.md lists every metric with its meaning and
//! the alerts to set.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Row changes received, by `table` and `op`.
pub const CHANGES: &str = "ficus_changes_received_total";
/// Changes that produced no record (no rule matched, raw changes not published for the table), by `table`.
pub const DROPPED: &str = "ficus_changes_dropped_total";
/// Business events handed to Kafka, by `event_type`, `version` and `topic` (an outbox rule: its name and topic
/// template).
pub const EVENTS: &str = "ficus_events_total";
/// Raw change events handed to Kafka, by `table`.
pub const RAW_EVENTS: &str = "ficus_raw_events_total";
/// Records sent to the dead-letter topic, by `rule`.
pub const DLQ: &str = "ficus_dlq_records_total";
/// Errors, by `kind` ([`ERROR_KINDS`]).
pub const ERRORS: &str = "ficus_errors_total";
/// Server WAL end − confirmed flush position of the slot, bytes.
pub const LAG_BYTES: &str = "ficus_replication_lag_bytes";
/// Now − commit time of the oldest transaction received (BEGIN seen) that Kafka has not acknowledged completely,
/// seconds (0 when nothing is pending).
pub const LAG_SECONDS: &str = "ficus_replication_lag_seconds";
/// WAL the slot retains on the server (`pg_current_wal_lsn() - restart_lsn`), bytes.
pub const RETAINED_WAL: &str = "ficus_slot_retained_wal_bytes";
/// 1 when the slot is a failover slot (`pg_replication_slots.failover`, PostgreSQL 17+), 0 when not; absent before 17.
pub const SLOT_FAILOVER: &str = "ficus_slot_failover";
/// Commit of a source transaction → Kafka acknowledged all its records, seconds.
pub const COMMIT_ACK_LATENCY: &str = "ficus_commit_to_ack_seconds";
/// Messages librdkafka holds (queued or in flight).
pub const PRODUCER_QUEUE: &str = "ficus_producer_queue_messages";
/// The flushed (confirmed) LSN, as a number.
pub const FLUSHED_LSN: &str = "ficus_flushed_lsn";
/// The last checkpoint written, as an LSN number.
pub const CHECKPOINT_LSN: &str = "ficus_checkpoint_lsn";
pub const CHECKPOINT_FAILURES: &str = "ficus_checkpoint_failures_total";
/// Replication sessions started after the first one (reconnects, restarts in text mode).
pub const RECONNECTS: &str = "ficus_reconnects_total";
/// 1 while streaming.
pub const STREAMING: &str = "ficus_streaming";
/// Rows read by snapshots and backfills, by `table`.
pub const SNAPSHOT_ROWS: &str = "ficus_snapshot_rows_total";
/// Snapshot chunks read again because their read missed a commit before their low watermark (the commit race), by
/// `table`.
pub const SNAPSHOT_CHUNKS_READ_AGAIN: &str = "ficus_snapshot_chunks_read_again_total";
/// Estimated rows a running snapshot of `table` still has to read (from `pg_class.reltuples`).
pub const SNAPSHOT_REMAINING: &str = "ficus_snapshot_remaining_rows";
/// Snapshot and backfill jobs not finished yet (queued or running).
pub const SNAPSHOT_JOBS: &str = "ficus_snapshot_jobs";

/// Installs the Prometheus recorder once per process; later calls return the same handle.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(COMMIT_ACK_LATENCY.into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    register_at_zero();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// Every `kind` of [`ERRORS`]: `PipelineError::kind` and the schema errors of the source.
pub const ERROR_KINDS: [&str; 7] = ["config", "replication", "delivery", "checkpoint", "rule", "schema", "internal"];

/// The counters alerts take `increase()` of exist from start-up, at 0: a series that first appears with its first
/// increment shows no increase, so that alert would miss it (docs/prometheus/ficus.rules.yaml).
fn register_at_zero() {
    for kind in ERROR_KINDS {
        metrics::counter!(ERRORS, "kind" => kind).absolute(0);
    }
    metrics::counter!(RECONNECTS).absolute(0);
    metrics::counter!(CHECKPOINT_FAILURES).absolute(0);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CHANGES, "Row changes received, by table and op");
    describe_counter!(DROPPED, "Changes that no rule turned into an event and that are not published raw, by table");
    describe_counter!(EVENTS, "Business events handed to Kafka, by event type, version and topic");
    describe_counter!(RAW_EVENTS, "Raw change events handed to Kafka, by table");
    describe_counter!(DLQ, "Records sent to the dead-letter topic, by rule");
    describe_counter!(ERRORS, "Errors, by kind");
    describe_gauge!(LAG_BYTES, Unit::Bytes, "Server WAL end minus the slot's confirmed flush position");
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the oldest received transaction Kafka has not acknowledged completely"
    );
    describe_gauge!(RETAINED_WAL, Unit::Bytes, "WAL retained on the server for the slot");
    describe_histogram!(
        COMMIT_ACK_LATENCY,
        Unit::Seconds,
        "Source commit to Kafka acknowledgement of the whole transaction"
    );
    describe_gauge!(PRODUCER_QUEUE, "Messages held by the producer");
    describe_gauge!(FLUSHED_LSN, "Flushed (confirmed) LSN");
    describe_gauge!(CHECKPOINT_LSN, "Last checkpoint LSN");
    describe_counter!(
        CHECKPOINT_FAILURES,
        "Checkpoint writes that failed (retried; PostgreSQL is not confirmed past the last durable checkpoint)"
    );
    describe_counter!(RECONNECTS, "Replication sessions started after the first");
    describe_gauge!(STREAMING, "1 while streaming");
    describe_counter!(SNAPSHOT_ROWS, "Rows read by snapshots and backfills, by table");
    describe_counter!(SNAPSHOT_CHUNKS_READ_AGAIN, "Snapshot chunks read again after the commit race, by table");
    describe_gauge!(SNAPSHOT_REMAINING, "Estimated rows a running snapshot still has to read, by table");
    describe_gauge!(SNAPSHOT_JOBS, "Snapshot and backfill jobs not finished yet");
}
