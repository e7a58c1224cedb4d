//! Failover: multi-host `source.url` (the first usable host that matches `target_session_attrs`), and a primary
//! crash with promotion of a physical standby (PostgreSQL 17+ failover slots): with the slot synchronized, ficus
//! follows the new primary and the chaos verifier finds nothing lost, out of order or (exactly_once) duplicated;
//! with the slot not synchronized, ficus stops with exit 2 naming the gap and creates nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chaos::{verify, writer, Shared, DDL};
use crate::support::{unique_db, PgOptions, TestKafka, TestPostgres};
use crate::{values, Ficus, WAIT};

/// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/db?...` over `ports`, in order.
fn multi_url(ports: &[u16], db: &str, attrs: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("postgres://postgres@{}/{db}?sslmode=disable&target_session_attrs={attrs}", hosts.join(","))
}

async fn server_version(pg: &TestPostgres) -> i32 {
    let row = pg.client("postgres").await.query_one("SELECT current_setting('server_version_num')::int", &[]).await;
    row.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_host_url_skips_hosts_that_are_down_or_read_only() {
    let kafka = TestKafka::shared();
    let primary = TestPostgres::shared();
    // A read-only server (what a hot standby looks like to `target_session_attrs=read-write`) and a closed port.
    let read_only = TestPostgres::start();
    let db = unique_db("multi_host");
    primary.create_database(&db);
    read_only.create_database(&db);
    primary.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    read_only.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    read_only.execute("postgres", "ALTER SYSTEM SET default_transaction_read_only = on").await;
    read_only.execute("postgres", "SELECT pg_reload_conf()").await;
    let down = crate::support::free_port();
    let prefix = kafka.unique_topic("multi_host").replace('-', "_").to_lowercase();
    let url = multi_url(&[down, read_only.port(), primary.port()], &db, "read-write");
    let config = Ficus::config(&url, &["public.t"], &prefix, &kafka.brokers(), "");

    // `ficus check` goes to the primary too.
    let (code, out) = crate::check(&config);
    assert_eq!(code, 0, "{out}");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    primary.execute(&db, "INSERT INTO t VALUES (1, 'on the primary')").await;
    let msgs = kafka.consume_all(&format!("{prefix}.public.t"), 1, WAIT).await;
    assert_eq!(values(&msgs)[0]["after"]["v"], "on the primary");
    let log = f.log();
    for skipped in [
        format!("skipping host 127.0.0.1:{down}: "),
        format!("skipping host 127.0.0.1:{}: it is read-only", read_only.port()),
    ] {
        assert!(log.matches(&skipped).count() >= 2, "control and replication connections skip {skipped:?}\n{log}");
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    primary.drop_slots_of(&db);

    // No usable host: every host is named with its reason, and the password never appears.
    let url = format!(
        "postgres://postgres:pSECRET@127.0.0.1:{down},127.0.0.1:{}/{db}?sslmode=disable&target_session_attrs=read-write",
        read_only.port()
    );
    let (code, out) = crate::check(&Ficus::config(&url, &["public.t"], &prefix, &kafka.brokers(), ""));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{down}")) && out.contains("read-only"), "{out}");
    assert!(!out.contains("pSECRET"), "{out}");
}

/// A primary with a physical standby (`sync_replication_slots` as given, on 17+), the chaos table. `None` when
/// `sync_slots` is asked of a server before 17 (the reason is printed).
struct Pair {
    primary: TestPostgres,
    standby: TestPostgres,
    db: String,
}

async fn pair(name: &str, sync_slots: bool) -> Option<Pair> {
    let primary = TestPostgres::start();
    let version = server_version(&primary).await;
    if sync_slots && version < 170_000 {
        eprintln!(
            "skipped: failover slots need PostgreSQL 17+, the test cluster is {version} (run with FICUS_PG_VERSION=17)"
        );
        return None;
    }
    let db = unique_db(name);
    primary.create_database(&db);
    primary.execute(&db, DDL).await;
    // Before 17 there is no slot synchronization at all: a standby never has the slot.
    let opts = match version >= 170_000 {
        true => PgOptions::default().setting("sync_replication_slots", if sync_slots { "on" } else { "off" }),
        false => PgOptions::default(),
    };
    let standby = primary.start_standby("standby1", opts);
    if version < 170_000 {
        return Some(Pair { primary, standby, db });
    }
    // Logical decoding on the primary waits until the standby has received the WAL it decodes.
    primary.execute("postgres", "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'").await;
    primary.execute("postgres", "SELECT pg_reload_conf()").await;
    Some(Pair { primary, standby, db })
}

async fn slot_row(pg: &TestPostgres, db: &str, slot: &str) -> Option<(bool, bool, u64)> {
    let row = pg
        .client(db)
        .await
        .query_opt(
            "SELECT coalesce((to_jsonb(s) ->> 'failover')::bool, false), coalesce((to_jsonb(s) ->> 'synced')::bool, false), \
             coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    Some((row.get(0), row.get(1), crate::lsn(row.get(2))))
}

/// Waits until `/status` contains `status` and `/metrics` contains `metric`.
async fn wait_status(port: u16, status: &str, metric: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = crate::get(port, "/status").map(|r| r.1).unwrap_or_default();
        let m = crate::get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        if s.contains(status) && m.lines().any(|l| l.starts_with(metric)) {
            return;
        }
        assert!(Instant::now() < deadline, "/status never showed {status} or /metrics {metric}:\n{s}\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn failover(delivery: &str, seed: u64) {
    let Some(Pair { primary, standby, db }) = pair("failover", true).await else { return };
    let kafka = TestKafka::start_dedicated();
    let prefix = kafka.unique_topic("failover").replace('-', "_").to_lowercase();
    let topic = format!("{prefix}.public.chaos");
    let url = multi_url(&[primary.port(), standby.port()], &db, "read-write");
    let config = Ficus::config(&url, &["public.chaos"], &prefix, &kafka.brokers(), "")
        .replace(
            "  status_interval_secs: 1\n",
            "  status_interval_secs: 1\n  reconnect_max_delay_secs: 1\n  failover_slot: true\n",
        )
        .replace("kafka:\n", &format!("kafka:\n  delivery: {delivery}\n"));
    let (code, out) = crate::check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("will be created with failover") && out.contains("standby1"), "{out}");
    // The standby's side, read over the second host of the URL.
    let standby_line = format!("standby 127.0.0.1:{}", standby.port());
    assert!(out.contains(&standby_line) && out.contains("sync_replication_slots on, hot_standby_feedback on"), "{out}");
    let (mut f, health) = Ficus::start_with_health(&config);
    f.wait_streaming();
    assert!(slot_row(&primary, &db, &prefix).await.unwrap().0, "the slot is created with failover");
    wait_status(health, "\"slotFailover\":true", "ficus_slot_failover 1").await;

    let changes = 3000;
    let shared = Arc::new(Shared::default());
    let w = tokio::spawn(writer(url.clone(), changes, 300.0, seed, shared.clone()));
    // Half the workload, and the standby's copy of the slot synchronized, then the primary crashes mid-stream.
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let synced = slot_row(&standby, &db, &prefix).await;
        if shared.written.load(Ordering::Relaxed) >= changes / 2
            && synced.is_some_and(|(fo, s, lsn)| fo && s && lsn > 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never synchronized to the standby:\n{}", standby.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The crash comes while the writer has commits the slot has not confirmed (as in the chaos suite).
    let client = primary.client(&db).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let unconfirmed = loop {
        let committed = shared.committed_lsn.load(Ordering::Relaxed);
        let confirmed = slot_row(&primary, &db, &prefix).await.map_or(0, |r| r.2);
        if committed > confirmed || Instant::now() > deadline {
            break committed.saturating_sub(confirmed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(client);
    assert!(unconfirmed > 0, "every write was already confirmed when the primary crashed");
    let before = shared.written.load(Ordering::Relaxed);
    primary.stop_immediate();
    let crashed_at = started.elapsed();
    standby.promote();
    let promoted_at = started.elapsed();
    // ficus finds the new primary: its walsender holds the slot there.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = standby
            .client(&db)
            .await
            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", &[&prefix])
            .await
            .unwrap()
            .is_some();
        if active {
            break;
        }
        assert!(Instant::now() < deadline, "ficus never streamed from the new primary:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed_at = started.elapsed();
    // The workload goes on against the new primary (the writer's URL lists both hosts too).
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.written.load(Ordering::Relaxed) < before + changes / 2 {
        assert!(Instant::now() < deadline, "the writer made no progress on the new primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.faults_done.store(true, Ordering::Relaxed);
    w.await.unwrap();

    // Everything the new primary has must arrive.
    let target: String =
        standby.client(&db).await.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(180);
    while slot_row(&standby, &db, &prefix).await.map_or(0, |r| r.2) < crate::lsn(&target) {
        assert!(Instant::now() < deadline, "ficus did not catch up on the new primary:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let caught_up_at = started.elapsed();
    // On the new primary the slot is the synchronized copy.
    wait_status(health, "\"slotSynced\":true", "ficus_slot_failover 1").await;
    let (fig, examples) = verify(&standby, &db, &kafka, &topic).await;
    eprintln!(
        "failover result ({delivery}, seed {seed}): primary crashed at {:.1} s after {before} steps ({unconfirmed} B of WAL unconfirmed), standby promoted at \
         {:.1} s, ficus streaming from it at {:.1} s, {} steps in all, ficus caught up on the new primary at {:.1} s\n  changes written {}, events expected {}, seen {}, \
         lost {}, duplicated {}, order violations {}",
        crashed_at.as_secs_f64(),
        promoted_at.as_secs_f64(),
        resumed_at.as_secs_f64(),
        shared.written.load(Ordering::Relaxed),
        caught_up_at.as_secs_f64(),
        fig.changes,
        fig.expected,
        fig.seen,
        fig.lost,
        fig.duplicated,
        fig.order_violations
    );
    assert_eq!(fig.lost, 0, "{examples:?}\n{}", f.log());
    assert_eq!(fig.order_violations, 0, "{examples:?}");
    assert!(examples.is_empty(), "{examples:?}");
    if delivery == "exactly_once" {
        assert_eq!(fig.duplicated, 0, "exactly_once published duplicates");
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_to_a_synced_standby_at_least_once_loses_nothing() {
    failover("at_least_once", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_to_a_synced_standby_exactly_once_loses_and_duplicates_nothing() {
    failover("exactly_once", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_to_a_standby_without_the_slot_stops_with_exit_2_naming_the_gap() {
    let Some(Pair { primary, standby, db }) = pair("failover_unsynced", false).await else { return };
    let kafka = TestKafka::shared();
    let prefix = kafka.unique_topic("failover_unsynced").replace('-', "_").to_lowercase();
    // The standby first: a hot standby is read-only, so ficus skips it for the primary.
    let url = multi_url(&[standby.port(), primary.port()], &db, "read-write");
    let config = Ficus::config(&url, &["public.chaos"], &prefix, &kafka.brokers(), "")
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  reconnect_max_delay_secs: 1\n");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    let log = f.log();
    let skipped = format!("skipping host 127.0.0.1:{}: it is read-only", standby.port());
    // Both connections skip it: the control connection and the replication connection.
    assert!(log.matches(&skipped).count() >= 2, "{log}");
    assert!(log.contains(&format!("host chosen target=127.0.0.1:{}", primary.port())), "{log}");
    // `ficus check` reads the standby too and says why a failover to it would lose the slot.
    let (_, out) = crate::check(&config);
    let version = server_version(&standby).await;
    let expected =
        if version >= 170_000 { "sync_replication_slots is off" } else { "no slot synchronization before 17" };
    assert!(out.contains(&format!("standby 127.0.0.1:{}", standby.port())) && out.contains(expected), "{out}");
    primary.execute(&db, "SELECT chaos_step(1, false); SELECT chaos_step(2, false)").await;
    // Confirmed (so checkpointed) on the primary, then the primary goes away.
    let deadline = Instant::now() + WAIT;
    let target: String =
        primary.client(&db).await.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    while slot_row(&primary, &db, &prefix).await.map_or(0, |r| r.2) < crate::lsn(&target) {
        assert!(Instant::now() < deadline, "{}", f.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    primary.stop_immediate();
    standby.promote();
    standby.execute(&db, "SELECT chaos_step(3, false)").await;
    let status = f.wait(Duration::from_secs(60));
    let log = f.log();
    assert_eq!(status.code(), Some(2), "a failover to a server without the slot must stop ficus with exit 2\n{log}");
    assert!(log.contains("does not exist") && log.contains("failover target without it"), "{log}");
    assert!(slot_row(&standby, &db, &prefix).await.is_none(), "the refusal creates no slot on the new primary");
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_slot_true_is_refused_before_17_and_for_a_slot_without_failover() {
    let s = crate::Setup::new("failover_true", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let version = server_version(s.pg).await;
    let config = s
        .config(&["public.t"])
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  failover_slot: true\n");
    if version < 170_000 {
        let (code, out) = crate::check(&config);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("needs PostgreSQL 17") && out.contains(&format!("{}.", version / 10_000)), "{out}");
        let mut f = Ficus::start(&config);
        assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
        assert!(f.log().contains("needs PostgreSQL 17"), "{}", f.log());
        return;
    }
    // PostgreSQL 17+: a slot created without failover is refused with the command that fixes it.
    s.sql(&format!("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", s.prefix)).await;
    let (code, out) = crate::check(&config);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("exists without failover") && out.contains("ALTER_REPLICATION_SLOT"), "{out}");
    // The fix as printed, over a replication connection, makes the check pass.
    let out = std::process::Command::new("psql")
        .arg(format!("host=127.0.0.1 port={} user=postgres dbname={} replication=database", s.pg.port(), s.db))
        .args(["-c", &format!("ALTER_REPLICATION_SLOT \"{}\" (FAILOVER true)", s.prefix)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, out) = crate::check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("has failover"), "{out}");
}
