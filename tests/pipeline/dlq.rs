//! `ficus dlq list|show|replay` end to end: rules fail for some rows (→ DLQ), the records are listed and filtered,
//! the rules are fixed in the config, and the replay publishes the events the fixed rules would have published live —
//! byte for byte, ids included (checked against a second instance that ran the fixed rules on the same WAL).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::ficus_bin;
use crate::{values, Ficus, Setup, WAIT};

const DDL: &str =
    "CREATE TABLE t (id int PRIMARY KEY, note text, qty int NOT NULL, amt numeric(10,2), at timestamptz, \
                   tags text[], doc jsonb, raw bytea, d date)";

/// `NoteAdded` fails for rows without a note (null key), `Ratio` for rows with qty 0 (division by zero),
/// `NoteMessage` for logical messages without an `id` (its key reads `content.id`); `fixed`
/// repairs the rules named in it.
fn rules(topic: &str, fixed: &[&str]) -> String {
    let note_key = if fixed.contains(&"NoteAdded") { "string(new.id)" } else { "new.note" };
    let ratio = if fixed.contains(&"Ratio") { "new.qty == 0 ? -1 : 100 / new.qty" } else { "100 / new.qty" };
    let message_key = if fixed.contains(&"NoteMessage") { "string(content.n)" } else { "string(content.id)" };
    format!(
        r#"events:
  - name: NoteAdded
    table: public.t
    on: insert
    key: {note_key}
    topic: {topic}
  - name: Ratio
    table: public.t
    on: insert
    key: string(new.id)
    topic: {topic}
    data:
      ratio: "{ratio}"
      amt: new.amt
      at: new.at
      tags: new.tags
      doc: new.doc
      raw: new.raw
      d: new.d
  - name: NoteMessage
    message: notes
    key: {message_key}
    topic: {topic}
    data:
      n: content.n
      text: content.text
"#
    )
}

const ALL: [&str; 3] = ["NoteAdded", "Ratio", "NoteMessage"];

fn config(s: &Setup, prefix: &str, topic: &str, fixed: &[&str]) -> String {
    let base = Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], prefix, &s.kafka.brokers(), "")
        .replace("changes:\n  tables: ['*']", "changes:\n  tables: []");
    format!("{base}{}", rules(topic, fixed))
}

