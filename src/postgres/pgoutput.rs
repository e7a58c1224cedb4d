//! Decoder for pgoutput logical replication messages, protocol version 1.
//!
//! [`decode`] turns the payload of one `XLogData` message into a [`Message`]: Begin, Commit, Origin, Relation,
//! Type, Insert, Update, Delete, Truncate and logical decoding messages ("Logical Replication Message Formats" in
//! the PostgreSQL protocol docs). The streaming and two-phase messages of protocol versions 2–4 are not requested
//! by ficus and decode as [`DecodeError::UnknownMessage`].
//!
//! **Guarantees:** malformed bytes — truncated, with trailing bytes, with negative or oversized lengths, with
//! invalid UTF-8 in names, with unknown tags — return a [`DecodeError`], never panic, and never allocate more than
//! the input could describe (element counts are capped by the bytes remaining). Column values are zero-copy:
//! each [`Datum::Text`] is a [`Bytes::slice`] of the received buffer.

use bytes::Bytes;

use crate::change::Datum;
use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    /// The transaction was replicated from another node (`commit_lsn` is the commit LSN on the origin).
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    /// A non-builtin type used by a following Relation message. `namespace` is `""` for `pg_catalog`.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    /// `old` is sent only when the replica identity covers a changed column (key) or is FULL.
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    /// `options`: bit 1 = CASCADE, bit 2 = RESTART IDENTITY.
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
    /// `pg_logical_emit_message` output (sent only with the `messages` option).
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// Start of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since the Unix epoch.
    pub commit_time_us: i64,
    pub xid: u32,
}

/// End of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by PostgreSQL (0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is durable downstream.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// Schema of a table, sent before its first change in a session and again after every schema change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Schema name; PostgreSQL sends `""` for `pg_catalog`. Passed through as received.
    pub namespace: String,
    pub name: String,
    /// `pg_class.relreplident`: `d`efault, `n`othing, `f`ull, `i`ndex.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1: the column is part of the replica identity (every column with REPLICA IDENTITY FULL).
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Which old row image an Update or Delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKind {
    /// `'K'`: only the replica-identity key columns hold data; the others are null placeholders.
    Key,
    /// `'O'`: the full old row (REPLICA IDENTITY FULL).
    Full,
}

/// The old row image of an Update or Delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldTuple {
    pub kind: OldKind,
    pub values: Vec<Datum>,
}

