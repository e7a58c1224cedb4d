//! The inverse of the value mapping (`postgres::value`, docs/events.md "Value mapping"): the JSON a raw change
//! event holds for a column → the PostgreSQL text the replication stream sent for it, so that a DLQ'd change runs
//! through the rules again exactly as it did live.
//!
//! Exact for every type of the mapping: the JSON text of numbers, `json`/`jsonb` values and `numeric` strings is
//! taken as written (never re-parsed into floats), dates and timestamps go back to `DateStyle=ISO` text (`BC` years
//! included, timestamptz in UTC as the session sent it), bytea back to `\x` hex. Arrays come back with every
//! non-null element quoted; their lower bounds (`[0:1]={…}`), which the mapping does not publish, come back as 1.
//! A `json` value loses whitespace before and after it (never inside it): CEL and the events read the same value.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::value::RawValue;

use crate::postgres::value::{array_element_type, oid};

/// PostgreSQL text of the JSON `raw` published for a value of `type_oid` (domain-resolved, as the stream maps
/// it); `None` for JSON `null` (SQL NULL). The error says what did not fit the type.
pub fn pg_text(type_oid: u32, raw: &RawValue) -> Result<Option<String>, String> {
    let json = raw.get().trim();
    if json == "null" {
        return Ok(None);
    }
    if let Some(elem) = array_element_type(type_oid) {
        let mut out = String::new();
        write_array(&mut out, elem, raw)?;
        return Ok(Some(out));
    }
    scalar(type_oid, json).map(Some)
}

/// A JSON string's content, or an error naming what was expected.
fn string(json: &str, what: &str) -> Result<String, String> {
    serde_json::from_str::<String>(json)
        .map_err(|_| format!("expected a JSON string ({what}), found {}", shorten(json)))
}

fn shorten(json: &str) -> String {
    let mut s: String = json.chars().take(40).collect();
    if s.len() < json.len() {
        s.push('…');
    }
    s
}

fn is_json_number(s: &str) -> bool {
    serde_json::from_str::<&RawValue>(s).is_ok() && s.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

fn scalar(type_oid: u32, json: &str) -> Result<String, String> {
    match type_oid {
        oid::BOOL => match json {
            "true" => Ok("t".into()),
            "false" => Ok("f".into()),
            _ => Err(format!("expected true or false (bool), found {}", shorten(json))),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            if json.bytes().enumerate().all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-'))
                && is_json_number(json)
            {
                Ok(json.to_string())
            } else {
                Err(format!("expected an integer, found {}", shorten(json)))
            }
        }
        oid::FLOAT4 | oid::FLOAT8 => {
            if is_json_number(json) {
                return Ok(json.to_string());
            }
            match string(json, "a float")?.as_str() {
                s @ ("NaN" | "Infinity" | "-Infinity") => Ok(s.to_string()),
                _ => Err(format!("expected a number, NaN or ±Infinity (float), found {}", shorten(json))),
            }
        }
        oid::NUMERIC => {
            let s = string(json, "numeric")?;
            if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") || is_json_number(&s) {
                Ok(s)
            } else {
                Err(format!("expected a numeric as a string, found {}", shorten(json)))
            }
        }
        // Embedded as PostgreSQL sent it: the JSON text is the value's text.
        oid::JSON | oid::JSONB => Ok(json.to_string()),
        oid::BYTEA => {
            let b64 = string(json, "bytea as base64")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("bytea: not base64: {e}"))?;
            let mut out = String::with_capacity(2 + bytes.len() * 2);
            out.push_str("\\x");
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            Ok(out)
        }
        oid::DATE => {
            let s = string(json, "date")?;
            if s == "infinity" || s == "-infinity" {
                return Ok(s);
            }
            let (year, rest) = split_year(&s).ok_or_else(|| format!("not an ISO 8601 date: {}", shorten(&s)))?;
            Ok(with_era(year, rest))
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let s = string(json, "timestamp")?;
            if s == "infinity" || s == "-infinity" {
                return Ok(s);
            }
            let bad = || format!("not an ISO 8601 timestamp: {}", shorten(&s));
            let (year, rest) = split_year(&s).ok_or_else(bad)?;
            let (date, time) = rest.split_once('T').ok_or_else(bad)?;
            let time = if type_oid == oid::TIMESTAMPTZ {
                // The stream's session runs in UTC: PostgreSQL wrote `+00`, the mapping wrote `Z`.
                format!("{}+00", time.strip_suffix('Z').ok_or_else(bad)?)
            } else {
                time.to_string()
            };
            Ok(with_era(year, &format!("{date} {time}")))
        }
        // Every other type is published as the string PostgreSQL sent.
        _ => string(json, "text"),
    }
}

