//! Column values → CEL values, and CEL values → JSON.
//!
//! A column reaches CEL with the type its JSON mapping suggests (DESIGN.md value mapping): integers as `int`
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
use cel::objects::{Key, Map};
use cel::Value;

use crate::change::{Datum, Table};
use crate::postgres::value::{self, oid, write_json_string};
use crate::postgres::value_binary;

/// A row as a CEL map of column name → value. Key-only old rows (`key_only`) hold only the key columns; unchanged
/// TOAST values are left out.
pub fn row_to_cel(table: &Table, row: &[Datum], key_only: bool) -> Result<Value, String> {
    let mut map = HashMap::with_capacity(row.len());
    let mut scratch = Vec::with_capacity(64);
    for (col, datum) in table.columns.iter().zip(row) {
        if key_only && !col.is_key {
            continue;
        }
        let value = match datum {
            Datum::UnchangedToast => continue,
            Datum::Null => Value::Null,
            Datum::Text(b) | Datum::Binary(b) => {
                scratch.clear();
                let written = match datum {
                    Datum::Binary(_) => value_binary::write_json(&mut scratch, col.type_oid, b),
                    _ => value::write_json(&mut scratch, col.type_oid, b),
                };
                written.map_err(|e| format!("column {}: {e}", col.name))?;
                let json: serde_json::Value =
                    serde_json::from_slice(&scratch).map_err(|e| format!("column {}: {e}", col.name))?;
                json_to_cel(&json, col.type_oid)
            }
        };
        map.insert(Key::String(Arc::new(col.name.clone())), value);
    }
    Ok(Value::Map(Map { map: Arc::new(map) }))
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
            let utc = t.with_timezone(&chrono::Utc);
            write_json_string(out, &utc.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
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
        let col = |name: &str, type_oid: u32, is_key: bool| Column { name: name.into(), type_oid, type_modifier: -1, is_key };
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
        let v = row_to_cel(&table(), &row, false).unwrap();
        let Value::Map(m) = &v else { panic!("not a map") };
        assert_eq!(m.map.get(&Key::String(Arc::new("id".into()))), Some(&Value::Int(42)));
        assert_eq!(m.map.get(&Key::String(Arc::new("amount".into()))), Some(&Value::String(Arc::new("12.50".into()))));
        assert!(matches!(m.map.get(&Key::String(Arc::new("at".into()))), Some(Value::Timestamp(_))));
        assert!(m.map.get(&Key::String(Arc::new("big".into()))).is_none(), "unchanged TOAST is absent");
        let mut out = Vec::new();
        write_cel_json(&mut out, &v).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"amount":"12.50","at":"2026-11-22T08:00:00.500Z","doc":{"a":null,"b":[1,"x"]},"f":"NaN","id":42}"#
        );
        let key_only = row_to_cel(&table(), &row, true).unwrap();
        let Value::Map(k) = key_only else { panic!() };
        assert_eq!(k.map.len(), 1);
    }

    #[test]
    fn bad_values_are_errors_naming_the_column() {
        let row = vec![text("not a number"), Datum::Null, Datum::Null, Datum::Null, Datum::Null, Datum::Null];
        let e = row_to_cel(&table(), &row, false).unwrap_err();
        assert!(e.starts_with("column id:"), "{e}");
    }

    #[test]
    fn keys_must_be_text_or_numbers() {
        assert_eq!(cel_to_text(&Value::Int(7)).unwrap(), "7");
        assert!(cel_to_text(&Value::Null).unwrap_err().contains("null"));
        assert!(cel_to_text(&Value::Float(1.5)).is_err());
    }
}
