//! A peer consumer for ficus's benchmark (issue 16): the Rust crate `pg_walstream` streaming a pgoutput slot,
//! decoding every change into its row maps and discarding it (no sink). It acknowledges each transaction's end so
//! that the slot's confirmed_flush_lsn advances and the harness (scripts/bench_all.py) sees when it drained the WAL.
//!
//! Usage: walstream-peer CONNINFO SLOT PUBLICATION
//! (CONNINFO a postgres:// URL; `replication=database` is added.) Runs until killed; prints the counts on stderr
//! every 10 s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pg_walstream::{CancellationToken, EventType, LogicalReplicationStream, ReplicationStreamConfig, RetryConfig, StreamingMode};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: walstream-peer CONNINFO SLOT PUBLICATION".into());
    }
    let sep = if args[1].contains('?') { '&' } else { '?' };
    let url = format!("{}{}replication=database", args[1], sep);
    // Protocol 1, no streaming of in-progress transactions, text values: what pg_recvlogical gets in the same run.
    let config = ReplicationStreamConfig::new(
        args[2].clone(),
        args[3].clone(),
        1,
        StreamingMode::Off,
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_secs(60),
        RetryConfig::default(),
    )
    .with_existing_slot_required(true);
    let mut stream = LogicalReplicationStream::new(&url, config).await?;
    stream.start(None).await?;
    let (mut changes, mut cells) = (0u64, 0u64);
    let mut last = Instant::now();
    let cancel = CancellationToken::new();
    loop {
        let event = stream.next_event(&cancel).await?;
        match &event.event_type {
            EventType::Insert { data, .. } => {
                changes += 1;
                cells += data.len() as u64;
            }
            EventType::Update { old_data, new_data, .. } => {
                changes += 1;
                cells += (new_data.len() + old_data.as_ref().map_or(0, |d| d.len())) as u64;
            }
            EventType::Delete { old_data, .. } => {
                changes += 1;
                cells += old_data.len() as u64;
            }
            EventType::Commit { end_lsn, .. } => {
                stream.shared_lsn_feedback.update_flushed_lsn(*end_lsn);
                stream.shared_lsn_feedback.update_applied_lsn(*end_lsn);
            }
            _ => {}
        }
        black_box(&event);
        if last.elapsed() > Duration::from_secs(10) {
            eprintln!("walstream-peer: {changes} changes, {cells} column values");
            last = Instant::now();
        }
    }
}
