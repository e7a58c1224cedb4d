//! Snapshot progress for people and machines: a log line per running table every 10 s (rows, estimate, rate, ETA),
//! the `ficus_snapshot_*` metrics, the `snapshot` list of `/status`, and — when stderr is a terminal — a progress
//! bar per table.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::{JobProgress, JobState, Snapshots};
use crate::health::{Health, SnapshotJobStatus};

const LOG_EVERY: Duration = Duration::from_secs(10);

/// The process's progress bars, when stderr is a terminal. The log writer prints through it so log lines and bars
/// do not overwrite each other.
pub fn bars() -> Option<&'static MultiProgress> {
    static BARS: OnceLock<Option<MultiProgress>> = OnceLock::new();
    BARS.get_or_init(|| {
        std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
    })
    .as_ref()
}

/// The one rate of a job, for the log lines, `/status` (`rowsPerSecond`) and the bar alike: rows read in this session
/// ÷ seconds from the job's start in this session to its end (or to now while it runs) — a finished job keeps its
/// final rate. And the seconds left when the total is known.
pub(crate) fn rate_and_eta(p: &JobProgress) -> (f64, Option<u64>) {
    let secs = match (p.started, p.ended) {
        (Some(s), Some(e)) => e.saturating_duration_since(s).as_secs_f64(),
        (Some(s), None) => s.elapsed().as_secs_f64(),
        _ => 0.0,
    };
    let rate = if secs > 0.0 { (p.rows - p.rows_before) as f64 / secs } else { 0.0 };
    let eta = match p.estimated {
        Some(_) if p.ended.is_some() => None,
        Some(total) if rate > 0.0 => Some((total.saturating_sub(p.rows) as f64 / rate).ceil() as u64),
        _ => None,
    };
    (rate, eta)
}

/// Every second until `stop`: `/status`, metrics, log lines, bars.
pub(super) async fn run(shared: Arc<Snapshots>, health: Arc<Health>, stop: CancellationToken) {
    let mut shown: std::collections::HashMap<u64, ProgressBar> = std::collections::HashMap::new();
    loop {
        let stopping = stop.is_cancelled();
        let mut status = Vec::new();
        let mut unfinished = 0;
        {
            let mut progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
            for (id, p) in progress.iter_mut() {
                let (rate, eta) = rate_and_eta(p);
                let state = match &p.state {
                    JobState::Queued => "queued",
                    JobState::Running => "running",
                    JobState::Done => "done",
                    JobState::Failed(_) => "failed",
                };
                if matches!(p.state, JobState::Queued | JobState::Running) {
                    unfinished += 1;
                }
                let table = p.table.to_string();
                if p.state == JobState::Running {
                    if let Some(total) = p.estimated {
                        metrics::gauge!(crate::metrics::SNAPSHOT_REMAINING, "table" => table.clone())
                            .set(total.saturating_sub(p.rows) as f64);
                    }
                    if p.last_logged.is_some_and(|t| t.elapsed() >= LOG_EVERY) {
                        p.last_logged = Some(Instant::now());
                        tracing::info!(
                            table = %table,
                            rows = p.rows,
                            estimated_rows = p.estimated,
                            rows_per_second = rate.round() as u64,
                            eta_seconds = eta,
                            "snapshot progress"
                        );
                    }
                } else if p.state == JobState::Done {
                    metrics::gauge!(crate::metrics::SNAPSHOT_REMAINING, "table" => table.clone()).set(0.0);
                }
                if let Some(multi) = bars() {
                    update_bar(multi, &mut shown, *id, p);
                }
                status.push(SnapshotJobStatus {
                    table,
                    filter: p.filter.clone(),
                    state,
                    rows: p.rows,
                    estimated_rows: p.estimated,
                    rows_per_second: rate,
                    eta_seconds: eta,
                });
            }
        }
        metrics::gauge!(crate::metrics::SNAPSHOT_JOBS).set(unfinished as f64);
        health.update(|s| s.snapshot = status);
        if stopping {
            for bar in shown.values() {
                bar.abandon();
            }
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn update_bar(multi: &MultiProgress, bars: &mut std::collections::HashMap<u64, ProgressBar>, id: u64, p: &JobProgress) {
    if p.state == JobState::Queued {
        return;
    }
    let bar = bars.entry(id).or_insert_with(|| {
        let bar = multi.add(ProgressBar::new(p.estimated.unwrap_or(0)));
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {human_pos}/{human_len} rows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(p.table.to_string());
        bar
    });
    if bar.is_finished() {
        return;
    }
    if let Some(total) = p.estimated {
        bar.set_length(total.max(p.rows));
    }
    bar.set_position(p.rows);
    let (rate, eta) = rate_and_eta(p);
    bar.set_message(match eta {
        Some(eta) => format!("{:.0} rows/s, ETA {eta} s", rate),
        None => format!("{:.0} rows/s", rate),
    });
    match &p.state {
        // A finished bar goes away (the "snapshot of table finished" log line stays); a failed one stays with why.
        JobState::Done => bar.finish_and_clear(),
        JobState::Failed(e) => bar.abandon_with_message(e.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_keeps_one_rate_and_no_eta() {
        let started = Instant::now() - Duration::from_secs(10);
        let mut p = JobProgress {
            table: crate::ident::TableName { schema: "public".into(), name: "t".into() },
            filter: None,
            state: JobState::Running,
            rows: 1_500,
            rows_before: 500,
            estimated: Some(2_000),
            started: Some(started),
            ended: None,
            last_logged: None,
        };
        let (rate, eta) = rate_and_eta(&p);
        assert!((95.0..=100.0).contains(&rate), "{rate}");
        assert!(eta.is_some_and(|e| (5..=6).contains(&e)), "{eta:?}");
        // Finished after 5 s: 1000 rows this session → 200 rows/s, and it stays so however long /status is read.
        p.state = JobState::Done;
        p.ended = Some(started + Duration::from_secs(5));
        assert_eq!(rate_and_eta(&p), (200.0, None));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rate_and_eta(&p), (200.0, None));
    }
}
