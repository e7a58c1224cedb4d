//! Debezium-compatible change envelope for raw change events (`changes.encoding: debezium`).
//!
//! The value is what Debezium's PostgreSQL connector publishes with its defaults: `before`, `after`, `source`
//! (connector `postgresql`, `name` = the topic prefix, `db`, `schema`, `table`, `txId`, `lsn` as a number,
//! `ts_ms`/`ts_us`/`ts_ns`, `snapshot`, `sequence`), `op` (`c`, `u`, `d`, `r`, `t` — truncates only when
//! `changes.debezium.skipped_operations` does not skip them, which by default it does, as Debezium), `ts_ms`/`ts_us`/
//! `ts_ns` and `transaction: null`. The key is the JSON object of the key columns; topics are named alike
//! (`<prefix>.<schema>.<table>`). A delete is followed by a tombstone (`changes.debezium.tombstones`), and an update
//! that changes the key becomes a delete under the old key (+ tombstone) and a create under the new one, as Debezium.
//! With `changes.debezium.schemas` key and value are wrapped as Kafka Connect's JsonConverter writes them with
//! `schemas.enable=true` (`{"schema", "payload"}`), with Debezium's Connect schemas.
//!
//! json/jsonb values are strings holding the JSON text, as Debezium's `io.debezium.data.Json`
//! (`changes.debezium.json_handling: string`, the default), or embedded JSON (`embedded`); date, time and timestamp
//! are Debezium's numbers (`io.debezium.time.Date`, `MicroTime`, `MicroTimestamp`).
//!
//! Every remaining difference is listed in docs/events.md ("Field by field against Debezium"): among them numeric
//! as a string (Debezium's `decimal.handling.mode=string`), `ts_ms` = the commit time (so a replay gives identical
//! bytes). An unknown unchanged TOAST value is Debezium's `__debezium_unavailable_value` placeholder by default.

use std::sync::Arc;

use crate::change::{Change, Datum, Op, Row, Table};
use crate::encode::{change_key, key_json, EncodeError, SourceInfo};
use crate::postgres::value::write_json_string;

mod row;
mod schema;

use row::envelope;
use schema::cached_schemas;

/// Debezium's default `unavailable.value.placeholder`.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// The `op` letter Debezium uses.
fn op_letter(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
    }
}

/// The Debezium encoder's options (`changes.debezium`) and its per-table Connect schemas.
pub struct Debezium {
    /// Debezium's `topic.prefix` (ficus's `changes.topic_prefix`): `source.name` and the schema names.
    server_name: String,
    /// json/jsonb values as strings (`json_handling: string`).
    json_as_string: bool,
    /// A tombstone after every delete (`tombstones`).
    tombstones: bool,
    /// The JsonConverter `{"schema", "payload"}` wrapper (`schemas`).
    schemas: bool,
    /// What stands for an unchanged TOASTed value the server did not send (`unavailable_value_placeholder`);
    /// `None` leaves the column out.
    placeholder: Option<String>,
    /// Transaction metadata (`transaction_metadata`, Debezium's `provide.transaction.metadata`): BEGIN/END records
    /// and the `transaction` block of events. `tx` is the transaction whose BEGIN went out and whose END is due.
    tx_metadata: bool,
    tx: Option<TxState>,
    /// The next snapshot row is the last of its table.
    snapshot_last: bool,
    /// Per relation id: the table the schemas were built for, the key schema and the value schema (JSON).
    schema_cache: crate::change::OidMap<CachedSchemas>,
}

/// The table the schemas were built for, the key schema and the value schema (Connect JSON).
pub(super) type CachedSchemas = (Arc<Table>, Vec<u8>, Vec<u8>);

/// The transaction whose BEGIN record went out (transaction metadata).
struct TxState {
    meta: Arc<crate::change::TxMeta>,
    /// `<xid>:<commit LSN>`.
    id: String,
    /// Events so far.
    total: u64,
    /// Events so far per `schema.table`.
    per_table: Vec<(String, u64)>,
}

