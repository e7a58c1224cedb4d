//! One chunk of a table: the SQL that reads it and the parser for what `COPY ... TO STDOUT` sends back.
//!
//! A chunk is `COPY (SELECT <columns> FROM <table> WHERE (<key>) > (<last key>) [AND (<filter>)] ORDER BY <key>
//! LIMIT n) TO STDOUT`: one statement, so one short transaction that holds no snapshot beyond it; the key order
//! uses the primary-key index. COPY's text format carries every value exactly as the type's output function
//! writes it — the same text pgoutput sends — so snapshot rows and streamed rows map to identical JSON.
//!
//! Identifiers are always quoted; key values become quoted literals (`'` doubled, `standard_conforming_strings`
//! on for the session), never spliced raw. The optional filter of `ficus backfill --where` is SQL by design; it
//! must pass [`check_filter`] (a self-contained expression that cannot close the surrounding parentheses, end the
//! statement or comment the rest out), and the session is read-only.

use bytes::Bytes;

use crate::change::Datum;
use crate::ident::{quote_ident, TableName};
use crate::json::has_byte;

/// What a chunk query needs to know about its table.
#[derive(Debug, Clone)]
pub struct ChunkQuery {
    pub table: TableName,
    /// Every published column, in table order.
    pub columns: Vec<String>,
    /// Indexes into `columns` of the key columns, in key order.
    pub key: Vec<usize>,
    /// Extra condition (`ficus backfill --where`), already checked.
    pub filter: Option<String>,
    /// The key range read (`from <= first key column < to`, text forms), when the table is split.
    pub range: Option<(Option<String>, Option<String>)>,
}

impl ChunkQuery {
    /// The COPY statement for the `limit` rows after `after` (the last key of the previous chunk).
    pub fn sql(&self, after: Option<&[String]>, limit: u32) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let key: Vec<&str> = self.key.iter().map(|&i| cols[i].as_str()).collect();
        let mut conditions = Vec::new();
        if let Some(after) = after {
            let lits: Vec<String> = after.iter().map(|v| quote_literal(v)).collect();
            conditions.push(format!("({}) > ({})", key.join(", "), lits.join(", ")));
        }
        if let Some((from, to)) = &self.range {
            // Compared as the column's type: the literal takes the column's type, as the cursor's do.
            let first = key[0];
            if let Some(from) = from {
                conditions.push(format!("{first} >= {}", quote_literal(from)));
            }
            if let Some(to) = to {
                conditions.push(format!("{first} < {}", quote_literal(to)));
            }
        }
        if let Some(f) = &self.filter {
            conditions.push(format!("({f})"));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        format!(
            "COPY (SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}) TO STDOUT",
            cols.join(", "),
            self.table.quoted(),
            key.join(", ")
        )
    }
}

/// The query sampling the first key column's values, sorted in the column's order, as text: about `sample` rows
/// of a table of about `estimate` rows (`TABLESAMPLE SYSTEM` reads whole pages, a small part of the table).
pub fn sample_sql(query: &ChunkQuery, estimate: u64, sample: u64) -> String {
    let percent = (sample as f64 * 100.0 / estimate.max(1) as f64).clamp(0.0001, 100.0);
    let first = quote_ident(&query.columns[query.key[0]]);
    // Sorted by the column itself (not its text): boundaries must follow the order the chunks are read in.
    format!(
        "SELECT s.k::text FROM (SELECT {first} AS k FROM {} TABLESAMPLE SYSTEM ({percent})) s WHERE s.k IS NOT NULL \
         ORDER BY s.k",
        query.table.quoted()
    )
}

/// Splits a table into `parts` ranges of about equal size from `sorted`, sampled values of its first key column in
/// the column's order: the ranges' `(from, to)` bounds (`from <= value < to`, `None` = open end), covering every
/// value exactly once. Fewer ranges when the sample has fewer distinct values; one (no split) without a sample.
pub fn ranges_from_sample(sorted: &[String], parts: usize) -> Vec<(Option<String>, Option<String>)> {
    let mut bounds: Vec<&String> = Vec::new();
    for i in (1..parts).filter(|_| !sorted.is_empty()) {
        let b = &sorted[i * sorted.len() / parts];
        // Equal values cannot be told apart by the first key column: one boundary for them.
        if bounds.last() != Some(&b) && sorted.first() != Some(b) {
            bounds.push(b);
        }
    }
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut from = None;
    for b in bounds {
        ranges.push((from, Some(b.clone())));
        from = Some(b.clone());
    }
    ranges.push((from, None));
    ranges
}

