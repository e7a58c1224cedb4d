//! The chaos suite: a mixed workload over many keys while a driver SIGKILLs ficus, restarts PostgreSQL (a crash),
//! stops the broker and terminates the walsender at random moments; then a verifier compares the topic (read
//! with read_committed) with the ground truth the workload recorded in the database itself.
//!
//! Ground truth: every change goes through `chaos_step()`, which writes the change and a `truth` row in the same
//! transaction — so a commit that the writer never saw acknowledged (the server crashed) is still accounted for
//! exactly. Figures: changes written, events expected, seen, lost, duplicated, per-key order violations.
//!
//! CI runs a short version. The full run (≥ 100k changes, ≥ 20 SIGKILLs) is `scripts/chaos.sh`; knobs:
//! `FICUS_CHAOS_CHANGES` (workload steps; deletes of missing keys change nothing), `FICUS_CHAOS_KILLS`,
//! `FICUS_CHAOS_SEED`. One test per delivery mode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{unique_db, TestKafka, TestPostgres};
use crate::{values, Ficus, WAIT};

const KEYS: u64 = 2000;
/// Broker stops are left out by default: the test broker (noida-db) loses acknowledged writes when it restarts under
/// load (`scripts/broker-durability.sh` shows it without ficus), so runs with them lose changes in both modes
/// (docs/reliability.md). `FICUS_CHAOS_FAULTS=kill,walsender,pg,broker` includes them.
const DEFAULT_FAULTS: &str = "kill,walsender,pg,pause";
const STEPS_PER_TXN: u64 = 20;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const DDL: &str = r#"
    CREATE TABLE chaos (k int PRIMARY KEY, seq bigint NOT NULL, pad text);
    ALTER TABLE chaos REPLICA IDENTITY FULL;
    CREATE TABLE truth (n bigint PRIMARY KEY, k int NOT NULL, op text NOT NULL, old bigint);
    CREATE SEQUENCE chaos_seq;
    CREATE FUNCTION chaos_step(key int, del boolean) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE n bigint := nextval('chaos_seq'); prev bigint;
    BEGIN
      IF del THEN
        DELETE FROM chaos WHERE k = key RETURNING seq INTO prev;
        IF FOUND THEN INSERT INTO truth VALUES (n, key, 'delete', prev); END IF;
      ELSE
        UPDATE chaos SET seq = n, pad = md5(n::text) WHERE k = key;
        IF FOUND THEN INSERT INTO truth VALUES (n, key, 'update', NULL);
        ELSE INSERT INTO chaos VALUES (key, n, md5(n::text)); INSERT INTO truth VALUES (n, key, 'insert', NULL);
        END IF;
      END IF;
    END $$;
"#;

