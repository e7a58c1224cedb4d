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

use std::io::Write as _;

use base64::Engine as _;

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
    let result = match std::str::from_utf8(text) {
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

/// The value as a `serde_json::Value` (for the rules engine). Slower than [`write_json`]; not for the hot path.
///
/// json/jsonb numbers outside `f64` range are an error here (they are embedded verbatim by [`write_json`]).
pub fn to_value(type_oid: u32, text: &[u8]) -> Result<serde_json::Value, ValueError> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_json(&mut out, type_oid, text)?;
    serde_json::from_slice(&out).map_err(|source| ValueError::Json { type_oid, source })
}

/// `us` (microseconds since the Unix epoch) as ISO 8601 UTC with six fractional digits, e.g.
/// `2026-11-22T08:00:00.123456Z`.
pub fn format_unix_micros(us: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_unix_micros(&mut out, us);
    // Only ASCII digits, signs and separators were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`format_unix_micros`]'s text (without quotes). Hand-written: once per event, chrono's
/// `format` was the hottest function of the encoder.
pub fn write_unix_micros(out: &mut Vec<u8>, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u32;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    match y {
        0..=9999 => push_digits(out, y as u32, 4),
        10_000.. => {
            let _ = write!(out, "+{y}");
        }
        _ => {
            out.push(b'-');
            let abs = y.unsigned_abs();
            if abs < 10_000 {
                push_digits(out, abs as u32, 4);
            } else {
                let _ = write!(out, "{abs}");
            }
        }
    }
    out.push(b'-');
    push_digits(out, m, 2);
    out.push(b'-');
    push_digits(out, d, 2);
    out.push(b'T');
    push_digits(out, sod / 3600, 2);
    out.push(b':');
    push_digits(out, sod % 3600 / 60, 2);
    out.push(b':');
    push_digits(out, sod % 60, 2);
    out.push(b'.');
    push_digits(out, micros, 6);
    out.push(b'Z');
}

/// Appends `v` as exactly `width` decimal digits (zero-padded; `v` must fit).
pub(crate) fn push_digits(out: &mut Vec<u8>, mut v: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (start..start + width).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

#[cfg(test)]
fn format_unix_micros_civil(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let year = match y {
        10_000.. => format!("+{y}"),
        ..0 => format!("-{:04}", y.unsigned_abs()),
        _ => format!("{y:04}"),
    };
    format!("{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Appends `s` as a JSON string literal (quotes, backslash, and control characters escaped; other Unicode kept).
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// For each byte: 0 = copy, `u` = `\u00XX`, otherwise the character after the backslash.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

fn write_scalar(out: &mut Vec<u8>, type_oid: u32, s: &str) -> Result<(), ValueError> {
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

/// Length of the JSON number at the start of `b`, if one starts there.
fn json_number_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| b.get(from..).map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count());
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

/// Checks RFC 8259 syntax without recursion (jsonb nests as deep as the server's stack allows) and without
/// converting numbers (jsonb numbers are arbitrary-precision numerics).
pub(crate) fn validate_json(b: &[u8]) -> Result<(), &'static str> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Value,
        FirstElement,
        FirstKey,
        Key,
        After,
    }
    let mut containers: Vec<bool> = Vec::new(); // true = object
    let mut state = State::Value;
    let mut i = 0;
    loop {
        i = skip_json_ws(b, i);
        let c = b.get(i).copied();
        match state {
            State::Value | State::FirstElement => {
                let c = c.ok_or("unexpected end of JSON")?;
                if state == State::FirstElement && c == b']' {
                    containers.pop();
                    i += 1;
                    state = State::After;
                    continue;
                }
                match c {
                    b'{' => {
                        containers.push(true);
                        i += 1;
                        state = State::FirstKey;
                        continue;
                    }
                    b'[' => {
                        containers.push(false);
                        i += 1;
                        state = State::FirstElement;
                        continue;
                    }
                    b'"' => i = json_string_end(b, i)?,
                    b't' => i = json_literal_end(b, i, b"true")?,
                    b'f' => i = json_literal_end(b, i, b"false")?,
                    b'n' => i = json_literal_end(b, i, b"null")?,
                    _ => i += b.get(i..).and_then(json_number_len).ok_or("invalid JSON value")?,
                }
                state = State::After;
            }
            State::FirstKey | State::Key => {
                match c {
                    Some(b'}') if state == State::FirstKey => {
                        containers.pop();
                        i += 1;
                        state = State::After;
                        continue;
                    }
                    Some(b'"') => i = json_string_end(b, i)?,
                    _ => return Err("expected a JSON object key"),
                }
                i = skip_json_ws(b, i);
                if b.get(i) != Some(&b':') {
                    return Err("expected ':' after a JSON object key");
                }
                i += 1;
                state = State::Value;
            }
            State::After => {
                let Some(&is_object) = containers.last() else {
                    return if i == b.len() { Ok(()) } else { Err("trailing characters after JSON value") };
                };
                match (c, is_object) {
                    (Some(b','), true) => state = State::Key,
                    (Some(b','), false) => state = State::Value,
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        containers.pop();
                    }
                    (None, _) => return Err("unexpected end of JSON"),
                    _ => return Err("expected ',' or a closing bracket in JSON"),
                }
                i += 1;
            }
        }
    }
}

fn skip_json_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

fn json_literal_end(b: &[u8], i: usize, literal: &[u8]) -> Result<usize, &'static str> {
    match b.get(i..i + literal.len()) {
        Some(found) if found == literal => Ok(i + literal.len()),
        _ => Err("invalid JSON literal"),
    }
}