/// `'text'` with embedded quotes doubled (valid with `standard_conforming_strings = on`, which the snapshot
/// session sets). PostgreSQL text never holds NUL, the one byte a literal cannot carry.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A malformed COPY row.
#[derive(Debug, thiserror::Error)]
#[error("COPY row {row}: {message}")]
pub struct CopyError {
    pub row: usize,
    pub message: String,
}

/// Parses one COPY text-format row (tab-separated, `\N` = NULL, backslash escapes, ending in a newline) into
/// `columns` datums. Values without escapes are slices of `line` (no copy).
pub fn parse_row(line: &Bytes, columns: usize, row: usize) -> Result<Vec<Datum>, CopyError> {
    let err = |message: String| CopyError { row, message };
    let body = match line.last() {
        Some(b'\n') => line.slice(..line.len() - 1),
        _ => return Err(err("does not end with a newline".into())),
    };
    let mut out = Vec::with_capacity(columns);
    let bytes = &body[..];
    // One pass over the row's bytes for tabs and backslashes: the fields are short, and two memchr calls per field
    // (a tab, then an escape) cost more in their set-up than this loop over every byte.
    let mut field = |start: usize, end: usize, escaped: bool| -> Result<(), CopyError> {
        let text = &bytes[start..end];
        out.push(if text == b"\\N" {
            Datum::Null
        } else if !escaped {
            Datum::Text(body.slice(start..end))
        } else {
            Datum::Text(Bytes::from(unescape(text).map_err(err)?))
        });
        Ok(())
    };
    let (mut start, mut escaped) = (0, false);
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while they hold neither a tab nor a backslash (most of every value).
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if !has_byte(word, b'\t') && !has_byte(word, b'\\') {
                i += 8;
                continue;
            }
        }
        for (j, &b) in bytes.iter().enumerate().skip(i).take(8) {
            if b == b'\t' {
                field(start, j, escaped)?;
                (start, escaped) = (j + 1, false);
            } else if b == b'\\' {
                escaped = true;
            }
        }
        i += 8;
    }
    field(start, bytes.len(), escaped)?;
    if out.len() != columns {
        return Err(err(format!("has {} fields, expected {columns}", out.len())));
    }
    Ok(out)
}