/// Writes transactions of `STEPS_PER_TXN` steps (a step on a missing key that is a delete changes nothing) until
/// `target` steps committed, riding out server restarts.
async fn writer(pg_url: String, target: u64, seed: u64, written: Arc<AtomicU64>, done: Arc<AtomicBool>) {
    let mut rng = Rng(seed | 1);
    let mut client: Option<tokio_postgres::Client> = None;
    while written.load(Ordering::Relaxed) < target {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => match tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client.insert(c)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let mut sql = String::from("BEGIN;");
        let mut keys: Vec<u64> = (0..STEPS_PER_TXN).map(|_| rng.below(KEYS) + 1).collect();
        // One writer, keys in order: no deadlocks even if a second writer is ever added.
        keys.sort_unstable();
        for k in keys {
            let del = rng.below(5) == 0;
            sql.push_str(&format!("SELECT chaos_step({k}, {del});"));
        }
        sql.push_str("COMMIT;");
        match c.batch_execute(&sql).await {
            Ok(()) => {
                written.fetch_add(STEPS_PER_TXN, Ordering::Relaxed);
            }
            Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct Figures {
    changes: u64,
    expected: u64,
    seen: u64,
    lost: u64,
    duplicated: u64,
    order_violations: u64,
}

/// Compares the topic with `truth`: each event is identified by the truth row it stands for.
async fn verify(pg: &TestPostgres, db: &str, kafka: &TestKafka, topic: &str) -> (Figures, Vec<String>) {
    let client = pg.client(db).await;
    let rows = client.query("SELECT n, k, op, old FROM truth ORDER BY n", &[]).await.unwrap();
    // (key, op, seq the event carries) → truth n. Inserts and updates carry their own n as `after.seq`; a delete
    // carries the deleted row's seq as `before.seq`.
    let mut ids: HashMap<(i64, bool, i64), i64> = HashMap::new();
    for r in &rows {
        let (n, k, op, old): (i64, i32, String, Option<i64>) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let del = op == "delete";
        ids.insert((i64::from(k), del, if del { old.unwrap() } else { n }), n);
    }
    let msgs = kafka.consume_all(topic, usize::MAX, Duration::from_secs(15)).await;
    let mut seen: HashMap<i64, u64> = HashMap::new();
    let mut last_per_key: HashMap<i64, i64> = HashMap::new();
    let mut fig = Figures { changes: rows.len() as u64, expected: rows.len() as u64, seen: msgs.len() as u64, ..Figures::default() };
    let mut examples = Vec::new();
    for v in values(&msgs) {
        let op = v["op"].as_str().unwrap_or("");
        let del = op == "delete";
        let image = if del { &v["before"] } else { &v["after"] };
        let (Some(k), Some(seq)) = (image["k"].as_i64(), image["seq"].as_i64()) else {
            examples.push(format!("unexpected event {v}"));
            continue;
        };
        let Some(&n) = ids.get(&(k, del, seq)) else {
            examples.push(format!("event without a truth row: {op} k={k} seq={seq}"));
            continue;
        };
        let count = seen.entry(n).or_default();
        *count += 1;
        if *count > 1 {
            fig.duplicated += 1;
            continue;
        }
        // Per key, first deliveries must follow the order of the writes.
        if let Some(prev) = last_per_key.insert(k, n) {
            if prev > n {
                fig.order_violations += 1;
                if examples.len() < 5 {
                    examples.push(format!("key {k}: change {n} after change {prev}"));
                }
            }
        }
    }
    let lost: Vec<i64> = ids.values().filter(|n| !seen.contains_key(n)).copied().collect();
    fig.lost = lost.len() as u64;
    if !lost.is_empty() {
        let mut l = lost.clone();
        l.sort_unstable();
        // Diagnostics: lost for good, or written but invisible to read_committed (an open transaction)?
        let all = kafka.consume_all_with(topic, usize::MAX, Duration::from_secs(10), "read_uncommitted").await;
        examples.push(format!(
            "lost changes {}..={} (first {:?}); high watermark {}, read_committed {}, read_uncommitted {}",
            l[0],
            l[l.len() - 1],
            &l[..l.len().min(10)],
            kafka.high_watermark(topic).await,
            msgs.len(),
            all.len()
        ));
    }
    (fig, examples)
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_at_least_once_loses_nothing_and_keeps_key_order() {
    chaos("at_least_once", DEFAULT_FAULTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_exactly_once_loses_nothing_and_duplicates_nothing() {
    chaos("exactly_once", DEFAULT_FAULTS).await;
}

async fn chaos(delivery: &str, default_faults: &str) {
    let changes = env_u64("FICUS_CHAOS_CHANGES", 4000);
    let kills = env_u64("FICUS_CHAOS_KILLS", 4);
    let seed = env_u64("FICUS_CHAOS_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("chaos: {changes} steps, {kills} SIGKILLs, delivery {delivery}, seed {seed} (FICUS_CHAOS_SEED)");

    let pg = TestPostgres::start();
    let kafka = TestKafka::start_dedicated();
    let db = unique_db("chaos");
    pg.create_database(&db);
    pg.execute(&db, DDL).await;
    let prefix = kafka.unique_topic("chaos").replace('-', "_").to_lowercase();
    let topic = format!("{prefix}.public.chaos");
    let extra = "  reconnect_max_delay_secs: 2\n";
    let config = Ficus::config(&pg.superuser_url(&db), &["public.chaos"], &prefix, &kafka.brokers(), "")
        .replace("  status_interval_secs: 1\n", &format!("  status_interval_secs: 1\n{extra}"))
        .replace("kafka:\n", &format!("kafka:\n  delivery: {delivery}\n"));
    let mut f = Ficus::start(&config);
    f.wait_for_log("streaming", WAIT);

    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pg_url = pg.superuser_url(&db);
    let w = tokio::spawn(writer(pg_url, changes, seed, written.clone(), done.clone()));

    // The fault driver: until the workload is written and enough SIGKILLs happened.
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let (mut n_kill, mut n_pg, mut n_broker, mut n_walsender, mut n_pause) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    // FICUS_CHAOS_FAULTS: a subset of kill,walsender,pg,pause,broker.
    let faults = std::env::var("FICUS_CHAOS_FAULTS").unwrap_or_else(|_| default_faults.into());
    while !done.load(Ordering::Relaxed) || n_kill < kills {
        assert!(started.elapsed() < Duration::from_secs(1800), "chaos run exceeded 30 minutes");
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        let pick = match rng.below(100) {
            0..=54 => "kill",
            55..=69 => "walsender",
            70..=79 => "pg",
            80..=89 => "pause",
            _ => "broker",
        };
        let pick = if faults.contains(pick) { pick } else { "kill" };
        match pick {
            "kill" => {
                f.sigkill();
                n_kill += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
                f.restart();
            }
            "walsender" => {
                pg.execute("postgres", "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active_pid IS NOT NULL").await;
                n_walsender += 1;
            }
            "pg" => {
                pg.restart_immediate();
                n_pg += 1;
            }
            "pause" => {
                // The broker freezes (a GC pause, a stalled network): ficus must stall, not lose or fail.
                kafka.pause();
                tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
                kafka.resume();
                n_pause += 1;
            }
            _ => {
                kafka.stop();
                tokio::time::sleep(Duration::from_millis(500 + rng.below(2000))).await;
                kafka.start();
                n_broker += 1;
            }
        }
    }
    w.await.unwrap();
    let written_at = started.elapsed();
    // Faults over: everything written must arrive.
    let flushed_deadline = Instant::now() + Duration::from_secs(300);
    let target: String = pg.client(&db).await.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    loop {
        let c: Option<String> = pg
            .client(&db)
            .await
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&prefix])
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        if c.as_deref().is_some_and(|c| crate::lsn(c) >= crate::lsn(&target)) {
            break;
        }
        assert!(Instant::now() < flushed_deadline, "ficus did not catch up after the faults:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (fig, examples) = verify(&pg, &db, &kafka, &topic).await;
    eprintln!(
        "chaos result ({delivery}, seed {seed}): faults: {n_kill} SIGKILL, {n_pg} PostgreSQL crash-restarts, {n_pause} broker \
         pauses, {n_broker} broker stops, {n_walsender} walsender terminations over {:.0} s\n  changes written {}, events expected {}, seen {}, \
         lost {}, duplicated {}, order violations {}",
        written_at.as_secs_f64(),
        fig.changes,
        fig.expected,
        fig.seen,
        fig.lost,
        fig.duplicated,
        fig.order_violations
    );
    assert!(written.load(Ordering::Relaxed) >= changes, "workload incomplete");
    if fig.lost > 0 {
        // What ficus did around the loss: errors, warnings, resumptions, commits.
        let full = f.log();
        let log: Vec<&str> = full.lines().filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("resuming") || l.contains("streaming slot") || l.contains("kafka transaction committed")).collect::<Vec<_>>();
        let _ = std::fs::write(std::env::temp_dir().join("ficus-chaos-failure.log"), log.join("\n"));
        eprintln!("ficus log excerpt written to {}", std::env::temp_dir().join("ficus-chaos-failure.log").display());
    }
    assert_eq!(fig.lost, 0, "{examples:?}");
    assert_eq!(fig.order_violations, 0, "{examples:?}");
    assert!(examples.is_empty(), "{examples:?}");
    if delivery == "exactly_once" {
        assert_eq!(fig.duplicated, 0, "exactly_once published duplicates");
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
