//! Text-format arrays (`{1,2,"a b",NULL}`, nested, with a `[lo:hi]=` dimension prefix) → JSON arrays, elements
//! mapped by the element type.

use super::{utf8_len, write_scalar, ValueError};

/// PostgreSQL array text (`{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={1,2}`) → JSON array.
pub(super) fn write_array(out: &mut Vec<u8>, array_oid: u32, elem_oid: u32, s: &str) -> Result<(), ValueError> {
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