/// `[±]YYYY` and the rest (`-MM-DD…`) of an ISO 8601 date with astronomical years.
fn split_year(s: &str) -> Option<(i64, &str)> {
    let digits_start = usize::from(s.starts_with(['+', '-']));
    let end = digits_start + s[digits_start..].bytes().take_while(u8::is_ascii_digit).count();
    // PostgreSQL's years have at most 7 digits (dates up to 5874897); 9 as the value mapping reads them.
    if !(4..=9).contains(&(end - digits_start)) || !s[end..].starts_with('-') {
        return None;
    }
    let year: i64 = s[..end].parse().ok()?;
    Some((year, &s[end..]))
}

/// `YYYY<rest>` in PostgreSQL's ISO style: astronomical year 0 is 1 BC, -43 is 44 BC (`0044-… BC`).
fn with_era(year: i64, rest: &str) -> String {
    if year <= 0 {
        format!("{:04}{rest} BC", 1 - year)
    } else {
        format!("{year:04}{rest}")
    }
}

/// A JSON array → PostgreSQL array text (`{…}`), elements by `elem`'s mapping, every non-null element quoted.
fn write_array(out: &mut String, elem: u32, raw: &RawValue) -> Result<(), String> {
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| format!("expected a JSON array (an array column), found {}", shorten(raw.get())))?;
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let json = item.get().trim();
        if json == "null" {
            out.push_str("NULL");
        } else if json.starts_with('[') && elem != oid::JSON && elem != oid::JSONB {
            write_array(out, elem, item)?;
        } else {
            out.push('"');
            for c in scalar(elem, json)?.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    out.push('}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::value;

    /// PostgreSQL text → JSON (the live mapping) → text (this module) → JSON again: the same JSON, and for the
    /// texts in PostgreSQL's own output form, the same text.
    #[test]
    fn round_trips_through_the_value_mapping() {
        let cases: &[(u32, &str)] = &[
            (oid::BOOL, "t"),
            (oid::BOOL, "f"),
            (oid::INT2, "-32768"),
            (oid::INT8, "9223372036854775807"),
            (oid::OID, "4294967295"),
            (oid::FLOAT8, "0.1"),
            (oid::FLOAT8, "1e+300"),
            (oid::FLOAT8, "-1.5e-07"),
            (oid::FLOAT4, "NaN"),
            (oid::FLOAT8, "-Infinity"),
            (oid::NUMERIC, "12345678901234567890.000000000000000001"),
            (oid::NUMERIC, "NaN"),
            (oid::JSONB, r#"{"a": [1, 2.50, {"b": null}], "c": "x\"y"}"#),
            (oid::JSON, "[1,  2 ]"),
            (oid::BYTEA, "\\x00ff10"),
            (oid::BYTEA, "\\x"),
            (oid::DATE, "2026-11-29"),
            (oid::DATE, "0044-03-15 BC"),
            (oid::DATE, "0001-01-01 BC"),
            (oid::DATE, "10000-01-01"),
            (oid::DATE, "infinity"),
            (oid::TIMESTAMP, "2026-11-22 08:00:00"),
            (oid::TIMESTAMP, "2026-11-22 08:00:00.123456"),
            (oid::TIMESTAMP, "0044-03-15 10:00:00 BC"),
            (oid::TIMESTAMPTZ, "2026-11-22 08:00:00.5+00"),
            (oid::TIMESTAMPTZ, "0044-03-15 10:00:00+00 BC"),
            (oid::TIMESTAMPTZ, "-infinity"),
            (oid::TIME, "08:00:00.25"),
            (oid::INTERVAL, "P1Y2M3DT4H5M6.5S"),
            (oid::UUID, "6f1c3b8e-2d4a-4c7e-9a10-3e5b7d9f1a2c"),
            (oid::TEXT, "line\nbreak \"quoted\" \\ back"),
            (oid::BPCHAR, "S"),
            (value::TEXT_ARRAY, r#"{a,"b c",NULL,"NULL","q\"\\"}"#),
            (1007, "{{1,2},{3,NULL}}"),
            (1007, "{}"),
            (1185, r#"{"2026-11-22 08:00:00+00","0044-03-15 10:00:00+00 BC"}"#),
            (1001, r#"{"\\x00ff"}"#),
            (1000, "{t,f}"),
            (3807, r#"{"{\"a\": 1}","[1, 2]"}"#),
        ];
        for &(type_oid, text) in cases {
            let json = value::to_value(type_oid, text.as_bytes()).unwrap();
            let mut bytes = Vec::new();
            value::write_json(&mut bytes, type_oid, text.as_bytes()).unwrap();
            let raw: Box<RawValue> = serde_json::from_slice(&bytes).unwrap();
            let back = pg_text(type_oid, &raw).unwrap().unwrap_or_else(|| panic!("{text}: null"));
            assert_eq!(value::to_value(type_oid, back.as_bytes()).unwrap(), json, "{type_oid} {text:?} → {back:?}");
            // Scalars in PostgreSQL's output form come back byte for byte.
            if array_element_type(type_oid).is_none() {
                assert_eq!(back, text, "{type_oid}");
            }
        }
    }

    #[test]
    fn odd_dates_and_numbers_are_errors_not_panics() {
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        for json in [
            r#""-9223372036854775808-01-01""#,
            r#""+99999999999-01-01""#,
            r#""-""#,
            r#""+""#,
            r#""0000-""#,
            r#""ü-01-01""#,
            r#""2026-01-01T""#,
            r#""-0001-01-01T00:00:00Z""#,
            "1e999999",
            "-",
            "[[[[]]]]",
        ] {
            for type_oid in
                [oid::DATE, oid::TIMESTAMP, oid::TIMESTAMPTZ, oid::INT8, oid::FLOAT8, oid::NUMERIC, 1182, 1115]
            {
                if let Ok(r) = serde_json::from_str::<Box<RawValue>>(json) {
                    let _ = pg_text(type_oid, &r);
                }
            }
        }
        assert!(pg_text(oid::DATE, &raw(r#""-9223372036854775808-01-01""#)).is_err());
        assert_eq!(pg_text(oid::DATE, &raw(r#""-0001-01-01""#)).unwrap().as_deref(), Some("0002-01-01 BC"));
    }

    #[test]
    fn null_is_sql_null_and_mismatches_are_errors_not_panics() {
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        assert_eq!(pg_text(oid::INT4, &raw("null")).unwrap(), None);
        assert_eq!(pg_text(1007, &raw("[1,null]")).unwrap().as_deref(), Some(r#"{"1",NULL}"#));
        for (type_oid, json) in [
            (oid::INT4, "1.5"),
            (oid::INT4, "\"1\""),
            (oid::BOOL, "1"),
            (oid::NUMERIC, "1"),
            (oid::BYTEA, "\"%%\""),
            (oid::DATE, "\"29.11.2026\""),
            (oid::TIMESTAMPTZ, "\"2026-11-22T08:00:00\""),
            (oid::TEXT, "{}"),
            (1007, "{}"),
            (1007, "[\"x\"]"),
        ] {
            let e = pg_text(type_oid, &raw(json)).unwrap_err();
            assert!(!e.is_empty(), "{type_oid} {json}");
        }
    }
}

#[cfg(test)]
#[path = "text_prop_tests.rs"]
mod prop_tests;