/// One Kafka record of the Debezium encoding.
#[derive(Debug)]
pub enum Piece {
    /// A change event. `op` is the operation it describes (a key change becomes a delete and an insert);
    /// `key_header` is Debezium's `__debezium.newkey` (on the delete) or `__debezium.oldkey` (on the create) of a
    /// primary-key change.
    Event { key: Option<Vec<u8>>, value: Vec<u8>, op: Op, key_header: Option<(&'static str, String)> },
    /// A tombstone: the delete's key, a null value.
    Tombstone { key: Vec<u8> },
    /// A transaction metadata record (BEGIN) for the transaction topic.
    Transaction { key: Vec<u8>, value: Vec<u8> },
}

impl Debezium {
    /// `server_name`: `changes.topic_prefix`; the rest as `changes.debezium`.
    pub fn new(server_name: &str, json_as_string: bool, tombstones: bool, schemas: bool) -> Debezium {
        Debezium {
            server_name: server_name.to_string(),
            json_as_string,
            tombstones,
            schemas,
            placeholder: Some(String::from(UNAVAILABLE_VALUE)),
            tx_metadata: false,
            tx: None,
            snapshot_last: false,
            schema_cache: crate::change::OidMap::default(),
        }
    }

    /// Marks the snapshot rows encoded next as the last of their table (`source.snapshot`).
    pub fn set_snapshot_last(&mut self, last: bool) {
        self.snapshot_last = last;
    }

    /// `changes.debezium.transaction_metadata`.
    pub fn with_transaction_metadata(mut self, on: bool) -> Debezium {
        self.tx_metadata = on;
        self
    }

    /// The END record of the transaction whose events went out since its BEGIN (transaction metadata), to publish
    /// at its commit: (key, value). `None` when transaction metadata is off or the transaction published nothing.
    pub fn end_transaction(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let tx = self.tx.take()?;
        let mut counts = tx.per_table.clone();
        counts.sort();
        let collections: Vec<serde_json::Value> =
            counts.iter().map(|(t, n)| serde_json::json!({"data_collection": t, "event_count": n})).collect();
        let payload = serde_json::json!({"status": "END", "id": tx.id, "event_count": tx.total,
                                         "data_collections": collections, "ts_ms": tx.meta.commit_time_us.div_euclid(1000)});
        Some(self.tx_record(&tx.id, payload))
    }

    /// A transaction-topic record: key `{"id": …}`, value `payload`, both wrapped under `schemas`.
    fn tx_record(&self, id: &str, payload: serde_json::Value) -> (Vec<u8>, Vec<u8>) {
        use serde_json::json;
        let key = json!({"id": id});
        if !self.schemas {
            return (key.to_string().into_bytes(), payload.to_string().into_bytes());
        }
        let f = |ty: &str, optional: bool, name: &str| json!({"type": ty, "optional": optional, "field": name});
        let key_schema = json!({"type": "struct", "fields": [f("string", false, "id")], "optional": false,
                                "name": "io.debezium.connector.common.TransactionMetadataKey"});
        let value_schema = json!({"type": "struct", "optional": false,
            "name": "io.debezium.connector.common.TransactionMetadataValue",
            "fields": [f("string", false, "status"), f("string", false, "id"), f("int64", true, "event_count"),
                       {"type": "array", "optional": true, "field": "data_collections",
                        "items": {"type": "struct", "optional": false, "fields": [f("string", false, "data_collection"),
                                                                                  f("int64", false, "event_count")]}},
                       f("int64", false, "ts_ms")]});
        (
            json!({"schema": key_schema, "payload": key}).to_string().into_bytes(),
            json!({"schema": value_schema, "payload": payload}).to_string().into_bytes(),
        )
    }

    /// Transaction metadata: emits the BEGIN record when `change` starts a new transaction.
    fn begin_if_new(&mut self, change: &Change, emit: &mut dyn FnMut(Piece)) {
        if !self.tx_metadata || self.tx.as_ref().is_some_and(|t| Arc::ptr_eq(&t.meta, &change.tx)) {
            return;
        }
        let id = format!("{}:{}", change.tx.xid, change.tx.commit_lsn.0);
        let payload = serde_json::json!({"status": "BEGIN", "id": id, "event_count": null, "data_collections": null,
                                         "ts_ms": change.tx.commit_time_us.div_euclid(1000)});
        let (key, value) = self.tx_record(&id, payload);
        emit(Piece::Transaction { key, value });
        self.tx = Some(TxState { meta: change.tx.clone(), id, total: 0, per_table: Vec::new() });
    }

    /// Transaction metadata: counts one event of `table` and returns its `transaction` block
    /// (id, total_order, data_collection_order).
    fn count_event(&mut self, table: &Table) -> Option<(String, u64, u64)> {
        let tx = self.tx.as_mut().filter(|_| self.tx_metadata)?;
        tx.total += 1;
        let name = table.qualified_name();
        let order = match tx.per_table.iter_mut().find(|(t, _)| *t == name) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                tx.per_table.push((name, 1));
                1
            }
        };
        Some((tx.id.clone(), tx.total, order))
    }

