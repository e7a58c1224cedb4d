//! Capture from a standby (PostgreSQL 16+): ficus pointed at a hot standby decodes a slot of its own there, writes
//! nothing to either server, and publishes every change made on the primary exactly once; what would write (the
//! publication, the initial snapshot, backfills, the heartbeat, the table watch's repair, a failover slot) is refused
//! with exit 2 and the fix, or turned off with a warning. Before 16 a standby is refused.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{unique_db, PgOptions, TestKafka, TestPostgres};
use crate::{values, Ficus, STREAMING, WAIT};

/// A primary with table `t` and a physical standby (slot `standby1`, `hot_standby_feedback = on`); `None`, with the
/// reason printed, when `capture` is asked of a server before 16 (no standby is built then).
struct Pair {
    primary: TestPostgres,
    standby: TestPostgres,
    db: String,
    prefix: String,
    version: i32,
}

async fn pair(name: &str, capture: bool) -> Option<Pair> {
    pair_with(name, capture, PgOptions::default()).await
}

/// [`pair`] with settings for the standby.
async fn pair_with(name: &str, capture: bool, standby: PgOptions) -> Option<Pair> {
    let primary = TestPostgres::start();
    let db = unique_db(name);
    primary.create_database(&db);
    primary.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let version: i32 = primary
        .client("postgres")
        .await
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    if capture && version < 160_000 {
        eprintln!(
            "skipped: logical decoding on a standby needs PostgreSQL 16+, the test cluster is {version} (run with \
             FICUS_PG_VERSION=16, 17 or 18; standby::a_standby_is_refused_before_16_and_what_writes_is_refused_on_16 \
             covers the refusal here)"
        );
        return None;
    }
    let standby = primary.start_standby("standby1", standby);
    let prefix = TestKafka::shared().unique_topic(name).replace('-', "_").to_lowercase();
    Some(Pair { primary, standby, db, prefix, version })
}

impl Pair {
    fn config(&self, extra: &str) -> String {
        let url = self.standby.superuser_url(&self.db);
        Ficus::config(&url, &["public.t"], &self.prefix, &TestKafka::shared().brokers(), extra)
    }

    /// Runs `sql` on the primary and waits until the standby replayed it.
    async fn on_primary(&self, sql: &str) {
        self.primary.execute(&self.db, sql).await;
        let target: String = self.primary_lsn().await;
        let standby = self.standby.client(&self.db).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let replayed: String =
                standby.query_one("SELECT pg_last_wal_replay_lsn()::text", &[]).await.unwrap().get(0);
            if crate::lsn(&replayed) >= crate::lsn(&target) {
                return;
            }
            assert!(Instant::now() < deadline, "the standby never replayed {target} (at {replayed})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn primary_lsn(&self) -> String {
        let client = self.primary.client(&self.db).await;
        client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0)
    }

