//! ficus's own change types: what the source stage hands to the rest of the pipeline.
//!
//! Nothing from the pgoutput wire format or from librdkafka crosses a stage boundary; the source turns
//! protocol messages into these types and the sink turns them into Kafka records. Column values stay in
//! PostgreSQL's text form (zero-copy slices of the received WAL buffer) until the sink encodes them, so the
//! source does no per-value allocation.

use std::sync::Arc;

use bytes::Bytes;

use crate::lsn::Lsn;

/// Kind of row change. `Read` is a row produced by a snapshot rather than by the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    Read,
}

impl Op {
    /// The `op` field of the raw change event.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }
}

/// One column of a captured table, as the latest Relation message described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Type OID (`pg_type.oid`). Domains are resolved to their base type when the catalog was read.
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the event key (primary key, else replica-identity index).
    pub is_key: bool,
}

/// Schema of a captured table at a point in the stream. Shared by every change until the next Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// pgoutput relation id (the table's OID).
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// `pg_class.relreplident`: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
}

impl Table {
    /// `schema.table` as written in configuration (unquoted).
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether any column is part of the key.
    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.is_key)
    }
}

/// A column value as pgoutput sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An unchanged TOASTed value the server did not send.
    UnchangedToast,
    /// Text-format bytes (valid UTF-8 when the database encoding is UTF8).
    Text(Bytes),
    /// Binary-format bytes (the type's `send` output), when the stream was started with pgoutput's `binary`
    /// option. Only for types [`crate::postgres::value::binary::supports`].
    Binary(Bytes),
}

/// One row image, one datum per column of [`Table::columns`].
pub type Row = Vec<Datum>;

/// What the source knows of the transaction a change belongs to (from its Begin message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxMeta {
    pub xid: u32,
    /// LSN of the commit record (`commitLsn` in events).
    pub commit_lsn: Lsn,
    /// Commit time in microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// One row change (or one truncated table), ready for the rules and the sink.
#[derive(Clone, Debug)]
pub struct Change {
    pub op: Op,
    pub table: Arc<Table>,
    /// Old row: present for deletes and for updates when the replica identity sends it.
    pub before: Option<Row>,
    /// `before` holds only the replica-identity key columns (REPLICA IDENTITY DEFAULT/INDEX); the other
    /// columns in it are placeholders, not data, and must not be published.
    pub before_is_key_only: bool,
    /// New row: present for inserts, updates and snapshot reads.
    pub after: Option<Row>,
    /// WAL position of this change's message.
    pub lsn: Lsn,
    /// 0-based position of this change in its transaction (stable across replays).
    pub position: u32,
    pub tx: Arc<TxMeta>,
}

/// A transactional logical decoding message (`pg_logical_emit_message(true, prefix, content)`), in its
/// transaction's order among the row changes.
#[derive(Clone, Debug)]
pub struct LogicalMessage {
    pub prefix: String,
    pub content: Bytes,
    /// WAL position of the message.
    pub lsn: Lsn,
    /// 0-based position in its transaction, counted with the row changes (stable across replays).
    pub position: u32,
    pub tx: Arc<TxMeta>,
}

/// Prefix of ficus's heartbeat messages (`source.heartbeat_interval_secs`).
pub const HEARTBEAT_PREFIX: &str = "ficus.heartbeat";
/// Prefix of the snapshot's watermark messages (docs/snapshots.md).
pub const WATERMARK_PREFIX: &str = "ficus.snapshot";
/// Prefix of the backfill request messages (`ficus backfill`).
pub const BACKFILL_PREFIX: &str = "ficus.backfill";

/// Whether `prefix` belongs to a logical message ficus writes into the WAL itself: the router never hands those
/// to rules, so no rule may use one (config validation refuses it) and no raw event is published for them.
pub fn is_internal_prefix(prefix: &str) -> bool {
    matches!(prefix, HEARTBEAT_PREFIX | WATERMARK_PREFIX | BACKFILL_PREFIX)
}
