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

/// A map keyed by relation id (a table's OID), looked up several times for every change (source, router, rules,
/// masking, key columns): foldhash instead of std's SipHash, which cost more than the lookups. Relation ids come from
/// the server, not from someone who could aim at hash collisions.
pub type OidMap<V> = std::collections::HashMap<u32, V, foldhash::fast::FixedState>;

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
    /// The names above as JSON, escaped on first use ([`Table::json_names`]); `Default::default()` when building one.
    pub json: JsonNames,
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

    /// The schema, table and column names as events write them, escaped once for the table rather than once per
    /// event (the names were most of the encoder's calls to escape a JSON string).
    pub fn json_names(&self) -> &NamesJson {
        self.json.0.get_or_init(|| {
            let mut schema_table = Vec::with_capacity(self.schema.len() + self.name.len() + 22);
            schema_table.extend_from_slice(b"\"schema\":");
            crate::json::write_json_string(&mut schema_table, &self.schema);
            schema_table.extend_from_slice(b",\"table\":");
            crate::json::write_json_string(&mut schema_table, &self.name);
            let columns = self
                .columns
                .iter()
                .map(|c| {
                    let mut member = Vec::with_capacity(c.name.len() + 3);
                    crate::json::write_json_string(&mut member, &c.name);
                    member.push(b':');
                    member.into_boxed_slice()
                })
                .collect();
            NamesJson { schema_table: schema_table.into_boxed_slice(), columns }
        })
    }
}

/// [`Table::json_names`]: filled on first use. A clone starts empty, so a table built from a clone and then changed
/// (tests do) never writes the original's names; it takes no part in comparisons. Tables are not changed once
/// shared (they are behind an `Arc` from their Relation message on).
#[derive(Default)]
pub struct JsonNames(std::sync::OnceLock<NamesJson>);

/// A table's names as JSON.
pub struct NamesJson {
    /// `"schema":"<schema>","table":"<table>"`.
    pub schema_table: Box<[u8]>,
    /// `"<column>":` for each column, in order.
    pub columns: Box<[Box<[u8]>]>,
}

impl Clone for JsonNames {
    fn clone(&self) -> JsonNames {
        JsonNames::default()
    }
}

impl PartialEq for JsonNames {
    fn eq(&self, _: &JsonNames) -> bool {
        true
    }
}

impl Eq for JsonNames {}

impl std::fmt::Debug for JsonNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonNames")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str, columns: &[&str]) -> Table {
        Table {
            oid: 1,
            schema: schema.into(),
            name: name.into(),
            columns: columns
                .iter()
                .map(|c| Column { name: (*c).into(), type_oid: 25, type_modifier: -1, is_key: false })
                .collect(),
            replica_identity: b'd',
            json: Default::default(),
        }
    }

    #[test]
    fn json_names_are_the_names_escaped_as_serde_json_escapes_them() {
        let names = ["id", "we\"ird\\name", "tab\there", "ünï\u{1F600}", "", "\u{1}"];
        let t = table("sch\"ema", "ta\\ble\n", &names);
        let json = t.json_names();
        let expected = format!(
            "\"schema\":{},\"table\":{}",
            serde_json::to_string("sch\"ema").unwrap(),
            serde_json::to_string("ta\\ble\n").unwrap()
        );
        assert_eq!(String::from_utf8_lossy(&json.schema_table), expected);
        assert_eq!(json.columns.len(), names.len());
        for (member, name) in json.columns.iter().zip(names) {
            assert_eq!(String::from_utf8_lossy(member), format!("{}:", serde_json::to_string(name).unwrap()));
        }
    }

    #[test]
    fn a_clone_escapes_its_own_names() {
        let t = table("public", "orders", &["id"]);
        assert_eq!(&*t.json_names().columns[0], b"\"id\":");
        let mut other = t.clone();
        other.name = "lines".into();
        other.columns[0].name = "line_id".into();
        assert_eq!(&*other.json_names().columns[0], b"\"line_id\":");
        assert_eq!(&*other.json_names().schema_table, b"\"schema\":\"public\",\"table\":\"lines\"");
        assert_eq!(t, t.clone(), "the cache takes no part in comparisons");
    }
}