/// Why a buffer is not a valid pgoutput v1 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated message: {what} needs {needed} bytes, {remaining} remain")]
    Truncated { what: &'static str, needed: usize, remaining: usize },
    #[error("unknown pgoutput message type {}", show_tag(*.0))]
    UnknownMessage(u8),
    #[error("unknown tuple column kind {}", show_tag(*.0))]
    UnknownTupleKind(u8),
    #[error("expected {expected} but found {}", show_tag(*.found))]
    UnexpectedTag { expected: &'static str, found: u8 },
    #[error("{what} is missing its NUL terminator")]
    MissingNul { what: &'static str },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("negative length {length} for {what}")]
    NegativeLength { what: &'static str, length: i32 },
    #[error("{what} out of range: {value}")]
    OutOfRange { what: &'static str, value: i64 },
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("{remaining} unexpected trailing bytes after a {message} message")]
    TrailingBytes { message: &'static str, remaining: usize },
}

/// `'B' (0x42)`; error messages show protocol tags this way.
fn show_tag(tag: u8) -> String {
    format!("{:?} (0x{tag:02x})", char::from(tag))
}

/// Decodes one pgoutput message (the payload of an `XLogData` message).
pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: &buf, pos: 0 };
    let tag = r.u8("message type")?;
    let (message, name) = match tag {
        b'B' => (decode_begin(&mut r)?, "Begin"),
        b'C' => (decode_commit(&mut r)?, "Commit"),
        b'O' => {
            let commit_lsn = Lsn(r.u64("origin commit LSN")?);
            let name = r.cstr("origin name")?;
            (Message::Origin { commit_lsn, name }, "Origin")
        }
        b'R' => (decode_relation(&mut r)?, "Relation"),
        b'Y' => {
            let oid = r.u32("type OID")?;
            let namespace = r.cstr("type namespace")?;
            let name = r.cstr("type name")?;
            (Message::Type { oid, namespace, name }, "Type")
        }
        b'I' => {
            let relation = r.u32("relation OID")?;
            r.expect(b'N', "'N' (new tuple)")?;
            let new = r.tuple()?;
            (Message::Insert { relation, new }, "Insert")
        }
        b'U' => (decode_update(&mut r)?, "Update"),
        b'D' => {
            let relation = r.u32("relation OID")?;
            let kind = match r.u8("old tuple tag")? {
                b'K' => OldKind::Key,
                b'O' => OldKind::Full,
                found => return Err(DecodeError::UnexpectedTag { expected: "'K' or 'O' (old tuple)", found }),
            };
            let old = OldTuple { kind, values: r.tuple()? };
            (Message::Delete { relation, old }, "Delete")
        }
        b'T' => (decode_truncate(&mut r)?, "Truncate"),
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = Lsn(r.u64("message LSN")?);
            let prefix = r.cstr("message prefix")?;
            let len = r.len("message content length")?;
            let content = r.bytes(len, "message content")?;
            (Message::LogicalMessage { transactional: flags & 1 == 1, lsn, prefix, content }, "Message")
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    match r.remaining() {
        0 => Ok(message),
        remaining => Err(DecodeError::TrailingBytes { message: name, remaining }),
    }
}

fn decode_begin(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let final_lsn = Lsn(r.u64("begin final LSN")?);
    let commit_time_us = r.timestamp("begin commit time")?;
    let xid = r.u32("begin xid")?;
    Ok(Message::Begin(Begin { final_lsn, commit_time_us, xid }))
}

fn decode_commit(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let flags = r.u8("commit flags")?;
    let commit_lsn = Lsn(r.u64("commit LSN")?);
    let end_lsn = Lsn(r.u64("commit end LSN")?);
    let commit_time_us = r.timestamp("commit time")?;
    Ok(Message::Commit(Commit { flags, commit_lsn, end_lsn, commit_time_us }))
}

fn decode_relation(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let oid = r.u32("relation OID")?;
    let namespace = r.cstr("relation namespace")?;
    let name = r.cstr("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = usize::from(r.u16("column count")?);
    // flags (1) + name (at least its NUL) + type OID (4) + type modifier (4)
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("column flags")?;
        let name = r.cstr("column name")?;
        let type_oid = r.u32("column type OID")?;
        let type_modifier = r.i32("column type modifier")?;
        columns.push(RelationColumn { flags, name, type_oid, type_modifier });
    }
    Ok(Message::Relation(Relation { oid, namespace, name, replica_identity, columns }))
}

fn decode_update(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation = r.u32("relation OID")?;
    let (old, tag) = match r.u8("update tuple tag")? {
        b'K' => (Some(OldTuple { kind: OldKind::Key, values: r.tuple()? }), r.u8("new tuple tag")?),
        b'O' => (Some(OldTuple { kind: OldKind::Full, values: r.tuple()? }), r.u8("new tuple tag")?),
        tag => (None, tag),
    };
    if tag != b'N' {
        return Err(DecodeError::UnexpectedTag { expected: "'N' (new tuple)", found: tag });
    }
    let new = r.tuple()?;
    Ok(Message::Update { relation, old, new })
}

fn decode_truncate(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let count = r.u32("truncate relation count")?;
    let options = r.u8("truncate options")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relations.push(r.u32("truncated relation OID")?);
    }
    Ok(Message::Truncate { options, relations })
}

/// A bounds-checked big-endian cursor. Invariant: `pos <= buf.len()`.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated { what, needed, remaining: self.remaining() }
    }

    /// The next `n` bytes, advancing past them.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let buf: &'a [u8] = self.buf;
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated(what, n))?;
        let slice = buf.get(self.pos..end).ok_or_else(|| self.truncated(what, n))?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let buf: &'a [u8] = self.buf;
        let chunk =
            buf.get(self.pos..).and_then(|rest| rest.first_chunk::<N>()).ok_or_else(|| self.truncated(what, N))?;
        self.pos += N;
        Ok(*chunk)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// A PostgreSQL timestamp (µs since 2000-01-01 UTC) as µs since the Unix epoch.
    fn timestamp(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let pg = self.i64(what)?;
        pg.checked_add(PG_EPOCH_OFFSET_US).ok_or(DecodeError::OutOfRange { what, value: pg })
    }

    /// An Int32 length that must not be negative.
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let length = self.i32(what)?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength { what, length })
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let buf: &'a [u8] = self.buf;
        let rest = buf.get(self.pos..).unwrap_or_default();
        let nul = memchr::memchr(0, rest).ok_or(DecodeError::MissingNul { what })?;
        let text = rest.get(..nul).unwrap_or_default();
        let s = std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 { what })?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    /// `n` bytes as a zero-copy slice of the message buffer.
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    fn expect(&mut self, tag: u8, expected: &'static str) -> Result<(), DecodeError> {
        match self.u8(expected)? {
            found if found == tag => Ok(()),
            found => Err(DecodeError::UnexpectedTag { expected, found }),
        }
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for text, an Int32 length and the bytes.
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let count = usize::from(self.u16("tuple column count")?);
        // Every column takes at least its kind byte.
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let datum = match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.len("column value length")?;
                    Datum::Text(self.bytes(len, "column value")?)
                }
                b'b' => {
                    let len = self.len("column value length")?;
                    Datum::Binary(self.bytes(len, "column value")?)
                }
                kind => return Err(DecodeError::UnknownTupleKind(kind)),
            };
            values.push(datum);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                Message::Commit(Commit {
                    flags: 0,
                    commit_lsn: Lsn(0x100),
                    end_lsn: Lsn(0x128),
                    commit_time_us: UNIX_TS,
                }),
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
                Message::Delete {
                    relation: 7,
                    old: OldTuple { kind: OldKind::Key, values: vec![text("1"), Datum::Null] },
                },
            ),
            (
                Enc::new(b'D').u32(7).u8(b'O').tuple(&[Some("1"), Some("x")]).bytes(),
                Message::Delete {
                    relation: 7,
                    old: OldTuple { kind: OldKind::Full, values: vec![text("1"), text("x")] },
                },
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
        assert_eq!(
            decode(buf),
            Ok(Message::Insert { relation: 1, new: vec![Datum::Binary(Bytes::from_static(b"\x01"))] })
        );
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

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
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
}