/// `b[i]` is the opening quote; returns the index after the closing quote.
fn json_string_end(b: &[u8], i: usize) -> Result<usize, &'static str> {
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err("unterminated JSON string"),
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => match b.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                Some(b'u') => match b.get(j + 2..j + 6) {
                    Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => j += 6,
                    _ => return Err("invalid \\u escape in JSON string"),
                },
                _ => return Err("invalid escape in JSON string"),
            },
            Some(0..=0x1f) => return Err("control character in JSON string"),
            Some(_) => j += 1,
        }
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

/// The parts of an ISO-style PostgreSQL timestamp `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM[:SS]]][ BC]`.
struct Timestamp<'a> {
    /// `HH:MM:SS[.f]`
    clock: &'a str,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// `.f` or empty.
    fraction: &'a str,
    offset_seconds: i64,
    bc: bool,
}

fn two_digits(s: &str, at: usize, max: u32) -> Option<u32> {
    match s.as_bytes().get(at..at + 2) {
        Some(&[a @ b'0'..=b'9', b @ b'0'..=b'9']) => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0')).filter(|v| *v <= max)
        }
        _ => None,
    }
}

fn parse_timestamp(s: &str, with_offset: bool) -> Option<Timestamp<'_>> {
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    };
    let (date, time) = body.split_once(' ')?;
    let (year_text, month_day) = date.split_once('-')?;
    if !(4..=9).contains(&year_text.len()) || !year_text.bytes().all(|c| c.is_ascii_digit()) || month_day.len() != 5 {
        return None;
    }
    let year = year_text.parse().ok()?;
    let month = two_digits(month_day, 0, 12).filter(|m| *m >= 1)?;
    let day = two_digits(month_day, 3, 31).filter(|d| *d >= 1)?;
    if month_day.as_bytes().get(2) != Some(&b'-') {
        return None;
    }
    let tb = time.as_bytes();
    if tb.get(2) != Some(&b':') || tb.get(5) != Some(&b':') {
        return None;
    }
    let (hour, minute, second) = (two_digits(time, 0, 23)?, two_digits(time, 3, 59)?, two_digits(time, 6, 60)?);
    let mut end = 8;
    if tb.get(end) == Some(&b'.') {
        let n = tb.get(end + 1..)?.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        end += 1 + n;
    }
    let clock = time.get(..end)?;
    let rest = time.get(end..)?;
    let offset_seconds = if with_offset {
        parse_offset(rest)?
    } else if rest.is_empty() {
        0
    } else {
        return None;
    };
    Some(Timestamp { clock, year, month, day, hour, minute, second, fraction: clock.get(8..)?, offset_seconds, bc })
}

/// `±HH[:MM[:SS]]` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut seconds = i64::from(two_digits(s, 1, 99)?) * 3600;
    match s.len() {
        3 => {}
        6 | 9 if s.as_bytes().get(3) == Some(&b':') => {
            seconds += i64::from(two_digits(s, 4, 59)?) * 60;
            if s.len() == 9 {
                if s.as_bytes().get(6) != Some(&b':') {
                    return None;
                }
                seconds += i64::from(two_digits(s, 7, 59)?);
            }
        }
        _ => return None,
    }
    Some(sign * seconds)
}

