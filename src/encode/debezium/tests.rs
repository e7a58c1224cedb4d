use std::sync::Arc;

use bytes::Bytes;

use super::row::{clock_micros, iso_date_days, iso_timestamp_micros};
use super::*;
use crate::change::{Column, Datum, Table, TxMeta};
use crate::lsn::Lsn;
use crate::postgres::value::oid;

fn update() -> Change {
    let col = |name: &str, type_oid, is_key| Column { name: String::from(name), type_oid, type_modifier: -1, is_key };
    let text = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
    Change {
        op: Op::Update,
        table: Arc::new(Table {
            oid: 1,
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![col("id", oid::INT4, true), col("status", oid::TEXT, false)],
            replica_identity: b'f',
            json: Default::default(),
        }),
        before: Some(vec![text("42"), text("paid")]),
        before_is_key_only: false,
        after: Some(vec![text("42"), text("shipped")]),
        lsn: Lsn(0x16B3748),
        position: 0,
        tx: Arc::new(TxMeta { xid: 1234, commit_lsn: Lsn(0x16B3800), commit_time_us: 1_795_334_400_123_456 }),
    }
}

#[test]
fn update_in_debezium_shape() {
    let source = SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() };
    let mut pieces = Vec::new();
    Debezium::new("ficus", true, true, false).encode(&update(), &source, &mut |p| pieces.push(p)).unwrap();
    let Piece::Event { key, value, .. } = &pieces[0] else { panic!("{pieces:?}") };
    assert_eq!(key.as_deref(), Some(&br#"{"id":42}"#[..]));
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "before": {"id": 42, "status": "paid"}, "after": {"id": 42, "status": "shipped"},
            "source": {"version": format!("ficus-{}", env!("CARGO_PKG_VERSION")), "connector": "postgresql",
                       "name": "ficus", "ts_ms": 1_795_334_400_123i64, "ts_us": 1_795_334_400_123_456i64,
                       "ts_ns": 1_795_334_400_123_456_000i64, "snapshot": "false", "db": "shop",
                       "sequence": format!("[\"{}\",\"{}\"]", 0x16B3800, 0x16B3748), "schema": "public", "table": "orders", "txId": 1234,
                       "lsn": 0x16B3748, "xmin": null},
            "op": "u", "ts_ms": 1_795_334_400_123i64, "ts_us": 1_795_334_400_123_456i64,
            "ts_ns": 1_795_334_400_123_456_000i64, "transaction": null
        })
    );
}

fn encode_all(d: &mut Debezium, c: &Change) -> Vec<Piece> {
    let source = SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() };
    let mut out = Vec::new();
    d.encode(c, &source, &mut |p| out.push(p)).unwrap();
    out
}

