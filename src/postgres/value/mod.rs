//! PostgreSQL text-format values → JSON, as docs/events.md ("Value mapping") specifies.
//!
//! pgoutput sends every column in the type's text output format, so the mapping **relies on the replication
//! session's settings**: `DateStyle=ISO, MDY`, `TimeZone=UTC`, `IntervalStyle=iso_8601`, `extra_float_digits=3`,
//! `bytea_output=hex`. Under them a timestamptz arrives as `2026-11-22 08:00:00.123456+00`, an interval as
//! `P1Y2M3DT4H5M6.5S` and a bytea as `\x0a0b`. (Other UTC offsets are still normalised to UTC, and bytea's escape
//! format is decoded too, but the session settings are what make the output stable.)
//!
//! | type (OID) | JSON |
//! |---|---|
//! | bool (16) | `true` / `false` |
//! | int2 (21), int4 (23), int8 (20), oid (26) | number, digits copied through |
//! | float4 (700), float8 (701) | number; `NaN`, `Infinity`, `-Infinity` → string |
//! | numeric (1700) | **string**, exactly as sent (also `NaN`, `±Infinity`) |
//! | json (114), jsonb (3802) | embedded as sent, after validation |
//! | date (1082) | `YYYY-MM-DD` with an ISO 8601 year (see below) |
//! | time (1083), timetz (1266), uuid (2950), interval (1186) | string as sent |
//! | timestamp (1114) | `YYYY-MM-DDTHH:MM:SS[.ffffff]` |
//! | timestamptz (1184) | `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (UTC) |
//! | bytea (17) | base64 (standard alphabet, padded) |
//! | arrays of the above | JSON arrays, nested, `NULL` → `null`, elements mapped by element type |
//! | text, varchar, bpchar, name, char, enums, anything else | string |
//!
//! Domains, enums, arrays of them and builtin arrays not listed here are resolved through the catalog first
//! ([`maps_by_oid`], `control::value_types`): a domain maps as its base type, any array as a JSON array.
//!
//! Dates and timestamps use ISO 8601 with astronomical years: years 0000–9999 as four digits, others with a sign and
//! at least four digits (ISO 8601 expanded representation, as `java.time` reads and writes it): 44 BC is
//! `-0043-03-15`, 1 BC is `0000-…`, the year 10000 is `+10000-01-01`. `infinity`/`-infinity` stay strings.
//!
//! **Guarantees:** [`write_json`] appends exactly one valid JSON value or returns a [`ValueError`] and leaves the
//! buffer as it was; malformed or non-UTF-8 text never panics. Errors name the type OID, never the value (values
//! may be personal data and errors end up in logs).

use base64::Engine as _;

mod array;
pub mod binary;
#[cfg(test)]
mod tests;
mod time;

use crate::json::json_number_len;
pub(crate) use crate::json::validate_json;
pub use crate::json::write_json_string;
use array::write_array;
pub(crate) use time::{civil_from_days, push_digits};
pub use time::{format_unix_micros, write_unix_micros};
use time::{write_date, write_timestamp};

