//! Encoding of raw change events (docs/events.md, "Raw change events").
//!
//! The JSON is written straight into one buffer per event (no intermediate `serde_json::Value`): this is the hot
//! path of the pipeline. Values are mapped by [`crate::postgres::value`].
//!
//! **Guarantees:** an unchanged TOASTed column is taken from the old row when the server sent it; otherwise it is
//! left out of `after` and named in `unavailable` — never a placeholder posing as data. Placeholder columns of a
//! key-only old row (REPLICA IDENTITY DEFAULT) are not published either: `before` then holds only the key.

use crate::change::{Change, Datum, Row, Table};
use crate::postgres::value::binary;
use crate::postgres::value::{self, ValueError};

pub mod debezium;
pub mod keys;
pub mod mask;
pub mod trace;

/// Identifies the source database in every event.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// `IDENTIFY_SYSTEM`'s system identifier.
    pub system: String,
    pub database: String,
    pub slot: String,
}

/// A value could not be encoded; names the column so the cause can be found.
#[derive(Debug, thiserror::Error)]
#[error("column {table}.{column}: {source}")]
pub struct EncodeError {
    pub table: String,
    pub column: String,
    #[source]
    pub source: ValueError,
}

fn err(table: &Table, col: usize, source: ValueError) -> EncodeError {
    EncodeError {
        table: table.qualified_name(),
        column: table.columns.get(col).map(|c| c.name.clone()).unwrap_or_default(),
        source,
    }
}

pub(crate) fn write_datum(out: &mut Vec<u8>, table: &Table, col: usize, datum: &Datum) -> Result<(), EncodeError> {
    match datum {
        Datum::Null | Datum::UnchangedToast => out.extend_from_slice(b"null"),
        Datum::Text(bytes) => {
            let oid = table.columns.get(col).map(|c| c.type_oid).unwrap_or(25);
            value::write_json(out, oid, bytes).map_err(|e| err(table, col, e))?;
        }
        Datum::Binary(bytes) => {
            let oid = table.columns.get(col).map(|c| c.type_oid).unwrap_or(25);
            binary::write_json(out, oid, bytes).map_err(|e| err(table, col, e))?;
        }
    }
    Ok(())
}

/// `"<column i>":`, escaped once per table ([`Table::json_names`]).
fn write_name(out: &mut Vec<u8>, table: &Table, i: usize) {
    match table.json_names().columns.get(i) {
        Some(name) => out.extend_from_slice(name),
        None => out.extend_from_slice(b"\"\":"),
    }
}

/// JSON object of the key columns, or `None` when the table has no key. Text and binary values of the same row
/// give the same bytes (snapshot windows compare keys this way).
pub fn key_json(table: &Table, row: &Row) -> Result<Option<Vec<u8>>, EncodeError> {
    if !table.has_key() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(32);
    out.push(b'{');
    let mut first = true;
    for (i, (col, datum)) in table.columns.iter().zip(row.iter()).enumerate() {
        if !col.is_key {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_name(&mut out, table, i);
        write_datum(&mut out, table, i, datum)?;
    }
    out.push(b'}');
    Ok(Some(out))
}

/// A snapshot row's key JSON and `after` JSON, encoded by the snapshot worker that read the row: the value mapping
/// of every column happens on the worker's thread, in parallel with the other workers, instead of on the one route
/// task that publishes every row. It is exactly what [`raw_change`] writes for the row's `read` change (same
/// functions), so an event built from it is byte for byte the one built from the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The key JSON followed by the `after` JSON.
    buf: Vec<u8>,
    /// Length of the key JSON at the start of `buf`; `None`: the table has no key.
    key_len: Option<usize>,
}

impl EncodedRow {
    /// Encodes `row`, a complete row of `table` (a snapshot row: no unchanged-TOAST placeholder).
    pub fn of(table: &Table, row: &Row) -> Result<EncodedRow, EncodeError> {
        // Sized from the row (a chunk holds thousands of these per worker): names, values, quotes and separators;
        // the key repeats its columns.
        let text: usize = table.columns.iter().zip(row.iter()).map(|(c, d)| c.name.len() + datum_len(d) + 6).sum();
        let mut buf = Vec::with_capacity(text + text / 4 + 16);
        let key_len = match key_json(table, row)? {
            Some(k) => {
                buf.extend_from_slice(&k);
                Some(k.len())
            }
            None => None,
        };
        buf.push(b'{');
        let mut first = true;
        for (i, (_, datum)) in table.columns.iter().zip(row.iter()).enumerate() {
            write_member(&mut buf, &mut first, table, i, datum, false)?;
        }
        buf.push(b'}');
        Ok(EncodedRow { buf, key_len })
    }

    /// The key JSON ([`key_json`]).
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|n| &self.buf[..n])
    }

    /// The `after` JSON.
    pub fn after(&self) -> &[u8] {
        &self.buf[self.key_len.unwrap_or(0)..]
    }
}