fn event(p: &Piece) -> (serde_json::Value, serde_json::Value, Op, Option<(&'static str, String)>) {
    match p {
        Piece::Event { key, value, op, key_header } => (
            serde_json::from_slice(key.as_deref().unwrap_or(b"null")).unwrap(),
            serde_json::from_slice(value).unwrap(),
            *op,
            key_header.clone(),
        ),
        Piece::Tombstone { .. } | Piece::Transaction { .. } => panic!("not a change event: {p:?}"),
    }
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A key change under REPLICA IDENTITY DEFAULT (old key tuple only): delete under the old key with
/// `__debezium.newkey`, its tombstone, create under the new key with `__debezium.oldkey`.
#[test]
fn a_key_change_is_a_delete_a_tombstone_and_a_create() {
    let mut c = update();
    c.before = Some(vec![text("42"), Datum::Null]);
    c.before_is_key_only = true;
    c.after = Some(vec![text("43"), text("shipped")]);
    let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    let (key, value, op, header) = event(&pieces[0]);
    assert_eq!((key, op), (serde_json::json!({"id": 42}), Op::Delete));
    assert_eq!(
        (&value["op"], &value["before"], &value["after"]),
        (&"d".into(), &serde_json::json!({"id": 42}), &serde_json::Value::Null)
    );
    assert_eq!(header, Some(("__debezium.newkey", String::from(r#"{"id":43}"#))));
    match &pieces[1] {
        Piece::Tombstone { key } => assert_eq!(key, br#"{"id":42}"#),
        p => panic!("expected a tombstone, got {p:?}"),
    }
    let (key, value, op, header) = event(&pieces[2]);
    assert_eq!((key, op), (serde_json::json!({"id": 43}), Op::Insert));
    assert_eq!((&value["op"], &value["before"]), (&"c".into(), &serde_json::Value::Null));
    assert_eq!(value["after"], serde_json::json!({"id": 43, "status": "shipped"}));
    assert_eq!(header, Some(("__debezium.oldkey", String::from(r#"{"id":42}"#))));
    // Without tombstones: delete and create only. Same key under FULL identity: one update.
    assert_eq!(encode_all(&mut Debezium::new("ficus", true, false, false), &c).len(), 2);
    let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &update());
    assert_eq!(pieces.len(), 1);
    assert_eq!(event(&pieces[0]).1["op"], "u");
}

#[test]
fn a_delete_is_followed_by_a_tombstone_unless_the_table_has_no_key() {
    let mut c = update();
    c.op = Op::Delete;
    c.after = None;
    let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
    assert_eq!(pieces.len(), 2);
    assert!(matches!(&pieces[1], Piece::Tombstone { key } if key == br#"{"id":42}"#));
    let mut keyless = (*c.table).clone();
    keyless.columns[0].is_key = false;
    c.table = Arc::new(keyless);
    assert_eq!(encode_all(&mut Debezium::new("ficus", true, true, false), &c).len(), 1);
}

/// `schemas: true`: key and value as Kafka Connect's JsonConverter writes them, with Debezium's schemas.
#[test]
fn schemas_wrap_key_and_value_with_connect_schemas() {
    let mut c = update();
    let mut t = (*c.table).clone();
    t.columns.push(Column { name: "day".into(), type_oid: oid::DATE, type_modifier: -1, is_key: false });
    t.columns.push(Column { name: "at".into(), type_oid: oid::TIMESTAMP, type_modifier: -1, is_key: false });
    t.columns.push(Column { name: "doc".into(), type_oid: oid::JSONB, type_modifier: -1, is_key: false });
    c.table = Arc::new(t);
    for row in [c.before.as_mut().unwrap(), c.after.as_mut().unwrap()] {
        row.extend([text("1970-01-02"), text("1970-01-01 00:00:01.5"), text(r#"{"a": 1}"#)]);
    }
    let pieces = encode_all(&mut Debezium::new("my-server", true, true, true), &c);
    let (key, value, _, _) = event(&pieces[0]);
    assert_eq!(key["payload"], serde_json::json!({"id": 42}));
    assert_eq!(
        key["schema"],
        serde_json::json!({"type": "struct", "optional": false, "name": "my_server.public.orders.Key",
                           "fields": [{"type": "int32", "optional": false, "field": "id"}]})
    );
    let schema = &value["schema"];
    assert_eq!(schema["name"], "my_server.public.orders.Envelope");
    let fields: Vec<&str> = schema["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]);
    let after = &schema["fields"][1];
    assert_eq!((&after["name"], &after["optional"]), (&"my_server.public.orders.Value".into(), &true.into()));
    let cols = after["fields"].as_array().unwrap();
    assert_eq!(cols[0], serde_json::json!({"type": "int32", "optional": false, "field": "id"}));
    assert_eq!(cols[1], serde_json::json!({"type": "string", "optional": true, "field": "status"}));
    assert_eq!(cols[2]["name"], "io.debezium.time.Date");
    assert_eq!(cols[3]["name"], "io.debezium.time.MicroTimestamp");
    assert_eq!(cols[4]["name"], "io.debezium.data.Json");
    assert_eq!(schema["fields"][2]["name"], "io.debezium.connector.postgresql.Source");
    let p = &value["payload"];
    assert_eq!(
        (&p["after"]["day"], &p["after"]["at"], &p["after"]["doc"]),
        (&1.into(), &1_500_000.into(), &r#"{"a": 1}"#.into())
    );
    assert_eq!(p["op"], "u");
}

#[test]
fn dates_times_and_timestamps_are_debeziums_numbers() {
    assert_eq!(iso_date_days("1970-01-01"), Some(0));
    assert_eq!(iso_date_days("2026-11-22"), Some(20_779));
    assert_eq!(iso_date_days("-0043-03-15"), Some(-735_160));
    assert_eq!(iso_date_days("+10000-01-01"), Some(2_932_897));
    assert_eq!(iso_timestamp_micros("1969-12-31T23:59:59.999999"), Some(-1));
    assert_eq!(iso_timestamp_micros("2018-06-20T15:13:16.945104"), Some(1_529_507_596_945_104));
    assert_eq!(iso_timestamp_micros("infinity"), Some(i64::MAX));
    assert_eq!(clock_micros("10:00:00.5"), Some(36_000_500_000));
}

/// An unchanged TOASTed value the server did not send (REPLICA IDENTITY DEFAULT): Debezium's placeholder by
/// default, left out with `unavailable_value_placeholder: null`; taken from the old row under FULL.
#[test]
fn unavailable_toast_values_get_debeziums_placeholder() {
    let mut c = update();
    c.before = None;
    c.after = Some(vec![text("42"), Datum::UnchangedToast]);
    let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
    assert_eq!(event(&pieces[0]).1["after"], serde_json::json!({"id": 42, "status": "__debezium_unavailable_value"}));
    let pieces = encode_all(&mut Debezium::new("ficus", true, true, false).with_placeholder(None), &c);
    assert_eq!(event(&pieces[0]).1["after"], serde_json::json!({"id": 42}));
    c.before = Some(vec![text("42"), text("paid")]);
    let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
    assert_eq!(event(&pieces[0]).1["after"], serde_json::json!({"id": 42, "status": "paid"}));
}

/// The last snapshot row of a table: `snapshot: "last_in_data_collection"` (even with a column `snapshot`
/// holding "true"); other reads `"true"`.
#[test]
fn the_last_snapshot_row_of_a_table_is_marked() {
    let mut c = update();
    c.op = Op::Read;
    c.before = None;
    let mut t = (*c.table).clone();
    t.columns[1].name = "snapshot".into();
    c.table = Arc::new(t);
    c.after = Some(vec![text("42"), text("true")]);
    let mut d = Debezium::new("ficus", true, true, false);
    assert_eq!(event(&encode_all(&mut d, &c)[0]).1["source"]["snapshot"], "true");
    d.set_snapshot_last(true);
    let (_, v, _, _) = event(&encode_all(&mut d, &c)[0]);
    assert_eq!(
        (&v["source"]["snapshot"], &v["after"]["snapshot"]),
        (&"last_in_data_collection".into(), &"true".into())
    );
}
