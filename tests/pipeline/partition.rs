//! One-sided network partitions between ficus and PostgreSQL, through the harness's fault proxy
//! (`support::FaultProxy`): the connections open at the cut lose every byte in one direction while their sockets
//! stay open, new connections work. ficus must notice (by its own timeout or the server's `wal_sender_timeout`),
//! reconnect, and lose nothing — and must not take a slow broker for a silent server.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{unique_db, Direction, FaultProxy, PgOptions, TestKafka, TestPostgres};
use crate::{read_all_confirmed, values, Ficus, STREAMING, WAIT};

/// A new database of `pg` with a table `t`: (database, slot and topic prefix, topic of `t`).
async fn table_t(pg: &TestPostgres, kafka: &TestKafka, name: &str) -> (String, String, String) {
    let db = unique_db(name);
    pg.create_database(&db);
    pg.execute(&db, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let prefix = kafka.unique_topic(name).replace('-', "_").to_lowercase();
    let topic = format!("{prefix}.public.t");
    (db, prefix, topic)
}

/// Streams 100 rows, cuts `direction`, writes 100 more, waits (at most 60 s) until ficus streams again on a new
/// connection, writes 100 more; then every row is in the topic (at_least_once: repeats allowed).
async fn partition(direction: Direction) {
    let pg = TestPostgres::start_with(PgOptions::default().setting("wal_sender_timeout", "3s"));
    let kafka = TestKafka::shared();
    let (db, prefix, topic) = table_t(&pg, kafka, "partition").await;
    let proxy = FaultProxy::start(pg.port()).await;
    let url = pg.superuser_url(&db).replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let config = Ficus::config(&url, &["public.t"], &prefix, &kafka.brokers(), "")
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  receive_timeout_secs: 4\n");
    assert!(config.contains("receive_timeout_secs: 4"), "{config}");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    pg.execute(&db, "INSERT INTO t SELECT generate_series(1, 100)").await;
    crate::wait_slot_confirmed_now(&pg, &db, &prefix, &f, WAIT).await;

    proxy.cut(direction);
    let cut = Instant::now();
    pg.execute(&db, "INSERT INTO t SELECT generate_series(101, 200)").await;
    while f.log().matches(STREAMING).count() < 2 {
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "ficus did not stream again within 60 s of a {direction:?} partition ({} bytes dropped, {} connections):\n{}",
            proxy.dropped(),
            proxy.connections(),
            f.log()
        );
        assert!(f.is_running(), "ficus exited:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detected = cut.elapsed();
    pg.execute(&db, "INSERT INTO t SELECT generate_series(201, 300)").await;
    let msgs = read_all_confirmed(&pg, &db, &prefix, kafka, &f, &topic, false).await;
    let ids: BTreeSet<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    eprintln!(
        "{direction:?} partition: streaming again after {:.1} s, {} bytes dropped, {} events for 300 rows",
        detected.as_secs_f64(),
        proxy.dropped(),
        msgs.len()
    );
    assert_eq!(ids, (1..=300).collect::<BTreeSet<_>>(), "rows lost:\n{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Nothing from ficus reaches the server (its status updates are lost): the server times the walsender out after
/// `wal_sender_timeout` and closes the connection, which ficus sees; it reconnects and resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_from_ficus_to_postgres_ends_in_a_reconnect_and_loses_nothing() {
    partition(Direction::ToServer).await;
}

/// Nothing from the server reaches ficus while ficus's status updates still arrive (so the server never times
/// out): ficus must notice the silence itself (`source.receive_timeout_secs`, 4 s here), reconnect and resume.
/// Before the receive timeout ficus waited forever (the test failed after 60 s with "did not stream again").
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_from_postgres_to_ficus_ends_in_a_reconnect_and_loses_nothing() {
    partition(Direction::ToClient).await;
}

/// The other side of the receive timeout: a slow broker must not look like a silent server. With the broker
/// frozen for 12 s (three receive timeouts) while a 200,000-row transaction streams, the channel to the sink fills
/// and the source stops reading the socket — the server's messages wait in the socket buffers, unread. That time
/// does not count as silence: one session throughout (no reconnect), every row once.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_broker_is_not_taken_for_a_silent_server() {
    let pg = TestPostgres::start();
    let kafka = TestKafka::start_dedicated();
    let (db, prefix, topic) = table_t(&pg, &kafka, "slowsink").await;
    let config = Ficus::config(&pg.superuser_url(&db), &["public.t"], &prefix, &kafka.brokers(), "")
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  receive_timeout_secs: 4\n");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    kafka.pause();
    pg.execute(&db, "INSERT INTO t SELECT generate_series(1, 200000)").await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    kafka.resume();
    let msgs = read_all_confirmed(&pg, &db, &prefix, &kafka, &f, &topic, false).await;
    let mut ids: Vec<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(f.log().matches(STREAMING).count(), 1, "ficus reconnected during the broker pause:\n{}", f.log());
    assert_eq!(ids, (1..=200000).collect::<Vec<_>>(), "rows lost or repeated");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