    /// `changes.debezium.unavailable_value_placeholder`: `None` leaves unknown unchanged TOAST values out of `after`.
    pub fn with_placeholder(mut self, placeholder: Option<String>) -> Debezium {
        self.placeholder = placeholder;
        self
    }

    /// The records of `change`, in publishing order, handed to `emit`: the event; a tombstone after a delete (with
    /// `tombstones`, for tables with a key); for an update that changed the key, Debezium's delete under the old key
    /// (+ tombstone) and create under the new key instead of one update.
    pub fn encode(
        &mut self,
        change: &Change,
        source: &SourceInfo,
        emit: &mut dyn FnMut(Piece),
    ) -> Result<(), EncodeError> {
        self.begin_if_new(change, emit);
        if key_changed(change) {
            return self.encode_key_change(change, source, emit);
        }
        let key = change_key(change)?;
        let value = self.value(change, source)?;
        let tombstone = (self.tombstones && change.op == Op::Delete).then(|| key.clone()).flatten();
        let key = key.map(|k| self.wrap_key(&change.table, k));
        emit(Piece::Event { key: key.clone(), value, op: change.op, key_header: None });
        if let (Some(_), Some(key)) = (tombstone, key) {
            emit(Piece::Tombstone { key });
        }
        Ok(())
    }

    /// An update that changed the key: a delete under the old key (+ tombstone), then a create under the new key.
    fn encode_key_change(
        &mut self,
        change: &Change,
        source: &SourceInfo,
        emit: &mut dyn FnMut(Piece),
    ) -> Result<(), EncodeError> {
        let table = &change.table;
        let before = change.before.as_ref().expect("key_changed checked it");
        // The new row, unchanged TOASTed values taken from a full old row where it has them.
        let after: Row = change
            .after
            .as_ref()
            .expect("key_changed checked it")
            .iter()
            .zip(before.iter())
            .enumerate()
            .map(|(i, (a, b))| match a {
                Datum::UnchangedToast
                    if !matches!(b, Datum::UnchangedToast)
                        && (!change.before_is_key_only || table.columns[i].is_key) =>
                {
                    b.clone()
                }
                a => a.clone(),
            })
            .collect();
        let old_key = key_json(table, before)?.expect("a key changed, so the table has one");
        let new_key = key_json(table, &after)?.expect("a key changed, so the table has one");
        let delete = Change {
            op: Op::Delete,
            table: table.clone(),
            before: Some(before.clone()),
            before_is_key_only: change.before_is_key_only,
            after: None,
            lsn: change.lsn,
            position: change.position,
            tx: change.tx.clone(),
        };
        let create = Change {
            op: Op::Insert,
            table: table.clone(),
            before: None,
            before_is_key_only: false,
            after: Some(after),
            lsn: change.lsn,
            position: change.position,
            tx: change.tx.clone(),
        };
        let (old_text, new_text) =
            (String::from_utf8_lossy(&old_key).into_owned(), String::from_utf8_lossy(&new_key).into_owned());
        let old_wrapped = self.wrap_key(table, old_key);
        let value = self.value(&delete, source)?;
        emit(Piece::Event {
            key: Some(old_wrapped.clone()),
            value,
            op: Op::Delete,
            key_header: Some(("__debezium.newkey", new_text)),
        });
        if self.tombstones {
            emit(Piece::Tombstone { key: old_wrapped });
        }
        let value = self.value(&create, source)?;
        let new_wrapped = self.wrap_key(table, new_key);
        emit(Piece::Event {
            key: Some(new_wrapped),
            value,
            op: Op::Insert,
            key_header: Some(("__debezium.oldkey", old_text)),
        });
        Ok(())
    }

