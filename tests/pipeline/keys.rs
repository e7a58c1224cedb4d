//! `changes.key_columns` (issue 17.4, Debezium's `message.key.columns`): the Kafka key of raw change events made of
//! chosen columns — the key, the Connect key schema, and delete + tombstone + create when a chosen column changes.
//! `ficus check` refuses columns the table lacks or deletes would not carry. Read exactly.

use serde_json::{json, Value};

use crate::{check, header, Ficus, Setup};

const TABLE: &str = "CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, num int NOT NULL, v text);
                     ALTER TABLE orders REPLICA IDENTITY FULL;";

fn with_keys(config: String, keys: &str, options: &str) -> String {
    config.replace("  topic_prefix:", &format!("  key_columns: {{public.orders: {keys}}}\n{options}  topic_prefix:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn debezium_records_are_keyed_by_the_chosen_columns() {
    let s = Setup::new("keys_debezium", TABLE).await;
    let cfg = with_keys(
        s.config(&["public.orders"]),
        "[customer, num]",
        "  encoding: debezium\n  debezium: {schemas: true}\n",
    );
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    s.sql(
        "INSERT INTO orders VALUES (1, 10, 5, 'a');
         UPDATE orders SET v = 'b' WHERE id = 1;
         UPDATE orders SET num = 6 WHERE id = 1;
         UPDATE orders SET id = 2 WHERE id = 1;
         DELETE FROM orders WHERE id = 2;",
    )
    .await;
    let records = s.read_all_confirmed(&f, &s.topic("public", "orders")).await;
    let key =
        |m: &crate::support::ConsumedMessage| -> Value { serde_json::from_slice(m.key.as_deref().unwrap()).unwrap() };
    let summary: Vec<(Value, Option<String>)> = records
        .iter()
        .map(|m| {
            let op = m.payload.as_deref().map(|p| {
                let v: Value = serde_json::from_slice(p).unwrap();
                v["payload"]["op"].as_str().unwrap().to_string()
            });
            (key(m)["payload"].clone(), op)
        })
        .collect();
    let (k5, k6) = (json!({"customer": 10, "num": 5}), json!({"customer": 10, "num": 6}));
    assert_eq!(
        summary,
        vec![
            (k5.clone(), Some("c".into())),
            (k5.clone(), Some("u".into())),
            // A chosen key column changed: delete + tombstone under the old key, create under the new one.
            (k5.clone(), Some("d".into())),
            (k5, None),
            (k6.clone(), Some("c".into())),
            // The primary key changed, the chosen key did not: one update.
            (k6.clone(), Some("u".into())),
            (k6.clone(), Some("d".into())),
            (k6, None),
        ],
        "{}",
        f.log()
    );
    assert_eq!(header(&records[2], "__debezium.newkey"), Some(r#"{"customer":10,"num":6}"#));
    let schema = &key(&records[0])["schema"];
    assert_eq!(schema["name"], json!(format!("{}.public.orders.Key", s.prefix)));
    let fields: Vec<(&str, &str, bool)> = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap(), f["type"].as_str().unwrap(), f["optional"].as_bool().unwrap()))
        .collect();
    assert_eq!(fields, [("customer", "int32", false), ("num", "int32", false)]);
    assert_eq!(f.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_json_events_are_keyed_by_the_chosen_columns_and_check_refuses_unknown_ones() {
    let s = Setup::new("keys_json", TABLE).await;
    let cfg = with_keys(s.config(&["public.orders"]), "[num]", "");
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    s.sql("INSERT INTO orders VALUES (1, 10, 5, 'a'); DELETE FROM orders;").await;
    let records = s.read_all_confirmed(&f, &s.topic("public", "orders")).await;
    let keys: Vec<&[u8]> = records.iter().map(|m| m.key.as_deref().unwrap()).collect();
    assert_eq!(keys, [&br#"{"num":5}"#[..], br#"{"num":5}"#], "{}", f.log());
    let delete: Value = serde_json::from_slice(records[1].payload.as_deref().unwrap()).unwrap();
    assert_eq!(delete["key"], json!({"num": 5}));

    let (code, out) = check(&with_keys(s.config(&["public.orders"]), "[customer, nope]", ""));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("changes.key_columns.public.orders") && out.contains("has no column nope"), "{out}");
    // DDL under a running ficus: the chosen column is no longer carried by deletes. `ficus check` says so, and the
    // running ficus stops at the next change of the table instead of publishing keys it cannot keep.
    s.sql("ALTER TABLE orders REPLICA IDENTITY DEFAULT").await;
    let (code, out) = check(&with_keys(s.config(&["public.orders"]), "[customer]", ""));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("customer not in the replica identity") && out.contains("REPLICA IDENTITY FULL"), "{out}");
    s.sql("INSERT INTO orders VALUES (2, 20, 6, 'x')").await;
    assert_eq!(f.wait(crate::WAIT).code(), Some(1), "{}", f.log());
    assert!(f.log().contains("changes.key_columns.public.orders: num: not a replica-identity column"), "{}", f.log());
}