fn write_timestamp(out: &mut Vec<u8>, s: &str, with_offset: bool) -> Result<(), &'static str> {
    if s == "infinity" || s == "-infinity" {
        write_json_string(out, s);
        return Ok(());
    }
    let t = parse_timestamp(s, with_offset).ok_or("not an ISO timestamp (is DateStyle ISO?)")?;
    if t.offset_seconds == 0 {
        out.push(b'"');
        write_year(out, if t.bc { 1 - t.year } else { t.year });
        let _ = write!(out, "-{:02}-{:02}T", t.month, t.day);
        out.extend_from_slice(t.clock.as_bytes());
        if with_offset {
            out.push(b'Z');
        }
        out.push(b'"');
        return Ok(());
    }
    // Not the UTC the session asks for: shift to UTC (astronomical years, so the shift may cross into BC).
    let year = if t.bc { 1 - t.year } else { t.year };
    let local = days_from_civil(year, t.month, t.day) * 86_400 + i64::from(t.hour * 3600 + t.minute * 60 + t.second);
    let utc = local - t.offset_seconds;
    let (year, month, day) = civil_from_days(utc.div_euclid(86_400));
    let sod = utc.rem_euclid(86_400);
    out.push(b'"');
    write_year(out, year);
    let _ =
        write!(out, "-{month:02}-{day:02}T{:02}:{:02}:{:02}{}Z\"", sod / 3600, sod % 3600 / 60, sod % 60, t.fraction);
    Ok(())
}

/// An astronomical year as ISO 8601 writes it: `0000`–`9999`, else signed with at least four digits.
fn write_year(out: &mut Vec<u8>, year: i64) {
    let _ = match year {
        0..=9999 => write!(out, "{year:04}"),
        y if y < 0 => write!(out, "-{:04}", -y),
        y => write!(out, "+{y}"),
    };
}

/// A date `YYYY-MM-DD[ BC]` (DateStyle ISO) in the form of [`write_year`]; `±infinity` stays as sent.
fn write_date(out: &mut Vec<u8>, s: &str) -> Result<(), &'static str> {
    if s == "infinity" || s == "-infinity" {
        write_json_string(out, s);
        return Ok(());
    }
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    };
    let (year_text, month_day) = body.split_once('-').ok_or("not an ISO date (is DateStyle ISO?)")?;
    if !(4..=9).contains(&year_text.len()) || !year_text.bytes().all(|c| c.is_ascii_digit()) {
        return Err("not an ISO date (is DateStyle ISO?)");
    }
    let valid = month_day.len() == 5
        && month_day.as_bytes()[2] == b'-'
        && two_digits(month_day, 0, 12).is_some_and(|m| m >= 1)
        && two_digits(month_day, 3, 31).is_some_and(|d| d >= 1);
    if !valid {
        return Err("not an ISO date (is DateStyle ISO?)");
    }
    let year: i64 = year_text.parse().map_err(|_| "not an ISO date (is DateStyle ISO?)")?;
    out.push(b'"');
    write_year(out, if bc { 1 - year } else { year });
    out.push(b'-');
    out.extend_from_slice(month_day.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering). H. Hinnant's algorithm.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// PostgreSQL array text (`{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={1,2}`) → JSON array.
