//! Column values → CEL values, and CEL values → JSON.
//!
//! A column reaches CEL with the type its JSON mapping suggests (docs/events.md, "Value mapping"): integers as `int`
//! (`uint` above i64), floats as `double`, bool, text as `string`, json/jsonb as maps and lists, arrays as lists,
//! bytea as `bytes`, and timestamp/timestamptz as CEL `timestamp` (UTC) so that `new.shipped_at > old.shipped_at`
//! and `timestamp()`/`string()` work. numeric stays an exact `string` — convert explicitly with `double()` when a
//! rule needs arithmetic. NaN/±Infinity floats become `double` NaN/±Inf; infinite timestamps stay strings.
//! Unchanged TOAST values are simply absent from `new`, so `has(new.col)` tells whether the value is known.
//!
//! **Guarantees:** conversion never panics; a value that cannot be converted is an error naming the column.
//! JSON output of maps built by CEL is sorted by key, so the same change always gives the same bytes.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use cel::common::types::{CelBool, CelDouble, CelInt, CelMap, CelMapKey, CelNull, CelString, CelTimestamp};
use cel::common::value::Val;
use cel::objects::{Key, Map};
use cel::Value;

use crate::change::{Datum, Table};
use crate::postgres::value::binary;
use crate::postgres::value::{self, oid, write_json_string};

/// 2000-01-01T00:00:00Z (PostgreSQL's timestamp epoch) in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A row as a CEL map of column name → value, borrowing column names and text values from `table` and `row`
/// (built once per change, so the fewer copies the better). Key-only old rows (`key_only`) hold only the key
/// columns; an unchanged TOAST value is taken from `toast_from` (the full old row) or left out; only columns
/// whose `mask` entry is true are converted (all when `None`). `scratch` is a reusable buffer.
pub fn row_to_val<'a>(
    table: &'a Table,
    row: &'a [Datum],
    key_only: bool,
    toast_from: Option<&'a [Datum]>,
    mask: Option<&[bool]>,
    scratch: &mut Vec<u8>,
) -> Result<Box<dyn Val + 'a>, String> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(row.len());
    for (i, (col, datum)) in table.columns.iter().zip(row).enumerate() {
        if (key_only && !col.is_key) || mask.is_some_and(|m| !m.get(i).copied().unwrap_or(true)) {
            continue;
        }
        // An unchanged TOAST value is known when the old row carries it (REPLICA IDENTITY FULL).
        let datum = match (datum, toast_from.and_then(|r| r.get(i))) {
            (Datum::UnchangedToast, Some(old)) => old,
            _ => datum,
        };
        let value: Box<dyn Val + 'a> = match datum {
            Datum::UnchangedToast => continue,
            Datum::Null => Box::new(CelNull),
            Datum::Text(b) | Datum::Binary(b) => {
                datum_to_val(col.type_oid, b, matches!(datum, Datum::Binary(_)), scratch)
                    .map_err(|e| format!("column {}: {e}", col.name))?
            }
        };
        map.insert(CelMapKey::from(col.name.as_str()), value);
    }
    Ok(Box::new(CelMap::from(map)))
}

/// A column value of a type CEL sees as `int`, `double`, `string` or `bool`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Scalar<'a> {
    Int(i64),
    Double(f64),
    Str(&'a str),
    Bool(bool),
}

