use super::*;
use crate::postgres::test_rng::XorShift;

/// Test-only encoder for pgoutput messages.
struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Self {
        Enc(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn tuple(mut self, values: &[Option<&str>]) -> Self {
        self = self.u16(values.len() as u16);
        for v in values {
            self = match v {
                None => self.u8(b'n'),
                Some("\u{0}toast") => self.u8(b'u'),
                Some(s) => self.u8(b't').i32(s.len() as i32).raw(s.as_bytes()),
            };
        }
        self
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

const TOAST: Option<&str> = Some("\u{0}toast");
// 2026-11-22T08:00:00.123456Z in µs since 2000-01-01.
const PG_TS: i64 = 848_649_600_123_456;
const UNIX_TS: i64 = PG_TS + 946_684_800_000_000;

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn fixtures() -> Vec<(Bytes, Message)> {
    vec![
        (
            Enc::new(b'B').u64(0x16_B374_D848).i64(PG_TS).u32(1234).bytes(),
            Message::Begin(Begin { final_lsn: Lsn(0x16_B374_D848), commit_time_us: UNIX_TS, xid: 1234 }),
        ),
        (
            Enc::new(b'C').u8(0).u64(0x100).u64(0x128).i64(PG_TS).bytes(),
            Message::Commit(Commit { flags: 0, commit_lsn: Lsn(0x100), end_lsn: Lsn(0x128), commit_time_us: UNIX_TS }),
        ),
        (
            Enc::new(b'O').u64(0x42).cstr("node_a").bytes(),
            Message::Origin { commit_lsn: Lsn(0x42), name: "node_a".into() },
        ),
        (
            Enc::new(b'R')
                .u32(16384)
                .cstr("legacy")
                .cstr("Order Lines")
                .u8(b'd')
                .u16(2)
                .u8(1)
                .cstr("id")
                .u32(20)
                .i32(-1)
                .u8(0)
                .cstr("naïve")
                .u32(1043)
                .i32(68)
                .bytes(),
            Message::Relation(Relation {
                oid: 16384,
                namespace: "legacy".into(),
                name: "Order Lines".into(),
                replica_identity: b'd',
                columns: vec![
                    RelationColumn { flags: 1, name: "id".into(), type_oid: 20, type_modifier: -1 },
                    RelationColumn { flags: 0, name: "naïve".into(), type_oid: 1043, type_modifier: 68 },
                ],
            }),
        ),
        (
            Enc::new(b'R').u32(1).cstr("").cstr("pg_class").u8(b'n').u16(0).bytes(),
            Message::Relation(Relation {
                oid: 1,
                namespace: String::new(),
                name: "pg_class".into(),
                replica_identity: b'n',
                columns: vec![],
            }),
        ),
        (
            Enc::new(b'Y').u32(70000).cstr("public").cstr("mood").bytes(),
            Message::Type { oid: 70000, namespace: "public".into(), name: "mood".into() },
        ),
        (
            Enc::new(b'I').u32(16384).u8(b'N').tuple(&[Some("42"), None, Some(""), Some("héllo")]).bytes(),
            Message::Insert { relation: 16384, new: vec![text("42"), Datum::Null, text(""), text("héllo")] },
        ),
        (
            Enc::new(b'U').u32(7).u8(b'N').tuple(&[Some("1"), TOAST]).bytes(),
            Message::Update { relation: 7, old: None, new: vec![text("1"), Datum::UnchangedToast] },
        ),
        (
            Enc::new(b'U').u32(7).u8(b'K').tuple(&[Some("1"), None]).u8(b'N').tuple(&[Some("2"), TOAST]).bytes(),
            Message::Update {
                relation: 7,
                old: Some(OldTuple { kind: OldKind::Key, values: vec![text("1"), Datum::Null] }),
                new: vec![text("2"), Datum::UnchangedToast],
            },
        ),
        (
            Enc::new(b'U')
                .u32(7)
                .u8(b'O')
                .tuple(&[Some("1"), Some("paid")])
                .u8(b'N')
                .tuple(&[Some("1"), Some("shipped")])
                .bytes(),
            Message::Update {
                relation: 7,
                old: Some(OldTuple { kind: OldKind::Full, values: vec![text("1"), text("paid")] }),
                new: vec![text("1"), text("shipped")],
            },
        ),
        (
            Enc::new(b'D').u32(7).u8(b'K').tuple(&[Some("1"), None]).bytes(),
            Message::Delete { relation: 7, old: OldTuple { kind: OldKind::Key, values: vec![text("1"), Datum::Null] } },
        ),
        (
            Enc::new(b'D').u32(7).u8(b'O').tuple(&[Some("1"), Some("x")]).bytes(),
            Message::Delete { relation: 7, old: OldTuple { kind: OldKind::Full, values: vec![text("1"), text("x")] } },
        ),
        (
            Enc::new(b'T').u32(2).u8(3).u32(16384).u32(16390).bytes(),
            Message::Truncate { options: 3, relations: vec![16384, 16390] },
        ),
        (
            Enc::new(b'M').u8(1).u64(0x99).cstr("ficus").i32(3).raw(b"a\0b").bytes(),
            Message::LogicalMessage {
                transactional: true,
                lsn: Lsn(0x99),
                prefix: "ficus".into(),
                content: Bytes::from_static(b"a\0b"),
            },
        ),
        (
            Enc::new(b'M').u8(0).u64(0x99).cstr("").i32(0).bytes(),
            Message::LogicalMessage {
                transactional: false,
                lsn: Lsn(0x99),
                prefix: String::new(),
                content: Bytes::new(),
            },
        ),
    ]
}

#[test]
fn decodes_every_message_type() {
    for (bytes, expected) in fixtures() {
        assert_eq!(decode(bytes.clone()).unwrap(), expected, "{bytes:?}");
    }
}

#[test]
fn values_are_zero_copy_slices_of_the_buffer() {
    let buf = Enc::new(b'I').u32(1).u8(b'N').tuple(&[Some("hello")]).bytes();
    let Message::Insert { new, .. } = decode(buf.clone()).unwrap() else { panic!("not an insert") };
    let Datum::Text(value) = &new[0] else { panic!("not text") };
    let range = buf.as_ptr_range();
    assert!(range.contains(&value.as_ptr()), "value must point into the received buffer");
}

#[test]
fn every_truncation_is_an_error() {
    for (bytes, _) in fixtures() {
        for n in 0..bytes.len() {
            assert!(decode(bytes.slice(..n)).is_err(), "prefix of {n} bytes of {bytes:?} decoded");
        }
    }
    assert!(matches!(decode(Bytes::new()), Err(DecodeError::Truncated { what: "message type", .. })));
}

#[test]
fn trailing_bytes_are_an_error() {
    for (bytes, _) in fixtures() {
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(decode(Bytes::from(longer)), Err(DecodeError::TrailingBytes { remaining: 1, .. })));
    }
}

#[test]
fn rejects_unknown_message_and_tuple_kind() {
    assert_eq!(decode(Bytes::from_static(b"Z")), Err(DecodeError::UnknownMessage(b'Z')));
    // Streaming messages belong to protocol version 2.
    assert_eq!(decode(Enc::new(b'S').u32(1).u8(1).bytes()), Err(DecodeError::UnknownMessage(b'S')));
    let buf = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b'x').bytes();
    assert_eq!(decode(buf), Err(DecodeError::UnknownTupleKind(b'x')));
    // Binary column values (the `binary` option) are kept as bytes for value_binary.
    let buf = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b'b').i32(1).raw(b"\x01").bytes();
    assert_eq!(decode(buf), Ok(Message::Insert { relation: 1, new: vec![Datum::Binary(Bytes::from_static(b"\x01"))] }));
    let buf = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b'b').i32(5).raw(b"\x01").bytes();
    assert!(decode(buf).is_err());
}

