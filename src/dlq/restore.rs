//! A DLQ record's payload back into ficus's change model: the raw change event JSON (docs/events.md) → [`Change`],
//! the logical message JSON → [`LogicalMessage`], each with the [`SourceInfo`] it was streamed with, so the rules
//! see what they saw live and derive the same event ids (system, database, commit LSN, position).
//!
//! Column types are not in the JSON: they come from the catalog, as the table is now ([`TableColumns`]). Limits,
//! each an error naming the column rather than a guess, except the one documented in docs/operations.md:
//! - a column of the change that the table no longer has: error (the rule could not see it as it was);
//! - a column the table has now but the change does not (added since): SQL NULL, as in a row written before it;
//! - a column whose JSON does not fit its type now (the type changed since): error.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::change::{Change, Column, Datum, LogicalMessage, Op, Row, Table, TxMeta};
use crate::encode::SourceInfo;
use crate::lsn::Lsn;

/// A table as the catalog has it now: what a raw change event lacks to become a [`Change`].
#[derive(Debug, Clone)]
pub struct TableColumns {
    pub oid: u32,
    pub replica_identity: u8,
    /// `(name, type OID as the value mapping resolves it: domains as their base type, arrays of non-builtin types
    /// as their array mapping)`, in column order.
    pub columns: Vec<(String, u32)>,
}

/// What a DLQ payload holds.
#[derive(Debug)]
pub enum Restored {
    Change(Change, SourceInfo),
    Message(LogicalMessage, SourceInfo),
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    op: String,
    schema: String,
    table: String,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before: Option<HashMap<String, &'a RawValue>>,
    #[serde(borrow, default)]
    after: Option<HashMap<String, &'a RawValue>>,
    #[serde(default)]
    unavailable: Vec<String>,
    source: RawSource,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSource {
    system: String,
    database: String,
    #[serde(default)]
    slot: String,
    lsn: String,
    commit_lsn: String,
    position: Option<u32>,
    tx_id: u32,
    commit_time: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    prefix: String,
    #[serde(borrow)]
    content: &'a RawValue,
    source: RawSource,
}

/// The `op`, `schema` and `table` of a raw change event, or `None` for a logical message (`"op": "message"`).
pub fn table_of(payload: &[u8]) -> Result<Option<(String, String)>, String> {
    #[derive(Deserialize)]
    struct Head {
        op: String,
        #[serde(default)]
        schema: String,
        #[serde(default)]
        table: String,
    }
    let head: Head =
        serde_json::from_slice(payload).map_err(|e| format!("the payload is not a raw change event: {e}"))?;
    Ok((head.op != "message").then_some((head.schema, head.table)))
}

fn tx(source: &RawSource) -> Result<(Lsn, u32, Arc<TxMeta>), String> {
    let lsn: Lsn = source.lsn.parse().map_err(|_| format!("source.lsn {:?} is not an LSN", source.lsn))?;
    let commit_lsn: Lsn =
        source.commit_lsn.parse().map_err(|_| format!("source.commitLsn {:?} is not an LSN", source.commit_lsn))?;
    // Event ids derive from the position: without it the same ids cannot be made again.
    let position = source.position.ok_or(
        "source.position is missing (a DLQ record written before ficus recorded it): the event ids cannot be derived",
    )?;
    let time = source.commit_time.as_deref().ok_or("source.commitTime is missing")?;
    let commit_time_us = parse_micros(time).ok_or_else(|| format!("source.commitTime {time:?} is not RFC 3339"))?;
    Ok((lsn, position, Arc::new(TxMeta { xid: source.tx_id, commit_lsn, commit_time_us })))
}

fn source_info(s: &RawSource) -> SourceInfo {
    SourceInfo { system: s.system.clone(), database: s.database.clone(), slot: s.slot.clone() }
}

/// A logical message's DLQ payload → the message. Its content was published embedded when it was JSON, else as
/// a string: a string whose text is itself not JSON is taken as that text (the original bytes could also have been
/// that very JSON string literal; both read the same in CEL's `content`).
pub fn message(payload: &[u8]) -> Result<Restored, String> {
    let m: RawMessage<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("the payload is not a logical message record: {e}"))?;
    let (lsn, position, tx) = tx(&m.source)?;
    let raw = m.content.get();
    let content = match serde_json::from_str::<String>(raw) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() => text.into_bytes(),
        _ => raw.as_bytes().to_vec(),
    };
    let message = LogicalMessage { prefix: m.prefix, content: Bytes::from(content), lsn, position, tx };
    Ok(Restored::Message(message, source_info(&m.source)))
}