/// The value of a non-null column of the common scalar types, as CEL sees it: integers as `int`, floats as `double`
/// (Rust parses PostgreSQL's NaN, Infinity and -Infinity too), text types as `string` (borrowed), bool. `None`: not
/// one of these types or forms (the caller takes the JSON route); `Err`: text that does not parse. The one mapping
/// for CEL maps ([`row_to_val`]) and conditions evaluated without CEL (`cond`), so both always agree.
pub(super) fn plain_scalar(type_oid: u32, bytes: &[u8], binary: bool) -> Option<Result<Scalar<'_>, String>> {
    let as_str = || std::str::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_string());
    Some(match (type_oid, binary) {
        // Text and binary forms of these are the string itself.
        (oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME, _) => as_str().map(Scalar::Str),
        (oid::INT2 | oid::INT4 | oid::INT8 | oid::OID, false) => as_str()
            .and_then(|text| text.parse::<i64>().map(Scalar::Int).map_err(|_| format!("{text:?} is not an integer"))),
        (oid::FLOAT4 | oid::FLOAT8, false) => as_str()
            .and_then(|text| text.parse::<f64>().map(Scalar::Double).map_err(|_| format!("{text:?} is not a number"))),
        (oid::BOOL, false) if matches!(bytes, b"t" | b"f") => Ok(Scalar::Bool(bytes == b"t")),
        (oid::INT2, true) => Ok(Scalar::Int(i64::from(i16::from_be_bytes(bytes.try_into().ok()?)))),
        (oid::INT4, true) => Ok(Scalar::Int(i64::from(i32::from_be_bytes(bytes.try_into().ok()?)))),
        (oid::OID, true) => Ok(Scalar::Int(i64::from(u32::from_be_bytes(bytes.try_into().ok()?)))),
        (oid::INT8, true) => Ok(Scalar::Int(i64::from_be_bytes(bytes.try_into().ok()?))),
        (oid::FLOAT8, true) => Ok(Scalar::Double(f64::from_be_bytes(bytes.try_into().ok()?))),
        (oid::FLOAT4, true) => Ok(Scalar::Double(f64::from(f32::from_be_bytes(bytes.try_into().ok()?)))),
        (oid::BOOL, true) if bytes.len() == 1 => Ok(Scalar::Bool(bytes[0] != 0)),
        _ => return None,
    })
}

/// One non-null column value as a CEL value. Text types borrow their bytes; everything else goes through the
/// JSON mapping (the same code as raw change events, so both agree on every value).
fn datum_to_val<'a>(
    type_oid: u32,
    bytes: &'a [u8],
    binary: bool,
    scratch: &mut Vec<u8>,
) -> Result<Box<dyn Val + 'a>, String> {
    // Fast paths for the common scalar types; the rest (and anything unusual) takes the JSON route below.
    match plain_scalar(type_oid, bytes, binary) {
        Some(Ok(Scalar::Int(i))) => return Ok(Box::new(CelInt::from(i))),
        Some(Ok(Scalar::Double(d))) => return Ok(Box::new(CelDouble::from(d))),
        Some(Ok(Scalar::Str(s))) => return Ok(Box::new(CelString::from(s))),
        Some(Ok(Scalar::Bool(b))) => return Ok(Box::new(CelBool::from(b))),
        Some(Err(e)) => return Err(e),
        None => {}
    }
    if binary && matches!(type_oid, oid::TIMESTAMP | oid::TIMESTAMPTZ) {
        if let Ok(b) = <[u8; 8]>::try_from(bytes) {
            // Microseconds since 2000-01-01 UTC; ±infinity (i64::MAX/MIN) stays a string, below.
            let us = i64::from_be_bytes(b);
            let unix = us.checked_add(PG_EPOCH_UNIX_MICROS).filter(|_| us != i64::MAX && us != i64::MIN);
            if let Some(t) = unix.and_then(chrono::DateTime::from_timestamp_micros) {
                return Ok(Box::new(CelTimestamp::from(t.fixed_offset())));
            }
        }
    }
    scratch.clear();
    let written =
        if binary { binary::write_json(scratch, type_oid, bytes) } else { value::write_json(scratch, type_oid, bytes) };
    written.map_err(|e| e.to_string())?;
    let json = std::str::from_utf8(scratch).map_err(|_| "not valid UTF-8".to_string())?;
    // Plain JSON strings without escapes (numeric, uuid, dates, enums, …): no parser needed.
    if let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')).filter(|i| !i.contains(['\\', '"'])) {
        return Ok(match string_to_cel(inner, type_oid) {
            Value::String(_) => Box::new(CelString::from(inner.to_string())),
            other => Box::<dyn Val>::try_from(other).map_err(|e| e.to_string())?,
        });
    }
    let value = match type_oid {
        oid::BOOL => Value::Bool(json == "true"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            Value::Int(json.parse::<i64>().map_err(|_| format!("{json} is not an integer"))?)
        }
        // A float column stays a double even when its value is integral (`3` == `3.0` must hold in CEL).
        oid::FLOAT4 | oid::FLOAT8 => Value::Float(json.parse::<f64>().map_err(|_| format!("{json} is not a number"))?),
        _ => {
            let parsed: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            json_to_cel(&parsed, type_oid)
        }
    };
    Box::<dyn Val>::try_from(value).map_err(|e| e.to_string())
}