/// Undoes COPY's text-format escapes (`\b \f \n \r \t \v \\`, octal `\ooo`, hex `\xhh`; any other escaped
/// character stands for itself, as `COPY FROM` reads it).
fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = field.get(i) else { return Err("ends with a lone backslash".into()) };
        i += 1;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d) if d.is_ascii_hexdigit() => {
                            v = v * 16 + (*d as char).to_digit(16).unwrap_or(0);
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Checks a `--where` filter: non-empty, no `;`, no comments, balanced parentheses that never close one the
/// filter did not open — outside string literals and quoted identifiers. That keeps the filter inside the
/// parentheses ficus puts around it, so it can only narrow the rows of its own table.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("is empty".into());
    }
    let b = filter.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                // To the closing quote; a doubled quote is an escaped one.
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("has an unterminated quote".into()),
                        Some(&c) if c == q && b.get(i + 1) == Some(&q) => i += 2,
                        Some(&c) if c == q => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'$' => return Err("uses dollar quoting; use '...' literals".into()),
            b';' => return Err("contains `;`: give one condition, not statements".into()),
            b'-' if b.get(i + 1) == Some(&b'-') => return Err("contains a comment (`--`)".into()),
            b'/' if b.get(i + 1) == Some(&b'*') => return Err("contains a comment (`/*`)".into()),
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("closes a parenthesis it did not open".into());
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("has unbalanced parentheses".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(d: &Datum) -> &[u8] {
        match d {
            Datum::Text(b) => b,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn sql_quotes_identifiers_and_key_literals() {
        let q = ChunkQuery {
            table: TableName { schema: "legacy".into(), name: "Order \"Lines\"".into() },
            columns: vec!["order id".into(), "line".into(), "note".into()],
            key: vec![0, 1],
            filter: None,
            range: None,
        };
        assert_eq!(
            q.sql(None, 5),
            r#"COPY (SELECT "order id", "line", "note" FROM "legacy"."Order ""Lines""" ORDER BY "order id", "line" LIMIT 5) TO STDOUT"#
        );
        let after = ["4".to_string(), "it's".to_string()];
        let q = ChunkQuery { filter: Some("note <> ''".into()), ..q };
        assert_eq!(
            q.sql(Some(&after), 5),
            r#"COPY (SELECT "order id", "line", "note" FROM "legacy"."Order ""Lines""" WHERE ("order id", "line") > ('4', 'it''s') AND (note <> '') ORDER BY "order id", "line" LIMIT 5) TO STDOUT"#
        );
    }

    #[test]
    fn a_key_range_bounds_the_first_key_column() {
        let q = ChunkQuery {
            table: TableName { schema: "public".into(), name: "t".into() },
            columns: vec!["a".into(), "b".into()],
            key: vec![1, 0],
            filter: None,
            range: Some((Some("1'0".into()), Some("20".into()))),
        };
        assert_eq!(
            q.sql(Some(&["15".to_string(), "x".to_string()]), 3),
            r#"COPY (SELECT "a", "b" FROM "public"."t" WHERE ("b", "a") > ('15', 'x') AND "b" >= '1''0' AND "b" < '20' ORDER BY "b", "a" LIMIT 3) TO STDOUT"#
        );
        let q = ChunkQuery { range: Some((None, Some("20".into()))), ..q };
        assert!(q.sql(None, 3).contains(r#"WHERE "b" < '20' ORDER"#));
        assert!(sample_sql(&q, 1000, 10).contains(r#"SELECT "b" AS k FROM "public"."t" TABLESAMPLE SYSTEM (1)"#));
    }

    #[test]
    fn ranges_from_a_sample_cover_every_value_once() {
        let sample: Vec<String> = (10..22).map(|i| i.to_string()).collect();
        let r = |f: Option<&str>, t: Option<&str>| (f.map(str::to_string), t.map(str::to_string));
        assert_eq!(
            ranges_from_sample(&sample, 3),
            vec![r(None, Some("14")), r(Some("14"), Some("18")), r(Some("18"), None)]
        );
        assert_eq!(ranges_from_sample(&sample, 1), vec![r(None, None)]);
        assert_eq!(ranges_from_sample(&[], 4), vec![r(None, None)], "no sample: no split");
        // Repeated first-column values (a composite key) give one boundary, never an empty or inverted range.
        let repeated: Vec<String> = ["a", "a", "a", "a", "a", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(ranges_from_sample(&repeated, 4), vec![r(None, Some("b")), r(Some("b"), None)]);
        assert_eq!(ranges_from_sample(&["x".to_string()], 3), vec![r(None, None)]);
    }

    #[test]
    fn copy_rows_parse_nulls_escapes_and_empty_strings() {
        let line = Bytes::from_static(b"42\t\\N\ta\\tb\\\\c\\nd\t\t\\101\\x41\\q\n");
        let row = parse_row(&line, 5, 0).unwrap();
        assert_eq!(text(&row[0]), b"42");
        assert_eq!(row[1], Datum::Null);
        assert_eq!(text(&row[2]), b"a\tb\\c\nd");
        assert_eq!(text(&row[3]), b"");
        assert_eq!(text(&row[4]), b"AAq");
    }

    /// The word-at-a-time field split against std's split on tabs, over rows whose tabs, escapes and `\\N`s fall at
    /// every offset of the eight-byte words.
    #[test]
    fn copy_rows_split_as_std_splits_them() {
        let mut rng = crate::testing::SplitMix64::new(11u64);
        let mut next = || rng.next_u64();
        let pieces: [&[u8]; 8] = [b"a", b"7", b"\t", b"\\N", b"\\\\", b"\\t", "é".as_bytes(), b"xyz12345"];
        for _ in 0..20_000 {
            let mut line = Vec::new();
            for _ in 0..next() % 40 {
                line.extend_from_slice(pieces[(next() % 8) as usize]);
            }
            line.push(b'\n');
            let body = &line[..line.len() - 1];
            let expected: Vec<Datum> = body
                .split(|&b| b == b'\t')
                .map(|f| match f {
                    b"\\N" => Datum::Null,
                    f if f.contains(&b'\\') => Datum::Text(Bytes::from(unescape(f).unwrap())),
                    f => Datum::Text(Bytes::copy_from_slice(f)),
                })
                .collect();
            let row = parse_row(&Bytes::from(line.clone()), expected.len(), 0).unwrap();
            assert_eq!(row, expected, "{:?}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn malformed_copy_rows_are_errors() {
        assert!(parse_row(&Bytes::from_static(b"1\t2"), 2, 0).is_err());
        assert!(parse_row(&Bytes::from_static(b"1\t2\n"), 3, 0).unwrap_err().to_string().contains("expected 3"));
        assert!(parse_row(&Bytes::from_static(b"1\\\n"), 1, 7).unwrap_err().to_string().contains("row 7"));
        assert!(parse_row(&Bytes::from_static(b""), 1, 0).is_err());
    }

    #[test]
    fn filters_cannot_escape_their_parentheses() {
        for ok in ["status = 'paid'", "id in (select id from x where y = ')')", "\"Weird)\" > 3", "a = 'it''s;--'"] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "1=1) UNION SELECT * FROM secrets WHERE (true",
            "true; DROP TABLE orders",
            "true --",
            "true /* x */",
            "(true",
            "'open",
            "$$x$$ = 'x'",
            "  ",
        ] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }
}