#[test]
fn rejects_wrong_tuple_tags() {
    let buf = Enc::new(b'I').u32(1).u8(b'K').tuple(&[None]).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::UnexpectedTag { found: b'K', .. })));
    let buf = Enc::new(b'D').u32(1).u8(b'N').tuple(&[None]).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::UnexpectedTag { found: b'N', .. })));
    let buf = Enc::new(b'U').u32(1).u8(b'K').tuple(&[None]).u8(b'K').tuple(&[None]).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::UnexpectedTag { found: b'K', .. })));
    let buf = Enc::new(b'U').u32(1).u8(b'X').bytes();
    assert!(matches!(decode(buf), Err(DecodeError::UnexpectedTag { found: b'X', .. })));
}

#[test]
fn rejects_invalid_utf8_and_missing_nul() {
    let buf = Enc::new(b'R').u32(1).cstr("public").raw(b"bad\xff\0").u8(b'd').u16(0).bytes();
    assert_eq!(decode(buf), Err(DecodeError::InvalidUtf8 { what: "relation name" }));
    let buf = Enc::new(b'O').u64(1).raw(b"no-terminator").bytes();
    assert_eq!(decode(buf), Err(DecodeError::MissingNul { what: "origin name" }));
}

#[test]
fn rejects_negative_and_oversized_lengths() {
    let buf = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).bytes();
    assert_eq!(decode(buf), Err(DecodeError::NegativeLength { what: "column value length", length: -1 }));
    let buf = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(i32::MAX).raw(b"abc").bytes();
    assert!(matches!(decode(buf), Err(DecodeError::Truncated { what: "column value", .. })));
    let buf = Enc::new(b'M').u8(0).u64(1).cstr("p").i32(i32::MIN).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::NegativeLength { .. })));
}