    /// The key as published: the key columns' JSON object, wrapped with its Connect schema under `schemas`.
    fn wrap_key(&mut self, table: &Arc<Table>, key: Vec<u8>) -> Vec<u8> {
        if !self.schemas {
            return key;
        }
        let server_name = &self.server_name;
        let (_, key_schema, _) = cached_schemas(&mut self.schema_cache, server_name, table);
        let mut out = Vec::with_capacity(key_schema.len() + key.len() + 24);
        out.extend_from_slice(b"{\"schema\":");
        out.extend_from_slice(key_schema);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(&key);
        out.push(b'}');
        out
    }

    /// The change event value (wrapped with its Connect schema under `schemas`).
    fn value(&mut self, change: &Change, source: &SourceInfo) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(512);
        if self.schemas {
            let (_, _, value_schema) = cached_schemas(&mut self.schema_cache, &self.server_name, &change.table);
            out.reserve(value_schema.len() + 32);
            out.extend_from_slice(b"{\"schema\":");
            out.extend_from_slice(value_schema);
            out.extend_from_slice(b",\"payload\":");
        }
        envelope(&mut out, change, source, &self.server_name, self.json_as_string, self.placeholder.as_deref())?;
        if self.snapshot_last && change.op == Op::Read {
            // Debezium 2.x marks the last snapshot row of each table so.
            // The last occurrence: `source` follows the row images (a column named `snapshot` may hold "true").
            let at = rfind(&out, b"\"snapshot\":\"true\"").expect("a read's envelope has it");
            out.splice(
                at..at + b"\"snapshot\":\"true\"".len(),
                b"\"snapshot\":\"last_in_data_collection\"".iter().copied(),
            );
        }
        if let Some((id, total, order)) = self.count_event(&change.table) {
            // The envelope ends with `"transaction":null}`: put the block in its place.
            out.truncate(out.len() - b"null}".len());
            out.extend_from_slice(b"{\"id\":");
            write_json_string(&mut out, &id);
            out.extend_from_slice(b",\"total_order\":");
            out.extend_from_slice(itoa::Buffer::new().format(total).as_bytes());
            out.extend_from_slice(b",\"data_collection_order\":");
            out.extend_from_slice(itoa::Buffer::new().format(order).as_bytes());
            out.extend_from_slice(b"}}");
        }
        if self.schemas {
            out.push(b'}');
        }
        Ok(out)
    }
}

/// The last position of `needle` in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Whether `change` is an update that changed a key column (the old key is known: pgoutput sends the old key tuple,
/// or the old row under REPLICA IDENTITY FULL, when a key column changed).
pub fn key_changed(change: &Change) -> bool {
    if change.op != Op::Update {
        return false;
    }
    let (Some(before), Some(after)) = (&change.before, &change.after) else {
        return false;
    };
    change.table.columns.iter().zip(before.iter().zip(after.iter())).any(|(col, (b, a))| {
        col.is_key && !matches!(a, Datum::UnchangedToast) && !matches!(b, Datum::UnchangedToast) && a != b
    })
}

#[cfg(test)]
mod tests;
