//! JSON primitives shared by the encoders, the rules' DLQ records and the dry-run printer: string escaping
//! ([`write_json_string`]) and a validating scanner ([`validate_json`]) for JSON text that is embedded as is.
//! The bottom floor: imports nothing from the crate.
//!
//! **Guarantee:** [`write_json_string`] writes a valid JSON string for any `&str`; [`validate_json`] accepts exactly
//! one JSON value (RFC 8259) and never panics on any input.

/// Appends `s` as a JSON string literal (quotes, backslash, and control characters escaped; other Unicode kept).
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Nearly every string (names, ids, numbers as text, dates) has nothing to escape: one word test per eight bytes
    // and one copy. The rules' envelopes write seven short strings per event, where the byte loop below cost ~150
    // instructions each (callgrind).
    if !any_needs_escape(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none needs escaping (most text, every number and date): one word test
        // instead of eight table lookups. The first word that holds one is looked at byte by byte.
        while let Some(word) = bytes.get(i..i + 8) {
            if needs_escape(u64::from_le_bytes(word.try_into().unwrap_or_default())) {
                break;
            }
            i += 8;
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            let escape = ESCAPE[usize::from(b)];
            if escape != 0 {
                out.extend_from_slice(&bytes[start..i]);
                if escape == b'u' {
                    out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ]);
                } else {
                    out.extend_from_slice(&[b'\\', escape]);
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte of `bytes` needs escaping ([`needs_escape`] over words; the last partial word is padded with
/// spaces, which never do).
fn any_needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    if words.by_ref().any(|w| needs_escape(u64::from_le_bytes(w.try_into().unwrap_or_default()))) {
        return true;
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return false;
    }
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    needs_escape(u64::from_le_bytes(last))
}

/// Whether any of the eight bytes of `word` is a control character (< 0x20), `"` or `\\` — the bytes [`ESCAPE`]
/// marks. Exact for "any" (the bit tricks of "Bit Twiddling Hacks", `hasless` and `haszero`): a borrow can only
/// mark a byte above one that really matches.
fn needs_escape(word: u64) -> bool {
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0;
    control || has_byte(word, b'"') || has_byte(word, b'\\')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `word` is `byte` (exact: "Bit Twiddling Hacks", `haszero` of the XOR). The word
/// test of the scans that skip eight bytes at a time (here and in the snapshot's COPY row splitter).
pub(crate) fn has_byte(word: u64, byte: u8) -> bool {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGH != 0
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

/// Length of the JSON number at the start of `b`, if one starts there.
pub(crate) fn json_number_len(b: &[u8]) -> Option<usize> {
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
    string_end(b, i, true)
}

/// [`json_string_end`]; `by_words` false scans byte by byte (the tests' reference for the word skip).
fn string_end(b: &[u8], i: usize, by_words: bool) -> Result<usize, &'static str> {
    let mut j = i + 1;
    loop {
        // Eight bytes at a time while none is a quote, a backslash or a control character — the bytes the match
        // below stops at; every other byte only moves on. A jsonb document is mostly string content: byte by byte,
        // this scan was a fifth of ficus's CPU on the wide-rows benchmark.
        while let Some(word) = b.get(j..j + 8).filter(|_| by_words) {
            if needs_escape(u64::from_le_bytes(word.try_into().unwrap_or_default())) {
                break;
            }
            j += 8;
        }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The word-at-a-time string scan ends (or fails) exactly where the byte-by-byte one does: every byte that stops
    /// the scan (quote, backslash and its escapes, each control character) and neighbours that must not (`!`, `#`,
    /// `[`, `]`, DEL, multi-byte UTF-8), at every offset of strings shorter and longer than a word, plus random bytes.
    #[test]
    fn string_scan_by_words_agrees_with_the_scan_by_bytes() {
        let specials: Vec<&[u8]> = vec![
            b"\"",
            b"\\\"",
            b"\\n",
            b"\\u00e9",
            b"\\u12",
            b"\\x",
            b"\\",
            b"\x00",
            b"\x1f",
            b"\t",
            b" ",
            b"!",
            b"#",
            b"[",
            b"]",
            b"\x7f",
            "é".as_bytes(),
            "😀".as_bytes(),
            b"/",
            b"a",
        ];
        let mut checked = 0;
        for len in 0..26 {
            for at in 0..=len {
                for special in &specials {
                    for tail in [&b""[..], b"\"", b"x\"", b"\" , 1]"] {
                        let mut doc = b"\"".to_vec();
                        doc.extend(std::iter::repeat_n(b'a', at));
                        doc.extend_from_slice(special);
                        doc.extend(std::iter::repeat_n(b'b', len - at));
                        doc.extend_from_slice(tail);
                        assert_eq!(
                            json_string_end(&doc, 0),
                            string_end(&doc, 0, false),
                            "{:?}",
                            String::from_utf8_lossy(&doc)
                        );
                        checked += 1;
                    }
                }
            }
        }
        let mut rng = crate::testing::SplitMix64::new(7);
        let alphabet = b"ab\"\\\x01\x1f u0123456789 /!#\x7f\xc3\xa9";
        for _ in 0..50_000 {
            let len = (rng.next_u64() % 40) as usize;
            let mut doc = vec![b'"'];
            doc.extend((0..len).map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize]));
            assert_eq!(json_string_end(&doc, 0), string_end(&doc, 0, false), "{:?}", String::from_utf8_lossy(&doc));
            checked += 1;
        }
        assert!(checked > 60_000);
    }

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    /// Every character that needs escaping (and its neighbours in the byte range), at every offset of strings
    /// longer and shorter than a word, against serde_json's escaping: the word-at-a-time scan may skip nothing.
    #[test]
    fn every_escaped_byte_at_every_offset_matches_serde_json() {
        let specials: Vec<char> =
            (0u8..0x20).map(char::from).chain(['"', '\\', '!', '#', '[', ']', '\u{7f}', 'é', '€', '😀']).collect();
        for len in 0..20 {
            for at in 0..len {
                for &c in &specials {
                    let s: String = (0..len).map(|i| if i == at { c } else { 'a' }).collect();
                    assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_does(s in any::<String>(), pad in 0usize..9) {
            let s = format!("{}{s}", "x".repeat(pad));
            prop_assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn word_test_agrees_with_the_table(word in any::<u64>()) {
            let expected = word.to_le_bytes().iter().any(|&b| ESCAPE[usize::from(b)] != 0);
            prop_assert_eq!(needs_escape(word), expected);
        }
    }
}