    async fn logical_slots(&self, pg: &TestPostgres) -> Vec<String> {
        let client = pg.client(&self.db).await;
        let rows = client
            .query("SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'logical'", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Starts ficus on the standby and waits until it streams. Creating a slot on a standby waits for a
    /// running-transactions record from the primary, which an idle primary does not write: the test writes them
    /// (`pg_log_standby_snapshot()`), as the log line tells an operator to.
    async fn start_streaming(&self, config: &str) -> Ficus {
        let f = Ficus::start(config);
        let pump = self.log_standby_snapshots();
        let deadline = Instant::now() + WAIT;
        while !f.log().contains(STREAMING) {
            assert!(Instant::now() < deadline, "ficus never streamed from the standby:\n{}", f.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pump.abort();
        f
    }

    /// Writes a running-transactions record on the primary every 200 ms until aborted.
    fn log_standby_snapshots(&self) -> tokio::task::JoinHandle<()> {
        let port = self.primary.port();
        tokio::spawn(async move {
            let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            loop {
                let _ = client.batch_execute("SELECT pg_log_standby_snapshot()").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Waits until the standby's slot confirmed the primary's current position (everything written before this call
    /// is in Kafka), then reads the whole topic.
    async fn read_all(&self, f: &Ficus) -> Vec<Value> {
        let target = self.primary_lsn().await;
        let standby = self.standby.client(&self.db).await;
        crate::wait_slot_confirmed(&standby, &self.prefix, &target, f, WAIT).await;
        let topic = format!("{}.public.t", self.prefix);
        values(&TestKafka::shared().read_to_end(&topic, WAIT).await)
    }
}

/// (op, id, v of `after`) per event, in topic order per key: what the ground truth is compared with.
fn events_by_key(events: &[Value]) -> std::collections::BTreeMap<i64, Vec<(String, Option<String>)>> {
    let mut by_key = std::collections::BTreeMap::<i64, Vec<_>>::new();
    for e in events {
        let id = e["key"]["id"].as_i64().unwrap_or_else(|| panic!("an event without key.id: {e}"));
        let v = e["after"]["v"].as_str().map(str::to_string);
        by_key.entry(id).or_default().push((e["op"].as_str().unwrap().to_string(), v));
    }
    by_key
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_from_a_standby_at_least_once_publishes_every_change_of_the_primary_once_and_writes_nothing() {
    capture("at_least_once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_from_a_standby_exactly_once_publishes_every_change_of_the_primary_once_and_writes_nothing() {
    capture("exactly_once").await;
}

async fn capture(delivery: &str) {
    let Some(p) = pair(&format!("standby_{}", &delivery[..5]), true).await else { return };
    p.on_primary(&format!("CREATE PUBLICATION \"{}\" FOR TABLE t WITH (publish_via_partition_root = true)", p.prefix))
        .await;
    // The heartbeat is asked for: on a standby it is off, with a warning naming the fix.
    let config = p
        .config("")
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  heartbeat_interval_secs: 1\n")
        .replace("kafka:\n", &format!("kafka:\n  delivery: {delivery}\n"));
    let (code, out) = crate::check(&config);
    assert_eq!(code, 0, "{out}");
    let version = format!("PostgreSQL {}.", p.version / 10_000);
    assert!(out.contains("standby capture") && out.contains(&version) && out.contains("unavailable"), "{out}");
    assert!(out.contains("✓ hot_standby_feedback: on") && out.contains("! heartbeat: off on a standby"), "{out}");

    let mut f = p.start_streaming(&config).await;
    assert!(f.log().contains("creating the slot on a standby"), "{}", f.log());
    // The ground truth: 40 inserts, 14 updates, 8 deletes, written on the primary in separate transactions.
    let mut truth = std::collections::BTreeMap::<i64, Vec<(String, Option<String>)>>::new();
    for id in 1..=40i64 {
        p.primary.execute(&p.db, &format!("INSERT INTO t VALUES ({id}, 'a{id}')")).await;
        truth.entry(id).or_default().push(("insert".into(), Some(format!("a{id}"))));
    }
    p.primary.execute(&p.db, "UPDATE t SET v = 'b' || id WHERE id % 3 = 0").await;
    p.primary.execute(&p.db, "DELETE FROM t WHERE id % 5 = 0").await;
    for id in 1..=40i64 {
        if id % 3 == 0 {
            truth.entry(id).or_default().push(("update".into(), Some(format!("b{id}"))));
        }
        if id % 5 == 0 {
            truth.entry(id).or_default().push(("delete".into(), None));
        }
    }
    let events = p.read_all(&f).await;
    assert_eq!(events.len(), 40 + 13 + 8, "every change once, none twice:\n{events:#?}");
    assert_eq!(events_by_key(&events), truth);

    // Nothing on the primary, the slot on the standby, and no write attempted there (a standby logs an ERROR for
    // each: "cannot execute … during recovery", "cannot make new WAL entries during recovery").
    assert_eq!(p.logical_slots(&p.primary).await, Vec::<String>::new(), "the primary has no ficus slot");
    assert_eq!(p.logical_slots(&p.standby).await, vec![p.prefix.clone()]);
    let errors: Vec<String> = p.standby.log().lines().filter(|l| l.contains("ERROR:")).map(str::to_string).collect();
    assert!(errors.is_empty(), "ficus tried something the standby refused: {errors:#?}");
    assert!(!f.log().contains("heartbeat failed"), "{}", f.log());

    // The table watch cannot repair a table removed from the publication on a standby: exit 2 naming the SQL.
    p.on_primary(&format!("ALTER PUBLICATION \"{}\" DROP TABLE t", p.prefix)).await;
    let status = f.wait(WAIT);
    let log = f.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("a standby") && log.contains(&format!("ALTER PUBLICATION \"{}\" ADD TABLE", p.prefix)),
        "{log}"
    );
    p.standby.drop_slots_of(&p.db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_is_refused_before_16_and_what_writes_is_refused_on_16() {
    let p = pair("standby_refusals", false).await.expect("built on every version");
    let run = |config: &str| {
        let mut f = Ficus::start(config);
        let status = f.wait(WAIT);
        (status.code(), f.log())
    };
    if p.version < 160_000 {
        let config = p.config("");
        let (code, out) = crate::check(&config);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("standby capture") && out.contains("needs PostgreSQL 16"), "{out}");
        let (code, log) = run(&config);
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("needs PostgreSQL 16") && log.contains("point source.url at the primary"), "{log}");
        return;
    }
    // No publication: a standby cannot create it; the fix is the statement to run on the primary.
    let config = p.config("");
    let (code, out) = crate::check(&config);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("CREATE PUBLICATION \"{}\" FOR TABLE \"public\".\"t\"", p.prefix)), "{out}");
    assert!(out.contains("on the primary"), "{out}");
    let (code, log) = run(&config);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("a standby cannot create it"), "{log}");

    // The initial snapshot on a first start: refused before anything is created.
    p.on_primary(&format!("CREATE PUBLICATION \"{}\" FOR TABLE t", p.prefix)).await;
    let snapshot = p.config("snapshot:\n  mode: initial\n");
    let (code, out) = crate::check(&snapshot);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("✗ snapshot: this start plans a snapshot") && out.contains("snapshot.mode: never"), "{out}");
    let (code, log) = run(&snapshot);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("pg_logical_emit_message") && log.contains("snapshot.mode: never"), "{log}");
    // A failover slot cannot be created on a standby.
    let failover = config.replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  failover_slot: true\n");
    let (code, out) = crate::check(&failover);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot create a failover slot on a standby"), "{out}");
    assert_eq!(p.logical_slots(&p.standby).await, Vec::<String>::new(), "the refusals create no slot");

    // A dry run never snapshots: it streams from a temporary slot on the standby, whatever snapshot.mode says.
    let pump = p.log_standby_snapshots();
    let mut dry = crate::DryRun::start(&snapshot).await;
    pump.abort();
    assert!(dry.log().contains("creating the slot on a standby"), "{}", dry.log());
    p.primary.execute(&p.db, "INSERT INTO t VALUES (7, 'dry')").await;
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&dry.stdout).unwrap_or_default().contains("\"dry\"") {
        assert!(Instant::now() < deadline, "the dry run printed nothing:\n{}", dry.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = dry.child.kill();
    let _ = dry.child.wait();
    // `ficus backfill` against the standby (with ficus's slot there): refused, nothing written.
    let mut f = p.start_streaming(&config).await;
    let (code, text) = crate::backfill(&config, "public.t");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is a standby") && text.contains("cannot backfill"), "{text}");
    // A request written on the primary reaches the standby's stream: refused there with the reason, not run.
    p.on_primary(&format!(
        "SELECT pg_logical_emit_message(true, 'ficus.backfill', \
         '{{\"slot\":\"{}\",\"schema\":\"public\",\"table\":\"t\"}}')",
        p.prefix
    ))
    .await;
    f.wait_for_log("backfill request refused", WAIT);
    assert!(f.log().contains("DBLog watermarks"), "{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    p.standby.drop_slots_of(&p.db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_promoted_while_ficus_streams_from_it_keeps_its_slot_and_loses_nothing() {
    let Some(p) = pair("standby_promoted", true).await else { return };
    p.on_primary(&format!("CREATE PUBLICATION \"{}\" FOR TABLE t", p.prefix)).await;
    let config = p
        .config("")
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  reconnect_max_delay_secs: 1\n");
    let mut f = p.start_streaming(&config).await;
    let mut truth = std::collections::BTreeMap::<i64, Vec<(String, Option<String>)>>::new();
    for id in 1..=10i64 {
        p.primary.execute(&p.db, &format!("INSERT INTO t VALUES ({id}, 'before')")).await;
        truth.entry(id).or_default().push(("insert".into(), Some("before".into())));
    }
    assert_eq!(p.read_all(&f).await.len(), 10, "{}", f.log());
    // Written on the primary and replayed by the standby, perhaps not decoded yet: then the primary goes away.
    p.on_primary("UPDATE t SET v = 'replayed' WHERE id <= 5").await;
    for id in 1..=5 {
        truth.entry(id).or_default().push(("update".into(), Some("replayed".into())));
    }
    p.primary.stop_immediate();
    p.standby.promote();
    for id in 11..=20i64 {
        p.standby.execute(&p.db, &format!("INSERT INTO t VALUES ({id}, 'after')")).await;
        truth.entry(id).or_default().push(("insert".into(), Some("after".into())));
    }
    let standby = p.standby.client(&p.db).await;
    let target: String = standby.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    crate::wait_slot_confirmed(&standby, &p.prefix, &target, &f, WAIT).await;
    let events = values(&TestKafka::shared().read_to_end(&format!("{}.public.t", p.prefix), WAIT).await);
    assert_eq!(events_by_key(&events), truth, "{}", f.log());
    assert!(f.is_running(), "{}", f.log());
    eprintln!("promotion: ficus reconnected {} time(s)", f.log().matches(STREAMING).count().saturating_sub(1));
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    p.standby.drop_slots_of(&p.db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_invalidated_by_a_recovery_conflict_stops_ficus_with_exit_2_naming_hot_standby_feedback() {
    let opts = PgOptions::default().setting("hot_standby_feedback", "off");
    let Some(p) = pair_with("standby_conflict", true, opts).await else { return };
    p.on_primary(&format!("CREATE PUBLICATION \"{}\" FOR TABLE t", p.prefix)).await;
    let config = p.config("");
    let (code, out) = crate::check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("! hot_standby_feedback: is off"), "{out}");
    let mut f = p.start_streaming(&config).await;
    // Catalog rows the slot still needs die on the primary (in separate transactions: rows inserted and deleted by
    // one transaction set no conflict horizon) and are vacuumed away: replaying that conflicts with the slot.
    p.primary.execute(&p.db, "CREATE TABLE gone (id int)").await;
    p.primary.execute(&p.db, "DROP TABLE gone").await;
    p.primary.execute(&p.db, "VACUUM pg_class, pg_attribute, pg_type, pg_depend").await;
    p.on_primary("INSERT INTO t VALUES (1, 'x')").await;
    // The walsender is cancelled ("conflict with recovery"): ficus reconnects and finds the slot invalidated.
    let status = f.wait(WAIT);
    let log = f.log();
    assert!(p.standby.log().contains("terminating process"), "no recovery conflict happened:\n{}", p.standby.log());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("was invalidated") && log.contains("hot_standby_feedback = on"), "{log}");
    assert!(!log.contains("max_slot_wal_keep_size); changes since then"), "the cause is not removed WAL:\n{log}");
    let (code, out) = crate::check(&config);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("catalog rows it needed") && !out.contains("WAL it needed was removed"), "{out}");
    p.standby.drop_slots_of(&p.db);
}
