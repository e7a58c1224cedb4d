//! Debezium-compatible change envelope for raw change events (`changes.encoding: debezium`).
//!
//! The value is what Debezium's PostgreSQL connector publishes with `value.converter.schemas.enable=false`:
//! `before`, `after`, `source` (connector `postgresql`, `name` = the topic prefix, `db`, `schema`, `table`, `txId`,
//! `lsn` as a number, `ts_ms`/`ts_us`/`ts_ns`, `snapshot`), `op` (`c`, `u`, `d`, `r`, `t` — truncates only when
//! `changes.debezium.skipped_operations` does not skip them, which by default it does, as Debezium), `ts_ms`/`ts_us`/
//! `ts_ns` and `transaction: null`. The key
//! is the JSON object of the key columns, as Debezium's key with schemas disabled; topics are named alike
//! (`<prefix>.<schema>.<table>`). So consumers written for Debezium read ficus's raw changes unchanged.
//!
//! json/jsonb values are strings holding the JSON text, as Debezium's `io.debezium.data.Json`
//! (`changes.debezium.json_handling: string`, the default), or embedded JSON (`embedded`).
//!
//! Differences, on purpose: column values follow ficus's value mapping (numeric as a string — Debezium's
//! `decimal.handling.mode=string` —, timestamps as ISO 8601 strings); an unchanged TOAST value the server did not
//! send is left out of `after` instead of Debezium's `__debezium_unavailable_value` placeholder; `ts_ms` is the
//! commit time (so a replay gives identical bytes), and no tombstone follows a delete.

use crate::change::{Change, Op};
use crate::encode::{change_key, write_after, write_before, EncodeError, SourceInfo};
use crate::postgres::value::write_json_string;

/// The `op` letter Debezium uses.
fn op_letter(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
    }
}

/// Encodes `change` as a Debezium change event; returns (Kafka key, value). `server_name` is Debezium's
/// `topic.prefix` (ficus's `changes.topic_prefix`); `json_as_string`: json/jsonb values as strings, as Debezium
/// sends them (`changes.debezium.json_handling: string`).
pub fn change(
    change: &Change,
    source: &SourceInfo,
    server_name: &str,
    json_as_string: bool,
) -> Result<(Option<Vec<u8>>, Vec<u8>), EncodeError> {
    let table = &*change.table;
    let key = change_key(change)?;
    let ts_ms = change.tx.commit_time_us.div_euclid(1000);
    // Debezium 2.6+ sends the same time in micro- and nanoseconds next to `ts_ms` (`ts_us`, `ts_ns`).
    let ts_us = change.tx.commit_time_us;
    let ts_ns = ts_us.saturating_mul(1000);
    let write_times = |out: &mut Vec<u8>| {
        out.extend_from_slice(b",\"ts_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ms).as_bytes());
        out.extend_from_slice(b",\"ts_us\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_us).as_bytes());
        out.extend_from_slice(b",\"ts_ns\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ns).as_bytes());
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"before\":");
    write_before(&mut out, change, json_as_string)?;
    out.extend_from_slice(b",\"after\":");
    write_after(&mut out, change, json_as_string)?;
    out.extend_from_slice(b",\"source\":{\"version\":\"ficus-");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\",\"connector\":\"postgresql\",\"name\":");
    write_json_string(&mut out, server_name);
    write_times(&mut out);
    out.extend_from_slice(if change.op == Op::Read { b",\"snapshot\":\"true\"" } else { b",\"snapshot\":\"false\"" });
    out.extend_from_slice(b",\"db\":");
    write_json_string(&mut out, &source.database);
    out.extend_from_slice(b",\"sequence\":null,\"schema\":");
    write_json_string(&mut out, &table.schema);
    out.extend_from_slice(b",\"table\":");
    write_json_string(&mut out, &table.name);
    out.extend_from_slice(b",\"txId\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.tx.xid).as_bytes());
    out.extend_from_slice(b",\"lsn\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.lsn.0).as_bytes());
    out.extend_from_slice(b",\"xmin\":null},\"op\":\"");
    out.extend_from_slice(op_letter(change.op).as_bytes());
    out.push(b'"');
    write_times(&mut out);
    out.extend_from_slice(b",\"transaction\":null}");
    Ok((key, out))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::change::{Column, Datum, Table, TxMeta};
    use crate::lsn::Lsn;
    use crate::postgres::value::oid;

    fn update() -> Change {
        let col =
            |name: &str, type_oid, is_key| Column { name: String::from(name), type_oid, type_modifier: -1, is_key };
        let text = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
        Change {
            op: Op::Update,
            table: Arc::new(Table {
                oid: 1,
                schema: "public".into(),
                name: "orders".into(),
                columns: vec![col("id", oid::INT4, true), col("status", oid::TEXT, false)],
                replica_identity: b'f',
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
        let (key, value) = change(&update(), &source, "ficus", true).unwrap();
        assert_eq!(key.as_deref(), Some(&br#"{"id":42}"#[..]));
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "before": {"id": 42, "status": "paid"}, "after": {"id": 42, "status": "shipped"},
                "source": {"version": format!("ficus-{}", env!("CARGO_PKG_VERSION")), "connector": "postgresql",
                           "name": "ficus", "ts_ms": 1_795_334_400_123i64, "ts_us": 1_795_334_400_123_456i64,
                           "ts_ns": 1_795_334_400_123_456_000i64, "snapshot": "false", "db": "shop",
                           "sequence": null, "schema": "public", "table": "orders", "txId": 1234,
                           "lsn": 0x16B3748, "xmin": null},
                "op": "u", "ts_ms": 1_795_334_400_123i64, "ts_us": 1_795_334_400_123_456i64,
                "ts_ns": 1_795_334_400_123_456_000i64, "transaction": null
            })
        );
    }
}