/// Builtin type OIDs this module maps (`pg_type.oid`, stable across PostgreSQL versions).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// A value whose text does not match its type.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("value of type OID {type_oid} is not valid UTF-8")]
    InvalidUtf8 { type_oid: u32 },
    #[error("invalid text for type OID {type_oid}: {reason}")]
    Invalid { type_oid: u32, reason: &'static str },
    #[error("value of type OID {type_oid} does not convert to a JSON value: {source}")]
    Json {
        type_oid: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// Element type of a builtin array type, for the array types of every type this module maps.
pub fn array_element_type(array_oid: u32) -> Option<u32> {
    use oid::*;
    Some(match array_oid {
        1000 => BOOL,
        1001 => BYTEA,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1009 => TEXT,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1028 => OID,
        1115 => TIMESTAMP,
        1182 => DATE,
        1183 => TIME,
        1185 => TIMESTAMPTZ,
        1187 => INTERVAL,
        1231 => NUMERIC,
        1270 => TIMETZ,
        199 => JSON,
        3807 => JSONB,
        2951 => UUID,
        // box[] (1020) uses ';' as its delimiter; it stays a string like every unknown type.
        _ => return None,
    })
}

/// The builtin array type whose elements are `elem` (the inverse of [`array_element_type`]).
pub fn array_type_of(elem: u32) -> Option<u32> {
    (0..4000).chain([3807]).find(|a| array_element_type(*a) == Some(elem))
}

/// Whether values of `type_oid` map by OID alone: the builtin types of the table above and their arrays. Any other
/// type (a domain, an enum, an array of them, a builtin array not listed, an extension type) is resolved through the
/// catalog first ([`crate::postgres::control::value_types`]): a domain maps as its base type, an array of anything
/// as a JSON array.
pub fn maps_by_oid(type_oid: u32) -> bool {
    use oid::*;
    array_element_type(type_oid).is_some()
        || matches!(
            type_oid,
            BOOL | BYTEA
                | CHAR
                | NAME
                | INT8
                | INT2
                | INT4
                | TEXT
                | OID
                | JSON
                | FLOAT4
                | FLOAT8
                | BPCHAR
                | VARCHAR
                | DATE
                | TIME
                | TIMESTAMP
                | TIMESTAMPTZ
                | INTERVAL
                | TIMETZ
                | NUMERIC
                | UUID
                | JSONB
        )
}

/// `text[]`: arrays of element types without a mapping of their own map as arrays of strings.
pub const TEXT_ARRAY: u32 = 1009;

/// Appends the JSON of one non-null value of type `type_oid` given in PostgreSQL text format.
///
/// On error nothing is appended.
pub fn write_json(out: &mut Vec<u8>, type_oid: u32, text: &[u8]) -> Result<(), ValueError> {
    let start = out.len();
    let result = match utf8(text) {
        Ok(s) => match array_element_type(type_oid) {
            Some(elem) => write_array(out, type_oid, elem, s),
            None => write_scalar(out, type_oid, s),
        },
        Err(_) => Err(ValueError::InvalidUtf8 { type_oid }),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// `bytes` as text: a word-at-a-time ASCII test first (numbers, dates and most text are ASCII), the full UTF-8
/// validation only otherwise. std's `from_utf8` cost ~100 instructions per short value, the largest single item of a
/// snapshot's encoding (docs/benchmarks.md).
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// The value as a `serde_json::Value` (for the rules engine). Slower than [`write_json`]; not for the hot path.
///
/// json/jsonb numbers outside `f64` range are an error here (they are embedded verbatim by [`write_json`]).
pub fn to_value(type_oid: u32, text: &[u8]) -> Result<serde_json::Value, ValueError> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_json(&mut out, type_oid, text)?;
    serde_json::from_slice(&out).map_err(|source| ValueError::Json { type_oid, source })
}

pub(super) fn write_scalar(out: &mut Vec<u8>, type_oid: u32, s: &str) -> Result<(), ValueError> {
    let invalid = |reason| ValueError::Invalid { type_oid, reason };
    let b = s.as_bytes();
    match type_oid {
        oid::BOOL => match s {
            "t" => out.extend_from_slice(b"true"),
            "f" => out.extend_from_slice(b"false"),
            _ => return Err(invalid("expected t or f")),
        },
        oid::INT2 | oid::INT4 | oid::INT8 => {
            let digits = b.strip_prefix(b"-").unwrap_or(b);
            if !is_integer(digits) {
                return Err(invalid("not an integer"));
            }
            out.extend_from_slice(b);
        }
        oid::OID => {
            if !is_integer(b) {
                return Err(invalid("not an unsigned integer"));
            }
            out.extend_from_slice(b);
        }
        oid::FLOAT4 | oid::FLOAT8 => match s {
            "NaN" | "Infinity" | "-Infinity" => write_json_string(out, s),
            _ if json_number_len(b) == Some(b.len()) => out.extend_from_slice(b),
            _ => return Err(invalid("not a floating-point number")),
        },
        oid::NUMERIC => match s {
            "NaN" | "Infinity" | "-Infinity" => write_json_string(out, s),
            _ if json_number_len(b) == Some(b.len()) => write_json_string(out, s),
            _ => return Err(invalid("not a numeric")),
        },
        oid::JSON | oid::JSONB => {
            validate_json(b).map_err(invalid)?;
            out.extend_from_slice(b);
        }
        oid::BYTEA => write_bytea(out, b).map_err(invalid)?,
        oid::TIMESTAMP => write_timestamp(out, s, false).map_err(invalid)?,
        oid::DATE => write_date(out, s).map_err(invalid)?,
        oid::TIMESTAMPTZ => write_timestamp(out, s, true).map_err(invalid)?,
        _ => write_json_string(out, s),
    }
    Ok(())
}

/// `0` or a digit string without a leading zero (JSON's integer grammar, no sign).
fn is_integer(b: &[u8]) -> bool {
    match b {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// bytea in hex (`\x0a0b`) or escape format → base64 string.
fn write_bytea(out: &mut Vec<u8>, b: &[u8]) -> Result<(), &'static str> {
    out.push(b'"');
    if let Some(hex) = b.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits in bytea");
        }
        // Decode and encode in chunks of a multiple of 3 bytes, so only the last chunk is padded.
        let mut buf = [0u8; 768];
        for chunk in hex.chunks(2 * buf.len()) {
            let mut n = 0;
            for (dst, pair) in buf.iter_mut().zip(chunk.chunks_exact(2)) {
                let (hi, lo) = (hex_value(pair[0]), hex_value(pair[1]));
                *dst = (hi.ok_or("invalid hex digit in bytea")? << 4) | lo.ok_or("invalid hex digit in bytea")?;
                n += 1;
            }
            append_base64(out, buf.get(..n).unwrap_or_default());
        }
    } else {
        append_base64(out, &unescape_bytea(b)?);
    }
    out.push(b'"');
    Ok(())
}

pub(crate) fn append_base64(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(data.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD.encode_slice(data, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// bytea's escape output format: `\\` is a backslash, `\nnn` an octal byte, anything else literal.
fn unescape_bytea(b: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match b.get(i + 1..i + 4) {
            _ if b.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(&[a @ b'0'..=b'3', m @ b'0'..=b'7', l @ b'0'..=b'7']) => {
                out.push(((a - b'0') << 6) | ((m - b'0') << 3) | (l - b'0'));
                i += 4;
            }
            _ => return Err("invalid escape in bytea"),
        }
    }
    Ok(out)
}

/// Length of the UTF-8 sequence that starts with `lead`.
pub(super) fn utf8_len(lead: u8) -> usize {
    match lead {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}
