//! Behaviour that differs between PostgreSQL versions (docs/postgres-versions.md): generated columns in a replica
//! identity, in snapshot rows and in the choice of binary values (stored generated columns can be published from 18
//! on, virtual ones exist from 18 on and are never published), and why a slot was invalidated (17+ names the reason,
//! 18 adds `idle_replication_slot_timeout`). Every test runs on every version; a part that needs a newer server says
//! so and is skipped below it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{unique_db, PgOptions, TestPostgres};
use crate::{check, values, Ficus, Setup, WAIT};

async fn version(pg: &TestPostgres) -> i32 {
    let row = pg.client("postgres").await.query_one("SELECT current_setting('server_version_num')::int", &[]).await;
    row.unwrap().get(0)
}

/// Runs `sql` as the application would and fails the test with the server's message if PostgreSQL refuses it.
async fn app_write(s: &Setup, sql: &str) {
    let client = s.pg.client(&s.db).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("the application's write failed after ficus started: {sql}: {:?}", e.as_db_error());
    }
}

/// `(op, before, after)` of each event.
fn changes(events: &[Value]) -> Vec<(String, Value, Value)> {
    events.iter().map(|e| (e["op"].as_str().unwrap().to_string(), e["before"].clone(), e["after"].clone())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn application_writes_keep_working_with_generated_columns_in_the_replica_identity() {
    // Each way a stored generated column gets into the replica identity: FULL, an identity index, the primary key.
    let ddl = "CREATE TABLE full_stored (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
               ALTER TABLE full_stored REPLICA IDENTITY FULL;
               CREATE TABLE by_index (id int NOT NULL, a int, g int GENERATED ALWAYS AS (a * 2) STORED NOT NULL);
               CREATE UNIQUE INDEX by_index_g ON by_index (g); ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_g;
               CREATE TABLE by_pk (g int GENERATED ALWAYS AS (a * 2) STORED PRIMARY KEY, a int NOT NULL);
               INSERT INTO full_stored VALUES (1, 1), (2, 2); INSERT INTO by_index VALUES (1, 1), (2, 2);
               INSERT INTO by_pk (a) VALUES (1), (2);";
    let s = Setup::new("gen_identity", ddl).await;
    let v18 = version(s.pg).await >= 180_000;
    let tables = ["public.full_stored", "public.by_index", "public.by_pk"];
    let (code, out) = check(&s.config(&tables));
    assert_eq!(code, 0, "{out}");
    let mut f = Ficus::start(&s.config(&tables));
    f.wait_streaming();
    for t in ["full_stored", "by_index", "by_pk"] {
        app_write(&s, &format!("UPDATE {t} SET a = 10 WHERE a = 1; DELETE FROM {t} WHERE a = 2")).await;
    }
    // From 18 on the publication ficus created publishes stored generated columns: events carry them.
    let g = |a: i64| if v18 { json!(a * 2) } else { Value::Null };
    let row = |id: Option<i64>, a: i64| {
        let mut r = serde_json::Map::new();
        if let Some(id) = id {
            r.insert("id".into(), json!(id));
        }
        r.insert("a".into(), json!(a));
        if v18 {
            r.insert("g".into(), g(a));
        }
        Value::Object(r)
    };
    let full = changes(&values(&s.read_all_confirmed(&f, &s.topic("public", "full_stored")).await));
    assert_eq!(
        full,
        vec![("update".into(), row(Some(1), 1), row(Some(1), 10)), ("delete".into(), row(Some(2), 2), Value::Null),],
        "{}",
        f.log()
    );
    // Under an identity index (or DEFAULT) a delete carries the key only; before 18 the key is not published at
    // all, so it is null.
    let index = changes(&values(&s.read_all_confirmed(&f, &s.topic("public", "by_index")).await));
    assert_eq!(index.len(), 2, "{index:?}");
    assert_eq!(index[0].2, row(Some(1), 10));
    let pk = changes(&values(&s.read_all_confirmed(&f, &s.topic("public", "by_pk")).await));
    assert_eq!(pk.len(), 2, "{pk:?}");
    assert_eq!(pk[0].2, row(None, 10));
    if v18 {
        assert_eq!(index[1].1, json!({"g": 4}));
        assert_eq!(pk[1].1, json!({"g": 4}));
    }
    // A table the table watch adds back later (re-created while streaming) keeps the application's writes working.
    s.sql(
        "DROP TABLE full_stored;
         CREATE TABLE full_stored (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
         ALTER TABLE full_stored REPLICA IDENTITY FULL; INSERT INTO full_stored VALUES (5, 5);",
    )
    .await;
    f.wait_for_log("was dropped and re-created: added back", WAIT);
    app_write(&s, "UPDATE full_stored SET a = 6 WHERE id = 5").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let full = changes(&values(&s.read_all_confirmed(&f, &s.topic("public", "full_stored")).await));
        if full.iter().any(|c| c.0 == "update" && c.2 == row(Some(5), 6)) {
            assert!(full.iter().any(|c| c.0 == "update" && c.1 == row(Some(5), 5)), "{full:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no update of the re-created table: {full:?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publication_that_would_break_the_application_is_refused_with_the_fix() {
    let s = Setup::new("gen_refused", "CREATE TABLE t (id int PRIMARY KEY, a int)").await;
    if version(s.pg).await < 180_000 {
        eprintln!("skipped: PostgreSQL 18 is the first to check generated columns in the replica identity");
        return;
    }
    let publication = &s.prefix;
    // 1. FULL with a virtual generated column: no publication can carry it.
    s.sql(
        "CREATE TABLE virt (id int PRIMARY KEY, a int, v int GENERATED ALWAYS AS (a * 2) VIRTUAL);
         ALTER TABLE virt REPLICA IDENTITY FULL; INSERT INTO virt VALUES (1, 1);",
    )
    .await;
    let config = s.config(&["public.virt"]);
    let (code, out) = check(&config);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("virtual generated column(s) v, which no publication can publish"), "{out}");
    assert!(out.contains("REPLICA IDENTITY DEFAULT"), "{out}");
    assert!(!out.contains("before images complete"), "the table's line must not say FULL is fine: {out}");
    let mut f = Ficus::start(&config);
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    app_write(&s, "UPDATE virt SET a = 5; DELETE FROM virt").await;
    // `ficus check` never recommends FULL where it would break the writes.
    s.sql("CREATE TABLE virt_pk (id int PRIMARY KEY, a int, v int GENERATED ALWAYS AS (a * 2) VIRTUAL)").await;
    let (_, out) = check(&s.config(&["public.virt_pk"]));
    assert!(!out.contains("REPLICA IDENTITY FULL;"), "{out}");
    assert!(out.contains("not REPLICA IDENTITY FULL"), "{out}");

    // 2. A publication the user created without publish_generated_columns: ficus does not change it.
    s.sql(&format!(
        "CREATE TABLE full_stored (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
         ALTER TABLE full_stored REPLICA IDENTITY FULL; INSERT INTO full_stored VALUES (1, 1);
         CREATE PUBLICATION \"{publication}\" FOR TABLE t;"
    ))
    .await;
    let config = s.config(&["public.t", "public.full_stored"]);
    let (code, out) = check(&config);
    assert_ne!(code, 0, "{out}");
    let fix = format!("ALTER PUBLICATION \"{publication}\" SET (publish_generated_columns = stored);");
    assert!(out.contains(&fix) && out.contains("stored generated column(s) g"), "{out}");
    let mut f = Ficus::start(&config);
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    app_write(&s, "UPDATE full_stored SET a = 2").await;
    let client = s.pg.client(&s.db).await;
    let members: i64 = client
        .query_one("SELECT count(*) FROM pg_publication_tables WHERE pubname = $1", &[publication])
        .await
        .unwrap()
        .get(0);
    assert_eq!(members, 1, "ficus changed the user's publication");
    // With the fix applied, ficus runs and the writes keep working.
    s.sql(&fix).await;
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    app_write(&s, "UPDATE full_stored SET a = 3; INSERT INTO t VALUES (1, 1)").await;

    // 3. A table re-created while streaming with a replica identity the publication cannot carry: the table watch
    // does not add it (the pipeline stops with the fix) and the application keeps writing.
    s.sql(
        "DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY, a int, v int GENERATED ALWAYS AS (a * 2) VIRTUAL);
         ALTER TABLE t REPLICA IDENTITY FULL; INSERT INTO t VALUES (2, 2);",
    )
    .await;
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    assert!(f.log().contains("which no publication can publish"), "{}", f.log());
    app_write(&s, "UPDATE t SET a = 4; DELETE FROM t").await;
    let events = values(&s.kafka.read_to_end(&s.topic("public", "full_stored"), WAIT).await);
    assert_eq!(events[0]["after"], json!({"id": 1, "a": 3, "g": 6}), "{events:?}");
}

/// Each way the application's writes on a captured table can start failing on PostgreSQL 18 *after* ficus started —
/// the replica identity set to FULL over a virtual generated column, a virtual generated column added to a FULL table,
/// the publication's `publish_generated_columns` turned off under a stored one — stops ficus with exit 2 and the fix
/// (it used to go on streaming while PostgreSQL refused every UPDATE and DELETE). A table with generated columns that
/// is fine does not stop it.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_while_streaming_that_breaks_the_application_stops_ficus_with_the_fix() {
    let s = Setup::new("gen_watch", "CREATE TABLE plain (id int PRIMARY KEY, a int)").await;
    if version(s.pg).await < 180_000 {
        eprintln!("skipped: PostgreSQL 18 is the first to check generated columns in the replica identity");
        return;
    }
    let publication = &s.prefix;
    s.sql(&format!(
        "CREATE TABLE stored (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
         ALTER TABLE stored REPLICA IDENTITY FULL;
         CREATE TABLE virt (id int PRIMARY KEY, a int, v int GENERATED ALWAYS AS (a * 2) VIRTUAL);
         CREATE TABLE full_plain (id int PRIMARY KEY, a int); ALTER TABLE full_plain REPLICA IDENTITY FULL;
         CREATE PUBLICATION \"{publication}\" FOR TABLE plain, stored, virt, full_plain
             WITH (publish_generated_columns = stored);"
    ))
    .await;
    let config = s.config(&["public.plain", "public.stored", "public.virt", "public.full_plain"]);
    let stops = |f: &mut Ficus, needles: &[&str]| {
        assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
        let log = f.log();
        for needle in needles {
            assert!(log.contains(needle), "the log does not say {needle:?}:\n{log}");
        }
    };
    let changes = [
        // 1. The publication stops publishing the stored generated column of a FULL identity.
        (
            format!("ALTER PUBLICATION \"{publication}\" SET (publish_generated_columns = none)"),
            vec!["captured table public.stored changed while ficus streamed", "stored generated column(s) g"],
            format!("ALTER PUBLICATION \"{publication}\" SET (publish_generated_columns = stored)"),
        ),
        // 2. FULL over a virtual generated column.
        (
            "ALTER TABLE virt REPLICA IDENTITY FULL".to_string(),
            vec!["captured table public.virt changed", "virtual generated column(s) v", "REPLICA IDENTITY DEFAULT"],
            "ALTER TABLE virt REPLICA IDENTITY DEFAULT".to_string(),
        ),
        // 3. A virtual generated column added to a FULL table.
        (
            "ALTER TABLE full_plain ADD COLUMN v int GENERATED ALWAYS AS (a * 3) VIRTUAL".to_string(),
            vec!["captured table public.full_plain changed", "virtual generated column(s) v"],
            "ALTER TABLE full_plain DROP COLUMN v".to_string(),
        ),
    ];
    for (i, (change, needles, undo)) in changes.iter().enumerate() {
        let mut f = Ficus::start(&config);
        f.wait_streaming();
        // Generated columns that PostgreSQL can publish do not stop ficus: several watch ticks pass.
        app_write(&s, &format!("INSERT INTO stored VALUES ({i}, 1); UPDATE virt SET a = a + 1")).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(f.is_running(), "ficus stopped although nothing broke:\n{}", f.log());
        s.sql(change).await;
        stops(&mut f, needles);
        s.sql(undo).await;
    }
    // With every change undone, ficus streams again and the application's writes work.
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    app_write(&s, "UPDATE stored SET a = 7; UPDATE virt SET a = 7; UPDATE full_plain SET a = 7").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(f.is_running(), "{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// A snapshot `read` row and a streamed row of the same table have the same columns, whatever the publication
/// publishes: stored generated columns (18, `publish_generated_columns = stored`), never virtual ones, a column list's
/// columns (15+).
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_rows_have_the_columns_the_stream_publishes() {
    let s = Setup::new("gen_snapshot", "SELECT 1").await;
    let v = version(s.pg).await;
    let virtual_column = if v >= 180_000 { ", v int GENERATED ALWAYS AS (a + 1) VIRTUAL" } else { "" };
    s.sql(&format!(
        "CREATE TABLE gen (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED{virtual_column});
         CREATE TABLE listed (id int PRIMARY KEY, a int, secret text);
         CREATE TABLE part (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED) PARTITION BY RANGE (id);
         CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100);
         INSERT INTO gen VALUES (1, 1); INSERT INTO listed VALUES (1, 1, 's1'); INSERT INTO part VALUES (1, 1);"
    ))
    .await;
    // The user's publication: on 18 it publishes stored generated columns, from 15 on a column list leaves `secret`
    // out; without publish_via_partition_root `part` is listed through its partition only.
    let listed = if v >= 150_000 { "listed (id, a)" } else { "listed" };
    let with = if v >= 180_000 { " WITH (publish_generated_columns = stored)" } else { "" };
    s.sql(&format!("CREATE PUBLICATION \"{}\" FOR TABLE gen, part, {listed}{with}", s.prefix)).await;
    let config = Ficus::config(
        &s.pg.superuser_url(&s.db),
        &["public.gen", "public.listed", "public.part"],
        &s.prefix,
        &s.kafka.brokers(),
        "snapshot:\n  chunk_size: 100\n",
    );
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.wait_snapshot_settled(&f).await;
    app_write(
        &s,
        "INSERT INTO gen VALUES (2, 2); INSERT INTO listed VALUES (2, 2, 's2'); INSERT INTO part VALUES (2, 2)",
    )
    .await;
    for (table, want) in [
        ("gen", if v >= 180_000 { vec!["a", "g", "id"] } else { vec!["a", "id"] }),
        ("part", if v >= 180_000 { vec!["a", "g", "id"] } else { vec!["a", "id"] }),
        ("listed", if v >= 150_000 { vec!["a", "id"] } else { vec!["a", "id", "secret"] }),
    ] {
        let events = values(&s.read_all_confirmed(&f, &s.topic("public", table)).await);
        let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["read", "insert"], "{table}: {events:?}");
        let fields = |e: &Value| -> Vec<String> {
            let mut keys: Vec<String> = e["after"].as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(fields(&events[0]), fields(&events[1]), "{table}: snapshot and stream differ: {events:?}");
        assert_eq!(fields(&events[1]), want, "{table}: {events:?}");
        // Field by field: the same mapping in both (row 1 and row 2 differ only by their values).
        for field in fields(&events[0]) {
            assert_eq!(
                events[0]["after"][&field].is_null(),
                events[1]["after"][&field].is_null(),
                "{table}.{field}: {events:?}"
            );
        }
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// A column that is never sent does not decide between binary and text values: virtual generated columns (18) and
/// stored generated columns the publication does not publish (every version), here of a type without a binary mapping.
#[tokio::test(flavor = "multi_thread")]
async fn columns_never_sent_leave_the_stream_binary() {
    let s = Setup::new("gen_binary", "SELECT 1").await;
    let v = version(s.pg).await;
    let virtual_column =
        if v >= 180_000 { ", vi interval GENERATED ALWAYS AS (make_interval(days => a)) VIRTUAL" } else { "" };
    s.sql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, a int, si interval GENERATED ALWAYS AS (make_interval(days => a)) STORED\
         {virtual_column}); CREATE PUBLICATION \"{}\" FOR TABLE t;",
        s.prefix
    ))
    .await;
    let mut f = Ficus::start(&s.config(&["public.t"]));
    f.wait_streaming();
    assert!(f.log().contains("binary_values=true"), "{}", f.log());
    app_write(&s, "INSERT INTO t VALUES (1, 3)").await;
    let events = values(&s.read_all_confirmed(&f, &s.topic("public", "t")).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["after"], json!({"id": 1, "a": 3}));
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// `wal_status` and `invalidation_reason` (17+) of `slot`.
async fn reason(client: &tokio_postgres::Client, slot: &str) -> (Option<String>, Option<String>) {
    let row = client
        .query_one(
            "SELECT wal_status, to_jsonb(s) ->> 'invalidation_reason' FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `ficus check` and `ficus run` name why the slot was invalidated and the matching fix: the WAL removal
/// (`max_slot_wal_keep_size`, every version) and, on 18, `idle_replication_slot_timeout`. A cluster of its own: the
/// settings would invalidate other tests' slots.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_slot_is_reported_with_its_reason() {
    let pg = TestPostgres::start_with(PgOptions::default().setting("max_slot_wal_keep_size", "1MB"));
    let kafka = crate::support::TestKafka::shared();
    let db = unique_db("invalidated");
    pg.create_database(&db);
    pg.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, pad text)").await;
    let client = pg.client(&db).await;
    let v = version(&pg).await;
    let config = |prefix: &str| Ficus::config(&pg.superuser_url(&db), &["public.t"], prefix, &kafka.brokers(), "");

    // The WAL removal: more WAL than max_slot_wal_keep_size behind the slot, then a checkpoint.
    let wal = kafka.unique_topic("inv_wal").replace('-', "_").to_lowercase();
    client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&wal]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while reason(&client, &wal).await.0.as_deref() != Some("lost") {
        assert!(Instant::now() < deadline, "slot {wal} was not invalidated: {:?}", reason(&client, &wal).await);
        client
            .batch_execute(
                "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g \
                 ON CONFLICT (id) DO UPDATE SET pad = excluded.pad || 'y'; SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap();
    }
    let (code, out) = check(&config(&wal));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("was invalidated (the WAL it needed was removed, see max_slot_wal_keep_size)"), "{out}");

    if v < 180_000 {
        eprintln!("skipped the idle timeout: idle_replication_slot_timeout exists from PostgreSQL 18 on");
        return;
    }
    let idle = kafka.unique_topic("inv_idle").replace('-', "_").to_lowercase();
    client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&idle]).await.unwrap();
    // ALTER SYSTEM cannot run in the implicit transaction of a multi-statement batch.
    client.batch_execute("ALTER SYSTEM SET idle_replication_slot_timeout = 1").await.unwrap();
    client.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let deadline = Instant::now() + WAIT;
    while reason(&client, &idle).await.1.as_deref() != Some("idle_timeout") {
        assert!(Instant::now() < deadline, "slot {idle} was not invalidated: {:?}", reason(&client, &idle).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.batch_execute("CHECKPOINT").await.unwrap();
    }
    let (code, out) = check(&config(&idle));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("inactive for longer than idle_replication_slot_timeout"), "{out}");
    assert!(!out.contains("max_slot_wal_keep_size);"), "{out}");
    let mut f = Ficus::start(&config(&idle));
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    assert!(f.log().contains("idle_replication_slot_timeout"), "{}", f.log());
}

/// A rule reading a generated column the stream never sends fails `ficus check` (it would fail on every change):
/// virtual ones (18) always, stored ones unless the publication publishes them (18, a publication ficus creates).
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_reading_a_column_the_stream_never_sends_fails_the_check() {
    let s = Setup::new("gen_rules", "SELECT 1").await;
    let v18 = version(s.pg).await >= 180_000;
    let virtual_column = if v18 { ", v int GENERATED ALWAYS AS (a + 1) VIRTUAL" } else { "" };
    s.sql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED{virtual_column})"
    ))
    .await;
    let rule = |name: &str, column: &str| {
        format!(
            "  - {{name: {name}, table: public.t, on: insert, key: string(new.id), topic: {}.ev, data: {{x: new.{column}}}}}\n",
            s.prefix
        )
    };
    let mut events = format!("events:\n{}{}", rule("ReadsA", "a"), rule("ReadsG", "g"));
    if v18 {
        events.push_str(&rule("ReadsV", "v"));
    }
    let config = Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], &s.prefix, &s.kafka.brokers(), &events);
    let (code, out) = check(&config);
    assert_ne!(code, 0, "{out}");
    let failed = |name: &str| {
        out.lines().any(|l| l.contains(&format!("{name} v1")) && l.contains("that the stream never sends"))
    };
    assert!(!failed("ReadsA"), "{out}");
    // 18: the publication ficus creates publishes stored generated columns.
    assert_eq!(failed("ReadsG"), !v18, "{out}");
    if v18 {
        assert!(failed("ReadsV"), "{out}");
    }
    // `ficus catalog`: a rule's default data (every column) has the columns the stream sends.
    let config = Ficus::config(
        &s.pg.superuser_url(&s.db),
        &["public.t"],
        &s.prefix,
        &s.kafka.brokers(),
        &format!(
            "events:\n  - {{name: All, table: public.t, on: insert, key: string(new.id), topic: {}.ev}}\n",
            s.prefix
        ),
    );
    let (_dir, path) = Ficus::dir_config(&config);
    let out = std::process::Command::new(crate::support::ficus_bin())
        .args(["catalog", "--format", "json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let catalog: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut fields: Vec<&str> =
        catalog["events"][0]["schema"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, if v18 { vec!["a", "g", "id"] } else { vec!["a", "id"] }, "{catalog}");
}
