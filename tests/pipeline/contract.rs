//! The consumers' contract (issue 17), checked with clients nobody here wrote: event ids recomputed from the
//! documented formula, every CloudEvents record parsed by the CloudEvents Python SDK's Kafka binding, and every
//! event's `data` validated against its own `ficus catalog` schema by `jsonschema`'s Draft 2020-12 validator (format
//! checking on). The Python clients live in `.venv/oracle` (scripts/install-test-deps.sh); the script that drives
//! them is `contract_oracle.py` next to this file.

use std::collections::HashSet;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{self, ConsumedMessage};
use crate::{header, values, Ficus, Setup, WAIT};

/// The namespace docs/events.md states for every ficus UUIDv5.
const NAMESPACE: &str = "6f1c3b8e-2d4a-4c7e-9a10-3e5b7d9f1a2c";

/// The oracle venv's Python (`FICUS_ORACLE_PYTHON` overrides). Missing is a failure, not a skip: these checks are
/// the point of the file.
fn oracle_python() -> std::path::PathBuf {
    let path = std::env::var_os("FICUS_ORACLE_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| support::manifest_dir().join(".venv/oracle/bin/python3"));
    assert!(path.exists(), "{} is missing: run scripts/install-test-deps.sh", path.display());
    path
}

/// Bytes as the oracle's latin-1 text (every byte one char, so any value survives JSON).
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

pub(crate) fn record_json(m: &ConsumedMessage) -> Value {
    json!({
        "topic": m.topic,
        "key": m.key.as_deref().map(latin1),
        "value": latin1(m.payload.as_deref().unwrap_or_default()),
        "headers": m.headers.iter().map(|(k, v)| json!([k, latin1(v)])).collect::<Vec<_>>(),
    })
}

/// Runs `contract_oracle.py <mode>` on `doc`; returns (records checked, errors).
pub(crate) fn oracle(mode: &str, doc: &Value) -> (u64, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.json");
    std::fs::write(&input, serde_json::to_vec(doc).unwrap()).unwrap();
    let script = support::manifest_dir().join("tests/pipeline/contract_oracle.py");
    let out = Command::new(oracle_python()).arg(script).arg(mode).arg(&input).output().unwrap();
    assert!(out.status.success(), "oracle {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    (v["checked"].as_u64().unwrap(), errors)
}

/// `config` with a DLQ topic and without raw change events.
fn rules_only(config: String, dlq: &str) -> String {
    config
        .replace("changes:\n  tables: ['*']", "changes:\n  tables: []")
        .replace("kafka:\n", &format!("kafka:\n  dlq_topic: {dlq}\n"))
}

fn uuid5(name: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::parse_str(NAMESPACE).unwrap(), name.as_bytes()).to_string()
}

/// v1, v2 and v3 of one event type from the same change get distinct ids (in every encoding, so CloudEvents'
/// (source, id) is unique), each exactly the documented UUIDv5, and a second run over the same WAL gives the same.
#[tokio::test(flavor = "multi_thread")]
async fn event_ids_are_unique_per_version_documented_and_stable_across_a_replay() {
    let s = Setup::new("contract_ids", "CREATE TABLE ord (id int PRIMARY KEY, amt int)").await;
    let (topic, topic_b) = (format!("{}.orders", s.prefix), format!("{}.orders_b", s.prefix));
    let rules = |topic: &str| {
        format!(
            "events:\n\
             \x20 - {{name: OrderPlaced, table: public.ord, on: insert, key: string(new.id), topic: {topic}, encoding: cloudevents-binary}}\n\
             \x20 - {{name: OrderPlaced, version: 2, table: public.ord, on: insert, key: string(new.id), topic: {topic}, encoding: cloudevents-structured}}\n\
             \x20 - {{name: OrderPlaced, version: 3, table: public.ord, on: insert, key: string(new.id), topic: {topic}}}\n"
        )
    };
    // Run a publishes raw changes too (they carry commitLsn and position, the inputs of the formula).
    let mut a = Ficus::start(&format!("{}{}", s.config(&["public.ord"]), rules(&topic)));
    a.wait_streaming();
    let slot_b = format!("{}_b", s.prefix);
    let config_b = Ficus::config(&s.pg.superuser_url(&s.db), &["public.ord"], &slot_b, &s.kafka.brokers(), "");
    let mut b = Ficus::start(&format!("{}{}", rules_only(config_b, &format!("{slot_b}.dlq")), rules(&topic_b)));
    b.wait_streaming();
    s.sql("BEGIN; INSERT INTO ord VALUES (1, 10); INSERT INTO ord VALUES (2, 20); COMMIT;").await;

    let msgs = s.read_all_confirmed(&a, &topic).await;
    assert_eq!(msgs.len(), 6, "{}", a.log());
    let raw = values(&s.read_all_confirmed(&a, &s.topic("public", "ord")).await);
    let system = values(&msgs[2..3])[0]["source"]["system"].as_str().unwrap().to_string();
    let mut ids = HashSet::new();
    let mut ce_ids = HashSet::new();
    for (i, m) in msgs.iter().enumerate() {
        let (row, version) = (i / 3, i % 3 + 1);
        let id = header(m, "event-id").unwrap();
        // The documented formula, computed here from the raw change event of the same row.
        let src = &raw[row]["source"];
        let name = format!(
            "{system}/{}/{}/{}/OrderPlaced/{version}",
            s.db,
            src["commitLsn"].as_str().unwrap(),
            src["position"]
        );
        assert_eq!(id, uuid5(&name), "event {i}: eventId = UUIDv5 of {name:?}");
        assert!(ids.insert(id.to_string()), "event {i}: id {id} is used twice");
        let ce = match version {
            1 => Some((header(m, "ce_source").unwrap().to_string(), header(m, "ce_id").unwrap().to_string())),
            2 => {
                let v = &values(std::slice::from_ref(m))[0];
                Some((v["source"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string()))
            }
            _ => None,
        };
        if let Some((source, ce_id)) = ce {
            assert_eq!(ce_id, id);
            assert!(ce_ids.insert((source, ce_id)), "event {i}: CloudEvents (source, id) is used twice");
        }
    }
    // Both CloudEvents encodings parse with the SDK.
    let ce_records: Vec<Value> =
        msgs.iter().enumerate().filter(|(i, _)| i % 3 < 2).map(|(_, m)| record_json(m)).collect();
    assert_eq!(oracle("cloudevents", &json!({"records": ce_records})), (4, vec![]));
    // The same WAL through another slot: the same ids, in the same order.
    s.wait_slot_confirmed_now(&slot_b, &b).await;
    let replay = s.kafka.read_to_end(&topic_b, WAIT).await;
    let ids_of =
        |ms: &[ConsumedMessage]| ms.iter().map(|m| header(m, "event-id").unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids_of(&replay), ids_of(&msgs), "a replay gives the same ids");
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log());
    assert_eq!(b.terminate().code(), Some(0), "{}", b.log());
}

/// An empty key (→ CloudEvents `subject`), an empty outbox `type` (→ `type`) or `id` (→ `id`) would make an invalid
/// CloudEvent: such changes go to the DLQ with the reason; everything published parses with the CloudEvents SDK.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_cloudevents_go_to_the_dlq_and_every_published_one_parses_with_the_sdk() {
    let s = Setup::new(
        "contract_ce",
        "CREATE TABLE acct (id int PRIMARY KEY, code text);
         CREATE TABLE outbox (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL,
                              type text NOT NULL, payload text);",
    )
    .await;
    let (topic, dlq) = (format!("{}.accounts", s.prefix), format!("{}.dlq", s.prefix));
    let rules = format!(
        "events:\n\
         \x20 - {{name: AccountOpened, table: public.acct, on: insert, key: new.code, topic: {topic}, encoding: cloudevents-binary, data: {{id: new.id}}}}\n\
         \x20 - {{name: AccountOpened, version: 2, table: public.acct, on: insert, key: new.code, topic: {topic}, encoding: cloudevents-structured}}\n\
         \x20 - {{name: ShopOutbox, outbox: {{table: public.outbox}}, topic: '{}.ob.{{aggregatetype}}', encoding: cloudevents-binary}}\n",
        s.prefix
    );
    let config = rules_only(s.config(&["public.acct", "public.outbox"]), &dlq);
    let mut f = Ficus::start(&format!("{config}{rules}"));
    f.wait_streaming();
    s.sql("INSERT INTO acct VALUES (1, 'a-1'), (2, '')").await;
    s.sql(
        "INSERT INTO outbox VALUES ('e1', 'acct', '1', 'AccountVerified', '{\"ok\": true}'),
                                   ('e2', 'acct', '2', '', '{}'), ('', 'acct', '3', 'AccountVerified', '{}')",
    )
    .await;

    let mut published = s.read_all_confirmed(&f, &topic).await;
    published.extend(s.read_all_confirmed(&f, &format!("{}.ob.acct", s.prefix)).await);
    let keys: Vec<&[u8]> = published.iter().map(|m| m.key.as_deref().unwrap()).collect();
    assert_eq!(keys, [&b"a-1"[..], b"a-1", b"1"], "only the valid events are published:\n{}", f.log());
    let doc = json!({"records": published.iter().map(record_json).collect::<Vec<_>>()});
    let (checked, errors) = oracle("cloudevents", &doc);
    assert_eq!((checked, errors), (3, vec![]));

    // The oracle is not vacuous: the same record with an empty subject is refused.
    let mut bad = record_json(&published[0]);
    for h in bad["headers"].as_array_mut().unwrap() {
        if h[0] == "ce_subject" {
            h[1] = json!("");
        }
    }
    let (_, errors) = oracle("cloudevents", &json!({"records": [bad]}));
    assert!(errors.iter().any(|e| e.contains("subject")), "{errors:?}");

    let dead = s.read_all_confirmed(&f, &dlq).await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| (header(m, "dlq-rule").unwrap().to_string(), header(m, "dlq-error").unwrap().to_string()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for (rule, reason) in &reasons[..2] {
        assert!(
            rule.starts_with("AccountOpened") && reason.contains("subject") && reason.contains("empty"),
            "{rule}: {reason}"
        );
    }
    assert!(reasons[2].1.contains("type") && reasons[2].1.contains("empty"), "{reasons:?}");
    assert!(reasons[3].1.contains("id") && reasons[3].1.contains("empty"), "{reasons:?}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Every event of a workload full of edge values (multi-dimensional arrays, NaN/±Infinity, infinity/BC/year ≥ 10000
/// dates and timestamps, negative intervals, domains, enum arrays, nulls, a text outbox payload holding JSON or not)
/// validates against its own `ficus catalog --format json` schema.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_validates_against_its_catalog_schema() {
    let s = Setup::new(
        "contract_schema",
        "CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE DOMAIN pday AS date;
         CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE rich (id int PRIMARY KEY, ia int[], fa float8[], ta text[], da date[], f8 float8, f4 real,
                            n numeric, d date, ts timestamp, tstz timestamptz, iv interval, b bool, j jsonb, u uuid,
                            by bytea, t text, pi posint, moods mood[], pd pday, pda pday[]);
         CREATE TABLE ob (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL,
                          type text NOT NULL, payload text NOT NULL);",
    )
    .await;
    let (topic, dlq) = (format!("{}.rich", s.prefix), format!("{}.dlq", s.prefix));
    let rules = format!(
        "events:\n\
         \x20 - {{name: RichChanged, table: public.rich, on: [insert, update], key: string(new.id), topic: {topic}}}\n\
         \x20 - name: RichComputed\n\
         \x20   table: public.rich\n\
         \x20   on: [insert, update]\n\
         \x20   key: string(new.id)\n\
         \x20   topic: {topic}\n\
         \x20   data:\n\
         \x20     asDouble: 'new.f8 == null ? 0.5 : double(new.f8)'\n\
         \x20     ratio: double(new.id) / double(new.id - 2)\n\
         \x20     nan: double(new.id - 2) / double(new.id - 2)\n\
         \x20     grid: new.ia\n\
         \x20     day: new.d\n\
         \x20     at: new.tstz\n\
         \x20     nested: {{text: new.ta, dates: new.da}}\n\
         \x20 - {{name: ObEvents, outbox: {{table: public.ob}}, topic: '{}.ob.{{aggregatetype}}'}}\n",
        s.prefix
    );
    let config = rules_only(s.config(&["public.rich", "public.ob"]), &dlq);
    let config = format!("{config}{rules}");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.sql(
        "INSERT INTO rich VALUES
           (1, '{{1,2},{3,4}}', '{1.5,NaN,Infinity,-Infinity,NULL}', '{{a,b},{c,NULL}}', '{infinity,-infinity,2026-11-22}',
            'NaN', '-Infinity', '12.5', '0044-03-15 BC', '10000-01-01 00:00', 'infinity', '1 year 2 mons -3 days 04:05:06.5',
            true, '{\"k\": [1]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102', 'x'),
           (2, '{{{1},{2}},{{3},{4}}}', '{}', '{}', '{}', 'Infinity', 3.25, 'NaN', 'infinity', '-infinity',
            '0044-03-15 10:00:00+00 BC', '-1 days', false, 'null', NULL, '', ''),
           (3, '{5}', NULL, NULL, '{0001-01-01 BC,10000-12-31}', 1.5, NULL, '-0.001', '-infinity', '0001-01-01 00:00 BC',
            '10000-01-01 00:00+00', 'PT0S', NULL, '[1, \"a\"]', NULL, NULL, NULL),
           (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         UPDATE rich SET d = '10000-01-01', tstz = '-infinity' WHERE id = 4;
         UPDATE rich SET pi = 5, moods = '{{ok,sad},{sad,NULL}}', pd = 'infinity', pda = '{0044-01-01 BC,NULL}' WHERE id = 3;
         INSERT INTO ob VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', 'rich', '1', 'RichNoted', '{\"a\": 1}'),
                               ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', 'rich', '2', 'RichNoted', 'plain text'),
                               ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14', 'rich', '3', 'RichNoted', '[1, 2]');",
    )
    .await;

    let mut events = values(&s.read_all_confirmed(&f, &topic).await);
    assert_eq!(events.len(), 12, "{}", f.log());
    let outbox = values(&s.read_all_confirmed(&f, &format!("{}.ob.rich", s.prefix)).await);
    assert_eq!(outbox.len(), 3);
    assert!(s.read_all_confirmed_or_empty(&f, &dlq).await.is_empty(), "nothing fails:\n{}", f.log());
    // The published values are the edge cases meant (not nulls from a typo).
    assert_eq!(events[0]["data"]["ia"], json!([[1, 2], [3, 4]]));
    assert_eq!(events[0]["data"]["d"], "-0043-03-15");
    assert_eq!(events[10]["data"]["pi"], 5, "a domain over int is a number");
    assert_eq!(events[10]["data"]["moods"], json!([["ok", "sad"], ["sad", null]]));
    assert_eq!(
        (&events[3]["data"]["ratio"], &events[3]["data"]["nan"]),
        (&json!("Infinity"), &json!("NaN")),
        "{}",
        events[3]
    );
    events.extend(outbox.iter().map(|e| {
        let mut e = e.clone();
        e["eventType"] = json!("ObEvents"); // the catalog names the outbox rule (eventType comes from a column)
        e
    }));

    let (dir, path) = Ficus::dir_config(&config);
    let out = Command::new(support::ficus_bin())
        .args(["catalog", "--format", "json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    drop(dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let catalog: Value = serde_json::from_slice(&out.stdout).unwrap();
    let records: Vec<Value> = events
        .iter()
        .map(|e| json!({"event": e["eventType"], "version": e["eventVersion"], "data": e["data"]}))
        .collect();
    let (checked, errors) = oracle("schema", &json!({"records": records, "catalog": catalog}));
    assert_eq!((checked, errors), (15, vec![]), "catalog:\n{catalog:#}");

    // Not vacuous: a value of the wrong type is refused.
    let mut wrong = records[0].clone();
    wrong["data"]["ia"] = json!(["1"]);
    let (_, errors) = oracle("schema", &json!({"records": [wrong], "catalog": catalog}));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Debezium's defaults in `changes.encoding: debezium` (part of issue 17.4): truncates are not published (Debezium's
/// `skipped.operations=t`), json/jsonb values are strings holding the JSON text (`io.debezium.data.Json`), and
/// events carry `ts_us`/`ts_ns` next to `ts_ms` (top level and `source`, as Debezium 2.6+). The options
/// `changes.debezium.skipped_operations: []` and `json_handling: embedded` switch the first two back.
#[tokio::test(flavor = "multi_thread")]
async fn debezium_mode_follows_debeziums_defaults_and_its_options_switch_them() {
    let s = Setup::new("contract_dbz", "CREATE TABLE t (id int PRIMARY KEY, doc jsonb)").await;
    let debezium = |config: String, options: &str| {
        config.replace("  topic_prefix:", &format!("  encoding: debezium\n{options}  topic_prefix:"))
    };
    let mut a = Ficus::start(&debezium(s.config(&["public.t"]), ""));
    a.wait_streaming();
    let slot_b = format!("{}_b", s.prefix);
    let config_b = Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], &slot_b, &s.kafka.brokers(), "");
    let mut b = Ficus::start(&debezium(config_b, "  debezium: {skipped_operations: [], json_handling: embedded}\n"));
    b.wait_streaming();
    s.sql("INSERT INTO t VALUES (1, '{\"a\": [1, 2]}'); TRUNCATE t; INSERT INTO t VALUES (2, NULL);").await;

    let v = values(&s.read_all_confirmed(&a, &s.topic("public", "t")).await);
    let ops: Vec<&str> = v.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "c"], "no truncate by default:\n{}", a.log());
    assert_eq!(v[0]["after"], json!({"id": 1, "doc": "{\"a\": [1, 2]}"}), "jsonb as a string by default");
    assert_eq!(v[1]["after"], json!({"id": 2, "doc": null}));
    for e in &v {
        let (ms, us, ns) = (e["ts_ms"].as_i64().unwrap(), e["ts_us"].as_i64().unwrap(), e["ts_ns"].as_i64().unwrap());
        assert_eq!((us / 1000, ns), (ms, us * 1000), "{e}");
        assert_eq!((&e["source"]["ts_us"], &e["source"]["ts_ns"]), (&e["ts_us"], &e["ts_ns"]), "{e}");
    }
    s.wait_slot_confirmed_now(&slot_b, &b).await;
    let all = values(&s.kafka.read_to_end(&format!("{slot_b}.public.t"), WAIT).await);
    let ops: Vec<&str> = all.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "t", "c"], "skipped_operations: [] keeps truncates:\n{}", b.log());
    assert_eq!(all[0]["after"], json!({"id": 1, "doc": {"a": [1, 2]}}), "json_handling: embedded");
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log());
    assert_eq!(b.terminate().code(), Some(0), "{}", b.log());
}

