//! Property tests of the decoder: any message encoded as PostgreSQL's pgoutput writes it decodes to itself, and any
//! bytes — random, or a valid message with bytes changed, cut or appended — decode to an answer without a panic.
//! `PROPTEST_CASES=100000 cargo test --lib pgoutput::roundtrip_tests` for a long run.

use proptest::prelude::*;

use super::*;

/// pgoutput's wire form of `m` (src/backend/replication/logical/proto.c), the inverse of [`decode`].
fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    let cstr = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    let ts = |out: &mut Vec<u8>, unix_us: i64| out.extend_from_slice(&(unix_us - PG_EPOCH_OFFSET_US).to_be_bytes());
    let tuple = |out: &mut Vec<u8>, values: &[Datum]| {
        out.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                Datum::Null => out.push(b'n'),
                Datum::UnchangedToast => out.push(b'u'),
                Datum::Text(b) | Datum::Binary(b) => {
                    out.push(if matches!(v, Datum::Text(_)) { b't' } else { b'b' });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    };
    let old_tag = |kind: OldKind| if kind == OldKind::Key { b'K' } else { b'O' };
    match m {
        Message::Begin(b) => {
            out.push(b'B');
            out.extend_from_slice(&b.final_lsn.0.to_be_bytes());
            ts(&mut out, b.commit_time_us);
            out.extend_from_slice(&b.xid.to_be_bytes());
        }
        Message::Commit(c) => {
            out.extend_from_slice(&[b'C', c.flags]);
            out.extend_from_slice(&c.commit_lsn.0.to_be_bytes());
            out.extend_from_slice(&c.end_lsn.0.to_be_bytes());
            ts(&mut out, c.commit_time_us);
        }
        Message::Origin { commit_lsn, name } => {
            out.push(b'O');
            out.extend_from_slice(&commit_lsn.0.to_be_bytes());
            cstr(&mut out, name);
        }
        Message::Relation(r) => {
            out.push(b'R');
            out.extend_from_slice(&r.oid.to_be_bytes());
            cstr(&mut out, &r.namespace);
            cstr(&mut out, &r.name);
            out.push(r.replica_identity);
            out.extend_from_slice(&(r.columns.len() as u16).to_be_bytes());
            for c in &r.columns {
                out.push(c.flags);
                cstr(&mut out, &c.name);
                out.extend_from_slice(&c.type_oid.to_be_bytes());
                out.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        Message::Type { oid, namespace, name } => {
            out.push(b'Y');
            out.extend_from_slice(&oid.to_be_bytes());
            cstr(&mut out, namespace);
            cstr(&mut out, name);
        }
        Message::Insert { relation, new } => {
            out.push(b'I');
            out.extend_from_slice(&relation.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Update { relation, old, new } => {
            out.push(b'U');
            out.extend_from_slice(&relation.to_be_bytes());
            if let Some(old) = old {
                out.push(old_tag(old.kind));
                tuple(&mut out, &old.values);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Delete { relation, old } => {
            out.push(b'D');
            out.extend_from_slice(&relation.to_be_bytes());
            out.push(old_tag(old.kind));
            tuple(&mut out, &old.values);
        }
        Message::Truncate { options, relations } => {
            out.push(b'T');
            out.extend_from_slice(&(relations.len() as u32).to_be_bytes());
            out.push(*options);
            for r in relations {
                out.extend_from_slice(&r.to_be_bytes());
            }
        }
        Message::LogicalMessage { transactional, lsn, prefix, content } => {
            out.extend_from_slice(&[b'M', u8::from(*transactional)]);
            out.extend_from_slice(&lsn.0.to_be_bytes());
            cstr(&mut out, prefix);
            out.extend_from_slice(&(content.len() as i32).to_be_bytes());
            out.extend_from_slice(content);
        }
    }
    out
}

/// A C string: any text without NUL.
fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..12)
        .prop_map(|c| c.into_iter().collect())
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        bytes().prop_map(Datum::Text),
        bytes().prop_map(Datum::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Vec<Datum>> {
    prop::collection::vec(datum(), 0..6)
}

fn old() -> impl Strategy<Value = OldTuple> {
    (any::<bool>(), tuple())
        .prop_map(|(key, values)| OldTuple { kind: if key { OldKind::Key } else { OldKind::Full }, values })
}

/// Commit times pgoutput can carry: any PostgreSQL timestamp whose Unix form fits in an i64.
fn time() -> impl Strategy<Value = i64> {
    (i64::MIN + PG_EPOCH_OFFSET_US)..=i64::MAX
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn message() -> impl Strategy<Value = Message> {
    let column = (any::<u8>(), name(), any::<u32>(), any::<i32>())
        .prop_map(|(flags, name, type_oid, type_modifier)| RelationColumn { flags, name, type_oid, type_modifier });
    prop_oneof![
        (lsn(), time(), any::<u32>()).prop_map(|(final_lsn, commit_time_us, xid)| Message::Begin(Begin {
            final_lsn,
            commit_time_us,
            xid
        })),
        (any::<u8>(), lsn(), lsn(), time()).prop_map(|(flags, commit_lsn, end_lsn, commit_time_us)| {
            Message::Commit(Commit { flags, commit_lsn, end_lsn, commit_time_us })
        }),
        (lsn(), name()).prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
        (any::<u32>(), name(), name(), any::<u8>(), prop::collection::vec(column, 0..5)).prop_map(
            |(oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation { oid, namespace, name, replica_identity, columns })
            }
        ),
        (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| Message::Type { oid, namespace, name }),
        (any::<u32>(), tuple()).prop_map(|(relation, new)| Message::Insert { relation, new }),
        (any::<u32>(), prop::option::of(old()), tuple()).prop_map(|(relation, old, new)| Message::Update {
            relation,
            old,
            new
        }),
        (any::<u32>(), old()).prop_map(|(relation, old)| Message::Delete { relation, old }),
        (any::<u8>(), prop::collection::vec(any::<u32>(), 0..6))
            .prop_map(|(options, relations)| Message::Truncate { options, relations }),
        (any::<bool>(), lsn(), name(), bytes()).prop_map(|(transactional, lsn, prefix, content)| {
            Message::LogicalMessage { transactional, lsn, prefix, content }
        }),
    ]
}

/// Decodes without panicking; what decodes, encodes back to something that decodes to the same message.
fn decodes_to_an_answer(input: Vec<u8>) -> Result<(), TestCaseError> {
    if let Ok(m) = decode(Bytes::from(input)) {
        prop_assert_eq!(decode(Bytes::from(encode(&m))), Ok(m));
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_message_round_trips(m in message()) {
        let wire = encode(&m);
        prop_assert_eq!(decode(Bytes::from(wire.clone())), Ok(m));
        // Exact: one byte less or more is an error.
        prop_assert!(decode(Bytes::copy_from_slice(&wire[..wire.len() - 1])).is_err());
        let mut longer = wire;
        longer.push(0);
        let is_trailing = matches!(decode(Bytes::from(longer)), Err(DecodeError::TrailingBytes { remaining: 1, .. }));
        prop_assert!(is_trailing);
    }

    #[test]
    fn arbitrary_bytes_never_panic(tag in prop::sample::select(b"BCORYIUDTMx".to_vec()), rest in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut input = vec![tag];
        input.extend(rest);
        decodes_to_an_answer(input)?;
    }

    #[test]
    fn changed_messages_never_panic(m in message(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut wire = encode(&m);
        let i = at.index(wire.len());
        wire[i] = byte;
        decodes_to_an_answer(wire.clone())?;
        wire.truncate(cut.index(wire.len() + 1));
        decodes_to_an_answer(wire)?;
    }
}
