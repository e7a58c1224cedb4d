//! PostgreSQL **binary**-format values → JSON, producing exactly what [`super::value`] produces from the text
//! format of the same value.
//!
//! Why: with pgoutput's `binary` option the walsender calls each type's cheap `send` function instead of its
//! `output` function (timestamptz and float formatting are the expensive ones), which lowers the server's CPU per
//! change — and the walsender is the ceiling of the whole pipeline (docs/benchmarks.md). ficus requests binary
//! values only when every captured column has a type listed in [`supports`]; anything else (enums, domains,
//! extension types, interval, timetz, …) needs its text output and keeps the stream in text mode.
//!
//! The mapping mirrors PostgreSQL's own output functions under the session settings ficus sets: floats in
//! shortest round-trip form with PostgreSQL's exponent thresholds, numeric as an exact decimal string, dates and
//! timestamps in ISO form with trailing fractional zeros trimmed and astronomical years (`-0043`, `+10000`). A test in
//! `tests/pipeline.rs` streams the same rows in both modes and asserts identical events.
//!
//! **Guarantees:** [`write_json`] appends exactly one JSON value or returns a [`ValueError`] and leaves the buffer
//! as it was; truncated or malformed bytes never panic. Errors name the type OID, never the value.

use std::io::Write as _;

use super::value::{
    self, append_base64, civil_from_days, oid, push_digits, validate_json, write_json_string, ValueError,
};

/// Whether ficus can map binary values of `type_oid` (scalars below, and arrays of them).
pub fn supports(type_oid: u32) -> bool {
    match value::array_element_type(type_oid) {
        Some(elem) => supports_scalar(elem),
        None => supports_scalar(type_oid),
    }
}

fn supports_scalar(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::BOOL
            | oid::BYTEA
            | oid::NAME
            | oid::INT8
            | oid::INT2
            | oid::INT4
            | oid::TEXT
            | oid::OID
            | oid::JSON
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::BPCHAR
            | oid::VARCHAR
            | oid::DATE
            | oid::TIME
            | oid::TIMESTAMP
            | oid::TIMESTAMPTZ
            | oid::NUMERIC
            | oid::UUID
            | oid::JSONB
    )
}

