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
//! `tests/pipeline/core.rs` (`binary_values_match_text_values_and_new_types_fall_back_to_text`) streams the same rows in
//! both modes and asserts identical events.
//!
//! **Guarantees:** [`write_json`] appends exactly one JSON value or returns a [`ValueError`] and leaves the buffer
//! as it was; truncated or malformed bytes never panic. Errors name the type OID, never the value.

use super as value;
use super::time::{clock_text, fraction_text};
use super::{append_base64, civil_from_days, oid, push_digits, validate_json, write_json_string, ValueError};

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
            out.extend_from_slice(
                itoa::Buffer::new().format(i16::from_be_bytes(fixed(b).ok_or_else(size)?)).as_bytes(),
            );
        }
        oid::INT4 => {
            out.extend_from_slice(
                itoa::Buffer::new().format(i32::from_be_bytes(fixed(b).ok_or_else(size)?)).as_bytes(),
            );
        }
        oid::INT8 => {
            out.extend_from_slice(
                itoa::Buffer::new().format(i64::from_be_bytes(fixed(b).ok_or_else(size)?)).as_bytes(),
            );
        }
        oid::OID => {
            out.extend_from_slice(
                itoa::Buffer::new().format(u32::from_be_bytes(fixed(b).ok_or_else(size)?)).as_bytes(),
            );
        }
        oid::FLOAT4 => {
            let v = f32::from_be_bytes(fixed(b).ok_or_else(size)?);
            write_float_fast(out, v, f64::from(v), 6);
        }
        oid::FLOAT8 => {
            let v = f64::from_be_bytes(fixed(b).ok_or_else(size)?);
            write_float_fast(out, v, v, 15);
        }
        oid::NUMERIC => write_numeric(out, b).map_err(invalid)?,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => {
            write_json_string(out, value::utf8(b).map_err(|_| ValueError::InvalidUtf8 { type_oid })?);
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
                out.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
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
                    let days = us.div_euclid(86_400_000_000) + PG_EPOCH_DAYS;
                    let of_day = us.rem_euclid(86_400_000_000);
                    match super::time::date_time_text(days, (of_day / 1_000_000) as u32) {
                        Some(text) => {
                            out.extend_from_slice(&text);
                            write_fraction(out, (of_day % 1_000_000) as u32);
                        }
                        None => {
                            write_date(out, days);
                            out.push(b'T');
                            write_clock(out, of_day);
                        }
                    }
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
    super::time::write_year(out, year);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
}

/// `HH:MM:SS[.f]` with trailing fractional zeros trimmed, like PostgreSQL's time output.
fn write_clock(out: &mut Vec<u8>, us: i64) {
    out.extend_from_slice(&clock_text((us / 1_000_000) as u32));
    write_fraction(out, (us % 1_000_000) as u32);
}

