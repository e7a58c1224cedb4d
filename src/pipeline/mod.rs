//! Wiring: preflight → slot and publication → replication stream → router → Kafka → progress → checkpoint. This
//! module only connects things together; the processing lives in the stages.
//!
//! ```text
//!  source task ──bounded mpsc (batches)──▶ route task ──Destination (librdkafka)──▶ broker
//!      ▲                                     │ delivery callbacks
//!      └── flushed LSN (watch) ◀── Progress ◀┘──▶ checkpoint task (state.dir)
//! ```
//!
//! - [`run`] (here): the health server and the reconnect loop (backoff after transient errors, see [`error`]).
//! - `startup`: one control connection's worth — preflight, publication, binary or text values, the sessions next
//!   to the monitors and the table watch (`tables`).
//! - `session`: one replication stream — resume point, destination (`output`), the source, route (`route_task`),
//!   checkpoint (`checkpointing`) and snapshot tasks, then the drain and the final checkpoint.
//!
//! **Shutdown order** (SIGTERM/SIGINT, or a fatal error in any stage): the source stops reading and hands over what
//! it holds → the sink drains the channel and flushes the producer → the final standby status update reports the
//! flushed LSN → the final checkpoint is written. One [`CancellationToken`] is cloned into every task.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

mod checkpointing;
pub mod error;
mod identity_watch;
mod monitor;
mod output;
mod route_task;
mod session;
mod startup;
mod tables;

pub use error::PipelineError;
pub use monitor::HEARTBEAT_PREFIX;

use crate::config::Config;
use crate::health::Health;
use crate::rules::Rules;

/// Where records go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// The configured Kafka cluster.
    #[default]
    Kafka,
    /// Encode everything, publish nothing, acknowledge at once (benchmarks: measures the pipeline without a broker).
    Null,
    /// `ficus run --dry-run`: stream from a temporary slot, print every record as one JSON line on stdout,
    /// publish nothing, confirm nothing, write no checkpoint.
    DryRun,
}

/// Options beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub output: Output,
}

/// Runs the pipeline until `shutdown` is cancelled (returns `Ok`) or a stage fails. `rules` are `config`'s rules,
/// compiled once by the caller (every session runs them with its own [`RuleSet`]).
pub async fn run(
    config: Config,
    rules: Arc<Rules>,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    for w in rules.warnings() {
        tracing::warn!("{w}");
    }
    let health = Health::new(crate::metrics::install());
    let server_stop = CancellationToken::new();
    // A dry run serves no endpoints: it runs next to the real instance, whose health port it would take.
    let listen = config.health.listen.filter(|_| options.output != Output::DryRun);
    let server = match listen {
        Some(addr) => Some(
            crate::health::serve(addr, health.clone(), server_stop.clone())
                .await
                .map_err(|e| PipelineError::Config(format!("health.listen: cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let result = run_with_reconnects(&config, &rules, &options, &shutdown, &health).await;
    match &result {
        Err(e) => {
            metrics::counter!(crate::metrics::ERRORS, "kind" => e.kind()).increment(1);
            health.set_fatal(e.to_string());
        }
        Ok(()) => health.set_streaming(false),
    }
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    result
}

/// Runs until shutdown or a definite error, reconnecting after transient ones (connection loss, server restart,
/// slot busy) with jittered exponential backoff (0.5 s doubling to `source.reconnect_max_delay_secs`, reset after a
/// minute of streaming).
/// Nothing is lost across a reconnect: the stream resumes from the slot's confirmed position, which never passes
/// what Kafka acknowledged.
async fn run_with_reconnects(
    config: &Config,
    rules: &Arc<Rules>,
    options: &RunOptions,
    shutdown: &CancellationToken,
    health: &Arc<Health>,
) -> Result<(), PipelineError> {
    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(config.source.reconnect_max_delay_secs.max(1)))
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    // The slot was busy at the last attempt: this instance waits as a hot standby.
    let mut standby = false;
    loop {
        let started = std::time::Instant::now();
        match startup::run_with(config, rules, options, shutdown, health, standby).await {
            Err(e) if e.is_transient() && !shutdown.is_cancelled() && options.output != Output::DryRun => {
                if started.elapsed() > Duration::from_secs(60) {
                    delays = backoff();
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(config.source.reconnect_max_delay_secs));
                match (&e, standby) {
                    // Said once; then the standby waits quietly (its retries are debug lines, not reconnects).
                    (PipelineError::SlotBusy(_), false) => tracing::warn!(
                        error = %e,
                        "waiting as a hot standby: this instance takes over when the slot is released (retrying \
                         quietly with backoff up to source.reconnect_max_delay_secs)"
                    ),
                    (PipelineError::SlotBusy(_), true) => {
                        tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "still a hot standby")
                    }
                    _ => {
                        metrics::counter!(crate::metrics::RECONNECTS).increment(1);
                        metrics::counter!(crate::metrics::ERRORS, "kind" => e.kind()).increment(1);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "reconnecting");
                    }
                }
                standby = matches!(e, PipelineError::SlotBusy(_));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other,
        }
    }
}
