//! What the pipeline reports while it runs: counts and positions for `/status` and the metrics, the slot's lag as
//! the server sees it, broker reachability for `/readyz`, and the optional heartbeat. None of it is on the per-change
//! path: each loop wakes every second or two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::kafka::KafkaSink;
use crate::progress::Progress;
use crate::router::Router;

/// Per-table and per-rule counts (and the last event time) into `/status`.
pub(super) fn publish_counts(health: &Health, router: &Router, last_commit_us: i64) {
    let tables = router.table_counts();
    let rules = router.rules().counts();
    health.update(|s| {
        s.dlq_records = rules.iter().map(|r| r.dlq).sum();
        s.tables = tables;
        s.rules = rules;
        if last_commit_us > 0 {
            let mut t = Vec::with_capacity(27);
            crate::postgres::value::write_unix_micros(&mut t, last_commit_us);
            s.last_event_time = String::from_utf8(t).ok();
        }
    });
}

/// Every second while streaming: flushed LSN, lag in seconds, producer queue, broker reachability, and the log lines
/// of a Kafka outage ([`Outage`]).
pub(super) async fn report_loop(
    health: Arc<Health>,
    progress: Arc<Progress>,
    probe: Option<KafkaSink>,
    stop: CancellationToken,
) {
    let mut tick = 0u64;
    let mut outage = Outage::default();
    loop {
        let flushed = progress.flushed();
        let lag = progress.lag_seconds();
        let queue = probe.as_ref().map_or(0, |p| p.in_flight().max(0) as u64);
        metrics::gauge!(crate::metrics::FLUSHED_LSN).set(flushed.0 as f64);
        metrics::gauge!(crate::metrics::LAG_SECONDS).set(lag);
        metrics::gauge!(crate::metrics::PRODUCER_QUEUE).set(queue as f64);
        health.update(|s| {
            s.flushed_lsn = Some(flushed.to_string());
            s.lag_seconds = lag;
            s.producer_queue = queue;
        });
        if let Some(p) = &probe {
            if tick % 2 == 0 {
                match p.probe(Duration::from_secs(2)).await {
                    Ok(_) => {
                        health.set_broker(None);
                        outage.probe(None);
                    }
                    Err(e) => {
                        health.set_broker(Some(e.to_string()));
                        outage.probe(Some(e.to_string()));
                    }
                }
            }
            outage.deliveries(queue, progress.acked_total(), Instant::now());
            outage.report(queue);
        }
        health.upkeep();
        tick += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Messages in flight with no acknowledgement for this long: the deliveries stalled (the broker pauses or is gone).
pub(super) const STALL_AFTER: Duration = Duration::from_secs(5);

/// A Kafka outage while streaming, as the operator reads it in the log: one WARN when it starts (the broker does not
/// answer twice in a row, or messages are in flight and none was acknowledged for [`STALL_AFTER`]) with what it
/// means and what to check, one INFO when it ends (the broker answers and deliveries move). Nothing in between,
/// however long it lasts.
#[derive(Debug, Default)]
pub(super) struct Outage {
    /// Consecutive failed probes, and the last reason.
    failed_probes: u32,
    reason: Option<String>,
    /// The acknowledgement count last seen, and since when it has not moved while messages were in flight.
    acks: u64,
    stalled_since: Option<Instant>,
    /// The outage being reported, since when.
    since: Option<Instant>,
}

impl Outage {
    fn probe(&mut self, problem: Option<String>) {
        match problem {
            None => self.failed_probes = 0,
            Some(reason) => {
                self.failed_probes += 1;
                self.reason = Some(reason);
            }
        }
    }

    fn deliveries(&mut self, in_flight: u64, acks: u64, now: Instant) {
        if in_flight == 0 || acks != self.acks {
            self.stalled_since = None;
        } else if self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
        self.acks = acks;
    }

    fn stalled(&self) -> bool {
        self.stalled_since.is_some_and(|t| t.elapsed() >= STALL_AFTER)
    }

    /// Logs the start or the end of an outage; returns whether one is going on.
    fn report(&mut self, in_flight: u64) -> bool {
        let down = self.failed_probes >= 2 || self.stalled();
        match (down, self.since) {
            (true, None) => {
                self.since = Some(Instant::now());
                let reason = match (&self.reason, self.failed_probes >= 2) {
                    (Some(r), true) => r.clone(),
                    _ => format!("no acknowledgement for {} s", STALL_AFTER.as_secs()),
                };
                tracing::warn!(
                    in_flight,
                    reason = %reason,
                    "Kafka deliveries stalled: the stream waits (nothing is lost; PostgreSQL is confirmed only up to \
                     what Kafka acknowledged, and the slot retains the WAL meanwhile) until the brokers answer again; \
                     check that kafka.brokers are up and reachable from here, and their disk and logs"
                );
            }
            (false, Some(since)) => {
                self.since = None;
                self.reason = None;
                tracing::info!(outage_secs = since.elapsed().as_secs(), "Kafka deliveries resumed");
            }
            _ => {}
        }
        down
    }
}

pub use crate::change::HEARTBEAT_PREFIX;

/// Writes a transactional logical message every `interval` (never when `None`): its commit reaches ficus, is
/// "acknowledged" at once (no records), and moves the slot's confirmed position to the server's current WAL, so an
/// idle captured table never pins WAL that other tables write.
pub(super) async fn heartbeat_loop(client: &tokio_postgres::Client, interval: Option<Duration>) {
    let Some(interval) = interval else { return std::future::pending().await };
    let mut warned = false;
    loop {
        tokio::time::sleep(interval).await;
        let sql = format!("SELECT pg_logical_emit_message(true, '{HEARTBEAT_PREFIX}', now()::text)");
        match client.simple_query(&sql).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "heartbeat failed (the role needs EXECUTE on pg_logical_emit_message; set source.heartbeat_interval_secs: 0 to turn it off)");
            }
            Err(_) => {}
        }
    }
}