/// `.ffffff` of `micros` with trailing zeros trimmed; nothing for zero.
fn write_fraction(out: &mut Vec<u8>, micros: u32) {
    if micros == 0 {
        return;
    }
    let fraction = fraction_text(micros);
    let mut len = 7;
    while fraction[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(&fraction[..len]);
}

/// [`write_float`] of `v` (`wide`: the same value as an f64). zmij's own text is already PostgreSQL's for most
/// values — a plain decimal with the same shortest digits — and is then copied as it is, without zmij's `.0` on
/// whole numbers; zero, the values PostgreSQL writes with an exponent and zmij's exponent forms go through
/// [`Shortest`].
fn write_float_fast<F: zmij::Float>(out: &mut Vec<u8>, v: F, wide: f64, max_fixed_exp: i32) {
    if !wide.is_finite() {
        write_float(out, wide, None, max_fixed_exp);
        return;
    }
    let mut formatter = zmij::Buffer::new();
    let text = formatter.format_finite(v).as_bytes();
    if wide != 0.0 {
        let body = text.strip_prefix(b"-").unwrap_or(text);
        if let (Some(dot), None) = (body.iter().position(|&b| b == b'.'), body.iter().position(|&b| b == b'e')) {
            // The power of ten of the first significant digit: `123.4` 2, `0.0012` -3.
            let exp = if body.first() == Some(&b'0') {
                -(body[dot + 1..].iter().take_while(|&&b| b == b'0').count() as i32) - 1
            } else {
                dot as i32 - 1
            };
            if (-4..max_fixed_exp).contains(&exp) {
                out.extend_from_slice(text.strip_suffix(b".0").unwrap_or(text));
                return;
            }
        }
    }
    write_float(out, wide, Some(Shortest::parse(text)), max_fixed_exp);
}

/// A float as PostgreSQL prints it with `extra_float_digits > 0`: the shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in `-4..max_fixed_exp`, else as `d.ddde+XX`. `digits` are the value's
/// ([`Shortest::parse`]: Ryu's, which PostgreSQL uses; Rust's own `{:e}` rounds ties differently); `None`: not finite.
fn write_float(out: &mut Vec<u8>, v: f64, digits: Option<Shortest>, max_fixed_exp: i32) {
    let Some(Shortest { negative, digits: digit_buf, n, exp }) = digits else {
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
    if negative {
        out.push(b'-');
    }
    if n == 0 {
        out.push(b'0');
        return;
    }
    let digits = &digit_buf[..n];
    if (-4..max_fixed_exp).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
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
        out.extend_from_slice(if exp < 0 { b"e-" } else { b"e+" });
        if exp.unsigned_abs() < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(itoa::Buffer::new().format(exp.unsigned_abs()).as_bytes());
    }
}

/// Room for the significant digits of any float (17 for an f64), with margin.
const SCI_BUF: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A finite float's shortest decimal, `±d.ddd × 10^exp`, with PostgreSQL's digits: the shortest that read back as
/// the value, a tie rounded half to even (Rust's `{:e}` rounds ties up). The digits come from zmij (dtolnay's
/// Schubfach formatter, the one serde_json uses) and are taken apart here, on the stack: this runs for every float
/// value of every change, and core's `{:e}` machinery cost ~5% of the null sink's CPU on a table with one float8
/// column. The tests compare it with `{:e}` over random bit patterns of both widths (equal but for ties) and with
/// PostgreSQL itself.
#[derive(Clone, Copy)]
struct Shortest {
    negative: bool,
    /// The significant digits (ASCII), `..n`; `n == 0` for zero. No leading or trailing zeros.
    digits: [u8; SCI_BUF],
    n: usize,
    /// The power of ten of the first digit.
    exp: i32,
}

impl Shortest {
    /// The digits of `v` (finite).
    #[cfg(test)]
    fn of<F: zmij::Float>(v: F) -> Shortest {
        Shortest::parse(zmij::Buffer::new().format_finite(v).as_bytes())
    }

    /// The digits of zmij's text of a finite float.
    fn parse(text: &[u8]) -> Shortest {
        let (negative, body) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        // zmij writes `1.5`, `0.001`, `1e+16` or `1.2345e-7`: a mantissa in decimal and an optional exponent.
        let (mantissa, mut exp) = match body.iter().position(|&b| b == b'e') {
            Some(i) => (&body[..i], parse_exponent(&body[i + 1..])),
            None => (body, 0),
        };
        let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, &[][..]),
        };
        exp += i32::try_from(int.len()).unwrap_or(0) - 1;
        // The significant digits: leading zeros move the exponent, trailing zeros go.
        let mut digits = [0u8; SCI_BUF];
        let mut n = 0;
        for &d in int.iter().chain(frac) {
            if n == 0 && d == b'0' {
                exp -= 1;
            } else if n < SCI_BUF {
                digits[n] = d;
                n += 1;
            }
        }
        while n > 0 && digits[n - 1] == b'0' {
            n -= 1;
        }
        if n == 0 {
            exp = 0;
        }
        Shortest { negative, digits, n, exp }
    }
}

/// zmij's exponent (`+16`, `-7`, `5`).
fn parse_exponent(text: &[u8]) -> i32 {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let magnitude = digits.iter().take(4).fold(0i32, |acc, &d| acc * 10 + i32::from(d.wrapping_sub(b'0') % 10));
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// `v` (finite) in the layout of Rust's `{:e}` ("-1.2345e-7", "5e0", "-0e0") with [`Shortest`]'s digits: what the
/// tests compare with `{:e}` and with PostgreSQL.
#[cfg(test)]
fn sci<F: zmij::Float>(buf: &mut [u8; SCI_BUF], v: F) -> &str {
    let Shortest { negative, digits, n, exp } = Shortest::of(v);
    let mut text = Vec::with_capacity(SCI_BUF);
    if negative {
        text.push(b'-');
    }
    if n == 0 {
        text.extend_from_slice(b"0e0");
    } else {
        text.push(digits[0]);
        if n > 1 {
            text.push(b'.');
            text.extend_from_slice(&digits[1..n]);
        }
        text.push(b'e');
        text.extend_from_slice(itoa::Buffer::new().format(exp).as_bytes());
    }
    let len = text.len().min(SCI_BUF);
    buf[..len].copy_from_slice(&text[..len]);
    std::str::from_utf8(&buf[..len]).unwrap_or("0e0")
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
                out.extend_from_slice(itoa::Buffer::new().format(d).as_bytes());
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
#[path = "binary_tests.rs"]
mod tests;