/// `ficus dlq <args> --config path`: (exit code, stdout, stderr).
fn dlq(path: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ficus_bin()).arg("dlq").args(args).arg("--config").arg(path).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_changes_are_listed_filtered_and_replayed_with_the_live_ids() {
    let s = Setup::new("dlq_replay", DDL).await;
    let topic = format!("{}.events", s.prefix);
    let dlq_topic = format!("{}.dlq", s.prefix);
    // B runs the fixed rules on the same WAL from the start: what the replay must publish.
    let (prefix_b, topic_b) = (format!("{}_b", s.prefix), format!("{}.events_b", s.prefix));
    let mut a = Ficus::start(&config(&s, &s.prefix, &topic, &[]));
    a.wait_streaming();
    let mut b = Ficus::start(&config(&s, &prefix_b, &topic_b, &ALL));
    b.wait_streaming();

    s.sql(
        "INSERT INTO t VALUES (1, 'a', 2, 12.50, '2026-11-22 08:00:00.123456+00', '{x,\"y z\",NULL}', \
         '{\"k\": [1, 2.50]}', '\\x00ff', '0044-03-15 BC')",
    )
    .await;
    s.sql(
        "BEGIN; INSERT INTO t VALUES (2, NULL, 1, -0.01, '1999-12-31 23:59:59+05', '{}', 'null', '\\x', '2026-02-28'); \
         INSERT INTO t VALUES (3, 'x', 0, NULL, NULL, NULL, NULL, NULL, NULL); \
         SELECT pg_logical_emit_message(true, 'notes', '{\"n\": 5, \"text\": \"hi\"}'); \
         INSERT INTO t VALUES (4, NULL, 0, 1e6, 'infinity', '{\"q\\\"\"}', '[]', '\\x0a', 'infinity'); COMMIT;",
    )
    .await;

    // Rows 2 and 4 have no note (NoteAdded), rows 3 and 4 qty 0 (Ratio), the message has no id: 5 DLQ records,
    // 4 events.
    let dead = s.read_all_confirmed(&a, &dlq_topic).await;
    assert_eq!(dead.len(), 5, "{}", a.log());
    let live = values(&s.read_all_confirmed(&a, &topic).await);
    assert_eq!(live.len(), 4, "{}", a.log());
    s.wait_slot_confirmed_now(&prefix_b, &b).await;
    let reference = values(&s.kafka.read_to_end(&topic_b, WAIT).await);
    assert_eq!(reference.len(), 9, "{}", b.log());
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log());
    assert_eq!(b.terminate().code(), Some(0), "{}", b.log());

    let (_dir, path) = Ficus::dir_config(&config(&s, &s.prefix, &topic, &[]));

    // list: one line per record, filters.
    let (code, out, err) = dlq(&path, &["list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(err.contains("5 of 5 records"), "{err}");
    let (_, out, _) = dlq(&path, &["list", "--format", "json"]);
    let all = json_lines(&out);
    assert_eq!(all.len(), 5);
    for e in all.iter().filter(|e| e["rule"] != "NoteMessage v1") {
        assert_eq!(e["table"], "public.t");
        assert_eq!(e["op"], "insert");
        assert!(e["lsn"].as_str().unwrap().contains('/'), "{e}");
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(!e["error"].as_str().unwrap().is_empty(), "{e}");
    }
    let count = |args: &[&str]| {
        let mut full = vec!["list", "--format", "json"];
        full.extend_from_slice(args);
        let (code, out, err) = dlq(&path, &full);
        assert_eq!(code, 0, "{args:?}: {err}");
        json_lines(&out)
    };
    let notes = count(&["--rule", "NoteAdded"]);
    assert_eq!(notes.len(), 2);
    assert!(notes.iter().all(|e| e["rule"] == "NoteAdded v1"));
    assert_eq!(count(&["--rule", "Ratio v1"]).len(), 2);
    assert_eq!(count(&["--rule", "Ratio v2"]).len(), 0);
    let division = count(&["--error", "DIVISION"]);
    assert_eq!(division.len(), 2, "{all:?}");
    assert!(division.iter().all(|e| e["rule"] == "Ratio v1"));
    assert_eq!(count(&["--since", "1h"]).len(), 5);
    let message = count(&["--rule", "NoteMessage"]);
    assert_eq!(
        (message.len(), &message[0]["table"], &message[0]["op"]),
        (1, &Value::from("message notes"), &Value::from("message"))
    );
    assert_eq!(count(&["--until", "1h"]).len(), 0);
    assert_eq!(count(&["--since", "2099-01-01T00:00:00Z"]).len(), 0);
    assert_eq!(count(&["--rule", "NoteAdded", "--error", "division"]).len(), 0);
    let (code, _, err) = dlq(&path, &["list", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");

    // show: the whole record.
    let first = all[0]["offset"].as_i64().unwrap().to_string();
    let (code, out, err) = dlq(&path, &["show", "--offset", &first]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dlq-rule: ") && out.contains("dlq-error: ") && out.contains("source-lsn: "), "{out}");
    assert!(out.contains("\"op\": \"insert\"") && out.contains("\"commitLsn\""), "pretty payload: {out}");
    let (code, _, err) = dlq(&path, &["show", "--offset", "999"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("offset 999"), "{err}");

    // Only NoteAdded fixed, dry run: NoteAdded's events are printed, Ratio still fails; nothing is published and
    // nothing goes to the DLQ again.
    let (_dir2, half) = Ficus::dir_config(&config(&s, &s.prefix, &topic, &["NoteAdded"]));
    let (code, out, err) = dlq(&half, &["replay", "--dry-run", "--format", "json"]);
    assert_eq!(code, 1, "Ratio still fails: {out}{err}");
    let report = json_lines(&out);
    assert_eq!(report.len(), 5, "{out}");
    for r in &report {
        match r["rule"].as_str().unwrap() {
            "NoteAdded v1" => {
                assert_eq!(r["outcome"], "dry-run", "{r}");
                assert_eq!(r["events"].as_array().unwrap().len(), 1, "{r}");
            }
            _ => {
                assert_eq!(r["outcome"], "still-failing", "{r}");
                let reason = r["reason"].as_str().unwrap();
                if r["rule"] == "Ratio v1" {
                    assert!(reason.to_lowercase().contains("division by zero"), "{r}");
                    assert!(reason.contains("events[1]"), "the rule's own index: {r}");
                } else {
                    assert!(reason.contains("events[2].key"), "{r}");
                }
            }
        }
    }
    assert!(err.contains("still fail"), "{err}");
    assert_eq!(s.kafka.read_to_end(&topic, WAIT).await.len(), 4, "a dry run publishes nothing");
    assert_eq!(s.kafka.read_to_end(&dlq_topic, WAIT).await.len(), 5, "nothing is sent to the DLQ again");

    // All fixed: the replay publishes the 5 events, exactly as B published them live.
    let (_dir3, fixed) = Ficus::dir_config(&config(&s, &s.prefix, &topic, &ALL));
    let (code, out, err) = dlq(&fixed, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.contains("published")).count(), 5, "{out}");
    let after_first = values(&s.kafka.read_to_end(&topic, WAIT).await);
    assert_eq!(after_first.len(), 9);
    let by_id: HashMap<&str, &Value> = reference.iter().map(|e| (e["eventId"].as_str().unwrap(), e)).collect();
    let replayed = &after_first[4..];
    for e in replayed {
        let id = e["eventId"].as_str().unwrap();
        assert_eq!(Some(&e), by_id.get(id), "the replayed event is the one the fixed rule publishes live");
    }
    let mut types: Vec<(&str, &Value)> =
        replayed.iter().map(|e| (e["eventType"].as_str().unwrap(), &e["key"])).collect();
    types.sort_by_key(|(t, k)| (t.to_string(), k.to_string()));
    assert_eq!(
        types,
        [
            ("NoteAdded", &Value::from("2")),
            ("NoteAdded", &Value::from("4")),
            ("NoteMessage", &Value::from("5")),
            ("Ratio", &Value::from("3")),
            ("Ratio", &Value::from("4"))
        ]
    );

    // Again: the same ids (consumers deduplicate); --rule narrows it.
    let (code, _, err) = dlq(&fixed, &["replay"]);
    assert_eq!(code, 0, "{err}");
    let after_second = values(&s.kafka.read_to_end(&topic, WAIT).await);
    assert_eq!(after_second.len(), 14);
    let ids = |v: &[Value]| v.iter().map(|e| e["eventId"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&after_second[9..]), ids(replayed));
    let (code, out, _) = dlq(&fixed, &["replay", "--rule", "Ratio", "--dry-run", "--format", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json_lines(&out).len(), 2);
    assert_eq!(s.kafka.read_to_end(&topic, WAIT).await.len(), 14, "a dry run publishes nothing");
}

/// With `kafka.delivery: exactly_once` the DLQ records are written in Kafka transactions: `dlq list` reads them
/// (read_committed, past the transaction markers) while ficus keeps streaming, and ends; the replay publishes.
#[tokio::test(flavor = "multi_thread")]
async fn the_dlq_of_an_exactly_once_instance_is_read_while_it_runs() {
    let s = Setup::new("dlq_eos", "CREATE TABLE t (id int PRIMARY KEY, note text)").await;
    let topic = format!("{}.notes", s.prefix);
    let rule = |key: &str| {
        format!("events:\n  - {{name: NoteAdded, table: public.t, on: insert, key: \"{key}\", topic: {topic}}}\n")
    };
    let base = s.config(&["public.t"]).replace("kafka:\n", "kafka:\n  delivery: exactly_once\n");
    let mut f = Ficus::start(&format!("{base}{}", rule("new.note")));
    f.wait_streaming();
    // Nothing failed yet: the topic does not exist, which is said (exit 2), not an empty list.
    let (_dir, before) = Ficus::dir_config(&format!("{base}{}", rule("new.note")));
    let (code, out, err) = dlq(&before, &["list"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("does not exist") && err.contains("nothing was sent to the DLQ yet"), "{err}");
    let (code, _, err) = dlq(&before, &["show", "--offset", "0"]);
    assert_eq!(code, 2, "{err}");
    s.sql("INSERT INTO t VALUES (1, 'a'), (2, NULL); INSERT INTO t VALUES (3, NULL)").await;
    assert_eq!(s.read_all_confirmed(&f, &format!("{}.dlq", s.prefix)).await.len(), 2, "{}", f.log());
    assert_eq!(s.read_all_confirmed(&f, &topic).await.len(), 1);

    let (_dir, path) = Ficus::dir_config(&format!("{base}{}", rule("string(new.id)")));
    let (code, out, err) = dlq(&path, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, out, err) = dlq(&path, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    let events = values(&s.kafka.read_to_end(&topic, WAIT).await);
    let keys: Vec<&str> = events.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a", "2", "3"]);
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