/// Every two seconds until dropped: the slot's lag and retained WAL as the server sees them.
pub(super) async fn monitor_server(client: &tokio_postgres::Client, slot: Option<&str>, health: &Health) {
    loop {
        if let Some(slot) = slot {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {wal}::text, ({wal} - confirmed_flush_lsn)::int8, ({wal} - restart_lsn)::int8, \
                         (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool \
                         FROM pg_replication_slots s WHERE slot_name = $1",
                        wal = crate::postgres::control::CURRENT_WAL_LSN
                    ),
                    &[&slot],
                )
                .await;
            match row {
                Ok(Some(r)) => {
                    let wal: Option<String> = r.get(0);
                    let lag: Option<i64> = r.get(1);
                    let retained: Option<i64> = r.get(2);
                    let (failover, synced): (Option<bool>, Option<bool>) = (r.get(3), r.get(4));
                    if let Some(f) = failover {
                        metrics::gauge!(crate::metrics::SLOT_FAILOVER).set(if f { 1.0 } else { 0.0 });
                    }
                    if let Some(l) = lag {
                        metrics::gauge!(crate::metrics::LAG_BYTES).set(l as f64);
                    }
                    if let Some(w) = retained {
                        metrics::gauge!(crate::metrics::RETAINED_WAL).set(w as f64);
                    }
                    health.update(|s| {
                        s.server_wal_lsn = wal;
                        s.lag_bytes = lag.map(|l| l.max(0) as u64);
                        s.retained_wal_bytes = retained.map(|w| w.max(0) as u64);
                        s.slot_failover = failover;
                        s.slot_synced = synced;
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "reading the slot's lag"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let mut o = Outage::default();
        let t0 = Instant::now() - STALL_AFTER * 2;
        // Messages in flight, acknowledgements moving: fine.
        o.deliveries(10, 1, t0);
        o.deliveries(10, 2, t0);
        assert!(!o.report(10));
        // No acknowledgement since t0 (long ago): stalled.
        o.deliveries(10, 2, t0);
        assert!(o.report(10));
        assert!(o.since.is_some());
        // Still stalled, probes failing: the same outage, nothing new to say.
        o.probe(Some("timeout".into()));
        o.probe(Some("timeout".into()));
        assert!(o.report(10));
        // The broker answers and acknowledges: over.
        o.probe(None);
        o.deliveries(10, 3, Instant::now());
        assert!(!o.report(10));
        assert!(o.since.is_none());
        // Nothing in flight: never stalled, whatever the ack count.
        o.deliveries(0, 3, t0);
        assert!(!o.report(0));
        // One failed probe is not an outage; two in a row are.
        o.probe(Some("timeout".into()));
        assert!(!o.report(0));
        o.probe(Some("timeout".into()));
        assert!(o.report(0));
    }
}