/// Arbitrary JSON (a logical message's content) as a CEL value.
pub fn json_value(json: &serde_json::Value) -> Value {
    json_to_cel(json, 0)
}

/// `json` as a CEL value; `type_oid` (the column type, or an array's element type) turns ISO timestamp strings
/// into CEL timestamps.
fn json_to_cel(json: &serde_json::Value, type_oid: u32) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => string_to_cel(s, type_oid),
        J::Array(items) => {
            let elem = value::array_element_type(type_oid).unwrap_or(type_oid);
            Value::List(Arc::new(items.iter().map(|v| json_to_cel(v, elem)).collect()))
        }
        J::Object(fields) => {
            let map = fields.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v, 0))).collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

fn string_to_cel(s: &str, type_oid: u32) -> Value {
    match type_oid {
        oid::FLOAT4 | oid::FLOAT8 => match s {
            "NaN" => Value::Float(f64::NAN),
            "Infinity" => Value::Float(f64::INFINITY),
            "-Infinity" => Value::Float(f64::NEG_INFINITY),
            _ => Value::String(Arc::new(s.to_string())),
        },
        oid::TIMESTAMPTZ | oid::TIMESTAMP => {
            // timestamp without time zone is read as UTC (the session's TimeZone).
            let text = if type_oid == oid::TIMESTAMP { format!("{s}Z") } else { s.to_string() };
            match chrono::DateTime::parse_from_rfc3339(&text) {
                Ok(t) => Value::Timestamp(t),
                // infinity, BC and far-future values stay strings.
                Err(_) => Value::String(Arc::new(s.to_string())),
            }
        }
        oid::BYTEA => match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(bytes) => Value::Bytes(Arc::new(bytes)),
            Err(_) => Value::String(Arc::new(s.to_string())),
        },
        _ => Value::String(Arc::new(s.to_string())),
    }
}

/// Appends `v` as JSON. Timestamps become RFC 3339 in UTC (`…Z`), bytes base64, NaN/±Inf the strings `NaN`,
/// `Infinity`, `-Infinity`, durations their CEL form (`90s`).
pub fn write_cel_json(out: &mut Vec<u8>, v: &Value) -> Result<(), String> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) => {
            if f.is_nan() {
                write_json_string(out, "NaN");
            } else if f.is_infinite() {
                write_json_string(out, if *f > 0.0 { "Infinity" } else { "-Infinity" });
            } else {
                serde_json::to_writer(&mut *out, f).map_err(|e| e.to_string())?;
            }
        }
        Value::String(s) => write_json_string(out, s),
        Value::Bytes(b) => {
            out.push(b'"');
            value::append_base64(out, b);
            out.push(b'"');
        }
        Value::Timestamp(t) => {
            // As the value mapping writes timestamptz: UTC, `Z`, fraction without trailing zeros.
            out.push(b'"');
            value::write_unix_micros(out, t.timestamp_micros());
            out.pop(); // Z
            while out.last() == Some(&b'0') {
                out.pop();
            }
            if out.last() == Some(&b'.') {
                out.pop();
            }
            out.extend_from_slice(b"Z\"");
        }
        Value::Duration(d) => {
            let secs = d.num_microseconds().map(|us| us as f64 / 1e6).unwrap_or(d.num_seconds() as f64);
            write_json_string(out, &format!("{secs}s"));
        }
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_cel_json(out, item)?;
            }
            out.push(b']');
        }
        Value::Map(m) => {
            let mut entries: Vec<(String, &Value)> = m.map.iter().map(|(k, v)| (key_text(k), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(out, k);
                out.push(b':');
                write_cel_json(out, v)?;
            }
            out.push(b'}');
        }
        other => return Err(format!("a value of type {:?} cannot be put into an event", other.type_of())),
    }
    Ok(())
}

