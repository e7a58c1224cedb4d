//! Why a run stops, and what the operator does about it.
//!
//! # Error handling
//!
//! Every failure is one of two kinds, decided once, in [`PipelineError::is_transient`]:
//! - **Transient**: caused by something outside the data and the configuration — the connection broke, the server
//!   restarts or refuses connections for now (the SQLSTATE table in `postgres::sqlstate`), the broker is unreachable,
//!   a Kafka transaction could not commit, the slot is held by the instance this one stands by for. The session ends
//!   (nothing after the durable checkpoint was confirmed), and `run` reconnects with backoff and resumes from the
//!   checkpoint: at-least-once repeats at most the transactions after it, exactly_once repeats nothing visible.
//! - **Definite**: retrying would fail the same way — a configuration or preflight problem, a slot gap, a rule with
//!   `on_error: fail`, a record Kafka refuses for good, a corrupt or foreign checkpoint, a panicked task. ficus stops,
//!   with the fix in the message, and exits with [`PipelineError::exit_code`]: 2 when the operator must change the
//!   configuration or the database before rerunning, 1 for a runtime failure.
//!
//! A panicked task is reported as what it is (`Internal`, exit 1): never as a corrupt checkpoint (whose fix would be
//! to move the file away) nor as a transient error (which would loop).

use crate::check::Report;
use crate::checkpoint::CheckpointError;
use crate::kafka::SinkError;
use crate::lsn::Lsn;
use crate::postgres::control::ControlError;
use crate::postgres::replication::ReplicationError;
use crate::source::SourceError;

/// Why the pipeline stopped. [`PipelineError::exit_code`] maps it to the CLI's exit code.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("preflight failed:\n{0}")]
    Preflight(Report),
    #[error("control connection: {0}")]
    Control(#[from] ControlError),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("Kafka: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("routing change at {lsn}: {message}")]
    Route { lsn: Lsn, message: String },
    /// A task panicked or was cancelled: a bug in ficus, reported as one (exit 1) rather than as a data problem.
    #[error("internal error (please report it): {0}")]
    Internal(String),
    /// The connection to PostgreSQL broke: ficus reconnects with backoff.
    #[error("PostgreSQL: {0}")]
    Transient(String),
    /// The slot is streamed by another process (another ficus): this one waits as a hot standby, retrying with
    /// backoff, and takes over once the slot is free. Transient, and not counted as an error or a reconnect.
    #[error("{0}")]
    SlotBusy(String),
}

impl PipelineError {
    /// Worth reconnecting for (connection loss, server restart, slot held by another instance); everything else is
    /// definite and stops ficus.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Transient(_) | PipelineError::SlotBusy(_) => true,
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Control(e) => e.is_transient(),
            PipelineError::Sink(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The `kind` label of `ficus_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Config(_) | PipelineError::Preflight(_) => "config",
            PipelineError::Control(_)
            | PipelineError::Postgres(_)
            | PipelineError::Source(_)
            | PipelineError::Transient(_)
            | PipelineError::SlotBusy(_) => "replication",
            PipelineError::Sink(_) => "delivery",
            PipelineError::Checkpoint(_) => "checkpoint",
            PipelineError::Route { .. } => "rule",
            PipelineError::Internal(_) => "internal",
        }
    }

    /// The exit-code rule of docs/configuration.md, in one place: 2 for what the operator fixes before rerunning —
    /// configuration, preflight, ficus's own state at start (`state.dir`, checkpoint, slot gaps: all reported as
    /// [`PipelineError::Config`]), Kafka settings librdkafka refuses — and 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Config(_) | PipelineError::Preflight(_) => 2,
            PipelineError::Sink(SinkError::Config(_) | SinkError::ForeignCheckpoint(_)) => 2,
            _ => 1,
        }
    }
}

pub(super) fn replication_error(e: ReplicationError) -> PipelineError {
    match &e {
        // The control connection authenticated, so this is a replication-specific grant (pg_hba.conf
        // `replication` lines do not apply to logical replication, but a role without LOGIN/REPLICATION does).
        ReplicationError::Auth { .. } => PipelineError::Config(format!("source.url: {e}")),
        ReplicationError::Server { sqlstate, .. } if sqlstate.starts_with("28") || sqlstate == "3D000" => {
            PipelineError::Config(format!("source.url: {e}"))
        }
        _ if e.is_transient() => PipelineError::Transient(e.to_string()),
        _ => PipelineError::Postgres(e.to_string()),
    }
}

/// Problems with ficus's own state at start (state.dir unusable, checkpoint corrupt or of another source) are
/// fixed by the operator: exit 2 like any configuration problem.
pub(super) fn state_error(e: CheckpointError) -> PipelineError {
    PipelineError::Config(format!("state.dir: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_rule() {
        let fix_and_rerun = [
            PipelineError::Config("state.dir: checkpoint I/O".into()),
            PipelineError::Preflight(Report::default()),
            PipelineError::Sink(SinkError::Config("sasl.pasword".into())),
            state_error(CheckpointError::Corrupt("not JSON".into())),
        ];
        for e in &fix_and_rerun {
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        let runtime = [
            PipelineError::Postgres("connection reset".into()),
            PipelineError::Transient("server restarting".into()),
            PipelineError::Internal("task panicked".into()),
            PipelineError::Checkpoint(CheckpointError::Corrupt("final write".into())),
            PipelineError::Sink(SinkError::Delivery("message too large".into())),
            PipelineError::Route { lsn: Lsn(1), message: "rule failed".into() },
        ];
        for e in &runtime {
            assert_eq!(e.exit_code(), 1, "{e}");
        }
    }
}