fn write_array(out: &mut Vec<u8>, array_oid: u32, elem_oid: u32, s: &str) -> Result<(), ValueError> {
    let invalid = |reason| ValueError::Invalid { type_oid: array_oid, reason };
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'[') {
        // Dimension decoration, present when a lower bound is not 1.
        let eq = memchr::memchr(b'=', b).ok_or(invalid("array dimensions without '='"))?;
        if !b.get(..eq).unwrap_or_default().iter().all(|c| matches!(c, b'[' | b']' | b':' | b'-' | b'0'..=b'9')) {
            return Err(invalid("malformed array dimensions"));
        }
        i = eq + 1;
    }
    if b.get(i) != Some(&b'{') {
        return Err(invalid("array does not start with '{'"));
    }
    out.push(b'[');
    i += 1;
    let mut depth = 1usize;
    let mut expect_item = true;
    let mut just_opened = true;
    let mut scratch = String::new();
    loop {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let c = *b.get(i).ok_or(invalid("unterminated array"))?;
        let close = if expect_item {
            match c {
                b'{' => {
                    out.push(b'[');
                    depth += 1;
                    i += 1;
                    just_opened = true;
                    continue;
                }
                b'}' if just_opened => true,
                b',' | b'}' => return Err(invalid("empty array element")),
                b'"' => {
                    i = unquote(s, i + 1, &mut scratch).ok_or(invalid("unterminated quoted array element"))?;
                    write_scalar(out, elem_oid, &scratch)?;
                    false
                }
                _ => {
                    let (end, escaped) = unquoted_end(b, i).ok_or(invalid("malformed unquoted array element"))?;
                    let element = s.get(i..end).ok_or(invalid("malformed unquoted array element"))?;
                    i = end;
                    if escaped {
                        scratch.clear();
                        let mut chars = element.chars();
                        while let Some(ch) = chars.next() {
                            match ch {
                                '\\' => scratch.extend(chars.next()),
                                _ => scratch.push(ch),
                            }
                        }
                        write_scalar(out, elem_oid, &scratch)?;
                    } else if element.eq_ignore_ascii_case("NULL") {
                        out.extend_from_slice(b"null");
                    } else {
                        write_scalar(out, elem_oid, element)?;
                    }
                    false
                }
            }
        } else {
            match c {
                b',' => {
                    out.push(b',');
                    i += 1;
                    expect_item = true;
                    continue;
                }
                b'}' => true,
                _ => return Err(invalid("expected ',' or '}' in array")),
            }
        };
        expect_item = false;
        just_opened = false;
        if close {
            out.push(b']');
            i += 1;
            depth -= 1;
            if depth == 0 {
                break;
            }
        }
    }
    if b.get(i..).unwrap_or_default().iter().all(u8::is_ascii_whitespace) {
        Ok(())
    } else {
        Err(invalid("trailing characters after array"))
    }
}

