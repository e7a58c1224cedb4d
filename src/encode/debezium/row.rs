//! The Debezium envelope's value: `before`, `after` and `source` as Debezium writes them, with Debezium's numbers for
//! dates, times and timestamps.

use super::op_letter;
use crate::change::{Change, Datum, Op, Row};
use crate::encode::{write_datum, EncodeError, SourceInfo};
use crate::postgres::value::{oid, write_json_string};

/// Appends the Debezium envelope of `change` (the JsonConverter payload).
pub(super) fn envelope(
    out: &mut Vec<u8>,
    change: &Change,
    source: &SourceInfo,
    server_name: &str,
    json_as_string: bool,
    placeholder: Option<&str>,
) -> Result<(), EncodeError> {
    let table = &*change.table;
    let ts_ms = change.tx.commit_time_us.div_euclid(1000);
    // Debezium 2.6+ sends the same time in micro- and nanoseconds next to `ts_ms` (`ts_us`, `ts_ns`).
    let ts_us = change.tx.commit_time_us;
    let ts_ns = ts_us.saturating_mul(1000);
    let write_times = |out: &mut Vec<u8>| {
        out.extend_from_slice(b",\"ts_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ms).as_bytes());
        out.extend_from_slice(b",\"ts_us\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_us).as_bytes());
        out.extend_from_slice(b",\"ts_ns\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ns).as_bytes());
    };
    out.extend_from_slice(b"{\"before\":");
    write_row(out, change, change.before.as_ref(), change.before_is_key_only, json_as_string, None)?;
    out.extend_from_slice(b",\"after\":");
    write_row(out, change, change.after.as_ref(), false, json_as_string, placeholder)?;
    out.extend_from_slice(b",\"source\":{\"version\":\"ficus-");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\",\"connector\":\"postgresql\",\"name\":");
    write_json_string(out, server_name);
    write_times(out);
    out.extend_from_slice(if change.op == Op::Read { b",\"snapshot\":\"true\"" } else { b",\"snapshot\":\"false\"" });
    out.extend_from_slice(b",\"db\":");
    write_json_string(out, &source.database);
    // Debezium's `sequence`: a JSON array of two LSNs as decimal strings, itself a string. ficus puts the commit LSN
    // of the change's own transaction first (Debezium: the last commit before it), so a replay gives the same bytes;
    // both orders sort changes the same way.
    out.extend_from_slice(b",\"sequence\":\"[\\\"");
    out.extend_from_slice(itoa::Buffer::new().format(change.tx.commit_lsn.0).as_bytes());
    out.extend_from_slice(b"\\\",\\\"");
    out.extend_from_slice(itoa::Buffer::new().format(change.lsn.0).as_bytes());
    out.extend_from_slice(b"\\\"]\",\"schema\":");
    write_json_string(out, &table.schema);
    out.extend_from_slice(b",\"table\":");
    write_json_string(out, &table.name);
    out.extend_from_slice(b",\"txId\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.tx.xid).as_bytes());
    out.extend_from_slice(b",\"lsn\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.lsn.0).as_bytes());
    out.extend_from_slice(b",\"xmin\":null},\"op\":\"");
    out.extend_from_slice(op_letter(change.op).as_bytes());
    out.push(b'"');
    write_times(out);
    out.extend_from_slice(b",\"transaction\":null}");
    Ok(())
}

/// `before` or `after` as Debezium writes it: placeholder columns of a key-only old row and unchanged TOAST values
/// the server did not send are left out (an old row under REPLICA IDENTITY FULL fills the latter in `after`); dates,
/// times and timestamps without time zone as Debezium's numbers (`io.debezium.time.Date`: days since the epoch,
/// `MicroTime`: microseconds since midnight, `MicroTimestamp`: microseconds since the epoch; ±infinity as the
/// largest/smallest int64 resp. int32); json/jsonb as a string with `json_as_string`.
fn write_row(
    out: &mut Vec<u8>,
    change: &Change,
    row: Option<&Row>,
    key_only: bool,
    json_as_string: bool,
    placeholder: Option<&str>,
) -> Result<(), EncodeError> {
    let table = &*change.table;
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    let is_after = change.after.as_ref().is_some_and(|a| std::ptr::eq(a, row));
    out.push(b'{');
    let mut first = true;
    let mut scratch = Vec::new();
    for (i, (col, datum)) in table.columns.iter().zip(row.iter()).enumerate() {
        if key_only && !col.is_key {
            continue;
        }
        let datum = match datum {
            Datum::UnchangedToast => {
                let old = change
                    .before
                    .as_ref()
                    .filter(|_| is_after && !change.before_is_key_only)
                    .and_then(|b| b.get(i))
                    .filter(|d| !matches!(d, Datum::UnchangedToast));
                match (old, placeholder) {
                    (Some(d), _) => d,
                    (None, Some(p)) => {
                        // Debezium's placeholder, in the column's JSON type: base64 bytes for bytea, a one-element
                        // array for arrays, else a string.
                        if !std::mem::replace(&mut first, false) {
                            out.push(b',');
                        }
                        write_json_string(out, &col.name);
                        out.push(b':');
                        if col.type_oid == oid::BYTEA {
                            out.push(b'"');
                            crate::postgres::value::append_base64(out, p.as_bytes());
                            out.push(b'"');
                        } else if crate::postgres::value::array_element_type(col.type_oid).is_some() {
                            out.push(b'[');
                            write_json_string(out, p);
                            out.push(b']');
                        } else {
                            write_json_string(out, p);
                        }
                        continue;
                    }
                    (None, None) => continue,
                }
            }
            d => d,
        };
        if !std::mem::replace(&mut first, false) {
            out.push(b',');
        }
        write_json_string(out, &col.name);
        out.push(b':');
        if matches!(datum, Datum::Null) {
            out.extend_from_slice(b"null");
            continue;
        }
        match col.type_oid {
            oid::JSON | oid::JSONB if json_as_string => {
                scratch.clear();
                write_datum(&mut scratch, table, i, datum)?;
                write_json_string(out, &String::from_utf8_lossy(&scratch));
            }
            oid::DATE | oid::TIMESTAMP | oid::TIME => {
                scratch.clear();
                write_datum(&mut scratch, table, i, datum)?;
                let text = std::str::from_utf8(&scratch).unwrap_or("").trim_matches('"');
                let number = match col.type_oid {
                    oid::DATE => iso_date_days(text).map(|d| d.clamp(i32::MIN as i64, i32::MAX as i64)),
                    oid::TIMESTAMP => iso_timestamp_micros(text),
                    _ => clock_micros(text),
                };
                match number {
                    Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                    // Not a form ficus writes: keep its text rather than lose the value.
                    None => write_json_string(out, text),
                }
            }
            _ => write_datum(out, table, i, datum)?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// Days since 1970-01-01 of ficus's ISO date (`[+-]YYYY-MM-DD`, astronomical years); ±infinity as i32's extremes.
pub(super) fn iso_date_days(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i32::MAX as i64),
        "-infinity" => return Some(i32::MIN as i64),
        _ => {}
    }
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let mut parts = body.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let year = if neg { -year } else { year };
    // H. Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Microseconds since midnight of `HH:MM:SS[.ffffff]`.
pub(super) fn clock_micros(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.splitn(3, ':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut micros: i64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    for _ in frac.len()..6 {
        micros *= 10;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

/// Microseconds since the epoch of ficus's ISO timestamp without time zone (`<date>T<clock>`); ±infinity as i64's
/// extremes.
pub(super) fn iso_timestamp_micros(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (date, clock) = s.split_once('T')?;
    let days = iso_date_days(date)?;
    days.checked_mul(86_400_000_000)?.checked_add(clock_micros(clock)?)
}
