//! Faults the pipeline must ride out without losing a change: the walsender terminated, PostgreSQL restarted,
//! PostgreSQL down at start.

use std::collections::BTreeSet;

use crate::support::{unique_db, TestKafka, TestPostgres};
use crate::{read_all_confirmed, values, Ficus, WAIT};

/// Ids in the raw change events of `topic` once `slot` confirmed the server's current WAL position (duplicates
/// allowed: at-least-once). No fixed wait: the exact read returns as soon as the slot caught up.
async fn ids(pg: &TestPostgres, db: &str, slot: &str, kafka: &TestKafka, f: &Ficus, topic: &str) -> BTreeSet<i64> {
    let msgs = read_all_confirmed(pg, db, slot, kafka, f, topic, false).await;
    values(&msgs).iter().filter_map(|e| e["after"]["id"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn walsender_terminated_and_server_restarted_then_nothing_lost() {
    let pg = TestPostgres::start();
    let db = unique_db("faults");
    pg.create_database(&db);
    pg.execute(&db, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let kafka = TestKafka::shared();
    let prefix = kafka.unique_topic("faults").replace('-', "_").to_lowercase();
    let topic = format!("{prefix}.public.t");
    let mut f = Ficus::start(&Ficus::config(&pg.superuser_url(&db), &["public.t"], &prefix, &kafka.brokers(), ""));
    f.wait_streaming();
    pg.execute(&db, "INSERT INTO t SELECT generate_series(1, 100)").await;

    // 1. The walsender is terminated (pg_terminate_backend, as a DBA would): ficus reconnects.
    pg.execute(&db, &format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{prefix}' AND active_pid IS NOT NULL")).await;
    pg.execute(&db, "INSERT INTO t SELECT generate_series(101, 200)").await;
    f.wait_for_log("reconnecting", WAIT);

    // 2. The server restarts (immediate shutdown: a crash): ficus waits for it and resumes.
    pg.restart_immediate();
    pg.execute(&db, "INSERT INTO t SELECT generate_series(201, 300)").await;

    let seen = ids(&pg, &db, &prefix, kafka, &f, &topic).await;
    let missing: Vec<i64> = (1..=300).filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "lost {} changes, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        f.log()
    );
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_at_start_is_waited_for() {
    let pg = TestPostgres::start();
    let db = unique_db("late_pg");
    pg.create_database(&db);
    pg.execute(&db, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let kafka = TestKafka::shared();
    let prefix = kafka.unique_topic("late_pg").replace('-', "_").to_lowercase();
    pg.stop_immediate();
    let mut f = Ficus::start(&Ficus::config(&pg.superuser_url(&db), &["public.t"], &prefix, &kafka.brokers(), ""));
    f.wait_for_log("reconnecting", WAIT);
    pg.start_again();
    f.wait_streaming();
    pg.execute(&db, "INSERT INTO t VALUES (1)").await;
    assert_eq!(
        ids(&pg, &db, &prefix, kafka, &f, &format!("{prefix}.public.t")).await,
        BTreeSet::from([1]),
        "{}",
        f.log()
    );
    assert_eq!(f.terminate().code(), Some(0));
}