/// The JSON type of every member of `v`, recursively for objects (`"null"`, `"string"`, `"integer"`, `"number"`,
/// `"boolean"`, `"array"`, or the object of member shapes): compares a record with Debezium's documented shape
/// without its values.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!("integer"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(_) => json!("array"),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// `changes.encoding: debezium` replayed against the record shapes Debezium's PostgreSQL connector documents (its
/// "Data change events" section: the `customers` examples of create, update, primary-key update, delete and
/// tombstone, and the Debezium 2.6+ `ts_us`/`ts_ns` fields), consumed with a plain Kafka client:
/// - value members `before`, `after`, `source`, `op`, `ts_ms`, `ts_us`, `ts_ns`, `transaction`, and `source`'s
///   `version`, `connector`, `name`, `ts_ms`, `ts_us`, `ts_ns`, `snapshot`, `db`, `sequence`, `schema`, `table`,
///   `txId`, `lsn`, `xmin`, each of the documented JSON type;
/// - an update under REPLICA IDENTITY DEFAULT has `before: null`; a delete's `before` holds the key;
/// - a delete is followed by a tombstone (same key, null value);
/// - a primary-key update is a delete under the old key with header `__debezium.newkey`, its tombstone, and a create
///   under the new key with header `__debezium.oldkey`;
/// - `source.sequence` is a string holding a JSON array of two LSNs as decimal strings;
/// - a `date` is `io.debezium.time.Date` (days since the epoch) and a `timestamp` `io.debezium.time.MicroTimestamp`
///   (the documented example: 2018-06-20 15:13:16.945104 is 1529507596945104).
///
/// With `changes.debezium.schemas: true` the same records come wrapped as Kafka Connect's JsonConverter writes them
/// (`schema` + `payload`, key and value), and every payload conforms to its schema by the JsonConverter's rules (the
/// oracle's `connect` mode).
#[tokio::test(flavor = "multi_thread")]
async fn debezium_records_have_debeziums_documented_shapes_including_key_changes_and_tombstones() {
    let s = Setup::new(
        "contract_dbz_shape",
        "CREATE TABLE customers (id int PRIMARY KEY, first_name text NOT NULL, email text, born date, seen timestamp,
                                 doc jsonb, tags text[], score float8, big bigint, paid numeric(10,2), raw bytea,
                                 bio text);
         ALTER TABLE customers ALTER COLUMN bio SET STORAGE EXTERNAL;",
    )
    .await;
    let debezium = |config: String, options: &str| {
        config.replace("  topic_prefix:", &format!("  encoding: debezium\n{options}  topic_prefix:"))
    };
    let mut a = Ficus::start(&debezium(s.config(&["public.customers"]), ""));
    a.wait_streaming();
    let slot_b = format!("{}_b", s.prefix);
    let config_b = Ficus::config(&s.pg.superuser_url(&s.db), &["public.customers"], &slot_b, &s.kafka.brokers(), "");
    let mut b = Ficus::start(&debezium(config_b, "  debezium: {schemas: true, transaction_metadata: true}\n"));
    b.wait_streaming();
    s.sql(
        "INSERT INTO customers VALUES (1, 'Anne', 'annek@noanswer.org', '2026-11-22', '2018-06-20 15:13:16.945104',
                                       '{\"vip\": true}', '{a,b}', 1.5, 9007199254740993, 12.50, '\\x0102',
                                       (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i));
         UPDATE customers SET email = 'anne@example.com' WHERE id = 1;
         UPDATE customers SET id = 2 WHERE id = 1;
         DELETE FROM customers WHERE id = 2;",
    )
    .await;

    let msgs = s.read_all_confirmed(&a, &s.topic("public", "customers")).await;
    let summary: Vec<(Option<String>, Option<String>)> = msgs
        .iter()
        .map(|m| {
            let op = m.payload.as_deref().map(|p| serde_json::from_slice::<Value>(p).unwrap()["op"].to_string());
            (m.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()), op)
        })
        .collect();
    let k = |id: u32| Some(format!("{{\"id\":{id}}}"));
    let op = |o: &str| Some(format!("\"{o}\""));
    assert_eq!(
        summary,
        [
            (k(1), op("c")),
            (k(1), op("u")),
            (k(1), op("d")),
            (k(1), None),
            (k(2), op("c")),
            (k(2), op("d")),
            (k(2), None)
        ],
        "create, update, key change = delete + tombstone + create, delete + tombstone:\n{}",
        a.log()
    );
    assert_eq!(msgs[3].payload, None, "a tombstone's value is null, not empty");
    assert_eq!(header(&msgs[2], "__debezium.newkey"), Some(r#"{"id":2}"#));
    assert_eq!(header(&msgs[4], "__debezium.oldkey"), Some(r#"{"id":1}"#));
    let events: Vec<Value> =
        msgs.iter().filter_map(|m| m.payload.as_deref()).map(|p| serde_json::from_slice(p).unwrap()).collect();
    // Debezium's documented shape of `source` (PostgreSQL connector, 2.6+).
    let source = json!({"version": "string", "connector": "string", "name": "string", "ts_ms": "integer",
                        "ts_us": "integer", "ts_ns": "integer", "snapshot": "string", "db": "string",
                        "sequence": "string", "schema": "string", "table": "string", "txId": "integer",
                        "lsn": "integer", "xmin": "null"});
    let row = json!({"id": "integer", "first_name": "string", "email": "string", "born": "integer",
                     "seen": "integer", "doc": "string", "tags": "array", "score": "number", "big": "integer",
                     "paid": "string", "raw": "string", "bio": "string"});
    let envelope = |before: Value, after: Value| {
        json!({"before": before, "after": after, "source": source, "op": "string", "ts_ms": "integer",
               "ts_us": "integer", "ts_ns": "integer", "transaction": "null"})
    };
    let key_only = json!({"id": "integer"});
    let expected = [
        envelope(json!("null"), row.clone()),      // create
        envelope(json!("null"), row.clone()),      // update, REPLICA IDENTITY DEFAULT: no old row
        envelope(key_only.clone(), json!("null")), // delete under the old key
        envelope(json!("null"), row.clone()),      // create under the new key
        envelope(key_only, json!("null")),         // delete
    ];
    for (i, (e, want)) in events.iter().zip(&expected).enumerate() {
        assert_eq!(shape(e), *want, "event {i}: {e:#}");
        assert_eq!(e["source"]["connector"], "postgresql");
        assert_eq!(e["source"]["name"], s.prefix.as_str(), "source.name is the topic prefix");
        assert_eq!(e["source"]["snapshot"], "false");
        let seq: Vec<String> = serde_json::from_str(e["source"]["sequence"].as_str().unwrap()).unwrap();
        assert_eq!(seq.len(), 2, "{seq:?}");
        assert_eq!(seq[1], e["source"]["lsn"].to_string(), "the second LSN is the change's");
        assert!(seq[0].parse::<u64>().unwrap() >= seq[1].parse::<u64>().unwrap(), "the first is its commit's");
    }
    assert_eq!(events.len(), 5);
    assert_eq!(
        (&events[0]["after"]["born"], &events[0]["after"]["seen"]),
        (&json!(20_779), &json!(1_529_507_596_945_104i64))
    );
    assert_eq!(events[0]["after"]["doc"], r#"{"vip": true}"#, "io.debezium.data.Json: a string");
    assert_eq!(events[3]["after"]["email"], "anne@example.com", "the create carries the whole new row");
    // An unchanged TOASTed value the server did not send: Debezium's placeholder.
    assert_eq!(events[0]["after"]["bio"].as_str().unwrap().len(), 6400);
    assert_eq!(events[1]["after"]["bio"], "__debezium_unavailable_value");
    assert_eq!(events[3]["after"]["bio"], "__debezium_unavailable_value");
    assert_eq!(events[3]["after"]["id"], 2);

    // schemas: true — the same records, wrapped, and valid by Kafka Connect's JsonConverter rules.
    s.wait_slot_confirmed_now(&slot_b, &b).await;
    let wrapped = s.kafka.read_to_end(&format!("{slot_b}.public.customers"), WAIT).await;
    assert_eq!(wrapped.len(), 7, "{}", b.log());
    assert_eq!(wrapped[3].payload, None);
    let records: Vec<Value> = wrapped
        .iter()
        .map(|m| {
            json!({"key": serde_json::from_slice::<Value>(m.key.as_deref().unwrap()).unwrap(),
                   "value": m.payload.as_deref().map(|p| serde_json::from_slice::<Value>(p).unwrap())})
        })
        .collect();
    let key = &records[0]["key"];
    assert_eq!(key["payload"], json!({"id": 1}));
    assert_eq!(key["schema"]["name"], format!("{slot_b}.public.customers.Key"));
    let value = &records[0]["value"];
    let mut with_tx = expected[0].clone();
    with_tx["transaction"] = json!({"id": "string", "total_order": "integer", "data_collection_order": "integer"});
    assert_eq!(shape(&value["payload"]), with_tx, "the same payload, with Debezium's transaction block");
    assert_eq!(value["schema"]["name"], format!("{slot_b}.public.customers.Envelope"));
    let field = |name: &str| {
        value["schema"]["fields"][1]["fields"].as_array().unwrap().iter().find(|f| f["field"] == name).unwrap().clone()
    };
    assert_eq!(field("born")["name"], "io.debezium.time.Date");
    assert_eq!(field("seen")["name"], "io.debezium.time.MicroTimestamp");
    assert_eq!(field("doc")["name"], "io.debezium.data.Json");
    assert_eq!(field("id")["optional"], false);
    let (checked, errors) = oracle("connect", &json!({"records": records}));
    assert_eq!((checked, errors), (7, vec![]));
    assert_eq!(records[0]["value"]["payload"]["transaction"]["total_order"], 1, "transaction metadata is on in b");
    // The transaction topic's BEGIN/END records, wrapped the same way.
    let tx: Vec<Value> = s
        .kafka
        .read_to_end(&format!("{slot_b}.transaction"), WAIT)
        .await
        .iter()
        .map(|m| {
            json!({"key": serde_json::from_slice::<Value>(m.key.as_deref().unwrap()).unwrap(),
                   "value": serde_json::from_slice::<Value>(m.payload.as_deref().unwrap()).unwrap()})
        })
        .collect();
    // The four statements ran as one transaction (one simple query): BEGIN, END with its 5 events.
    assert_eq!(tx.len(), 2, "{tx:?}");
    assert_eq!(tx[1]["value"]["payload"]["event_count"], 5);
    assert_eq!(oracle("connect", &json!({"records": tx})), (2, vec![]));
    // Not vacuous: a value of the wrong type, or a missing required field, is refused.
    let mut bad = records[0].clone();
    bad["value"]["payload"]["after"]["born"] = json!("2026-11-22");
    bad["key"]["payload"] = json!({});
    let (_, errors) = oracle("connect", &json!({"records": [bad]}));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log());
    assert_eq!(b.terminate().code(), Some(0), "{}", b.log());
}

/// HMAC-SHA256 as Python's standard library computes it (an implementation ficus does not share).
pub(crate) fn python_hmac(key: &str, message: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", "import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())"])
        .args([key, message])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `changes.masking` (issue 17.7): personal data never reaches the raw change topic nor the DLQ — not in `after`,
/// not in `before` (REPLICA IDENTITY FULL), not in snapshot rows, not in `ficus run --dry-run` output. `hash` is the
/// HMAC-SHA256 of the value under the secret read through `${file:…}` (checked with Python's `hmac`), `redact` is
/// `***`, `truncate: 3` keeps three characters, `exclude` removes the column. Rules still see the real values.
#[tokio::test(flavor = "multi_thread")]
async fn masked_columns_never_reach_the_topic_the_dlq_or_the_dry_run() {
    let s = Setup::new(
        "contract_mask",
        "CREATE TABLE customers (id int PRIMARY KEY, email text, full_name text, ssn text, notes text, code text);
         ALTER TABLE customers REPLICA IDENTITY FULL;
         INSERT INTO customers VALUES (1, 'anne@private.example', 'Anne Kretchmar', '111-22-3333', 'MonZQXJ1', 'c1');",
    )
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("masking-key");
    std::fs::write(&key_file, "k3y-for-tests\n").unwrap();
    let (topic, dlq) = (format!("{}.coded", s.prefix), format!("{}.dlq", s.prefix));
    let masking = format!(
        "  masking:\n    secret: '${{file:{}}}'\n    tables:\n      public.customers: {{email: hash, full_name: redact, \
         ssn: exclude, notes: {{truncate: 3}}}}\n",
        key_file.display()
    );
    // A rule whose key is the code: an empty code makes an invalid CloudEvent, so that change goes to the DLQ.
    let rules = format!(
        "events:\n  - {{name: CustomerCoded, table: public.customers, on: [insert, update], key: new.code, topic: {topic}, \
         encoding: cloudevents-binary, data: {{email: new.email}}}}\n"
    );
    let config = Ficus::config(
        &s.pg.superuser_url(&s.db),
        &["public.customers"],
        &s.prefix,
        &s.kafka.brokers(),
        "snapshot:\n  mode: initial\n",
    )
    .replace("  topic_prefix:", &format!("{masking}  topic_prefix:"))
    .replace("kafka:\n", &format!("kafka:\n  dlq_topic: {dlq}\n"));
    let config = format!("{config}{rules}");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.wait_snapshot_settled(&f).await;
    s.sql(
        "INSERT INTO customers VALUES (2, 'bob@private.example', 'Bob Secretson', '444-55-6666', 'TueZQXJ2', '');
         UPDATE customers SET email = 'anne.k@private.example', notes = 'WedZQXJ3' WHERE id = 1;
         DELETE FROM customers WHERE id = 2;",
    )
    .await;

    let raw = s.read_all_confirmed(&f, &s.topic("public", "customers")).await;
    let dead = s.read_all_confirmed(&f, &dlq).await;
    let events = values(&raw);
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["read", "insert", "update", "delete"], "{}", f.log());
    assert_eq!(dead.len(), 1, "the change with the empty code went to the DLQ:\n{}", f.log());
    let plain = ["private.example", "Anne", "Kretchmar", "Bob", "Secretson", "111-22", "444-55", "ZQXJ"];
    for m in raw.iter().chain(&dead) {
        let bytes = [m.key.clone().unwrap_or_default(), m.payload.clone().unwrap_or_default()].concat();
        let text = String::from_utf8_lossy(&bytes);
        for p in plain {
            assert!(!text.contains(p), "{p:?} reached {}: {text}", m.topic);
        }
    }
    let hash = |v: &str| python_hmac("k3y-for-tests", v);
    assert_eq!(
        events[0]["after"],
        json!({"id": 1, "email": hash("anne@private.example"), "full_name": "***", "notes": "Mon", "code": "c1"}),
        "snapshot row"
    );
    assert_eq!(events[2]["before"]["email"], hash("anne@private.example"));
    assert_eq!(events[2]["after"]["email"], hash("anne.k@private.example"));
    assert_eq!(events[2]["after"]["notes"], "Wed");
    assert_eq!(events[3]["before"]["full_name"], "***");
    assert!(events.iter().all(|e| e["before"].get("ssn").is_none() && e["after"].get("ssn").is_none()));
    let dlq_event = &values(&dead)[0];
    assert_eq!(dlq_event["after"]["email"], hash("bob@private.example"));
    assert_eq!(dlq_event["after"]["full_name"], "***");
    assert_eq!(header(&dead[0], "dlq-masked"), Some("true"));
    // Rules see the real values (masking is for raw events).
    let coded = values(&s.read_all_confirmed(&f, &topic).await);
    assert!(coded.iter().any(|e| e["email"] == "anne.k@private.example"), "{coded:?}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    // `ficus dlq replay` does not build events from masked values: the record is reported as not replayable.
    let (_dir, path) = Ficus::dir_config(&config);
    let out = Command::new(support::ficus_bin())
        .args(["dlq", "replay", "--dry-run", "--format", "json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(report.len(), 1, "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report[0]["outcome"], "not-replayable", "{}", report[0]);
    assert!(report[0]["reason"].as_str().unwrap().contains("masked"), "{}", report[0]);

    // The dry run prints what would be published: masked too (snapshot rows and streamed changes).
    let dry_config = config.replace(&s.kafka.brokers(), "127.0.0.1:9");
    let mut dry = crate::DryRun::start(&dry_config).await;
    s.sql("INSERT INTO customers VALUES (3, 'cid@private.example', 'Cid Secretson', '777-88-9999', 'ThuZQXJ4', 'c3')")
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    let printed = loop {
        let text = std::fs::read_to_string(&dry.stdout).unwrap_or_default();
        if text.lines().any(|l| l.contains("\"op\":\"insert\"") && l.contains("\"id\":3")) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "dry run printed {text}\n{}", dry.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let raw_lines: Vec<&str> = printed.lines().filter(|l| !l.contains(&topic)).collect();
    assert!(!raw_lines.is_empty());
    for line in &raw_lines {
        for p in ["private.example", "Cid", "Secretson", "777-88", "ZQXJ"] {
            assert!(!line.contains(p), "{p:?} in the dry run's output: {line}");
        }
    }
    let _ = dry.child.kill();
    let _ = dry.child.wait();
}

/// Tombstones and key changes under `kafka.delivery: exactly_once`: the null values travel inside the Kafka
/// transaction like any record, and a read_committed consumer sees the whole Debezium sequence once.
#[tokio::test(flavor = "multi_thread")]
async fn debezium_tombstones_and_key_changes_under_exactly_once() {
    let s = Setup::new("contract_dbz_eos", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let config = s
        .config(&["public.t"])
        .replace("kafka:\n", "kafka:\n  delivery: exactly_once\n")
        .replace("  topic_prefix:", "  encoding: debezium\n  topic_prefix:");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.sql("INSERT INTO t VALUES (1, 'a'); UPDATE t SET id = 2 WHERE id = 1; DELETE FROM t WHERE id = 2;").await;
    let msgs = s.read_all_confirmed(&f, &s.topic("public", "t")).await;
    let seen: Vec<(String, Option<String>)> = msgs
        .iter()
        .map(|m| {
            let op = m
                .payload
                .as_deref()
                .map(|p| serde_json::from_slice::<Value>(p).unwrap()["op"].as_str().unwrap().to_string());
            (String::from_utf8_lossy(m.key.as_deref().unwrap()).into_owned(), op)
        })
        .collect();
    let (k1, k2) = (r#"{"id":1}"#.to_string(), r#"{"id":2}"#.to_string());
    let op = |o: &str| Some(o.to_string());
    assert_eq!(
        seen,
        [
            (k1.clone(), op("c")),
            (k1.clone(), op("d")),
            (k1, None),
            (k2.clone(), op("c")),
            (k2.clone(), op("d")),
            (k2, None)
        ],
        "{}",
        f.log()
    );
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// The W3C `traceparent` (CloudEvents distributed-tracing extension, issue 17.6): on every business event as a
/// header, as `ce_traceparent` in binary mode and as the `traceparent` attribute in structured mode (parsed by the
/// CloudEvents SDK and checked against W3C Trace Context); its trace-id is the correlation id (so every event of one
/// source transaction is in one trace, and different transactions in different traces), its parent-id differs per
/// event (both ids are stable across replays, see the first test of this file, so the traceparent is too).
#[tokio::test(flavor = "multi_thread")]
async fn traceparent_joins_the_events_of_a_transaction_in_one_trace() {
    let s = Setup::new("contract_trace", "CREATE TABLE ord (id int PRIMARY KEY)").await;
    let topic = format!("{}.orders", s.prefix);
    let rules = format!(
        "events:\n\
         \x20 - {{name: Placed, table: public.ord, on: insert, key: string(new.id), topic: {topic}, encoding: cloudevents-binary}}\n\
         \x20 - {{name: Placed, version: 2, table: public.ord, on: insert, key: string(new.id), topic: {topic}, encoding: cloudevents-structured}}\n\
         \x20 - {{name: Placed, version: 3, table: public.ord, on: insert, key: string(new.id), topic: {topic}}}\n"
    );
    let mut f =
        Ficus::start(&format!("{}{rules}", rules_only(s.config(&["public.ord"]), &format!("{}.dlq", s.prefix))));
    f.wait_streaming();
    s.sql("BEGIN; INSERT INTO ord VALUES (1); INSERT INTO ord VALUES (2); COMMIT; INSERT INTO ord VALUES (3);").await;
    let msgs = s.read_all_confirmed(&f, &topic).await;
    assert_eq!(msgs.len(), 9, "{}", f.log());
    let mut parents = HashSet::new();
    let mut traces = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let tp = header(m, "traceparent").unwrap_or_else(|| panic!("event {i} has no traceparent"));
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{tp}");
        let correlation = header(m, "correlation-id").unwrap().replace('-', "");
        assert_eq!(parts[1], correlation, "event {i}: the trace-id is the correlation id");
        assert!(parents.insert(parts[2].to_string()), "event {i}: parent-id {} used twice", parts[2]);
        match i % 3 {
            0 => assert_eq!(header(m, "ce_traceparent"), Some(tp)),
            1 => assert_eq!(values(std::slice::from_ref(m))[0]["traceparent"], tp),
            _ => {}
        }
        traces.push(parts[1].to_string());
    }
    assert!(traces[..6].iter().all(|t| *t == traces[0]), "one transaction, one trace");
    assert_ne!(traces[6], traces[0], "another transaction, another trace");
    let ce: Vec<Value> = msgs.iter().enumerate().filter(|(i, _)| i % 3 < 2).map(|(_, m)| record_json(m)).collect();
    assert_eq!(oracle("cloudevents", &json!({"records": ce, "require_traceparent": true})), (6, vec![]));
    // Not vacuous: a malformed traceparent is refused.
    let mut bad = record_json(&msgs[0]);
    for h in bad["headers"].as_array_mut().unwrap() {
        if h[0] == "ce_traceparent" {
            h[1] = json!("00-00000000000000000000000000000000-0000000000000000-01");
        }
    }
    let (_, errors) = oracle("cloudevents", &json!({"records": [bad]}));
    assert!(errors.iter().any(|e| e.contains("traceparent")), "{errors:?}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Debezium's transaction metadata (issue 17.5, `changes.debezium.transaction_metadata: true`, Debezium's
/// `provide.transaction.metadata`): a BEGIN and an END record per source transaction on `<prefix>.transaction`
/// (key `{"id"}`, END with `event_count` and the count per table), and every event's `transaction` block with its
/// `id`, `total_order` (1-based across the transaction) and `data_collection_order` (per table) — so a consumer can
/// rebuild the source transactions.
#[tokio::test(flavor = "multi_thread")]
async fn debezium_transaction_metadata_lets_consumers_rebuild_transactions() {
    let s = Setup::new("contract_dbz_tx", "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);")
        .await;
    let config = s
        .config(&["public.a", "public.b"])
        .replace("  topic_prefix:", "  encoding: debezium\n  debezium: {transaction_metadata: true}\n  topic_prefix:");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.sql("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO a VALUES (2); COMMIT; INSERT INTO b VALUES (2);")
        .await;
    let tx = values(&s.read_all_confirmed(&f, &format!("{}.transaction", s.prefix)).await);
    let a = values(&s.read_all_confirmed(&f, &s.topic("public", "a")).await);
    let b = values(&s.read_all_confirmed(&f, &s.topic("public", "b")).await);
    let status: Vec<&str> = tx.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["BEGIN", "END", "BEGIN", "END"], "{}", f.log());
    let id = tx[0]["id"].as_str().unwrap().to_string();
    assert_eq!(tx[1]["id"], id.as_str());
    assert_eq!((&tx[0]["event_count"], &tx[0]["data_collections"]), (&Value::Null, &Value::Null));
    assert_eq!(tx[1]["event_count"], 3);
    assert_eq!(
        tx[1]["data_collections"],
        json!([{"data_collection": "public.a", "event_count": 2}, {"data_collection": "public.b", "event_count": 1}])
    );
    assert_eq!(tx[3]["event_count"], 1);
    assert_ne!(tx[2]["id"], id.as_str());
    let block = |e: &Value| {
        (
            e["transaction"]["id"].as_str().unwrap().to_string(),
            e["transaction"]["total_order"].as_u64().unwrap(),
            e["transaction"]["data_collection_order"].as_u64().unwrap(),
        )
    };
    assert_eq!(block(&a[0]), (id.clone(), 1, 1));
    assert_eq!(block(&b[0]), (id.clone(), 2, 1));
    assert_eq!(block(&a[1]), (id.clone(), 3, 2));
    assert_eq!(block(&b[1]), (tx[2]["id"].as_str().unwrap().to_string(), 1, 1));
    let txid = a[0]["source"]["txId"].to_string();
    assert!(id.starts_with(&format!("{txid}:")), "id = <txId>:<commit LSN>: {id}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Debezium's `source.snapshot` on snapshot rows: `"true"`, and `"last_in_data_collection"` (Debezium 2.x) on the
/// last row of the table's snapshot; streamed changes `"false"`.
#[tokio::test(flavor = "multi_thread")]
async fn debezium_marks_the_last_snapshot_row_of_a_table() {
    let s = Setup::new(
        "contract_dbz_snap",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5);",
    )
    .await;
    let config = Ficus::config(
        &s.pg.superuser_url(&s.db),
        &["public.t"],
        &s.prefix,
        &s.kafka.brokers(),
        "snapshot:\n  mode: initial\n  chunk_size: 2\n",
    )
    .replace("  topic_prefix:", "  encoding: debezium\n  topic_prefix:");
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.wait_snapshot_settled(&f).await;
    s.sql("INSERT INTO t VALUES (6)").await;
    let v = values(&s.read_all_confirmed(&f, &s.topic("public", "t")).await);
    let marks: Vec<(i64, &str, &str)> = v
        .iter()
        .map(|e| {
            (e["after"]["id"].as_i64().unwrap(), e["op"].as_str().unwrap(), e["source"]["snapshot"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        marks,
        [
            (1, "r", "true"),
            (2, "r", "true"),
            (3, "r", "true"),
            (4, "r", "true"),
            (5, "r", "last_in_data_collection"),
            (6, "c", "false")
        ],
        "{}",
        f.log()
    );
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
