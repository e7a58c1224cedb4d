//! What the pipeline reports while it runs: counts and positions for `/status` and the metrics, the slot's lag as
//! the server sees it, broker reachability for `/readyz`, and the optional heartbeat. None of it is on the per-change
//! path: each loop wakes every second or two.

use std::sync::Arc;
use std::time::Duration;

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

/// Every second while streaming: flushed LSN, lag in seconds, producer queue, broker reachability.
pub(super) async fn report_loop(
    health: Arc<Health>,
    progress: Arc<Progress>,
    probe: Option<KafkaSink>,
    stop: CancellationToken,
) {
    let mut tick = 0u64;
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
        if let (Some(p), 0) = (&probe, tick % 2) {
            match p.probe(Duration::from_secs(2)).await {
                Ok(_) => health.set_broker(None),
                Err(e) => health.set_broker(Some(e.to_string())),
            }
        }
        health.upkeep();
        tick += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
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
                    "SELECT pg_current_wal_lsn()::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, \
                     (pg_current_wal_lsn() - restart_lsn)::int8, (to_jsonb(s) ->> 'failover')::bool, \
                     (to_jsonb(s) ->> 'synced')::bool FROM pg_replication_slots s WHERE slot_name = $1",
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
