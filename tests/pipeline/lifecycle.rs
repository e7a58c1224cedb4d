//! The source's lifecycle: replica identities and DDL while streaming (checked against PostgreSQL's own
//! `test_decoding`), snapshot values under hostile database settings, slot gaps (dropped, re-created, future
//! checkpoint), first starts that end early, and checkpoint write failures.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, free_port};
use crate::{lsn, values, Ficus, Setup, WAIT};

/// Every message of `topic` once the slot confirmed the server's current WAL position, as JSON values (the
/// harness's exact read: no "at least n").
async fn read_exact(s: &Setup, f: &Ficus, topic: &str) -> Vec<Value> {
    values(&s.read_all_confirmed_or_empty(f, topic).await)
}

/// A `test_decoding` slot: PostgreSQL's own rendering of the same changes, an oracle nobody here wrote.
struct TestDecoding {
    name: String,
}

impl TestDecoding {
    async fn create(s: &Setup) -> TestDecoding {
        let name = format!("{}_td", s.prefix);
        s.sql(&format!("SELECT pg_create_logical_replication_slot('{name}', 'test_decoding')")).await;
        TestDecoding { name }
    }

    /// The old-key image of every DELETE, as (column, value text) pairs; NULL is `None`.
    async fn deletes(&self, s: &Setup) -> Vec<Vec<(String, Option<String>)>> {
        let client = s.pg.client(&s.db).await;
        let rows =
            client.query("SELECT data FROM pg_logical_slot_peek_changes($1, NULL, NULL)", &[&self.name]).await.unwrap();
        rows.iter()
            .filter_map(|r| {
                let line: String = r.get(0);
                line.split_once(": DELETE: ").map(|(_, cols)| {
                    crate::differential::parse_columns(cols).into_iter().map(|(name, _, value)| (name, value)).collect()
                })
            })
            .collect()
    }

    async fn drop(self, s: &Setup) {
        s.sql(&format!("SELECT pg_drop_replication_slot('{}')", self.name)).await;
    }
}

