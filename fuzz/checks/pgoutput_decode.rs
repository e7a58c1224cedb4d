//! The checks of the `pgoutput_decode` fuzz target, shared with the seed replay of `cargo test`
//! (tests/fuzz_seeds.rs, which includes this file): the pgoutput decoder, `ficus::postgres::pgoutput::decode`: the input is one XLogData payload (one
//! pgoutput message, as the server sends it).
//!
//! Contract checked (src/postgres/pgoutput.rs, "Guarantees"): any bytes decode to a message or a `DecodeError`,
//! never a panic (arithmetic overflow included: cargo fuzz builds with overflow checks), an endless loop, or an
//! allocation beyond what the input could describe (libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb` and
//! `-timeout` catch those). When decoding succeeds, additionally:
//! - column values and message content are zero-copy slices of the input, and no larger than it;
//! - there are no more columns/relations than input bytes (every element takes at least one byte);
//! - the message is exact: the same bytes minus the last one, or plus a trailing byte, are errors;
//! - decoding is deterministic.

use bytes::Bytes;
use ficus::change::Datum;
use ficus::postgres::pgoutput::{decode, DecodeError, Message};

/// One input through the decoder and the checks; true when it decoded (the replay test holds the seeds to that).
pub fn run(data: &[u8]) -> bool {
    let buf = Bytes::copy_from_slice(data);
    match decode(buf.clone()) {
        Ok(message) => {
            check_success(&buf, &message);
            true
        }
        // Errors are fine; rendering them must not panic either.
        Err(e) => {
            drop(e.to_string());
            false
        }
    }
}

fn check_success(buf: &Bytes, message: &Message) {
    let _ = format!("{message:?}");
    let (values, elements): (Vec<&Bytes>, usize) = match message {
        Message::Insert { new, .. } => (datums(new).collect(), new.len()),
        Message::Update { old, new, .. } => {
            let old_values = old.as_ref().map_or(&[][..], |o| &o.values[..]);
            (datums(old_values).chain(datums(new)).collect(), old_values.len() + new.len())
        }
        Message::Delete { old, .. } => (datums(&old.values).collect(), old.values.len()),
        Message::LogicalMessage { content, .. } => (vec![content], 0),
        Message::Relation(r) => (Vec::new(), r.columns.len()),
        Message::Truncate { relations, .. } => (Vec::new(), relations.len()),
        Message::Begin(_) | Message::Commit(_) | Message::Origin { .. } | Message::Type { .. } => (Vec::new(), 0),
    };
    assert!(elements <= buf.len(), "{elements} elements decoded from {} bytes", buf.len());
    let input = buf.as_ptr_range();
    let mut total = 0usize;
    for v in values {
        total += v.len();
        if !v.is_empty() {
            let range = v.as_ptr_range();
            assert!(
                input.start <= range.start && range.end <= input.end,
                "a decoded value is not a slice of the input buffer"
            );
        }
    }
    assert!(total <= buf.len(), "{total} value bytes decoded from {} bytes", buf.len());

    // Exactness: a decoded message consumed every byte, and needed every one of them.
    assert!(!buf.is_empty());
    assert!(decode(buf.slice(..buf.len() - 1)).is_err(), "a strict prefix of a valid message decoded too");
    let mut longer = buf.to_vec();
    longer.push(0);
    assert!(
        matches!(decode(Bytes::from(longer)), Err(DecodeError::TrailingBytes { remaining: 1, .. })),
        "a trailing byte after a valid message was not rejected as trailing"
    );
    assert_eq!(decode(buf.clone()).as_ref(), Ok(message), "decoding is not deterministic");
}

fn datums(values: &[Datum]) -> impl Iterator<Item = &Bytes> {
    values.iter().filter_map(|d| match d {
        Datum::Text(b) | Datum::Binary(b) => Some(b),
        Datum::Null | Datum::UnchangedToast => None,
    })
}
