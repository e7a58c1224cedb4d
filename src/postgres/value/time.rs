//! Dates, timestamps and the civil-calendar arithmetic behind them: text-format values as PostgreSQL sends them
//! under `DateStyle=ISO`, and microseconds since the Unix epoch, both written as ISO 8601 with astronomical years
//! (see the module docs of `value`).

use std::io::Write as _;

use crate::json::write_json_string;

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
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    match date_time_text(days, sod) {
        Some(text) => out.extend_from_slice(&text),
        None => {
            let (y, m, d) = civil_from_days(days);
            write_year(out, y);
            out.push(b'-');
            push_digits(out, m, 2);
            out.push(b'-');
            push_digits(out, d, 2);
            out.push(b'T');
            out.extend_from_slice(&clock_text(sod));
        }
    }
    out.extend_from_slice(&fraction_text(micros));
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of `days` since the Unix epoch and `sod` seconds into that day, written at once for the
/// years 0000–9999 (`None` outside them: [`write_year`]'s signed forms). Every timestamp of every event goes through
/// here; a digit at a time and a length check per byte cost several times more.
pub(crate) fn date_time_text(days: i64, sod: u32) -> Option<[u8; 19]> {
    let (year, month, day) = civil_0_to_9999(days)?;
    let mut text = *b"0000-00-00T00:00:00";
    text[0..2].copy_from_slice(&pair(year / 100));
    text[2..4].copy_from_slice(&pair(year));
    text[5..7].copy_from_slice(&pair(month));
    text[8..10].copy_from_slice(&pair(day));
    text[11..19].copy_from_slice(&clock_text(sod));
    Some(text)
}

/// `HH:MM:SS` of `secs` seconds into a day (`24:00:00` for 86,400).
pub(crate) fn clock_text(secs: u32) -> [u8; 8] {
    let mut clock = *b"00:00:00";
    clock[0..2].copy_from_slice(&pair(secs / 3600));
    clock[3..5].copy_from_slice(&pair(secs / 60 % 60));
    clock[6..8].copy_from_slice(&pair(secs % 60));
    clock
}

/// `.ffffff`: `micros` (below a million) as six fractional digits.
pub(crate) fn fraction_text(micros: u32) -> [u8; 7] {
    let mut fraction = *b".000000";
    fraction[1..3].copy_from_slice(&pair(micros / 10_000));
    fraction[3..5].copy_from_slice(&pair(micros / 100));
    fraction[5..7].copy_from_slice(&pair(micros));
    fraction
}

/// [`civil_from_days`] for the days of the years 0000–9999 (`None` outside them) in 32-bit arithmetic, after
/// C. Neri and L. Schneider, "Euclidean affine functions and their application to calendar algorithms" (2022): every
/// division is by a constant. Counted from 0000-03-01 minus 400 years, so that January and February of the year 0
/// are not negative.
pub(super) fn civil_0_to_9999(days: i64) -> Option<(u32, u32, u32)> {
    // Days from -0400-03-01 to 1970-01-01 (719_468 from 0000-03-01, plus 146_097 for 400 years).
    const SHIFT: i64 = 719_468 + 146_097;
    // 0000-01-01 and 9999-12-31 as days since 1970-01-01.
    if !(-719_528..=2_932_896).contains(&days) {
        return None;
    }
    let n = (days + SHIFT) as u32;
    let n1 = 4 * n + 3;
    let century = n1 / 146_097;
    let of_century = n1 % 146_097 / 4;
    let p2 = 2_939_745u64 * u64::from(4 * of_century + 3);
    let year_of_century = (p2 >> 32) as u32;
    let day_of_year = (p2 as u32) / 2_939_745 / 4;
    let n3 = 2141 * day_of_year + 197_913;
    let (month, day) = (n3 >> 16, (n3 & 0xFFFF) / 2141 + 1);
    // The computational year starts on March 1st: January and February belong to the next civil year.
    let january_or_february = day_of_year >= 306;
    let year = 100 * century + year_of_century + u32::from(january_or_february) - 400;
    Some((year, if january_or_february { month - 12 } else { month }, day))
}

/// The two last decimal digits of `v`.
fn pair(v: u32) -> [u8; 2] {
    const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839\
        40414243444546474849505152535455565758596061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let i = (v % 100) as usize * 2;
    [PAIRS[i], PAIRS[i + 1]]
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

/// Test oracle for [`write_unix_micros`]'s hand-written digit pushing: the same text built with `format!`.
#[cfg(test)]
pub(super) fn format_unix_micros_civil(us: i64) -> String {
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

/// The parts of an ISO-style PostgreSQL timestamp `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM[:SS]]][ BC]`.
pub(super) struct Timestamp<'a> {
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

pub(super) fn two_digits(s: &str, at: usize, max: u32) -> Option<u32> {
    match s.as_bytes().get(at..at + 2) {
        Some(&[a @ b'0'..=b'9', b @ b'0'..=b'9']) => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0')).filter(|v| *v <= max)
        }
        _ => None,
    }
}

pub(super) fn parse_timestamp(s: &str, with_offset: bool) -> Option<Timestamp<'_>> {
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    };
    // Byte searches: `str::split_once` with a char pattern goes through memchr's machinery, several times the cost
    // of looking at the few bytes of a timestamp.
    let (date, time) = split_at_byte(body, b' ')?;
    let (year_text, month_day) = split_at_byte(date, b'-')?;
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

/// `s` split around the first `byte` (ASCII), which is left out.
fn split_at_byte(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == byte)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// `±HH[:MM[:SS]]` → seconds east of UTC.
pub(super) fn parse_offset(s: &str) -> Option<i64> {
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

pub(super) fn write_timestamp(out: &mut Vec<u8>, s: &str, with_offset: bool) -> Result<(), &'static str> {
    if s == "infinity" || s == "-infinity" {
        write_json_string(out, s);
        return Ok(());
    }
    let t = parse_timestamp(s, with_offset).ok_or("not an ISO timestamp (is DateStyle ISO?)")?;
    if t.offset_seconds == 0 {
        out.push(b'"');
        write_year(out, if t.bc { 1 - t.year } else { t.year });
        let mut month_day = *b"-00-00T";
        month_day[1..3].copy_from_slice(&pair(t.month));
        month_day[4..6].copy_from_slice(&pair(t.day));
        out.extend_from_slice(&month_day);
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
pub(crate) fn write_year(out: &mut Vec<u8>, year: i64) {
    match year {
        0..=9999 => push_digits(out, year as u32, 4),
        -9999..=-1 => {
            out.push(b'-');
            push_digits(out, year.unsigned_abs() as u32, 4);
        }
        // Outside ±9999: a sign and every digit (never reached by PostgreSQL's own range on the negative side).
        y if y < 0 => {
            let _ = write!(out, "-{}", y.unsigned_abs());
        }
        y => {
            let _ = write!(out, "+{y}");
        }
    }
}

/// A date `YYYY-MM-DD[ BC]` (DateStyle ISO) in the form of [`write_year`]; `±infinity` stays as sent.
pub(super) fn write_date(out: &mut Vec<u8>, s: &str) -> Result<(), &'static str> {
    if s == "infinity" || s == "-infinity" {
        write_json_string(out, s);
        return Ok(());
    }
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    };
    let (year_text, month_day) = split_at_byte(body, b'-').ok_or("not an ISO date (is DateStyle ISO?)")?;
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
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
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