/// A JSON value as test_decoding prints it (numbers and strings only: what the identity tests use).
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_columns_follow_the_stream_through_ddl() {
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, code text NOT NULL, v int); \
               CREATE UNIQUE INDEX t_code ON t (code); ALTER TABLE t REPLICA IDENTITY USING INDEX t_code;";
    let s = Setup::new("identity", ddl).await;
    let mut f = Ficus::start(&s.config(&["public.t"]));
    f.wait_streaming();
    let oracle = TestDecoding::create(&s).await;
    // USING INDEX on a column that is not the primary key: deletes carry only `code`.
    s.sql("INSERT INTO t VALUES (1, 'a', 1); DELETE FROM t WHERE id = 1;").await;
    // Back to DEFAULT (the primary key), then the primary-key column renamed while streaming.
    s.sql("ALTER TABLE t REPLICA IDENTITY DEFAULT; INSERT INTO t VALUES (2, 'b', 2); DELETE FROM t WHERE id = 2;")
        .await;
    s.sql("ALTER TABLE t RENAME COLUMN id TO ident; INSERT INTO t VALUES (3, 'c', 3); DELETE FROM t WHERE ident = 3;")
        .await;
    // The primary key moved to another column.
    s.sql(
        "ALTER TABLE t DROP CONSTRAINT t_pkey; ALTER TABLE t ADD PRIMARY KEY (code); \
           INSERT INTO t VALUES (4, 'd', 4); DELETE FROM t WHERE code = 'd';",
    )
    .await;
    // FULL: the key is the primary key (read again from the catalog after the DDL), `before` the whole row.
    s.sql("ALTER TABLE t REPLICA IDENTITY FULL; INSERT INTO t VALUES (5, 'e', 5); DELETE FROM t WHERE code = 'e';")
        .await;

    let events = read_exact(&s, &f, &s.topic("public", "t")).await;
    let deletes: Vec<&Value> = events.iter().filter(|e| e["op"] == "delete").collect();
    let truth = oracle.deletes(&s).await;
    oracle.drop(&s).await;
    assert_eq!(deletes.len(), 5, "{events:#?}\n{}", f.log());
    assert_eq!(truth.len(), 5, "{truth:?}");
    // `before` holds exactly what PostgreSQL sent as the old image, value for value.
    for (event, old) in deletes.iter().zip(&truth) {
        let before = event["before"].as_object().unwrap_or_else(|| panic!("before of {event}"));
        let got: Vec<(String, Option<String>)> = before.iter().map(|(k, v)| (k.clone(), as_text(v))).collect();
        assert_eq!(&got, old, "delete {event}");
    }
    let keys: Vec<&Value> = deletes.iter().map(|e| &e["key"]).collect();
    assert_eq!(
        keys,
        [&json!({"code": "a"}), &json!({"id": 2}), &json!({"ident": 3}), &json!({"code": "d"}), &json!({"code": "e"})],
        "the event key is the replica identity of the moment"
    );
    // Inserts are keyed the same way as the deletes that follow them (compacted topics keep no ghost rows).
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e["op"] == "insert") {
        assert_eq!(e["key"], events[i + 1]["key"], "insert and delete of one row share the key: {e}");
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_values_match_streamed_values_under_hostile_database_settings() {
    let ddl = r#"
        CREATE TYPE mood AS ENUM ('sad', 'happy');
        CREATE TABLE t (
            id int PRIMARY KEY, f4 float4, f8 float8, n numeric, d date, tm time, tmz timetz, ts timestamp,
            tz timestamptz, iv interval, by bytea, m money, ai int[], af float8[], ad date[], jb jsonb, u uuid, mo mood,
            b bool, tx text
        );
        INSERT INTO t VALUES (1, 1.1, 0.1::float8 + 0.2::float8, 1.50, '2026-11-22', '08:00:01.5', '08:00:01+05:30',
            '2026-11-22 08:00:00.123456', '2026-11-22 10:00:00+02', '1 year 2 mons 3 days 04:05:06.5', '\x00ff27',
            12.34, '{1,2}', '{0.1,1e300}', '{2026-01-02}', '{"a": 1.10}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            'happy', true, 'x');
    "#;
    let s = Setup::new("hostile_settings", ddl).await;
    // Every output-affecting setting a legacy database might carry, set where every new session picks it up.
    s.sql(&format!(
        "ALTER DATABASE {db} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {db} SET extra_float_digits = 0; \
         ALTER DATABASE {db} SET IntervalStyle = 'postgres'; ALTER DATABASE {db} SET TimeZone = 'America/New_York'; \
         ALTER DATABASE {db} SET bytea_output = 'escape';",
        db = s.db
    ))
    .await;
    let cfg = s.config(&["public.t"]).replace("snapshot:\n  mode: never\n", "") + "snapshot:\n  mode: initial\n";
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    // The same values, copied server-side (no text round trip through this test's session), now streamed.
    s.sql("INSERT INTO t SELECT 2, f4, f8, n, d, tm, tmz, ts, tz, iv, by, m, ai, af, ad, jb, u, mo, b, tx FROM t WHERE id = 1").await;
    let topic = s.topic("public", "t");
    let deadline = Instant::now() + WAIT;
    // Row 2 may also be copied by the snapshot (it can commit before the copy reads); row 1 only as a read.
    let find =
        |events: &[Value], op: &str, id: i64| events.iter().find(|e| e["op"] == op && e["after"]["id"] == id).cloned();
    let (read, insert) = loop {
        let events = read_exact(&s, &f, &topic).await;
        if let (Some(r), Some(i)) = (find(&events, "read", 1), find(&events, "insert", 2)) {
            assert_eq!(events.iter().filter(|e| e["after"]["id"] == 1).count(), 1, "{events:#?}");
            break (r, i);
        }
        assert!(Instant::now() < deadline, "{events:#?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut a = read["after"].clone();
    let mut b = insert["after"].clone();
    a["id"] = Value::Null;
    b["id"] = Value::Null;
    assert_eq!(a, b, "snapshot and stream disagree\n{}", f.log());
    // And both are the documented forms, not the database's defaults.
    assert_eq!(a["d"], "2026-11-22");
    assert_eq!(a["ts"], "2026-11-22T08:00:00.123456");
    assert_eq!(a["tz"], "2026-11-22T08:00:00Z");
    assert_eq!(a["iv"], "P1Y2M3DT4H5M6.5S");
    assert_eq!(a["f8"], json!(0.30000000000000004));
    assert_eq!(a["af"], json!([0.1, 1e300]));
    assert_eq!(a["by"], "AP8n");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Starts ficus on `t`, writes one row, waits until it is confirmed, stops cleanly.
async fn run_once(s: &Setup, cfg: &str) -> Ficus {
    let mut f = Ficus::start(cfg);
    f.wait_streaming();
    s.sql("INSERT INTO t VALUES (1, 'one')").await;
    s.wait_confirmed_now(&f).await;
    // The checkpoint follows the confirmation within its interval.
    let deadline = Instant::now() + WAIT;
    let target = lsn(&s.confirmed_flush().await.unwrap());
    while f.checkpoint(&s.prefix).map_or(0, |cp| lsn(cp["lsn"].as_str().unwrap())) < target {
        assert!(Instant::now() < deadline, "checkpoint never reached the confirmed position\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    f
}

fn set_on_gap(f: &Ficus, on_gap: &str) {
    let path = f.dir.path().join("ficus.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("snapshot:\n  mode: never\n", &format!("snapshot:\n  mode: never\n  on_gap: {on_gap}\n"));
    std::fs::write(&path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_slot_behind_a_checkpoint_stops_with_the_fix_then_resnapshot_recovers() {
    let s = Setup::new("slot_dropped", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let mut f = run_once(&s, &s.config(&["public.t"])).await;
    s.sql(&format!("SELECT pg_drop_replication_slot('{}')", s.prefix)).await;
    // Written while no slot existed: no stream can deliver it any more.
    s.sql("INSERT INTO t VALUES (2, 'lost without a snapshot')").await;

    f.restart();
    let status = f.wait(WAIT);
    let log = f.log();
    assert_eq!(status.code(), Some(2), "a gap must stop ficus with exit 2\n{log}");
    assert!(log.contains("does not exist") && log.contains("snapshot.on_gap: resnapshot"), "{log}");
    let slot_exists =
        s.pg.client(&s.db)
            .await
            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&s.prefix])
            .await
            .unwrap()
            .is_some();
    assert!(!slot_exists, "the refusal creates nothing");

    // The explicit recovery: a new slot and a snapshot of the table, so row 2 arrives as a `read`.
    set_on_gap(&f, "resnapshot");
    f.restart();
    f.wait_for_log_count(crate::STREAMING, 2, WAIT);
    let topic = s.topic("public", "t");
    let deadline = Instant::now() + WAIT;
    loop {
        let events = read_exact(&s, &f, &topic).await;
        let reads: Vec<i64> =
            events.iter().filter(|e| e["op"] == "read").map(|e| e["after"]["id"].as_i64().unwrap()).collect();
        if reads.len() >= 2 {
            let mut reads = reads;
            reads.sort();
            assert_eq!(reads, [1, 2], "{events:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "no re-snapshot: {events:#?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    // Next start: a normal restart (the recovery is recorded in the checkpoint).
    s.sql("INSERT INTO t VALUES (3, 'after')").await;
    f.restart();
    f.wait_for_log_count(crate::STREAMING, 3, WAIT);
    let events = read_exact(&s, &f, &topic).await;
    assert_eq!(events.iter().filter(|e| e["op"] == "read").count(), 2, "no second re-snapshot: {events:#?}");
    assert_eq!(events.last().unwrap()["after"]["id"], 3);
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_recreated_ahead_of_the_checkpoint_is_refused() {
    let s = Setup::new("slot_recreated", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let mut f = run_once(&s, &s.config(&["public.t"])).await;
    s.sql(&format!("SELECT pg_drop_replication_slot('{}')", s.prefix)).await;
    s.sql("INSERT INTO t VALUES (2, 'in the gap')").await;
    s.sql(&format!("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", s.prefix)).await;
    f.restart();
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(2), "{}", f.log());
    assert!(f.log().contains("past the checkpoint"), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_beyond_the_server_wal_is_refused() {
    let s = Setup::new("future_checkpoint", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let mut f = run_once(&s, &s.config(&["public.t"])).await;
    let path = f.dir.path().join("state").join(format!("{}.checkpoint.json", s.prefix));
    let mut cp: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cp["lsn"] = json!("FF/0");
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
    let confirmed_before = s.confirmed_flush().await.unwrap();
    f.restart();
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(2), "{}", f.log());
    assert!(f.log().contains("beyond the server's current WAL"), "{}", f.log());
    assert_eq!(s.confirmed_flush().await.unwrap(), confirmed_before, "the future position never reaches the slot");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_that_fails_or_ends_early_still_snapshots_on_the_next_start() {
    let s = Setup::new("first_start", "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (v text); ALTER TABLE nokey REPLICA IDENTITY FULL; \
                                        INSERT INTO t VALUES (1, 'existing'), (2, 'existing');").await;
    // 1. A keyless table in snapshot.tables: refused before anything is created.
    let base = s.config(&["public.t", "public.nokey"]).replace("snapshot:\n  mode: never\n", "");
    let mut f = Ficus::start(&(base.clone() + "snapshot:\n  mode: initial\n  tables: [public.t, public.nokey]\n"));
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    assert!(s.confirmed_flush().await.is_none(), "no slot created by a refused start");

    // 2. The broker unreachable, then SIGTERM before anything streamed: exit 0, but the snapshot is still owed.
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let cfg = base.replace(&s.kafka.brokers(), &dead_broker) + "snapshot:\n  mode: initial\n  tables: [public.t]\n";
    let path = f.dir.path().join("ficus.yaml");
    std::fs::write(&path, cfg.replace("STATE", &f.dir.path().join("state").display().to_string())).unwrap();
    f.restart();
    f.wait_for_log("Kafka not reachable yet", WAIT);
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());

    // 3. Fixed: the existing rows arrive as snapshot reads.
    let cfg = base + "snapshot:\n  mode: initial\n  tables: [public.t]\n";
    std::fs::write(&path, cfg.replace("STATE", &f.dir.path().join("state").display().to_string())).unwrap();
    f.restart();
    let topic = s.topic("public", "t");
    let deadline = Instant::now() + WAIT;
    loop {
        let events = read_exact(&s, &f, &topic).await;
        if events.len() >= 2 {
            let ids: Vec<(String, i64)> = events
                .iter()
                .map(|e| (e["op"].as_str().unwrap().to_string(), e["after"]["id"].as_i64().unwrap()))
                .collect();
            assert_eq!(ids, [("read".to_string(), 1), ("read".to_string(), 2)], "{}", f.log());
            break;
        }
        assert!(Instant::now() < deadline, "the initial snapshot was skipped: {events:#?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_checkpoint_write_stops_confirmation_and_readiness_until_it_recovers() {
    let s = Setup::new("checkpoint_fail", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let port = free_port();
    let cfg = s.config(&["public.t"]) + &format!("health:\n  listen: 127.0.0.1:{port}\n");
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    s.sql("INSERT INTO t VALUES (1, 'before')").await;
    s.wait_confirmed_now(&f).await;
    let ready = support::wait_for(WAIT, || crate::get(port, "/readyz").filter(|(c, _)| *c == 200));
    assert!(ready.is_some(), "{}", f.log());

    // The state directory becomes unusable (as root, permissions do not stop writes: a file takes its place).
    let state = f.dir.path().join("state");
    let moved = f.dir.path().join("state.moved");
    std::fs::rename(&state, &moved).unwrap();
    std::fs::write(&state, b"not a directory").unwrap();
    s.sql("INSERT INTO t VALUES (2, 'while the disk is broken')").await;
    f.wait_for_log("checkpoint write failed", WAIT);
    // A status update for the last durable checkpoint may still be on its way (one per status interval, 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck_at = s.confirmed_flush().await.unwrap();
    s.sql("INSERT INTO t VALUES (3, 'still broken')").await;
    let not_ready = support::wait_for(WAIT, || crate::get(port, "/readyz").filter(|(c, _)| *c == 503));
    let (_, body) = not_ready.unwrap_or_else(|| panic!("/readyz stayed ready\n{}", f.log()));
    assert!(body.contains("checkpoint"), "{body}");
    // Kafka has the row, but PostgreSQL is not told: the checkpoint does not record it.
    let events = s.kafka.consume_all(&s.topic("public", "t"), 3, WAIT).await;
    assert_eq!(events.len(), 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.confirmed_flush().await.unwrap(), stuck_at, "confirmed past the last durable checkpoint\n{}", f.log());

    // Repaired: the retry writes the checkpoint, confirmation and readiness come back.
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&moved, &state).unwrap();
    s.wait_confirmed_now(&f).await;
    assert!(
        support::wait_for(WAIT, || crate::get(port, "/readyz").filter(|(c, _)| *c == 200)).is_some(),
        "{}",
        f.log()
    );
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_of_one_copy_share_an_lsn_but_not_a_position() {
    let s = Setup::new("copy_position", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut f = Ficus::start(&s.config(&["public.t"]));
    f.wait_streaming();
    // COPY FROM writes one heap multi-insert record for the batch: one WAL position for all five rows.
    s.sql("COPY t (id) FROM PROGRAM 'seq 1 5'").await;
    let events = read_exact(&s, &f, &s.topic("public", "t")).await;
    assert_eq!(events.len(), 5, "{events:#?}");
    let lsns: std::collections::BTreeSet<&str> = events.iter().map(|e| e["source"]["lsn"].as_str().unwrap()).collect();
    assert!(lsns.len() < 5, "COPY rows are expected to share an LSN: {lsns:?}");
    let ids: std::collections::BTreeSet<(String, u64)> = events
        .iter()
        .map(|e| (e["source"]["commitLsn"].as_str().unwrap().to_string(), e["source"]["position"].as_u64().unwrap()))
        .collect();
    assert_eq!(ids.len(), 5, "commitLsn + position must be unique per change: {events:#?}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_or_unpublished_table_is_published_again_with_its_rows() {
    let ddl =
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE k (v text); ALTER TABLE k REPLICA IDENTITY FULL;";
    let s = Setup::new("table_watch", ddl).await;
    let mut f = Ficus::start(&s.config(&["public.t", "public.k"]));
    f.wait_streaming();
    s.sql("INSERT INTO t VALUES (1, 'first table')").await;
    // Re-created: a new OID, in no publication. Row 2 is written before anything can notice.
    s.sql("DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (2, 'new table');").await;
    f.wait_for_log("was dropped and re-created: added back", WAIT);
    s.sql("INSERT INTO t VALUES (3, 'streamed again')").await;
    // Removed from the publication by hand.
    s.sql(&format!("ALTER PUBLICATION {} DROP TABLE t; INSERT INTO t VALUES (4, 'unpublished');", s.prefix)).await;
    f.wait_for_log("was removed from the publication: added back", WAIT);
    let topic = s.topic("public", "t");
    let deadline = Instant::now() + WAIT;
    loop {
        let events = read_exact(&s, &f, &topic).await;
        let mut ids: Vec<i64> = events.iter().filter_map(|e| e["after"]["id"].as_i64()).collect();
        ids.sort();
        ids.dedup();
        if ids == [1, 2, 3, 4] {
            break;
        }
        assert!(Instant::now() < deadline, "rows missing: {ids:?}\n{events:#?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A keyless table cannot be backfilled: a loud stop with the fix instead of a silent gap.
    s.sql("DROP TABLE k; CREATE TABLE k (v text); ALTER TABLE k REPLICA IDENTITY FULL;").await;
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(2), "{}", f.log());
    assert!(f.log().contains("ALTER PUBLICATION") && f.log().contains("has no primary key"), "{}", f.log());
}

/// The partitioned table's events as (op, id, region), whatever topic they were sent to by mistake: read from the
/// parent's topic only.
async fn partition_events(s: &Setup, f: &Ficus) -> Vec<(String, i64, String)> {
    read_exact(s, f, &s.topic("public", "p"))
        .await
        .iter()
        .map(|e| {
            let row = if e["after"].is_null() { &e["before"] } else { &e["after"] };
            (
                e["op"].as_str().unwrap().to_string(),
                row["id"].as_i64().unwrap(),
                row["region"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitioned_tables_publish_under_the_parent_across_restarts_attach_and_detach() {
    let ddl = "CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region); \
               CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu'); CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us');";
    for via_root in [true, false] {
        let s = Setup::new(if via_root { "part_root" } else { "part_leaf" }, ddl).await;
        if !via_root {
            // A publication made by a DBA without publish_via_partition_root: changes arrive under the leaf names.
            s.sql(&format!("CREATE PUBLICATION {} FOR TABLE p", s.prefix)).await;
        }
        let mut f = Ficus::start(&s.config(&["public.p"]));
        f.wait_streaming();
        s.sql("INSERT INTO p VALUES (1, 'eu', 'a'), (2, 'us', 'b')").await;
        s.wait_confirmed_now(&f).await;
        assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
        // Every later start used to fail with "ALTER PUBLICATION … ADD TABLE …: db error".
        f.restart();
        f.wait_for_log_count(crate::STREAMING, 2, WAIT);
        // A partition created and one attached while streaming, one detached.
        s.sql("CREATE TABLE p_asia PARTITION OF p FOR VALUES IN ('asia'); INSERT INTO p VALUES (3, 'asia', 'c');")
            .await;
        s.sql("CREATE TABLE p_sa (id int NOT NULL, region text NOT NULL, v text); INSERT INTO p_sa VALUES (4, 'sa', 'd'); \
               ALTER TABLE p ATTACH PARTITION p_sa FOR VALUES IN ('sa'); INSERT INTO p VALUES (5, 'sa', 'e');")
            .await;
        s.sql(
            "ALTER TABLE p DETACH PARTITION p_us; INSERT INTO p_us VALUES (6, 'us', 'not captured any more'); \
               UPDATE p SET v = 'z' WHERE id = 1; DELETE FROM p WHERE id = 3;",
        )
        .await;
        let version: i32 =
            s.pg.client(&s.db)
                .await
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .unwrap()
                .get(0);
        let want: Vec<(String, i64, String)> = [
            ("insert", 1, "eu"),
            ("insert", 2, "us"),
            ("insert", 3, "asia"),
            ("insert", 5, "sa"),
            ("update", 1, "eu"),
            ("delete", 3, "asia"),
        ]
        .iter()
        .map(|(op, id, r)| (op.to_string(), *id, r.to_string()))
        .collect();
        if version >= 150_000 {
            let events = partition_events(&s, &f).await;
            assert_eq!(events, want, "via_root={via_root}\n{}", f.log());
        } else {
            // PostgreSQL 14 does not publish a just-attached partition until the walsender restarts: ficus restarts
            // the stream and backfills the table. A consumer folding the events ends with the table's rows.
            f.wait_for_log("a partition was attached to a captured partitioned table", WAIT);
            let deadline = Instant::now() + WAIT;
            loop {
                let events = partition_events(&s, &f).await;
                let mut state = std::collections::BTreeSet::new();
                for (op, id, region) in &events {
                    match op.as_str() {
                        "delete" => state.remove(&(*id, region.clone())),
                        _ => state.insert((*id, region.clone())),
                    };
                }
                let rows: std::collections::BTreeSet<(i64, String)> =
                    s.pg.client(&s.db)
                        .await
                        .query("SELECT id::int8, region FROM p", &[])
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| (r.get(0), r.get(1)))
                        .collect();
                // p_us was detached: its rows left the table without a delete event (as in PostgreSQL 15+).
                let state: std::collections::BTreeSet<(i64, String)> =
                    state.into_iter().filter(|(_, r)| r != "us").collect();
                if state == rows {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "folded events {state:?} != table {rows:?}\n{events:?}\n{}",
                    f.log()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        for leaf in ["p_eu", "p_us", "p_asia", "p_sa"] {
            assert_eq!(
                s.kafka.high_watermark(&s.topic("public", leaf)).await,
                0,
                "nothing on the topic of partition {leaf}"
            );
        }
        assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn domains_map_as_their_base_type_and_arrays_of_anything_are_arrays() {
    let ddl = r#"
        CREATE DOMAIN dbool AS bool; CREATE DOMAIN dint AS int CHECK (VALUE > 0); CREATE DOMAIN djson AS jsonb;
        CREATE DOMAIN dbytea AS bytea; CREATE DOMAIN dint2 AS dint; CREATE DOMAIN darr AS int[];
        CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TYPE pair AS (a int, b text);
        CREATE TABLE t (id int PRIMARY KEY, b dbool, i dint, j djson, by dbytea, i2 dint2, da darr, moods mood[],
            ips inet[], money_a money[], ranges int4range[], pairs pair[], dints dint[], boxes box[], d date,
            ts timestamp, tz timestamptz, dd date[]);
        INSERT INTO t VALUES (1, true, 42, '{"a": [1, 2.5]}', '\x01', 7, '{1,2}', '{sad,happy}', '{1.2.3.4,::1}',
            '{1.5,2}', '{"[1,5)","[7,9)"}', ARRAY[ROW(1, 'x')::pair, ROW(2, 'y,z')::pair], '{3,4}',
            '{(1,1),(0,0);(2,2),(1,1)}', '0044-03-15 BC', '10000-01-01 00:00', '0044-03-15 12:00:00+00 BC',
            '{0001-01-01 BC, 2026-11-22}');
    "#;
    let s = Setup::new("domains", ddl).await;
    let cfg = s.config(&["public.t"]).replace("snapshot:\n  mode: never\n", "") + "snapshot:\n  mode: initial\n";
    let mut f = Ficus::start(&cfg);
    f.wait_for_log("snapshot of table finished", WAIT);
    s.sql("INSERT INTO t SELECT 2, b, i, j, by, i2, da, moods, ips, money_a, ranges, pairs, dints, boxes, d, ts, tz, dd FROM t WHERE id = 1").await;
    let deadline = Instant::now() + WAIT;
    let events = loop {
        let events = read_exact(&s, &f, &s.topic("public", "t")).await;
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 2, "{events:#?}\n{}", f.log());
    // PostgreSQL's own JSON of the same values (to_jsonb), for every column whose mapping is to_jsonb's.
    let client = s.pg.client(&s.db).await;
    client.batch_execute("SET lc_monetary = 'C'").await.unwrap();
    let oracle: Value = client
        .query_one(
            // to_jsonb maps a domain by its base type and other values by their output function; composites
            // are objects there, strings in ficus (documented), so they are compared as text.
            "SELECT jsonb_build_object('b', to_jsonb(b), 'i', to_jsonb(i), 'j', to_jsonb(j), 'i2', to_jsonb(i2), \
             'da', to_jsonb(da), 'moods', to_jsonb(moods), 'ips', to_jsonb(ips), 'money_a', to_jsonb(money_a), \
             'ranges', to_jsonb(ranges), 'pairs', to_jsonb(pairs::text[]), 'dints', to_jsonb(dints), \
             'boxes', to_jsonb(boxes::text)) FROM t WHERE id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for e in &events {
        let after = &e["after"];
        for (column, want) in oracle.as_object().unwrap() {
            assert_eq!(&after[column], want, "{} column {column}: {after}", e["op"]);
        }
        assert_eq!(after["by"], "AQ==", "{after}");
        // One ISO 8601 form for every date and timestamp: astronomical years, signed outside 0000-9999.
        assert_eq!(after["d"], "-0043-03-15");
        assert_eq!(after["ts"], "+10000-01-01T00:00:00");
        assert_eq!(after["tz"], "-0043-03-15T12:00:00Z");
        assert_eq!(after["dd"], json!(["0000-01-01", "2026-11-22"]));
    }
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["read", "insert"], "snapshot and stream agree");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_larger_than_the_producer_queue_stops_with_the_fix_instead_of_hanging() {
    let s = Setup::new("huge_record", "CREATE TABLE t (id int PRIMARY KEY, big text)").await;
    // Kafka would take 20 MB messages, but librdkafka's queue holds only 1 MiB: the record can never be queued.
    let cfg = s.config(&["public.t"]).replace(
        "properties: {linger.ms: 1}",
        "properties: {linger.ms: 1, message.max.bytes: 20000000, queue.buffering.max.kbytes: 1024}",
    );
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    let before = s.current_lsn().await;
    s.sql("INSERT INTO t SELECT 1, string_agg(md5(i::text), '') FROM generate_series(1, 65536) i").await;
    let status = f.wait(WAIT);
    let log = f.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("queue.buffering.max.kbytes") && log.contains("table public.t") && log.contains("LSN 0/"),
        "{log}"
    );
    // Positions before the transaction may be confirmed (keepalives: other databases of the cluster write WAL too);
    // nothing at or after the refused change.
    let at = log.split("LSN ").nth(1).and_then(|r| r.split([',', ')', ' ']).next()).expect("the log names the LSN");
    let confirmed = s.confirmed_flush().await.unwrap();
    assert!(
        lsn(&confirmed) < lsn(at),
        "the transaction of the record was confirmed: {confirmed} >= {at} (before the insert: {before})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_inside_a_large_transaction_publishes_it_once() {
    let s = Setup::new("shutdown_mid_tx", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut f = Ficus::start(&s.config(&["public.t"]));
    f.wait_streaming();
    const ROWS: i64 = 100_000;
    s.sql(&format!("INSERT INTO t SELECT generate_series(1, {ROWS})")).await;
    // SIGTERM once part of the transaction is in Kafka.
    let topic = s.topic("public", "t");
    let deadline = Instant::now() + WAIT;
    let at = loop {
        let n = s.kafka.high_watermark(&topic).await;
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "{}", f.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    f.signal("-TERM");
    eprintln!("SIGTERM after {at} of {ROWS} records");
    let started = Instant::now();
    assert_eq!(f.wait(WAIT).code(), Some(0), "{}", f.log());
    assert!(started.elapsed() < Duration::from_secs(30), "shutdown took {:?}", started.elapsed());
    if at < ROWS {
        assert!(
            f.log().contains("reading the rest of the open transaction first"),
            "SIGTERM at {at} of {ROWS}\n{}",
            f.log()
        );
    }
    s.sql("INSERT INTO t VALUES (0)").await;
    f.restart();
    f.wait_for_log_count(crate::STREAMING, 2, WAIT);
    s.wait_confirmed_now(&f).await;
    let n = s.kafka.high_watermark(&topic).await;
    assert_eq!(n, ROWS + 1, "every row exactly once (SIGTERM after {at} records)\n{}", f.log());
    let msgs = s.kafka.consume_all(&topic, n as usize, WAIT).await;
    let ids: std::collections::BTreeSet<i64> =
        values(&msgs).iter().map(|e| e["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len() as i64, ROWS + 1);
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// `ficus check` on the config of `f` (same state.dir): exit code and output.
fn check_of(f: &Ficus) -> (i32, String) {
    let out = std::process::Command::new(support::ficus_bin())
        .args(["check", "--config"])
        .arg(f.dir.path().join("ficus.yaml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_what_run_would_refuse() {
    let s = Setup::new(
        "check_truth",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (v text); \
                                        ALTER TABLE nokey REPLICA IDENTITY FULL;",
    )
    .await;
    // A first start that would plan a snapshot of a keyless table.
    let cfg =
        s.config(&["public.t", "public.nokey"]).replace("snapshot:\n  mode: never\n", "snapshot:\n  mode: initial\n");
    let (code, out) = crate::check(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("✗ snapshot of public.nokey"), "{out}");
    // state.dir that is a file.
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, out) =
        crate::check(&s.config(&["public.t"]).replace("dir: STATE", &format!("dir: {}", file.path().display())));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("✗ state.dir"), "{out}");
    // A slot gap behind a checkpoint: what `run` refuses, `check` refuses.
    let mut f = run_once(&s, &s.config(&["public.t"])).await;
    let (code, out) = check_of(&f);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✓ checkpoint") && out.contains("resume at"), "{out}");
    s.sql(&format!("SELECT pg_drop_replication_slot('{}')", s.prefix)).await;
    let (code, out) = check_of(&f);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("✗ checkpoint") && out.contains("does not exist") && out.contains("snapshot.on_gap"), "{out}");
    set_on_gap(&f, "resnapshot");
    let (code, out) = check_of(&f);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("! checkpoint"), "{out}");
    // A slot streamed by a live instance: this one would wait as a hot standby.
    f.restart();
    f.wait_for_log_count(crate::STREAMING, 2, WAIT);
    let (code, out) = check_of(&f);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hot standby"), "{out}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_one_json_per_line_and_loses_nothing_when_a_table_changes() {
    let s = Setup::new("dry_run_lines", "CREATE TABLE t (id int PRIMARY KEY, j json)").await;
    let cfg = s.config(&["public.t"]).replace(&s.kafka.brokers(), "127.0.0.1:9");
    let mut dry = crate::DryRun::start(&cfg).await;
    let stdout = dry.stdout.clone();
    let deadline = Instant::now() + WAIT;
    s.sql("INSERT INTO t VALUES (1, E'{\\n  \"a\": 1\\n}')").await;
    // A column type without a binary mapping appears while streaming, and a row right after it.
    s.sql("ALTER TABLE t ADD COLUMN tt timetz; INSERT INTO t VALUES (2, '[1,\n2]', '08:00+02');").await;
    let lines = loop {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON per line ({e}): {l:?}\n{text}")))
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "dry run printed {lines:?}\n{}", dry.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lines[0]["value"]["after"]["j"], json!({"a": 1}));
    assert_eq!(lines[1]["value"]["after"]["j"], json!([1, 2]));
    assert_eq!(lines[1]["value"]["after"]["tt"], "08:00:00+02");
    std::process::Command::new("kill").args(["-TERM", &dry.child.id().to_string()]).status().unwrap();
    assert_eq!(dry.child.wait().unwrap().code(), Some(0), "{}", dry.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_for_a_snapshot_query_blocked_by_a_table_lock() {
    let s = Setup::new(
        "snapshot_lock",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);",
    )
    .await;
    // The publication and the slot exist already: creating them would wait for the lock (the deadline test below
    // covers that). Without a checkpoint the start still plans the initial snapshot.
    s.sql(&format!("CREATE PUBLICATION {} FOR TABLE t", s.prefix)).await;
    s.sql(&format!("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", s.prefix)).await;
    // Another session holds an exclusive lock on the table for the whole test.
    let locker = s.pg.client(&s.db).await;
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;").await.unwrap();
    let cfg = s.config(&["public.t"]).replace("snapshot:\n  mode: never\n", "snapshot:\n  mode: initial\n");
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    // The worker's first statement on the table (its size estimate, then the chunk) now waits for the lock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!f.log().contains("snapshot of table finished"), "{}", f.log());
    f.signal("-TERM");
    let started = Instant::now();
    assert_eq!(f.wait(WAIT).code(), Some(0), "{}", f.log());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown waited {:?} for the lock\n{}",
        started.elapsed(),
        f.log()
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The copy resumes at the next start.
    f.restart();
    f.wait_for_log("snapshot of table finished", WAIT);
    let events = read_exact(&s, &f, &s.topic("public", "t")).await;
    assert_eq!(events.len(), 10, "{events:#?}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_within_the_deadline_even_when_start_up_waits_on_a_lock() {
    let s = Setup::new("startup_lock", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let locker = s.pg.client(&s.db).await;
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;").await.unwrap();
    // CREATE PUBLICATION … FOR TABLE t waits for the lock.
    let mut f = Ficus::start(&s.config(&["public.t"]));
    f.wait_for_log("creating publication", WAIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.signal("-TERM");
    let started = Instant::now();
    let status = f.wait(Duration::from_secs(45));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(35), "SIGTERM took {waited:?}\n{}", f.log());
    assert_eq!(status.code(), Some(1), "{}", f.log());
    assert!(f.log().contains("did not finish within 30 s"), "{}", f.log());
    locker.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_table_the_role_cannot_select_is_refused_before_anything_is_created() {
    let s = Setup::new("no_select", "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);").await;
    let role = format!("{}_role", s.prefix);
    s.sql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw'; GRANT SELECT ON t TO {role}; \
         CREATE PUBLICATION {} FOR TABLE t, u;",
        s.prefix
    ))
    .await;
    let cfg = s
        .config(&["public.t", "public.u"])
        .replace(&s.pg.superuser_url(&s.db), &s.pg.url(&role, "pw", &s.db))
        .replace("snapshot:\n  mode: never\n", "snapshot:\n  mode: initial\n");
    let (code, out) = crate::check(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("✗ snapshot of public.u") && out.contains("cannot SELECT") && out.contains("GRANT SELECT"),
        "{out}"
    );
    let mut f = Ficus::start(&cfg);
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    assert!(f.log().contains("public.u: the role cannot SELECT it"), "{}", f.log());
    assert!(s.confirmed_flush().await.is_none(), "no slot created by a refused start");
    s.sql(&format!("DROP PUBLICATION {}; DROP OWNED BY {role}; DROP ROLE {role}", s.prefix)).await;
}