/// Appends the JSON of one non-null value of type `type_oid` given in PostgreSQL binary (`send`) format.
///
/// On error nothing is appended.
pub fn write_json(out: &mut Vec<u8>, type_oid: u32, data: &[u8]) -> Result<(), ValueError> {
    let start = out.len();
    let result = match value::array_element_type(type_oid) {
        Some(elem) => write_array(out, type_oid, elem, data),
        None => write_scalar(out, type_oid, data),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn fixed<const N: usize>(data: &[u8]) -> Option<[u8; N]> {
    data.try_into().ok()
}

fn write_scalar(out: &mut Vec<u8>, type_oid: u32, b: &[u8]) -> Result<(), ValueError> {
    let invalid = |reason| ValueError::Invalid { type_oid, reason };
    let size = || invalid("binary value has the wrong size");
    match type_oid {
        oid::BOOL => match b {
            [0] => out.extend_from_slice(b"false"),
            [1] => out.extend_from_slice(b"true"),
            _ => return Err(invalid("binary bool is not 0 or 1")),
        },
        oid::INT2 => {
            let _ = write!(out, "{}", i16::from_be_bytes(fixed(b).ok_or_else(size)?));
        }
        oid::INT4 => {
            let _ = write!(out, "{}", i32::from_be_bytes(fixed(b).ok_or_else(size)?));
        }
        oid::INT8 => {
            let _ = write!(out, "{}", i64::from_be_bytes(fixed(b).ok_or_else(size)?));
        }
        oid::OID => {
            let _ = write!(out, "{}", u32::from_be_bytes(fixed(b).ok_or_else(size)?));
        }
        oid::FLOAT4 => {
            let v = f32::from_be_bytes(fixed(b).ok_or_else(size)?);
            write_float(out, f64::from(v), v.is_finite().then(|| format!("{v:e}")), 6);
        }
        oid::FLOAT8 => {
            let v = f64::from_be_bytes(fixed(b).ok_or_else(size)?);
            write_float(out, v, v.is_finite().then(|| format!("{v:e}")), 15);
        }
        oid::NUMERIC => write_numeric(out, b).map_err(invalid)?,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => {
            write_json_string(out, std::str::from_utf8(b).map_err(|_| ValueError::InvalidUtf8 { type_oid })?);
        }
        oid::JSON => {
            validate_json(b).map_err(invalid)?;
            out.extend_from_slice(b);
        }
        oid::JSONB => match b.split_first() {
            Some((1, text)) => {
                validate_json(text).map_err(invalid)?;
                out.extend_from_slice(text);
            }
            _ => return Err(invalid("unknown jsonb binary version")),
        },
        oid::BYTEA => {
            out.push(b'"');
            append_base64(out, b);
            out.push(b'"');
        }
        oid::UUID => {
            let u: [u8; 16] = fixed(b).ok_or_else(size)?;
            out.push(b'"');
            for (i, byte) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                let _ = write!(out, "{byte:02x}");
            }
            out.push(b'"');
        }
        oid::DATE => {
            let days = i32::from_be_bytes(fixed(b).ok_or_else(size)?);
            out.push(b'"');
            match days {
                i32::MAX => out.extend_from_slice(b"infinity"),
                i32::MIN => out.extend_from_slice(b"-infinity"),
                _ => write_date(out, i64::from(days) + PG_EPOCH_DAYS),
            }
            out.push(b'"');
        }
        oid::TIME => {
            let us = i64::from_be_bytes(fixed(b).ok_or_else(size)?);
            if !(0..=86_400_000_000).contains(&us) {
                return Err(invalid("time out of range"));
            }
            out.push(b'"');
            write_clock(out, us);
            out.push(b'"');
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let us = i64::from_be_bytes(fixed(b).ok_or_else(size)?);
            out.push(b'"');
            match us {
                i64::MAX => out.extend_from_slice(b"infinity"),
                i64::MIN => out.extend_from_slice(b"-infinity"),
                _ => {
                    let days = us.div_euclid(86_400_000_000);
                    write_date(out, days + PG_EPOCH_DAYS);
                    out.push(b'T');
                    write_clock(out, us.rem_euclid(86_400_000_000));
                    if type_oid == oid::TIMESTAMPTZ {
                        out.push(b'Z');
                    }
                }
            }
            out.push(b'"');
        }
        _ => return Err(invalid("no binary mapping for this type (ficus should have requested text)")),
    }
    Ok(())
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const PG_EPOCH_DAYS: i64 = 10_957;

/// `YYYY-MM-DD` of `days` since the Unix epoch with an astronomical year in ISO 8601 form (the same as the text
/// mapping in `value.rs`): `0000`–`9999`, else signed (`-0043` is 44 BC, `+10000`).
fn write_date(out: &mut Vec<u8>, days: i64) {
    let (year, month, day) = civil_from_days(days);
    if (0..10_000).contains(&year) {
        push_digits(out, year as u32, 4);
    } else if year < 0 {
        out.push(b'-');
        push_digits(out, (-year) as u32, 4);
    } else {
        let _ = write!(out, "+{year}");
    }
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
}

/// `HH:MM:SS[.f]` with trailing fractional zeros trimmed, like PostgreSQL's time output.
fn write_clock(out: &mut Vec<u8>, us: i64) {
    let secs = (us / 1_000_000) as u32;
    let frac = (us % 1_000_000) as u32;
    push_digits(out, secs / 3600, 2);
    out.push(b':');
    push_digits(out, secs % 3600 / 60, 2);
    out.push(b':');
    push_digits(out, secs % 60, 2);
    if frac != 0 {
        out.push(b'.');
        let start = out.len();
        push_digits(out, frac, 6);
        while out.last() == Some(&b'0') && out.len() > start {
            out.pop();
        }
    }
}

/// A float as PostgreSQL prints it with `extra_float_digits > 0`: the shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in `-4..max_fixed_exp`, else as `d.ddde+XX`. `sci` is Rust's shortest
/// `{:e}` form of the same value (digits and exponent are identical to Ryu's, which PostgreSQL uses).
fn write_float(out: &mut Vec<u8>, v: f64, sci: Option<String>, max_fixed_exp: i32) {
    let Some(sci) = sci else {
        let s = if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        write_json_string(out, s);
        return;
    };
    // `sci` looks like "-1.2345e-7" or "5e0".
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    if negative {
        out.push(b'-');
    }
    if digits == [b'0'] {
        out.push(b'0');
        return;
    }
    if (-4..max_fixed_exp).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(&digits);
                out.extend(std::iter::repeat_n(b'0', int_len - digits.len()));
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// numeric_send's format: ndigits, weight, sign, dscale (all 16-bit), then base-10000 digits. Written as the same
/// exact decimal string numeric_out gives, as a JSON string.
fn write_numeric(out: &mut Vec<u8>, b: &[u8]) -> Result<(), &'static str> {
    let word = |i: usize| b.get(i * 2..i * 2 + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let header = || "truncated numeric";
    let ndigits = word(0).ok_or_else(header)? as usize;
    let weight = word(1).ok_or_else(header)? as i16 as i32;
    let sign = word(2).ok_or_else(header)?;
    let dscale = word(3).ok_or_else(header)?;
    if b.len() != 8 + 2 * ndigits {
        return Err("numeric length does not match its digit count");
    }
    match sign {
        NUMERIC_NAN | NUMERIC_PINF | NUMERIC_NINF => {
            let special = match sign {
                NUMERIC_NAN => "NaN",
                NUMERIC_PINF => "Infinity",
                _ => "-Infinity",
            };
            write_json_string(out, special);
            return Ok(());
        }
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return Err("invalid numeric sign"),
    }
    if dscale > 0x3FFF {
        return Err("invalid numeric scale");
    }
    let digit = |i: i32| -> Result<u16, &'static str> {
        if i < 0 || i as usize >= ndigits {
            return Ok(0);
        }
        let d = word(4 + i as usize).ok_or("truncated numeric")?;
        if d >= 10_000 {
            return Err("numeric digit out of range");
        }
        Ok(d)
    };
    out.push(b'"');
    if sign == NUMERIC_NEG {
        out.push(b'-');
    }
    // Integer part: digit groups 0..=weight.
    if weight < 0 {
        out.push(b'0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                let _ = write!(out, "{d}");
            } else {
                push_digits(out, u32::from(d), 4);
            }
        }
    }
    // Fraction: exactly dscale digits, from group weight+1 on.
    if dscale > 0 {
        out.push(b'.');
        let mut remaining = dscale as usize;
        let mut i = weight + 1;
        while remaining > 0 {
            let start = out.len();
            push_digits(out, u32::from(digit(i)?), 4);
            if remaining < 4 {
                out.truncate(start + remaining);
            }
            remaining = remaining.saturating_sub(4);
            i += 1;
        }
    }
    out.push(b'"');
    Ok(())
}

/// array_send's format: ndim, has-null flag, element type, (size, lower bound) per dimension, then each element as
/// a 32-bit length (-1 = NULL) and its bytes. Written as nested JSON arrays, like the text mapping.
fn write_array(out: &mut Vec<u8>, array_oid: u32, elem_oid: u32, b: &[u8]) -> Result<(), ValueError> {
    let invalid = |reason| ValueError::Invalid { type_oid: array_oid, reason };
    let int = |at: usize| -> Result<i32, ValueError> {
        b.get(at..at + 4).map(|w| i32::from_be_bytes([w[0], w[1], w[2], w[3]])).ok_or(invalid("truncated array"))
    };
    let ndim = int(0)?;
    let sent_elem = int(8)? as u32;
    if ndim == 0 {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    if !(1..=6).contains(&ndim) {
        return Err(invalid("array dimension count out of range"));
    }
    if sent_elem != elem_oid {
        return Err(invalid("array element type does not match the column type"));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    let mut total: usize = 1;
    for d in 0..ndim as usize {
        let size = int(12 + d * 8)?;
        if size < 0 {
            return Err(invalid("negative array dimension"));
        }
        dims.push(size as usize);
        total = total.checked_mul(size as usize).ok_or(invalid("array too large"))?;
    }
    let mut pos = 12 + 8 * ndim as usize;
    // Every element takes at least its 4-byte length: refuse sizes the data cannot hold before allocating.
    if total > b.len().saturating_sub(pos) / 4 + 1 {
        return Err(invalid("array dimensions exceed its data"));
    }
    let mut element = |out: &mut Vec<u8>| -> Result<(), ValueError> {
        let len = int(pos)?;
        pos += 4;
        if len == -1 {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| invalid("negative array element length"))?;
        let data = b.get(pos..pos + len).ok_or(invalid("truncated array element"))?;
        pos += len;
        write_scalar(out, elem_oid, data)
    };
    nest(out, &dims, &mut element)?;
    if pos != b.len() {
        return Err(invalid("trailing bytes after the array elements"));
    }
    Ok(())
}

fn nest(
    out: &mut Vec<u8>,
    dims: &[usize],
    element: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), ValueError>,
) -> Result<(), ValueError> {
    out.push(b'[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push(b',');
        }
        if dims.len() > 1 {
            nest(out, &dims[1..], element)?;
        } else {
            element(out)?;
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(oid: u32, data: &[u8]) -> String {
        let mut out = Vec::new();
        write_json(&mut out, oid, data).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn float8(v: f64) -> String {
        json(oid::FLOAT8, &v.to_be_bytes())
    }

    #[test]
    fn floats_match_postgres_output() {
        for (v, pg) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789012345.0, "123456789012345"),
            (1e15, "1e+15"),
            (1.2345e100, "1.2345e+100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(float8(v), pg, "{v}");
        }
        assert_eq!(json(oid::FLOAT4, &0.1f32.to_be_bytes()), "0.1");
        assert_eq!(json(oid::FLOAT4, &123456.0f32.to_be_bytes()), "123456");
        assert_eq!(json(oid::FLOAT4, &1234567.0f32.to_be_bytes()), "1.234567e+06");
        assert_eq!(float8(f64::NAN), "\"NaN\"");
        assert_eq!(float8(f64::NEG_INFINITY), "\"-Infinity\"");
    }

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_is_exact() {
        // 12345.678 = groups [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(json(oid::NUMERIC, &numeric(&[1, 2345, 6780], 1, NUMERIC_POS, 3)), "\"12345.678\"");
        assert_eq!(json(oid::NUMERIC, &numeric(&[1, 2345, 6780], 1, NUMERIC_NEG, 3)), "\"-12345.678\"");
        // 0.00012 = groups [1, 2000] at weight -1, dscale 5
        assert_eq!(json(oid::NUMERIC, &numeric(&[1, 2000], -1, NUMERIC_POS, 5)), "\"0.00012\"");
        // 0.0000001 (weight -2)
        assert_eq!(json(oid::NUMERIC, &numeric(&[10], -2, NUMERIC_POS, 7)), "\"0.0000001\"");
        // 10000000 with trailing zero groups stripped, scale 2
        assert_eq!(json(oid::NUMERIC, &numeric(&[1000], 1, NUMERIC_POS, 2)), "\"10000000.00\"");
        assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_POS, 0)), "\"0\"");
        assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_POS, 3)), "\"0.000\"");
        assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_NAN, 0)), "\"NaN\"");
        assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_NINF, 0)), "\"-Infinity\"");
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(json(oid::DATE, &0i32.to_be_bytes()), "\"2000-01-01\"");
        assert_eq!(json(oid::DATE, &(-730_120i32).to_be_bytes()), "\"0000-12-31\"");
        assert_eq!(json(oid::DATE, &i32::MAX.to_be_bytes()), "\"infinity\"");
        let ts = 849_254_400_123_450i64; // 2026-11-29 08:00:00.12345 since 2000-01-01
        assert_eq!(json(oid::TIMESTAMPTZ, &ts.to_be_bytes()), "\"2026-11-29T08:00:00.12345Z\"");
        assert_eq!(json(oid::TIMESTAMP, &0i64.to_be_bytes()), "\"2000-01-01T00:00:00\"");
        assert_eq!(json(oid::TIMESTAMP, &(-1i64).to_be_bytes()), "\"1999-12-31T23:59:59.999999\"");
        assert_eq!(json(oid::TIMESTAMPTZ, &i64::MIN.to_be_bytes()), "\"-infinity\"");
        assert_eq!(json(oid::TIME, &45_296_500_000i64.to_be_bytes()), "\"12:34:56.5\"");
    }

    #[test]
    fn scalars() {
        assert_eq!(json(oid::BOOL, &[1]), "true");
        assert_eq!(json(oid::INT2, &(-7i16).to_be_bytes()), "-7");
        assert_eq!(json(oid::INT8, &i64::MIN.to_be_bytes()), "-9223372036854775808");
        assert_eq!(json(oid::TEXT, "héllo \"q\"".as_bytes()), "\"héllo \\\"q\\\"\"");
        assert_eq!(json(oid::JSONB, b"\x01{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(json(oid::BYTEA, &[0, 1, 2, 255]), "\"AAEC/w==\"");
        let uuid = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        assert_eq!(json(oid::UUID, &uuid), "\"12345678-9abc-def0-1234-56789abcdef0\"");
    }

    fn int4_array(dims: &[i32], elems: &[Option<i32>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        b.extend_from_slice(&(elems.iter().any(Option::is_none) as i32).to_be_bytes());
        b.extend_from_slice(&oid::INT4.to_be_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
            b.extend_from_slice(&1i32.to_be_bytes());
        }
        for e in elems {
            match e {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&4i32.to_be_bytes());
                    b.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn arrays_nest() {
        assert_eq!(json(1007, &int4_array(&[3], &[Some(1), None, Some(3)])), "[1,null,3]");
        assert_eq!(json(1007, &int4_array(&[2, 2], &[Some(1), Some(2), Some(3), Some(4)])), "[[1,2],[3,4]]");
        assert_eq!(json(1007, &int4_array(&[], &[])), "[]");
    }

    #[test]
    fn malformed_bytes_are_errors_and_leave_the_buffer_alone() {
        let mut out = b"prefix".to_vec();
        for (oid, data) in [
            (oid::INT4, &b"\x00\x01"[..]),
            (oid::BOOL, b"\x02"),
            (oid::NUMERIC, b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01"),
            (oid::NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10"),
            (oid::JSONB, b"\x02{}"),
            (oid::TEXT, b"\xff"),
            (oid::TIME, &(-1i64).to_be_bytes()),
            (1007, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x17\x7f\xff\xff\xff\x00\x00\x00\x01"),
            (1007, &int4_array(&[3], &[Some(1)])),
            (oid::INTERVAL, b"\x00"),
        ] {
            assert!(write_json(&mut out, oid, data).is_err(), "{oid} {data:?}");
            assert_eq!(out, b"prefix");
        }
        // Fuzz-style: every prefix of valid values, and garbage, never panics.
        let valid = int4_array(&[2, 2], &[Some(1), None, Some(3), Some(4)]);
        for n in 0..valid.len() {
            let _ = write_json(&mut out, 1007, &valid[..n]);
        }
        let num = numeric(&[1, 2345, 6780], 1, NUMERIC_POS, 3);
        for n in 0..num.len() {
            let _ = write_json(&mut out, oid::NUMERIC, &num[..n]);
        }
    }
}