/// A raw change event (the DLQ payload of a table rule) → the change, typed by `table` (the catalog's columns now).
pub fn change(payload: &[u8], table: &TableColumns) -> Result<Restored, String> {
    let e: RawEvent<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("the payload is not a raw change event: {e}"))?;
    let op = match e.op.as_str() {
        "insert" => Op::Insert,
        "update" => Op::Update,
        "delete" => Op::Delete,
        "truncate" => Op::Truncate,
        "read" => Op::Read,
        other => return Err(format!("unknown op {other:?}")),
    };
    let (lsn, position, tx) = tx(&e.source)?;
    let qualified = format!("{}.{}", e.schema, e.table);
    // The key columns are those of the event's key (the key the stream used then), whatever the catalog says now.
    let key: Vec<String> = match e.key {
        Some(k) if k.get().trim() != "null" => {
            let map: HashMap<String, &RawValue> =
                serde_json::from_str(k.get()).map_err(|_| "key is not a JSON object".to_string())?;
            map.into_keys().collect()
        }
        _ => Vec::new(),
    };
    let known = |row: &Option<HashMap<String, &RawValue>>| -> Result<(), String> {
        for name in row.iter().flat_map(|r| r.keys()) {
            if !table.columns.iter().any(|(c, _)| c == name) {
                return Err(format!(
                    "column {name} of the change is no longer in table {qualified}: the rule cannot see the change as \
                     it was (add the column back, or fix the data by hand)"
                ));
            }
        }
        Ok(())
    };
    known(&e.before)?;
    known(&e.after)?;
    for name in &e.unavailable {
        if !table.columns.iter().any(|(c, _)| c == name) {
            return Err(format!("column {name} of the change is no longer in table {qualified}"));
        }
    }
    let columns: Vec<Column> = table
        .columns
        .iter()
        .map(|(name, type_oid)| Column {
            name: name.clone(),
            type_oid: *type_oid,
            type_modifier: -1,
            is_key: key.contains(name),
        })
        .collect();
    let datum = |name: &str, type_oid: u32, raw: &RawValue| -> Result<Datum, String> {
        match super::text::pg_text(type_oid, raw) {
            Ok(Some(text)) => Ok(Datum::Text(Bytes::from(text))),
            Ok(None) => Ok(Datum::Null),
            Err(reason) => Err(format!("column {qualified}.{name}: {reason} (did its type change since?)")),
        }
    };
    // A key-only old row (REPLICA IDENTITY DEFAULT/INDEX) holds only key columns; the others are placeholders.
    let before_is_key_only = e.before.as_ref().is_some_and(|b| {
        b.keys().all(|n| key.contains(n)) && columns.iter().any(|c| !c.is_key && !b.contains_key(&c.name))
    });
    let before: Option<Row> = match &e.before {
        None => None,
        Some(b) => Some(
            columns
                .iter()
                .map(|c| match b.get(&c.name) {
                    Some(raw) => datum(&c.name, c.type_oid, raw),
                    None if before_is_key_only => Ok(Datum::Null),
                    // A full old row leaves out only unchanged TOASTed values.
                    None => Ok(Datum::UnchangedToast),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let after: Option<Row> = match &e.after {
        None => None,
        Some(a) => Some(
            columns
                .iter()
                .map(|c| match a.get(&c.name) {
                    Some(raw) => datum(&c.name, c.type_oid, raw),
                    None if e.unavailable.contains(&c.name) => Ok(Datum::UnchangedToast),
                    // Not in the change: the column was added after it.
                    None => Ok(Datum::Null),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let t = Table {
        oid: table.oid,
        schema: e.schema.clone(),
        name: e.table.clone(),
        columns,
        replica_identity: table.replica_identity,
        json: Default::default(),
    };
    let change = Change { op, table: Arc::new(t), before, before_is_key_only, after, lsn, position, tx };
    Ok(Restored::Change(change, source_info(&e.source)))
}

/// `[±]YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (what the events write) → microseconds since the Unix epoch.
pub fn parse_micros(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let sign_len = usize::from(s.starts_with(['+', '-']));
    let year_end = sign_len + s[sign_len..].bytes().take_while(u8::is_ascii_digit).count();
    let year: i64 = s.get(..year_end)?.parse().ok()?;
    // PostgreSQL's timestamps end in the year 294276: larger years are not commit times (and would overflow).
    if year.unsigned_abs() > 300_000 {
        return None;
    }
    let rest = s.get(year_end..)?;
    let b = rest.as_bytes();
    if b.len() < 15 || b[0] != b'-' || b[3] != b'-' || b[6] != b'T' || b[9] != b':' || b[12] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
    let (month, day, hour, minute, second) = (num(1..3)?, num(4..6)?, num(7..9)?, num(10..12)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let fraction = match rest.get(15..)? {
        "" => 0,
        f => {
            let digits = f.strip_prefix('.')?;
            if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            digits.parse::<i64>().ok()? * 10_i64.pow(6 - digits.len() as u32)
        }
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000 + fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::value::{format_unix_micros, oid};

    #[test]
    fn commit_times_parse_back_to_the_microsecond() {
        for us in [0, 1_795_852_800_123_456, -62_135_596_800_000_000, 253_402_300_799_999_999, 1, -1] {
            assert_eq!(parse_micros(&format_unix_micros(us)), Some(us), "{}", format_unix_micros(us));
        }
        for bad in [
            "-9223372036854775808-01-01T00:00:00Z",
            "+",
            "-",
            "",
            "2026-11-29",
            "2026-11-29T08:00:00",
            "2026-13-01T00:00:00Z",
            "2026-11-29T08:00:00.1234567Z",
        ] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
    }

    fn orders() -> TableColumns {
        TableColumns {
            oid: 42,
            replica_identity: b'd',
            columns: vec![("id".into(), oid::INT8), ("status".into(), oid::TEXT), ("note".into(), oid::TEXT)],
        }
    }

    fn event(body: &str) -> String {
        format!(
            r#"{{{body},"unavailable":[],"source":{{"system":"7301","database":"shop","slot":"s","lsn":"0/16B3748","commitLsn":"0/16B3800","position":3,"txId":1234,"commitTime":"2026-11-22T08:00:00.123456Z"}}}}"#
        )
    }

    /// A change encoded by the live encoder comes back as the same change: re-encoding gives the same bytes.
    #[test]
    fn raw_change_events_come_back_as_the_change_they_were() {
        use crate::encode::raw_change;
        let t = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
        let table = orders();
        let cols = |key: bool| -> Vec<Column> {
            table
                .columns
                .iter()
                .map(|(n, o)| Column { name: n.clone(), type_oid: *o, type_modifier: -1, is_key: key && n == "id" })
                .collect()
        };
        let tx = Arc::new(TxMeta { xid: 9, commit_lsn: Lsn(0x16B3800), commit_time_us: 1_795_852_800_123_456 });
        let src = SourceInfo { system: "7301".into(), database: "shop".into(), slot: "s".into() };
        let cases = [
            (Op::Insert, None, Some(vec![t("1"), t("new"), Datum::Null]), false),
            (Op::Update, Some(vec![t("1"), Datum::Null, Datum::Null]), Some(vec![t("1"), t("paid"), t("x")]), true),
            (
                Op::Update,
                Some(vec![t("1"), t("new"), t("big")]),
                Some(vec![t("1"), t("paid"), Datum::UnchangedToast]),
                false,
            ),
            (Op::Update, None, Some(vec![t("1"), t("paid"), Datum::UnchangedToast]), false),
            (Op::Delete, Some(vec![t("1"), Datum::Null, Datum::Null]), None, true),
            (Op::Read, None, Some(vec![t("1"), t("a \"b\""), t("c")]), false),
        ];
        for (op, before, after, key_only) in cases {
            let live = Change {
                op,
                table: Arc::new(Table {
                    oid: 42,
                    schema: "public".into(),
                    name: "orders".into(),
                    columns: cols(true),
                    replica_identity: b'd',
                    json: Default::default(),
                }),
                before,
                before_is_key_only: key_only,
                after,
                lsn: Lsn(0x16B3748),
                position: 7,
                tx: tx.clone(),
            };
            let (key, payload) = raw_change(&live, &src).unwrap();
            let Restored::Change(back, back_src) = change(&payload, &table).unwrap() else { panic!("not a change") };
            assert_eq!(raw_change(&back, &back_src).unwrap(), (key, payload.clone()), "{op:?}");
            assert_eq!((back.position, back.lsn, &*back.tx), (7, live.lsn, &*live.tx));
            assert_eq!(back.before_is_key_only, key_only, "{op:?}");
            assert_eq!(back_src.system, "7301");
        }
    }

    #[test]
    fn what_cannot_be_restored_is_an_error_naming_it() {
        let table = orders();
        let gone = event(
            r#""op":"insert","schema":"public","table":"orders","key":{"id":1},"before":null,"after":{"id":1,"status":"n","dropped_col":2}"#,
        );
        let e = change(gone.as_bytes(), &table).unwrap_err();
        assert!(e.contains("dropped_col") && e.contains("no longer"), "{e}");
        let retyped = event(
            r#""op":"insert","schema":"public","table":"orders","key":{"id":1},"before":null,"after":{"id":"one"}"#,
        );
        let e = change(retyped.as_bytes(), &table).unwrap_err();
        assert!(e.contains("public.orders.id"), "{e}");
        let added =
            event(r#""op":"insert","schema":"public","table":"orders","key":{"id":1},"before":null,"after":{"id":1}"#);
        let Restored::Change(c, _) = change(added.as_bytes(), &table).unwrap() else { panic!() };
        assert_eq!(c.after.unwrap()[1], Datum::Null, "a column added since reads as NULL");
        for bad in ["", "{", "[]", r#"{"op":"insert"}"#, r#"{"op":"upsert","schema":"a","table":"b","source":{}}"#] {
            assert!(change(bad.as_bytes(), &table).is_err(), "{bad}");
        }
        let old =
            event(r#""op":"insert","schema":"public","table":"orders","key":{"id":1},"before":null,"after":{"id":1}"#)
                .replace(r#""position":3,"#, "");
        assert!(change(old.as_bytes(), &table).unwrap_err().contains("position"));
    }

    /// Every truncation and many byte flips of a valid payload: an error or a change, never a panic.
    #[test]
    fn mangled_payloads_never_panic() {
        let payload = event(
            r#""op":"update","schema":"public","table":"orders","key":{"id":1},"before":{"id":1},"after":{"id":1,"status":"ü","note":null}"#,
        );
        let bytes = payload.as_bytes();
        for cut in 0..bytes.len() {
            let _ = change(&bytes[..cut], &orders());
            let _ = message(&bytes[..cut]);
            let _ = table_of(&bytes[..cut]);
        }
        for i in 0..bytes.len() {
            for b in [b'"', b'{', b']', b'0', b'-', b'T', 0xff] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = change(&m, &orders());
                let _ = message(&m);
            }
        }
    }

    #[test]
    fn message_content_comes_back() {
        let src = r#""source":{"system":"1","database":"d","lsn":"0/10","commitLsn":"0/20","position":0,"txId":5,"commitTime":"2026-11-22T08:00:00.000000Z"}"#;
        for (content, bytes) in
            [(r#"{"a": 1}"#, r#"{"a": 1}"#), (r#""not json""#, "not json"), (r#""\"x\"""#, r#""\"x\"""#)]
        {
            let payload = format!(r#"{{"op":"message","prefix":"p","content":{content},{src}}}"#);
            let Restored::Message(m, _) = message(payload.as_bytes()).unwrap() else { panic!() };
            assert_eq!(&m.content[..], bytes.as_bytes(), "{content}");
            assert_eq!(m.prefix, "p");
        }
    }
}