#[test]
fn huge_counts_do_not_preallocate() {
    // 65535 columns announced, none present: must fail fast without a 65535-element allocation per field.
    let buf = Enc::new(b'I').u32(1).u8(b'N').u16(u16::MAX).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::Truncated { .. })));
    let buf = Enc::new(b'R').u32(1).cstr("s").cstr("t").u8(b'd').u16(u16::MAX).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::Truncated { .. })));
    let buf = Enc::new(b'T').u32(u32::MAX).u8(0).u32(5).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::Truncated { .. })));
}

#[test]
fn timestamps_out_of_range_are_errors() {
    let buf = Enc::new(b'B').u64(1).i64(i64::MAX).u32(1).bytes();
    assert!(matches!(decode(buf), Err(DecodeError::OutOfRange { .. })));
    let buf = Enc::new(b'B').u64(1).i64(0).u32(1).bytes();
    let Ok(Message::Begin(b)) = decode(buf) else { panic!("begin") };
    assert_eq!(b.commit_time_us, 946_684_800_000_000);
}

#[test]
fn garbage_never_panics() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    const TAGS: &[u8] = b"BCORYIUDTMNKOtnub";
    for i in 0..20_000 {
        let len = (rng.next() % 80) as usize;
        let mut buf: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                // Bias towards protocol tags and small numbers so decoding gets past the first fields.
                match r % 4 {
                    0 => TAGS[(r >> 8) as usize % TAGS.len()],
                    1 => 0,
                    _ => (r >> 16) as u8,
                }
            })
            .collect();
        if let Some(first) = buf.first_mut() {
            *first = TAGS[i % 10];
        }
        let _ = decode(Bytes::from(buf));
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let mut rng = XorShift(42);
    let fixtures = fixtures();
    for _ in 0..20_000 {
        let (bytes, _) = &fixtures[rng.next() as usize % fixtures.len()];
        let mut buf = bytes.to_vec();
        for _ in 0..1 + rng.next() % 3 {
            let at = rng.next() as usize % buf.len();
            buf[at] = rng.next() as u8;
        }
        let _ = decode(Bytes::from(buf));
    }
}