fn key_text(k: &Key) -> String {
    match k {
        Key::String(s) => s.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// A key or header value as text: strings as they are, integers and bools in decimal/`true`; anything else
/// (including null) is an error.
pub fn cel_to_text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        Value::Int(i) => Ok(i.to_string()),
        Value::UInt(u) => Ok(u.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err("is null".into()),
        other => Err(format!("is a {:?}, not a string or an integer", other.type_of())),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::change::Column;

    fn table() -> Table {
        let col =
            |name: &str, type_oid: u32, is_key: bool| Column { name: name.into(), type_oid, type_modifier: -1, is_key };
        Table {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                col("id", oid::INT8, true),
                col("amount", oid::NUMERIC, false),
                col("at", oid::TIMESTAMPTZ, false),
                col("doc", oid::JSONB, false),
                col("big", oid::TEXT, false),
                col("f", oid::FLOAT8, false),
            ],
            replica_identity: b'd',
            json: Default::default(),
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn rows_become_typed_maps_and_back() {
        let row = vec![
            text("42"),
            text("12.50"),
            text("2026-11-22 08:00:00.5+00"),
            text(r#"{"b": [1, "x"], "a": null}"#),
            Datum::UnchangedToast,
            text("NaN"),
        ];
        let t = table();
        let mut scratch = Vec::new();
        let v = Value::try_from(&*row_to_val(&t, &row, false, None, None, &mut scratch).unwrap()).unwrap();
        let Value::Map(m) = &v else { panic!("not a map") };
        assert_eq!(m.map.get(&Key::String(Arc::new("id".into()))), Some(&Value::Int(42)));
        assert_eq!(m.map.get(&Key::String(Arc::new("amount".into()))), Some(&Value::String(Arc::new("12.50".into()))));
        assert!(matches!(m.map.get(&Key::String(Arc::new("at".into()))), Some(Value::Timestamp(_))));
        assert!(m.map.get(&Key::String(Arc::new("big".into()))).is_none(), "unchanged TOAST is absent");
        let mut out = Vec::new();
        write_cel_json(&mut out, &v).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"amount":"12.50","at":"2026-11-22T08:00:00.5Z","doc":{"a":null,"b":[1,"x"]},"f":"NaN","id":42}"#
        );
        let key_only = Value::try_from(&*row_to_val(&t, &row, true, None, None, &mut scratch).unwrap()).unwrap();
        let Value::Map(k) = key_only else { panic!() };
        assert_eq!(k.map.len(), 1);
    }

    #[test]
    fn binary_and_text_values_give_the_same_cel_values() {
        let ts_us: i64 = 848_649_600_500_000; // 2026-11-22T08:00:00.5Z in microseconds since 2000
        let cases: Vec<(u32, Vec<u8>, &str)> = vec![
            (oid::INT8, 42i64.to_be_bytes().to_vec(), "42"),
            (oid::INT4, (-7i32).to_be_bytes().to_vec(), "-7"),
            (oid::INT2, 3i16.to_be_bytes().to_vec(), "3"),
            (oid::FLOAT8, 1.5f64.to_be_bytes().to_vec(), "1.5"),
            (oid::FLOAT8, f64::INFINITY.to_be_bytes().to_vec(), "Infinity"),
            (oid::FLOAT4, 0.25f32.to_be_bytes().to_vec(), "0.25"),
            (oid::BOOL, vec![1], "t"),
            (oid::TIMESTAMPTZ, ts_us.to_be_bytes().to_vec(), "2026-11-22 08:00:00.5+00"),
            (oid::TIMESTAMPTZ, i64::MAX.to_be_bytes().to_vec(), "infinity"),
            (oid::TEXT, b"caf\xc3\xa9".to_vec(), "caf\u{e9}"),
        ];
        let mut scratch = Vec::new();
        for (type_oid, bin, text) in cases {
            let b = Value::try_from(&*datum_to_val(type_oid, &bin, true, &mut scratch).unwrap()).unwrap();
            let t = Value::try_from(&*datum_to_val(type_oid, text.as_bytes(), false, &mut scratch).unwrap()).unwrap();
            assert_eq!(b, t, "type {type_oid}: {text}");
        }
    }

    #[test]
    fn bad_values_are_errors_naming_the_column() {
        let row = vec![text("not a number"), Datum::Null, Datum::Null, Datum::Null, Datum::Null, Datum::Null];
        let e = row_to_val(&table(), &row, false, None, None, &mut Vec::new()).map(|_| ()).unwrap_err();
        assert!(e.starts_with("column id:"), "{e}");
    }

    #[test]
    fn keys_must_be_text_or_numbers() {
        assert_eq!(cel_to_text(&Value::Int(7)).unwrap(), "7");
        assert!(cel_to_text(&Value::Null).unwrap_err().contains("null"));
        assert!(cel_to_text(&Value::Float(1.5)).is_err());
    }
}
