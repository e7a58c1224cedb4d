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
mod tests;

#[cfg(test)]
mod roundtrip_tests;