fn datum_len(d: &Datum) -> usize {
    match d {
        Datum::Text(b) | Datum::Binary(b) => b.len(),
        Datum::Null | Datum::UnchangedToast => 4,
    }
}

/// Encodes `change`; returns (Kafka key, value).
pub fn raw_change(change: &Change, source: &SourceInfo) -> Result<(Option<Vec<u8>>, Vec<u8>), EncodeError> {
    raw_change_with(change, source, None)
}

/// [`raw_change`], with the key and `after` taken from `encoded` when given: it must be the [`EncodedRow`] of the
/// change's `after` row, for a change without `before` (a snapshot row).
pub fn raw_change_with(
    change: &Change,
    source: &SourceInfo,
    encoded: Option<&EncodedRow>,
) -> Result<(Option<Vec<u8>>, Vec<u8>), EncodeError> {
    let encoded = encoded.filter(|_| change.before.is_none() && change.after.is_some());
    let table = &*change.table;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(change.op.as_str().as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&table.json_names().schema_table);

    let key = match encoded {
        Some(e) => e.key().map(<[u8]>::to_vec),
        None => change_key(change)?,
    };
    out.extend_from_slice(b",\"key\":");
    match &key {
        Some(k) => out.extend_from_slice(k),
        None => out.extend_from_slice(b"null"),
    }

    out.extend_from_slice(b",\"before\":");
    write_before(&mut out, change, false)?;
    out.extend_from_slice(b",\"after\":");
    let unavailable = match encoded {
        Some(e) => {
            out.extend_from_slice(e.after());
            Vec::new()
        }
        None => write_after(&mut out, change, false)?,
    };
    out.extend_from_slice(b",\"unavailable\":[");
    for (i, name) in unavailable.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        value::write_json_string(&mut out, name);
    }
    out.extend_from_slice(b"],\"source\":{\"system\":");
    value::write_json_string(&mut out, &source.system);
    out.extend_from_slice(b",\"database\":");
    value::write_json_string(&mut out, &source.database);
    out.extend_from_slice(b",\"slot\":");
    value::write_json_string(&mut out, &source.slot);
    out.extend_from_slice(b",\"lsn\":\"");
    // `position` makes (commitLsn, position) unique per change: rows of one COPY (a heap multi-insert) share `lsn`.
    // Written without `fmt` (hot path).
    change.lsn.write_to(&mut out);
    out.extend_from_slice(b"\",\"commitLsn\":\"");
    change.tx.commit_lsn.write_to(&mut out);
    out.extend_from_slice(b"\",\"position\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.position).as_bytes());
    out.extend_from_slice(b",\"txId\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.tx.xid).as_bytes());
    out.extend_from_slice(b",\"commitTime\":\"");
    value::write_unix_micros(&mut out, change.tx.commit_time_us);
    out.extend_from_slice(b"\"}}");
    Ok((key, out))
}

/// `before` as JSON (or `null`): the old row, without placeholder columns of a key-only old row. `json_as_string`:
/// json/jsonb values as JSON strings holding their text (Debezium's `io.debezium.data.Json`) instead of embedded.
pub(crate) fn write_before(out: &mut Vec<u8>, change: &Change, json_as_string: bool) -> Result<(), EncodeError> {
    let table = &*change.table;
    match &change.before {
        None => out.extend_from_slice(b"null"),
        Some(row) => {
            out.push(b'{');
            let mut first = true;
            for (i, (col, datum)) in table.columns.iter().zip(row.iter()).enumerate() {
                if matches!(datum, Datum::UnchangedToast) || (change.before_is_key_only && !col.is_key) {
                    continue;
                }
                write_member(out, &mut first, table, i, datum, json_as_string)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// `after` as JSON (or `null`); returns the columns left out because their unchanged TOAST value is unknown.
/// `json_as_string` as for [`write_before`].
pub(crate) fn write_after<'c>(
    out: &mut Vec<u8>,
    change: &'c Change,
    json_as_string: bool,
) -> Result<Vec<&'c str>, EncodeError> {
    let table = &*change.table;
    let mut unavailable: Vec<&str> = Vec::new();
    match &change.after {
        None => out.extend_from_slice(b"null"),
        Some(row) => {
            out.push(b'{');
            let mut first = true;
            for (i, (col, datum)) in table.columns.iter().zip(row.iter()).enumerate() {
                let datum = match datum {
                    Datum::UnchangedToast => {
                        // The server omits unchanged TOASTed values; the old row has them under REPLICA IDENTITY FULL.
                        let old = change
                            .before
                            .as_ref()
                            .filter(|_| !change.before_is_key_only)
                            .and_then(|b| b.get(i))
                            .filter(|d| !matches!(d, Datum::UnchangedToast));
                        match old {
                            Some(d) => d,
                            None => {
                                unavailable.push(&col.name);
                                continue;
                            }
                        }
                    }
                    d => d,
                };
                write_member(out, &mut first, table, i, datum, json_as_string)?;
            }
            out.push(b'}');
        }
    }
    Ok(unavailable)
}

/// Appends `"column":value`, preceded by a comma unless it is the first member; with `json_as_string` a json/jsonb
/// value (column types are domain-resolved) as a JSON string of its JSON text.
fn write_member(
    out: &mut Vec<u8>,
    first: &mut bool,
    table: &Table,
    i: usize,
    datum: &Datum,
    json_as_string: bool,
) -> Result<(), EncodeError> {
    if !std::mem::replace(first, false) {
        out.push(b',');
    }
    write_name(out, table, i);
    let is_json = table.columns.get(i).is_some_and(|c| matches!(c.type_oid, value::oid::JSON | value::oid::JSONB));
    if json_as_string && is_json && !matches!(datum, Datum::Null | Datum::UnchangedToast) {
        let mut text = Vec::new();
        write_datum(&mut text, table, i, datum)?;
        value::write_json_string(out, &String::from_utf8_lossy(&text));
        return Ok(());
    }
    write_datum(out, table, i, datum)
}

/// Appends `bytes` as they are when they are JSON, else as a JSON string (lossy UTF-8): for payloads of unknown
/// shape (logical message content, records printed by a dry run).
pub fn write_json_or_string(out: &mut Vec<u8>, bytes: &[u8]) {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        out.extend_from_slice(bytes);
    } else {
        value::write_json_string(out, &String::from_utf8_lossy(bytes));
    }
}

/// Kafka key of a change: the JSON object of its key columns, `None` without a key (or for truncates).
pub(crate) fn change_key(change: &Change) -> Result<Option<Vec<u8>>, EncodeError> {
    match change.after.as_ref().or(change.before.as_ref()) {
        Some(row) => key_json(&change.table, row),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::change::{Column, Op, TxMeta};
    use crate::lsn::Lsn;

    fn table(identity: u8) -> Arc<Table> {
        let col =
            |name: &str, oid: u32, is_key: bool| Column { name: name.into(), type_oid: oid, type_modifier: -1, is_key };
        Arc::new(Table {
            oid: 1,
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![col("id", 23, true), col("status", 25, false), col("note", 25, false)],
            replica_identity: identity,
            json: Default::default(),
        })
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn change(op: Op, before: Option<Row>, after: Option<Row>, key_only: bool) -> Change {
        Change {
            op,
            table: table(b'd'),
            before,
            after,
            before_is_key_only: key_only,
            lsn: Lsn(0x16B3748),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1234, commit_lsn: Lsn(0x16B3800), commit_time_us: 1_795_852_800_123_456 }),
        }
    }

    fn src() -> SourceInfo {
        SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() }
    }

    #[test]
    fn update_with_full_identity_fills_toast_from_before() {
        let c = change(
            Op::Update,
            Some(vec![text("42"), text("paid"), text("long")]),
            Some(vec![text("42"), text("shipped"), Datum::UnchangedToast]),
            false,
        );
        let (key, value) = raw_change(&c, &src()).unwrap();
        assert_eq!(key.unwrap(), br#"{"id":42}"#);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["after"], serde_json::json!({"id": 42, "status": "shipped", "note": "long"}));
        assert_eq!(v["unavailable"], serde_json::json!([]));
        assert_eq!(v["source"]["lsn"], "0/16B3748");
        assert_eq!(v["source"]["commitLsn"], "0/16B3800");
        assert_eq!(v["source"]["position"], 0);
        assert_eq!(v["source"]["txId"], 1234);
        assert!(v["source"]["commitTime"].as_str().unwrap().ends_with('Z'));
    }

    /// A snapshot row encoded by its worker gives the very bytes the route task would have written.
    #[test]
    fn a_row_encoded_in_the_worker_gives_the_same_event() {
        let row = vec![text("42"), text("it's \"paid\""), Datum::Null];
        let c = change(Op::Read, None, Some(row.clone()), false);
        let encoded = EncodedRow::of(&c.table, &row).unwrap();
        assert_eq!(encoded.key(), Some(&br#"{"id":42}"#[..]));
        assert_eq!(raw_change_with(&c, &src(), Some(&encoded)).unwrap(), raw_change(&c, &src()).unwrap());
    }

    #[test]
    fn unchanged_toast_without_old_row_is_named_not_faked() {
        let c = change(Op::Update, None, Some(vec![text("42"), text("shipped"), Datum::UnchangedToast]), false);
        let (_, value) = raw_change(&c, &src()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["after"], serde_json::json!({"id": 42, "status": "shipped"}));
        assert_eq!(v["unavailable"], serde_json::json!(["note"]));
        assert_eq!(v["before"], serde_json::Value::Null);
    }

    #[test]
    fn key_only_before_publishes_only_key_columns() {
        let c = change(Op::Delete, Some(vec![text("42"), Datum::Null, Datum::Null]), None, true);
        let (key, value) = raw_change(&c, &src()).unwrap();
        assert_eq!(key.unwrap(), br#"{"id":42}"#);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["before"], serde_json::json!({"id": 42}));
        assert_eq!(v["after"], serde_json::Value::Null);
        assert_eq!(v["op"], "delete");
    }
}