/// Reads a quoted element starting after its opening quote into `scratch`; returns the index after the
/// closing quote. Backslash escapes the next character.
fn unquote(s: &str, start: usize, scratch: &mut String) -> Option<usize> {
    scratch.clear();
    let b = s.as_bytes();
    let mut run = start;
    let mut i = start;
    loop {
        match b.get(i)? {
            b'"' => {
                scratch.push_str(s.get(run..i)?);
                return Some(i + 1);
            }
            b'\\' => {
                scratch.push_str(s.get(run..i)?);
                // The escaped character starts the next run (it may be multi-byte; runs end only at ASCII).
                b.get(i + 1)?;
                run = i + 1;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

/// End of an unquoted element starting at `start` (trailing whitespace excluded), and whether it holds a backslash.
fn unquoted_end(b: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start;
    let mut end = start;
    let mut escaped = false;
    loop {
        match b.get(i)? {
            b',' | b'}' => return Some((end, escaped)),
            b'{' | b'"' => return None,
            b'\\' => {
                escaped = true;
                i += 1 + utf8_len(*b.get(i + 1)?);
                end = i;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                i += 1;
                end = i;
            }
        }
    }
}

/// Length of the UTF-8 sequence that starts with `lead`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(type_oid: u32, text: &str) -> String {
        let mut out = Vec::new();
        write_json(&mut out, type_oid, text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let s = String::from_utf8(out).unwrap();
        validate_json(s.as_bytes()).unwrap_or_else(|e| panic!("{text:?} gave invalid JSON {s}: {e}"));
        s
    }

    fn fails(type_oid: u32, text: &[u8]) -> ValueError {
        let mut out = b"prefix".to_vec();
        let err = write_json(&mut out, type_oid, text)
            .expect_err(&format!("{:?} should fail", String::from_utf8_lossy(text)));
        assert_eq!(out, b"prefix", "a failed value must leave the buffer unchanged");
        err
    }

    #[test]
    fn bool() {
        assert_eq!(json(oid::BOOL, "t"), "true");
        assert_eq!(json(oid::BOOL, "f"), "false");
        for bad in ["true", "", "T", "1"] {
            fails(oid::BOOL, bad.as_bytes());
        }
    }

    #[test]
    fn integers() {
        for t in [oid::INT2, oid::INT4, oid::INT8] {
            assert_eq!(json(t, "42"), "42");
            assert_eq!(json(t, "-7"), "-7");
            assert_eq!(json(t, "0"), "0");
        }
        assert_eq!(json(oid::INT8, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(json(oid::OID, "4294967295"), "4294967295");
        for bad in ["", "-", "01", "1.5", "abc", "+1", " 1", "1 ", "--1", "1e3"] {
            fails(oid::INT4, bad.as_bytes());
        }
        fails(oid::OID, b"-1");
    }

    #[test]
    fn floats() {
        for t in [oid::FLOAT4, oid::FLOAT8] {
            assert_eq!(json(t, "1.5"), "1.5");
            assert_eq!(json(t, "-0"), "-0");
            assert_eq!(json(t, "1e+30"), "1e+30");
            assert_eq!(json(t, "1.2345e-05"), "1.2345e-05");
            assert_eq!(json(t, "NaN"), r#""NaN""#);
            assert_eq!(json(t, "Infinity"), r#""Infinity""#);
            assert_eq!(json(t, "-Infinity"), r#""-Infinity""#);
        }
        assert_eq!(json(oid::FLOAT8, "0.30000000000000004"), "0.30000000000000004");
        for bad in ["inf", "1.", ".5", "1e", "nan", "0x10", ""] {
            fails(oid::FLOAT8, bad.as_bytes());
        }
    }

    #[test]
    fn numeric_is_an_exact_string() {
        assert_eq!(json(oid::NUMERIC, "12345678901234567890.123456789"), r#""12345678901234567890.123456789""#);
        assert_eq!(json(oid::NUMERIC, "-0.00100"), r#""-0.00100""#);
        assert_eq!(json(oid::NUMERIC, "NaN"), r#""NaN""#);
        assert_eq!(json(oid::NUMERIC, "-Infinity"), r#""-Infinity""#);
        let v = to_value(oid::NUMERIC, b"12345678901234567890.123456789").unwrap();
        assert_eq!(v, serde_json::json!("12345678901234567890.123456789"));
        for bad in ["1,5", "", "1 000", "\""] {
            fails(oid::NUMERIC, bad.as_bytes());
        }
    }

    #[test]
    fn text_types_are_escaped_strings() {
        for t in [oid::TEXT, oid::VARCHAR, oid::BPCHAR, oid::NAME, oid::CHAR, 70_000, 603] {
            assert_eq!(json(t, "plain"), r#""plain""#);
        }
        assert_eq!(json(oid::TEXT, "héllo wörld 🌿 中文"), "\"héllo wörld 🌿 中文\"");
        assert_eq!(
            json(oid::TEXT, "q\"b\\n\nt\tr\rf\u{c}b\u{8}c\u{1}d\u{1f}e\u{7f}"),
            concat!(r#""q\"b\\n\nt\tr\rf\fb\bc\u0001d\u001fe"#, "\u{7f}\"")
        );
        assert_eq!(json(oid::TEXT, ""), r#""""#);
        // box[] uses ';' as its delimiter: kept as text, like any type without a mapping.
        assert_eq!(json(1020, "{(1,1),(0,0);(2,2),(1,1)}"), r#""{(1,1),(0,0);(2,2),(1,1)}""#);
    }

    #[test]
    fn json_string_escaping_round_trips() {
        let all: String = (0u32..0x800).filter_map(char::from_u32).collect();
        let mut out = Vec::new();
        write_json_string(&mut out, &all);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn json_is_embedded_after_validation() {
        let doc = "{\"a\": [1, 2.5e3, \"x\\u00e9\\n\"], \"b\": null, \"c\": {\"d\": true, \"e\": false}}";
        assert_eq!(json(oid::JSON, doc), doc);
        assert_eq!(json(oid::JSONB, doc), doc);
        assert_eq!(json(oid::JSONB, " [ ] "), " [ ] ");
        assert_eq!(json(oid::JSONB, "\"s\""), "\"s\"");
        assert_eq!(json(oid::JSONB, "-0.5E-3"), "-0.5E-3");
        // jsonb numbers are arbitrary precision: embedded verbatim.
        let huge = format!("[1{}]", "0".repeat(400));
        assert_eq!(json(oid::JSONB, &huge), huge);
        // Deep nesting must not overflow the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(json(oid::JSONB, &deep).len(), deep.len());
        let v = to_value(oid::JSONB, doc.as_bytes()).unwrap();
        assert_eq!(v["a"][1], serde_json::json!(2500.0));
        for bad in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\" 1}",
            "tru",
            "\"abc",
            "[1] x",
            "{'a':1}",
            "{\"a\":1,}",
            "[01]",
            "\"\u{1}\"",
            "\"\\x\"",
            "\"\\u12\"",
            "{1:2}",
            "[1 2]",
            "NaN",
            "[",
            "]",
            "{}}",
        ] {
            fails(oid::JSONB, bad.as_bytes());
        }
    }

    #[test]
    fn uuid_date_time_interval_are_strings() {
        assert_eq!(
            json(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
        );
        assert_eq!(json(oid::DATE, "2026-11-22"), r#""2026-11-22""#);
        assert_eq!(json(oid::DATE, "infinity"), r#""infinity""#);
        assert_eq!(json(oid::DATE, "-infinity"), r#""-infinity""#);
        assert_eq!(json(oid::DATE, "0044-03-15 BC"), r#""-0043-03-15""#);
        assert_eq!(json(oid::DATE, "0001-01-01 BC"), r#""0000-01-01""#);
        assert_eq!(json(oid::DATE, "10000-01-01"), r#""+10000-01-01""#);
        assert_eq!(json(oid::DATE, "5874897-12-31"), r#""+5874897-12-31""#);
        assert_eq!(json(oid::DATE, "4714-11-24 BC"), r#""-4713-11-24""#);
        for bad in ["22-11-2026", "2026-13-01", "2026-1-01", "x", "2026-11-22 AD"] {
            assert!(write_json(&mut Vec::new(), oid::DATE, bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(json(oid::TIME, "08:00:00.5"), r#""08:00:00.5""#);
        assert_eq!(json(oid::TIME, "23:59:59"), r#""23:59:59""#);
        assert_eq!(json(oid::TIMETZ, "08:00:00+05:30"), r#""08:00:00+05:30""#);
        assert_eq!(json(oid::INTERVAL, "P1Y2M3DT4H5M6.5S"), r#""P1Y2M3DT4H5M6.5S""#);
        assert_eq!(json(oid::INTERVAL, "PT0S"), r#""PT0S""#);
    }

    #[test]
    fn timestamps() {
        assert_eq!(json(oid::TIMESTAMP, "2026-11-22 08:00:00.123456"), r#""2026-11-22T08:00:00.123456""#);
        assert_eq!(json(oid::TIMESTAMP, "2026-11-22 08:00:00"), r#""2026-11-22T08:00:00""#);
        assert_eq!(json(oid::TIMESTAMP, "infinity"), r#""infinity""#);
        assert_eq!(json(oid::TIMESTAMP, "-infinity"), r#""-infinity""#);
        assert_eq!(json(oid::TIMESTAMP, "0044-03-15 12:00:00 BC"), r#""-0043-03-15T12:00:00""#);
        assert_eq!(json(oid::TIMESTAMP, "294276-12-31 23:59:59.999999"), r#""+294276-12-31T23:59:59.999999""#);
        for bad in [
            "2026-11-22T08:00:00",
            "11/22/2026 08:00:00",
            "2026-13-01 00:00:00",
            "2026-11-22 25:00:00",
            "2026-11-22 08:00",
            "2026-11-22 08:00:00.",
            "2026-11-22 08:00:00+00",
            "",
            "26-11-22 08:00:00",
        ] {
            fails(oid::TIMESTAMP, bad.as_bytes());
        }
    }

    #[test]
    fn timestamptz_is_utc_with_z() {
        let tz = |s| json(oid::TIMESTAMPTZ, s);
        assert_eq!(tz("2026-11-22 08:00:00.123456+00"), r#""2026-11-22T08:00:00.123456Z""#);
        assert_eq!(tz("2026-11-22 08:00:00+00"), r#""2026-11-22T08:00:00Z""#);
        assert_eq!(tz("2026-11-22 08:00:00+00:00"), r#""2026-11-22T08:00:00Z""#);
        assert_eq!(tz("infinity"), r#""infinity""#);
        assert_eq!(tz("0044-03-15 12:00:00+00 BC"), r#""-0043-03-15T12:00:00Z""#);
        assert_eq!(tz("10000-01-01 00:00:00+00"), r#""+10000-01-01T00:00:00Z""#);
        // Other offsets (a session without TimeZone=UTC) are normalised.
        assert_eq!(tz("2026-11-22 08:00:00.5+05:30"), r#""2026-11-22T02:30:00.5Z""#);
        assert_eq!(tz("2026-11-22 23:30:00-01"), r#""2026-11-23T00:30:00Z""#);
        assert_eq!(tz("2026-01-01 00:30:00+01"), r#""2025-12-31T23:30:00Z""#);
        assert_eq!(tz("2024-03-01 00:30:00+01"), r#""2024-02-29T23:30:00Z""#);
        assert_eq!(tz("1900-01-01 00:00:00+00:09:21"), r#""1899-12-31T23:50:39Z""#);
        assert_eq!(tz("0001-01-01 00:30:00+01"), r#""0000-12-31T23:30:00Z""#);
        assert_eq!(tz("0001-12-31 23:30:00-01 BC"), r#""0001-01-01T00:30:00Z""#);
        for bad in [
            "2026-11-22 08:00:00",
            "2026-11-22 08:00:00+0",
            "2026-11-22 08:00:00+00:0",
            "2026-11-22 08:00:00Z",
            "2026-11-22 08:00:00+00;00",
        ] {
            fails(oid::TIMESTAMPTZ, bad.as_bytes());
        }
    }

    #[test]
    fn civil_day_arithmetic_round_trips() {
        for days in (-200_000_000..200_000_000).step_by(9_973) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
    }

    #[test]
    fn bytea_is_base64() {
        assert_eq!(json(oid::BYTEA, "\\x0a0b"), r#""Cgs=""#);
        assert_eq!(json(oid::BYTEA, "\\x"), r#""""#);
        assert_eq!(json(oid::BYTEA, "\\xDEADbeef"), r#""3q2+7w==""#);
        // Longer than one decoding chunk: padding only at the end.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let expected = format!("\"{}\"", base64::engine::general_purpose::STANDARD.encode(&data));
        assert_eq!(json(oid::BYTEA, &format!("\\x{hex}")), expected);
        // Escape format (bytea_output=escape) is understood too.
        assert_eq!(json(oid::BYTEA, "a\\\\b\\001"), r#""YVxiAQ==""#);
        for bad in ["\\x0", "\\xzz", "\\x0g", "a\\b", "\\400", "\\"] {
            fails(oid::BYTEA, bad.as_bytes());
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(json(1007, "{1,2,3}"), "[1,2,3]");
        assert_eq!(json(1007, "{{1,2},{3,NULL}}"), "[[1,2],[3,null]]");
        assert_eq!(json(1007, "{}"), "[]");
        assert_eq!(json(1007, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(json(1007, "[0:1][-1:0]={{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(1000, "{t,f,NULL}"), "[true,false,null]");
        assert_eq!(json(1016, "{{{1}},{{2}}}"), "[[[1]],[[2]]]");
        assert_eq!(
            json(1009, r#"{"a,b","q\"uote","back\\slash",NULL,"NULL",plain,"","{}",héllo,"x y"}"#),
            r#"["a,b","q\"uote","back\\slash",null,"NULL","plain","","{}","héllo","x y"]"#
        );
        assert_eq!(json(1009, r#"{"é\é",a\,b,\NULL, sp ace }"#), r#"["éé","a,b","NULL","sp ace"]"#);
        assert_eq!(json(1231, "{1.5,NaN,12345678901234567890.1}"), r#"["1.5","NaN","12345678901234567890.1"]"#);
        assert_eq!(json(1022, "{NaN,1.5,-Infinity}"), r#"["NaN",1.5,"-Infinity"]"#);
        assert_eq!(json(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#), r#"[{"a": 1},[1, 2],null]"#);
        assert_eq!(json(199, r#"{"\"s\""}"#), r#"["s"]"#);
        assert_eq!(json(1001, r#"{"\\x0a0b",NULL}"#), r#"["Cgs=",null]"#);
        assert_eq!(
            json(1185, r#"{"2026-11-22 08:00:00+00","2026-11-22 08:00:00.5+00"}"#),
            r#"["2026-11-22T08:00:00Z","2026-11-22T08:00:00.5Z"]"#
        );
        assert_eq!(json(1115, r#"{"2026-11-22 08:00:00"}"#), r#"["2026-11-22T08:00:00"]"#);
        assert_eq!(json(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"), r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#);
        assert_eq!(json(1187, "{P1D,PT1H}"), r#"["P1D","PT1H"]"#);
        assert_eq!(json(1182, "{2026-11-22,infinity}"), r#"["2026-11-22","infinity"]"#);
        let v = to_value(1007, b"{{1,2},{3,NULL}}").unwrap();
        assert_eq!(v, serde_json::json!([[1, 2], [3, null]]));
        for bad in [
            "",
            "{1,2",
            "{1,,2}",
            "1,2",
            "{1}x",
            "{\"a}",
            "{1,{2}",
            "[1:2]{1,2}",
            "[1:x]={1}",
            "{a}",
            "{1 2}",
            "{,}",
            "{1,}",
            "{\"1\"x}",
            "{{1}",
            "}",
            "{1\\",
        ] {
            fails(1007, bad.as_bytes());
        }
        assert!(matches!(fails(1007, b"{a}"), ValueError::Invalid { type_oid: oid::INT4, .. }));
        assert!(matches!(fails(1007, b"{1,,2}"), ValueError::Invalid { type_oid: 1007, .. }));
    }

    #[test]
    fn every_listed_array_oid_maps() {
        for (array, elem) in [
            (1000, 16),
            (1005, 21),
            (1007, 23),
            (1016, 20),
            (1028, 26),
            (1021, 700),
            (1022, 701),
            (1231, 1700),
            (1009, 25),
            (1015, 1043),
            (1014, 1042),
            (1003, 19),
            (199, 114),
            (3807, 3802),
            (2951, 2950),
            (1182, 1082),
            (1183, 1083),
            (1115, 1114),
            (1185, 1184),
            (1187, 1186),
            (1001, 17),
            (1270, 1266),
        ] {
            assert_eq!(array_element_type(array), Some(elem), "{array}");
        }
        assert_eq!(array_element_type(1020), None);
        assert_eq!(array_element_type(25), None);
    }

    #[test]
    fn invalid_utf8_names_the_type() {
        for t in [oid::TEXT, oid::INT4, oid::JSONB, 1009, 70_000] {
            assert!(matches!(fails(t, b"ab\xffcd"), ValueError::InvalidUtf8 { type_oid } if type_oid == t));
        }
        let e = fails(oid::BYTEA, b"\xc3");
        assert_eq!(e.to_string(), "value of type OID 17 is not valid UTF-8");
    }

    #[test]
    fn to_value_maps_like_write_json() {
        assert_eq!(
            to_value(oid::INT8, b"9223372036854775807").unwrap(),
            serde_json::json!(9_223_372_036_854_775_807i64)
        );
        assert_eq!(to_value(oid::BOOL, b"t").unwrap(), serde_json::json!(true));
        assert_eq!(to_value(oid::FLOAT8, b"NaN").unwrap(), serde_json::json!("NaN"));
        assert_eq!(to_value(oid::TEXT, b"x\"y").unwrap(), serde_json::json!("x\"y"));
        assert!(to_value(oid::INT4, b"x").is_err());
    }

    #[test]
    fn formats_commit_times() {
        assert_eq!(format_unix_micros(1_795_334_400_123_456), "2026-11-22T08:00:00.123456Z");
        assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_unix_micros(-1), "1969-12-31T23:59:59.999999Z");
        for us in
            [0, -1, 1_795_334_400_123_456, -62_135_596_800_000_000, 253_402_300_799_999_999, -100_000_000_000_000_000]
        {
            assert_eq!(format_unix_micros_civil(us), format_unix_micros(us), "{us}");
        }
        // The hand-written formatter agrees with chrono across its whole range.
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let us = (rng.next() % 500_000_000_000_000_000) as i64 - 100_000_000_000_000_000;
            let expected =
                chrono::DateTime::from_timestamp_micros(us).unwrap().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            assert_eq!(format_unix_micros(us), expected, "{us}");
        }
        // Beyond chrono's range: still an answer, no panic.
        assert!(format_unix_micros(i64::MAX).starts_with("+294247-"));
        assert!(format_unix_micros(i64::MIN).starts_with("-290308-"));
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics_and_output_is_always_json() {
        const ALPHABET: &[u8] = b"{}[]\",\\:;=-+.eExNULtf0123456789 Tz\x00\x1f\xc3\xa9\xff";
        const TYPES: &[u32] = &[
            16, 17, 20, 21, 23, 25, 26, 114, 700, 701, 1082, 1114, 1184, 1186, 1700, 3802, 1000, 1001, 1007, 1009,
            1022, 1115, 1185, 1231, 3807, 199, 70_000,
        ];
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut out = Vec::new();
        for _ in 0..30_000 {
            let len = (rng.next() % 40) as usize;
            let text: Vec<u8> = (0..len).map(|_| ALPHABET[rng.next() as usize % ALPHABET.len()]).collect();
            let type_oid = TYPES[rng.next() as usize % TYPES.len()];
            out.clear();
            if write_json(&mut out, type_oid, &text).is_ok() {
                assert!(
                    validate_json(&out).is_ok(),
                    "type {type_oid}, {text:?} gave invalid JSON {:?}",
                    String::from_utf8_lossy(&out)
                );
            } else {
                assert!(out.is_empty());
            }
        }
    }
}
