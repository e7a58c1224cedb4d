//! Snapshots and backfills: existing rows arrive as `read`, concurrent changes never lose to stale rows, SIGKILL
//! resumes after the last checkpointed chunk, composite and quoted keys, `initial_only`, `ficus backfill`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{ficus_bin, ConsumedMessage};
use crate::{values, Ficus, Setup, WAIT};

/// The table's state as the topic tells it: the last event per key (`read`/`insert`/`update` → `after`, `delete`
/// → gone).
fn state_from_topic(msgs: &[ConsumedMessage]) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for (m, v) in msgs.iter().zip(values(msgs)) {
        let key = String::from_utf8(m.key.clone().expect("key")).unwrap();
        match v["op"].as_str().unwrap() {
            "delete" => {
                state.remove(&key);
            }
            "read" | "insert" | "update" => {
                state.insert(key, v["after"].clone());
            }
            other => panic!("unexpected op {other}"),
        }
    }
    state
}

fn snapshot_config(s: &Setup, tables: &[&str], snapshot: &str) -> String {
    crate::Ficus::config(
        &s.pg.superuser_url(&s.db),
        tables,
        &s.prefix,
        &s.kafka.brokers(),
        &format!("snapshot:\n{snapshot}"),
    )
}

/// A writer running `sql(i)` for i = 0, 1, … until the flag is set; the counter counts the statements run.
async fn spawn_writer(
    s: &Setup,
    sql: impl Fn(u64) -> String + Send + 'static,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let done = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicU64::new(0));
    let (d, n) = (done.clone(), during.clone());
    let client = s.pg.client(&s.db).await;
    let handle = tokio::spawn(async move {
        let mut i = 0u64;
        while !d.load(Ordering::Relaxed) {
            client.batch_execute(&sql(i)).await.unwrap();
            n.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
    });
    (done, during, handle)
}

/// The rows of `table` (`id int, v text, n int`) as the topic's state should show them, by key JSON.
async fn table_state(s: &Setup, table: &str) -> BTreeMap<String, Value> {
    let client = s.pg.client(&s.db).await;
    let rows = client.query(&format!("SELECT id, v, n FROM {table} ORDER BY id"), &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let id: i32 = r.get(0);
            let row = serde_json::json!({"id": id, "v": r.get::<_, String>(1), "n": r.get::<_, i32>(2)});
            (format!("{{\"id\":{id}}}"), row)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_with_concurrent_changes_ends_equal_to_the_table() {
    let ddl = "CREATE TABLE a (id int PRIMARY KEY, v text, n int); CREATE TABLE b (id int PRIMARY KEY, v text, n int);
               INSERT INTO a SELECT g, 'a' || g, 0 FROM generate_series(1, 30000) g;
               INSERT INTO b SELECT g, 'b' || g, 0 FROM generate_series(1, 5000) g;";
    let s = Setup::new("snapmix", ddl).await;
    let mut f = Ficus::start(&snapshot_config(&s, &["public.a", "public.b"], "  chunk_size: 200\n  workers: 2\n"));
    f.wait_for_log("snapshot of table started", WAIT);

    // Updates, deletes and inserts while the snapshot runs, spread over the whole key range.
    let (done, during, writer) = spawn_writer(&s, |i| {
        let id = (i * 7919) % 30000 + 1;
        match i % 4 {
            0 => format!("UPDATE a SET n = n + 1, v = 'upd{i}' WHERE id = {id}"),
            1 => format!("DELETE FROM a WHERE id = {id}"),
            2 => {
                format!("INSERT INTO a VALUES ({}, 'new{i}', 1) ON CONFLICT (id) DO UPDATE SET n = a.n + 10", 30000 + i)
            }
            _ => format!("UPDATE b SET n = n + 1 WHERE id = {}", id % 5000 + 1),
        }
    })
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while f.log().matches("snapshot of table finished").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "snapshot did not finish:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changed_during = during.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    // And some after the hand-over.
    s.sql("UPDATE a SET v = 'late' WHERE id % 1000 = 0; DELETE FROM a WHERE id % 999 = 0; INSERT INTO b VALUES (9999, 'late', 0)").await;
    assert!(changed_during > 20, "only {changed_during} changes ran during the snapshot");

    s.wait_snapshot_settled(&f).await;
    for table in ["a", "b"] {
        let msgs = s.read_all_confirmed(&f, &s.topic("public", table)).await;
        let state = state_from_topic(&msgs);
        let expected = table_state(&s, table).await;
        assert_eq!(
            state.len(),
            expected.len(),
            "table {table}: {} keys from the topic, {} rows",
            state.len(),
            expected.len()
        );
        let wrong: Vec<_> = expected.iter().filter(|(k, v)| state.get(*k) != Some(v)).take(5).collect();
        if let Some((key, _)) = wrong.first() {
            // Every record of the first wrong key, in topic order: what the hand-over published for it.
            let history: Vec<String> = msgs
                .iter()
                .zip(values(&msgs))
                .filter(|(m, _)| m.key.as_deref() == Some(key.as_bytes()))
                .map(|(m, v)| format!("offset {} {} {} lsn {}", m.offset, v["op"], v["after"], v["source"]["lsn"]))
                .collect();
            panic!(
                "table {table}: topic state differs from the table, e.g. {wrong:?} (topic has {:?}); records of {key}:\n{}",
                state.get(*key),
                history.join("\n")
            );
        }
        let reads = values(&msgs).iter().filter(|v| v["op"] == "read").count();
        // Rows inserted during the copy may arrive both as insert and, from a later chunk, as read.
        assert!(reads > 0, "no read events for {table}");
    }
    let cp = f.checkpoint(&s.prefix).unwrap();
    assert_eq!(cp["snapshot"]["jobs"], serde_json::json!([]), "{cp}");
    assert_eq!(f.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_snapshot_resumes_after_the_last_checkpointed_chunk() {
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, pad text);
               INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g;";
    let s = Setup::new("snapkill", ddl).await;
    let mut f = Ficus::start(&snapshot_config(&s, &["public.big"], "  chunk_size: 500\n  workers: 1\n"));
    // Wait until the checkpoint records progress, then kill.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let after =
            f.checkpoint(&s.prefix).and_then(|cp| cp["snapshot"]["jobs"][0]["after"][0].as_str().map(str::to_string));
        if let Some(after) = after {
            if after.parse::<i64>().unwrap() >= 5000 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot progress in the checkpoint:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.sigkill();
    let cp = f.checkpoint(&s.prefix).unwrap();
    let resumed_after: i64 = cp["snapshot"]["jobs"][0]["after"][0].as_str().unwrap().parse().unwrap();
    assert!(resumed_after < 60000, "the snapshot finished before the kill; make the table bigger");
    f.restart();
    f.wait_for_log("snapshot of table finished", WAIT);
    assert!(f.log().contains(&format!("resume_after=\"{resumed_after}\"")), "{}", f.log());

    s.wait_snapshot_settled(&f).await;
    let msgs = s.read_all_confirmed(&f, &s.topic("public", "big")).await;
    let mut reads: BTreeMap<i64, u32> = BTreeMap::new();
    for v in values(&msgs) {
        assert_eq!(v["op"], "read");
        *reads.entry(v["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(reads.len(), 60000, "rows missing");
    let twice: BTreeSet<i64> = reads.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    assert!(reads.values().all(|n| *n <= 2));
    assert!(
        twice.iter().all(|id| *id > resumed_after),
        "rows up to the checkpointed key {resumed_after} were read again"
    );
    assert!(twice.len() < 60000 - resumed_after as usize, "the table was copied again from the start");
    eprintln!("re-emitted after SIGKILL: {} rows (in-flight chunks after key {resumed_after})", twice.len());
    assert_eq!(f.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_quoted_keys_and_initial_only_exits_zero() {
    let ddl = r#"CREATE SCHEMA "Legacy Schema";
        CREATE TABLE "Legacy Schema"."Order Lines" ("Order Id" int, "line no" text, "Qty" int, PRIMARY KEY ("Order Id", "line no"));
        INSERT INTO "Legacy Schema"."Order Lines" SELECT o, 'l''' || l, o * l FROM generate_series(1, 250) o, generate_series(1, 10) l;
        CREATE TABLE nokey (v text); ALTER TABLE nokey REPLICA IDENTITY FULL; INSERT INTO nokey VALUES ('x');"#;
    let s = Setup::new("snapquoted", ddl).await;
    let table = r#"Legacy Schema"."Order Lines"#;
    let quoted = format!("\"{table}\"");
    let mut f = Ficus::start(&snapshot_config(
        &s,
        &[&quoted, "public.nokey"],
        &format!("  mode: initial_only\n  chunk_size: 7\n  tables: ['{}']\n", quoted.replace('\'', "''")),
    ));
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(0), "{}", f.log());
    assert!(f.log().contains("exiting (snapshot.mode: initial_only)"));
    // ficus exited: everything it published is in Kafka now (the slot is not read: initial_only never streams).
    let msgs = s.kafka.read_to_end(&s.topic("Legacy Schema", "Order Lines"), WAIT).await;
    let v = values(&msgs);
    assert_eq!(v.len(), 2500);
    let keys: BTreeSet<Vec<u8>> = msgs.iter().map(|m| m.key.clone().unwrap()).collect();
    assert_eq!(keys.len(), 2500, "each row exactly once");
    let first = v.iter().find(|e| e["after"]["Order Id"] == 3 && e["after"]["line no"] == "l'7").unwrap();
    assert_eq!(first["after"]["Qty"], 21);
    assert_eq!(first["op"], "read");
    assert!(keys.contains(br#"{"Order Id":3,"line no":"l'7"}"#.as_slice()));

    // `ficus check` refuses what a first start refuses: a keyless table in the snapshot, with the fix.
    let (code, out) = crate::check(&snapshot_config(&s, &["public.nokey"], "  mode: initial\n"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("✗ snapshot of public.nokey") && out.contains("add a primary key"), "{out}");
    let config = snapshot_config(&s, &["public.nokey"], "  mode: initial\n")
        .replace(&format!("slot: {}", s.prefix), &format!("slot: {}_nokey", s.prefix));
    let mut f = Ficus::start(&config);
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(2), "{}", f.log());
    assert!(
        f.log().contains("public.nokey has no primary key") && f.log().contains("add a primary key"),
        "{}",
        f.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_request_reaches_the_running_instance_and_read_rules_fire() {
    let ddl = "CREATE TABLE orders (id int PRIMARY KEY, status text); INSERT INTO orders SELECT g, 'paid' FROM generate_series(1, 50) g;";
    let s = Setup::new("backfill", ddl).await;
    let events = format!("{}.events", s.prefix);
    let extra = format!(
        "snapshot:\n  mode: never\nevents:\n  - {{name: OrderSnapshotted, table: public.orders, on: [read], key: string(new.id), topic: {events}, data: {{id: new.id, status: new.status}}}}\n"
    );
    let config =
        crate::Ficus::config(&s.pg.superuser_url(&s.db), &["public.orders"], &s.prefix, &s.kafka.brokers(), &extra);
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.sql("INSERT INTO orders VALUES (51, 'new')").await;

    let (_dir, path) = Ficus::dir_config(&config);
    let run = |args: &[&str]| {
        let out = Command::new(ficus_bin()).args(["backfill", "--config"]).arg(&path).args(args).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = run(&["--table", "orders", "--where", "id <= 10 OR status = 'new'"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("backfill of public.orders requested"), "{text}");
    let (code, text) = run(&["--table", "orders", "--where", "1=1) UNION SELECT 1, 'x' --"]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(&["--table", "orders", "--where", "no_such_column = 1"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no_such_column"), "{text}");
    let (code, text) = run(&["--table", "public.other"]);
    assert_eq!(code, Some(2), "{text}");

    // The backfill is a snapshot job: wait until it finished and its chunks were acknowledged (the checkpoint then
    // lists no job), then read everything.
    f.wait_for_log("snapshot of table finished", WAIT);
    s.wait_snapshot_settled(&f).await;
    let msgs = s.read_all_confirmed(&f, &events).await;
    let v = values(&msgs);
    let mut ids: Vec<i64> = v.iter().map(|e| e["data"]["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (1..=10).chain([51]).collect::<Vec<_>>(), "{}", f.log());
    assert_eq!(v[0]["eventType"], "OrderSnapshotted");
    assert_eq!(v[0]["source"]["op"], "read");
    let raw = values(&s.read_all_confirmed(&f, &s.topic("public", "orders")).await);
    assert_eq!(raw.iter().filter(|e| e["op"] == "read").count(), 11);
    assert_eq!(raw.len(), 12, "the insert of 51 and 11 backfilled rows, nothing else");
    assert_eq!(f.terminate().code(), Some(0));
}

/// Checks the hand-over per key in topic order: a `read` that follows a change of its key carries exactly the state
/// that change left (never an older row, never a row deleted before it).
fn assert_no_stale_read(table: &str, msgs: &[ConsumedMessage]) {
    let mut last_change: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for (m, v) in msgs.iter().zip(values(msgs)) {
        let key = String::from_utf8(m.key.clone().expect("key")).unwrap();
        match v["op"].as_str().unwrap() {
            "read" => {
                if let Some(state) = last_change.get(&key) {
                    assert_eq!(
                        state.as_ref(),
                        Some(&v["after"]),
                        "table {table}: a read of {key} at offset {} after a newer change (or its deletion)",
                        m.offset
                    );
                }
            }
            "delete" => {
                last_change.insert(key, None);
            }
            _ => {
                last_change.insert(key, Some(v["after"].clone()));
            }
        }
    }
}

/// A table split into key ranges copied by four workers in parallel, with inserts (into gaps of every range and past
/// its end), updates and deletes in every range during the copy: the topic ends equal to the table, no read follows
/// a newer change of its key, no deleted row comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_split_into_key_ranges_hands_over_without_gaps_per_range() {
    // Even ids only: the writer inserts odd ids inside every range.
    let ddl = "CREATE TABLE r (id int PRIMARY KEY, v text, n int);
               INSERT INTO r SELECT 2 * g, 'r' || g, 0 FROM generate_series(1, 20000) g; ANALYZE r;";
    let s = Setup::new("snapranges", ddl).await;
    let cfg = "  chunk_size: 200\n  workers: 4\n  split_min_rows: 1000\n";
    let mut f = Ficus::start(&snapshot_config(&s, &["public.r"], cfg));
    f.wait_for_log("snapshot of table started", WAIT);
    let (done, during, writer) = spawn_writer(&s, |i| {
        // Spread over the whole key range, so every range sees every kind of change.
        let id = (i * 7919) % 40000 + 1;
        match i % 4 {
            0 => format!("UPDATE r SET n = n + 1, v = 'upd{i}' WHERE id IN ({id}, {})", id + 1),
            1 => format!("DELETE FROM r WHERE id IN ({id}, {})", id + 1),
            2 => {
                format!("INSERT INTO r VALUES ({id}, 'new{i}', 1) ON CONFLICT (id) DO UPDATE SET n = r.n + 10")
            }
            _ => format!("INSERT INTO r VALUES ({}, 'end{i}', 2)", 40000 + i),
        }
    })
    .await;
    f.wait_for_log("snapshot of table finished", WAIT);
    let changed_during = during.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let log = f.log();
    assert!(log.contains("table split into key ranges copied in parallel") && log.contains("ranges=4"), "{log}");
    assert!(changed_during > 40, "only {changed_during} changes ran during the snapshot");
    s.sql("UPDATE r SET v = 'late' WHERE id % 1000 = 0; DELETE FROM r WHERE id % 999 = 0").await;

    s.wait_snapshot_settled(&f).await;
    let msgs = s.read_all_confirmed(&f, &s.topic("public", "r")).await;
    assert_no_stale_read("r", &msgs);
    let state = state_from_topic(&msgs);
    let expected = table_state(&s, "r").await;
    let wrong: Vec<_> = expected.iter().filter(|(k, v)| state.get(*k) != Some(v)).take(5).collect();
    let extra: Vec<_> = state.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    assert!(
        wrong.is_empty() && extra.is_empty(),
        "topic differs from the table: wrong {wrong:?}, resurrected {extra:?}"
    );
    assert_eq!(state.len(), expected.len());
    // Rows of every range arrived as reads.
    let reads: BTreeSet<i64> =
        values(&msgs).iter().filter(|v| v["op"] == "read").map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    for quarter in 0..4 {
        assert!(
            reads.iter().any(|id| (quarter * 10000..(quarter + 1) * 10000).contains(id)),
            "no reads in quarter {quarter}"
        );
    }
    assert_eq!(f.terminate().code(), Some(0));
}

/// SIGKILL while a split table is copied: the restart resumes every range after its own checkpointed cursor (rows
/// before a range's cursor are not read again, the ranges are not planned anew).
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_split_resumes_each_range_after_its_cursor() {
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, pad text);
               INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g; ANALYZE big;";
    let s = Setup::new("snapsplitkill", ddl).await;
    let cfg = "  chunk_size: 500\n  workers: 3\n  split_min_rows: 1000\n";
    let mut f = Ficus::start(&snapshot_config(&s, &["public.big"], cfg));
    let ranges_of = |cp: &Value| cp["snapshot"]["jobs"][0]["ranges"].as_array().cloned().unwrap_or_default();
    let deadline = std::time::Instant::now() + WAIT;
    let ranges = loop {
        if let Some(cp) = f.checkpoint(&s.prefix) {
            let ranges = ranges_of(&cp);
            if ranges.len() == 3 && ranges.iter().filter(|r| r["after"].is_array()).count() >= 2 {
                break ranges;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no split progress in the checkpoint:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    f.sigkill();
    let cp = f.checkpoint(&s.prefix).unwrap();
    let ranges_at_kill = ranges_of(&cp);
    assert!(
        ranges_at_kill.len() == 3 && ranges_at_kill.iter().all(|r| r["done"] != true),
        "finished before the kill: {cp}"
    );
    let bound = |r: &Value, k: &str| r[k].as_str().map(|v| v.parse::<i64>().unwrap());
    // (from, to, cursor) per range, as the checkpoint had them at the kill.
    let cursors: Vec<(i64, i64, i64)> = ranges_at_kill
        .iter()
        .map(|r| {
            let from = bound(r, "from").unwrap_or(i64::MIN);
            let after = r["after"][0].as_str().map_or(from.saturating_sub(1), |a| a.parse().unwrap());
            (from, bound(r, "to").unwrap_or(i64::MAX), after)
        })
        .collect();
    assert_eq!(
        ranges.iter().map(|r| (&r["from"], &r["to"])).collect::<Vec<_>>(),
        ranges_at_kill.iter().map(|r| (&r["from"], &r["to"])).collect::<Vec<_>>()
    );
    f.restart();
    s.wait_snapshot_settled(&f).await;
    assert_eq!(
        f.log().matches("table split into key ranges").count(),
        1,
        "the restart planned the ranges anew:\n{}",
        f.log()
    );
    // Nothing but the workers writes here: their watermark transactions, in each other's in-progress lists, must
    // not count as commits a chunk's read missed (that restarted the session once per few chunks).
    assert!(!f.log().contains("committed before the chunk's low watermark"), "{}", f.log());
    let msgs = s.read_all_confirmed(&f, &s.topic("public", "big")).await;
    let mut reads: BTreeMap<i64, u32> = BTreeMap::new();
    for v in values(&msgs) {
        assert_eq!(v["op"], "read");
        *reads.entry(v["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(reads.len(), 60000, "rows missing");
    assert!(reads.values().all(|n| *n <= 2));
    for (id, _) in reads.iter().filter(|(_, n)| **n > 1) {
        let (_, _, after) = cursors.iter().find(|(from, to, _)| (*from..*to).contains(id)).expect("in a range");
        assert!(id > after, "row {id} was read again though its range's checkpointed cursor is {after}");
    }
    assert_eq!(f.terminate().code(), Some(0));
}

/// A chunk is bounded in bytes as well as in rows: a legacy table of wide rows (here 32 KB each) copied with the
/// default `chunk_size` must not hold thousands of them at once. Before the bound, one chunk held the whole table
/// (1,000 rows, 32 MB of COPY text, decoded and encoded: peak RSS ~150 MiB); every row still arrives once.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_of_wide_rows_is_bounded_in_bytes() {
    let ddl = "CREATE TABLE wide (id int PRIMARY KEY, doc text);
               INSERT INTO wide SELECT g, repeat(md5(g::text), 1024) FROM generate_series(1, 1000) g;";
    let s = Setup::new("snapwide", ddl).await;
    let mut f = Ficus::start(&snapshot_config(&s, &["public.wide"], "  workers: 1\n"));
    f.wait_for_log("snapshot of table finished", WAIT);
    s.wait_snapshot_settled(&f).await;
    let rss = f.peak_rss_kib().expect("VmHWM");
    eprintln!("1,000 rows of 32 KB: peak RSS {} MiB", rss / 1024);
    let msgs = s.read_all_confirmed(&f, &s.topic("public", "wide")).await;
    let ids: BTreeSet<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!((msgs.len(), ids.len()), (1000, 1000), "every row exactly once");
    assert!(rss < 64 * 1024, "peak RSS {} MiB: a chunk of wide rows is not bounded in bytes", rss / 1024);
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
