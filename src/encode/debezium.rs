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

use std::collections::HashMap;
use std::sync::Arc;

use crate::change::{Change, Datum, Op, Row, Table};
use crate::encode::{change_key, key_json, write_datum, EncodeError, SourceInfo};
use crate::postgres::value::{oid, write_json_string};

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
    schema_cache: HashMap<u32, CachedSchemas>,
}

/// The table the schemas were built for, the key schema and the value schema (Connect JSON).
type CachedSchemas = (Arc<Table>, Vec<u8>, Vec<u8>);

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
            schema_cache: HashMap::new(),
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

/// The schemas of `table`, built on first use and after a Relation message changed the table.
fn cached_schemas<'c>(
    cache: &'c mut HashMap<u32, CachedSchemas>,
    server_name: &str,
    table: &Arc<Table>,
) -> &'c CachedSchemas {
    let stale = match cache.get(&table.oid) {
        Some((t, _, _)) => !Arc::ptr_eq(t, table) && **t != **table,
        None => true,
    };
    if stale {
        let (key, value) = connect_schemas(server_name, table);
        cache.insert(
            table.oid,
            (
                table.clone(),
                serde_json::to_vec(&key).unwrap_or_default(),
                serde_json::to_vec(&value).unwrap_or_default(),
            ),
        );
    }
    cache.get(&table.oid).expect("inserted above")
}

/// A name as Debezium makes it valid for Avro/Connect schema names: `[A-Za-z0-9_]`, not starting with a digit.
fn schema_name_part(raw: &str) -> String {
    let mut s: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

/// The Kafka Connect schema of a column's values as ficus's Debezium encoding writes them (Debezium's defaults:
/// `time.precision.mode=adaptive`, `binary.handling.mode=bytes`; `decimal.handling.mode=string`, see docs).
fn column_schema(type_oid: u32) -> serde_json::Value {
    use serde_json::json;
    let named = |ty: &str, name: &str| json!({"type": ty, "optional": true, "name": name, "version": 1});
    match type_oid {
        oid::BOOL => json!({"type": "boolean", "optional": true}),
        oid::INT2 => json!({"type": "int16", "optional": true}),
        oid::INT4 => json!({"type": "int32", "optional": true}),
        oid::INT8 | oid::OID => json!({"type": "int64", "optional": true}),
        oid::FLOAT4 => json!({"type": "float", "optional": true}),
        oid::FLOAT8 => json!({"type": "double", "optional": true}),
        oid::BYTEA => json!({"type": "bytes", "optional": true}),
        oid::JSON | oid::JSONB => named("string", "io.debezium.data.Json"),
        oid::UUID => named("string", "io.debezium.data.Uuid"),
        oid::DATE => named("int32", "io.debezium.time.Date"),
        oid::TIMESTAMP => named("int64", "io.debezium.time.MicroTimestamp"),
        oid::TIMESTAMPTZ => named("string", "io.debezium.time.ZonedTimestamp"),
        oid::TIME => named("int64", "io.debezium.time.MicroTime"),
        oid::TIMETZ => named("string", "io.debezium.time.ZonedTime"),
        other => match crate::postgres::value::array_element_type(other) {
            Some(elem) => json!({"type": "array", "optional": true, "items": column_schema(elem)}),
            None => json!({"type": "string", "optional": true}),
        },
    }
}

/// (key schema, value schema) of `table` as Connect JSON: the key struct (`<prefix>.<schema>.<table>.Key`, key
/// columns required), the value's `Envelope` with `before`/`after` (`…Value`, every non-key column optional: the
/// pgoutput stream does not say which are NOT NULL), `source` (`io.debezium.connector.postgresql.Source`),
/// `transaction` (`event.block`), `op`, `ts_ms`, `ts_us`, `ts_ns`.
fn connect_schemas(server_name: &str, table: &Table) -> (serde_json::Value, serde_json::Value) {
    use serde_json::json;
    let base = format!(
        "{}.{}.{}",
        schema_name_part(server_name),
        schema_name_part(&table.schema),
        schema_name_part(&table.name)
    );
    let field = |i: usize, required: bool| {
        let col = &table.columns[i];
        let mut s = column_schema(col.type_oid);
        s["optional"] = json!(!required);
        s["field"] = json!(col.name);
        s
    };
    let key_fields: Vec<_> =
        table.columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| field(i, true)).collect();
    let key = json!({"type": "struct", "fields": key_fields, "optional": false, "name": format!("{base}.Key")});
    let value_fields: Vec<_> = (0..table.columns.len()).map(|i| field(i, table.columns[i].is_key)).collect();
    let row = |name: &str| {
        json!({"type": "struct", "fields": value_fields, "optional": true, "name": format!("{base}.Value"),
               "field": name})
    };
    let f = |ty: &str, optional: bool, name: &str| json!({"type": ty, "optional": optional, "field": name});
    let source = json!({
        "type": "struct",
        "fields": [
            f("string", false, "version"), f("string", false, "connector"), f("string", false, "name"),
            f("int64", false, "ts_ms"),
            {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
             "default": "false", "field": "snapshot"},
            f("string", false, "db"), f("string", true, "sequence"), f("int64", true, "ts_us"),
            f("int64", true, "ts_ns"), f("string", false, "schema"), f("string", false, "table"),
            f("int64", true, "txId"), f("int64", true, "lsn"), f("int64", true, "xmin"),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source",
    });
    let transaction = json!({
        "type": "struct",
        "fields": [f("string", false, "id"), f("int64", false, "total_order"),
                   f("int64", false, "data_collection_order")],
        "optional": true, "name": "event.block", "version": 1, "field": "transaction",
    });
    let value = json!({
        "type": "struct",
        "fields": [row("before"), row("after"), source, transaction, f("string", false, "op"),
                   f("int64", true, "ts_ms"), f("int64", true, "ts_us"), f("int64", true, "ts_ns")],
        "optional": false,
        "name": format!("{base}.Envelope"),
        "version": 1,
    });
    (key, value)
}

/// Appends the Debezium envelope of `change` (the JsonConverter payload).
fn envelope(
    out: &mut Vec<u8>,
    change: &Change,
    source: &SourceInfo,
    server_name: &str,
    json_as_string: bool,
    placeholder: Option<&str>,
) -> Result<(), EncodeError> {
    let table = &*change.table;
    let ts_ms = change.tx.commit_time_us.div_euclid(1000);
    // Debezium 2.6+ sends the same time in micro- and nanoseconds next to `ts_ms` (`ts_us`, `ts_ns`).
    let ts_us = change.tx.commit_time_us;
    let ts_ns = ts_us.saturating_mul(1000);
    let write_times = |out: &mut Vec<u8>| {
        out.extend_from_slice(b",\"ts_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ms).as_bytes());
        out.extend_from_slice(b",\"ts_us\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_us).as_bytes());
        out.extend_from_slice(b",\"ts_ns\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ns).as_bytes());
    };
    out.extend_from_slice(b"{\"before\":");
    write_row(out, change, change.before.as_ref(), change.before_is_key_only, json_as_string, None)?;
    out.extend_from_slice(b",\"after\":");
    write_row(out, change, change.after.as_ref(), false, json_as_string, placeholder)?;
    out.extend_from_slice(b",\"source\":{\"version\":\"ficus-");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\",\"connector\":\"postgresql\",\"name\":");
    write_json_string(out, server_name);
    write_times(out);
    out.extend_from_slice(if change.op == Op::Read { b",\"snapshot\":\"true\"" } else { b",\"snapshot\":\"false\"" });
    out.extend_from_slice(b",\"db\":");
    write_json_string(out, &source.database);
    // Debezium's `sequence`: a JSON array of two LSNs as decimal strings, itself a string. ficus puts the commit LSN
    // of the change's own transaction first (Debezium: the last commit before it), so a replay gives the same bytes;
    // both orders sort changes the same way.
    out.extend_from_slice(b",\"sequence\":\"[\\\"");
    out.extend_from_slice(itoa::Buffer::new().format(change.tx.commit_lsn.0).as_bytes());
    out.extend_from_slice(b"\\\",\\\"");
    out.extend_from_slice(itoa::Buffer::new().format(change.lsn.0).as_bytes());
    out.extend_from_slice(b"\\\"]\",\"schema\":");
    write_json_string(out, &table.schema);
    out.extend_from_slice(b",\"table\":");
    write_json_string(out, &table.name);
    out.extend_from_slice(b",\"txId\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.tx.xid).as_bytes());
    out.extend_from_slice(b",\"lsn\":");
    out.extend_from_slice(itoa::Buffer::new().format(change.lsn.0).as_bytes());
    out.extend_from_slice(b",\"xmin\":null},\"op\":\"");
    out.extend_from_slice(op_letter(change.op).as_bytes());
    out.push(b'"');
    write_times(out);
    out.extend_from_slice(b",\"transaction\":null}");
    Ok(())
}

/// `before` or `after` as Debezium writes it: placeholder columns of a key-only old row and unchanged TOAST values
/// the server did not send are left out (an old row under REPLICA IDENTITY FULL fills the latter in `after`); dates,
/// times and timestamps without time zone as Debezium's numbers (`io.debezium.time.Date`: days since the epoch,
/// `MicroTime`: microseconds since midnight, `MicroTimestamp`: microseconds since the epoch; ±infinity as the
/// largest/smallest int64 resp. int32); json/jsonb as a string with `json_as_string`.
fn write_row(
    out: &mut Vec<u8>,
    change: &Change,
    row: Option<&Row>,
    key_only: bool,
    json_as_string: bool,
    placeholder: Option<&str>,
) -> Result<(), EncodeError> {
    let table = &*change.table;
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    let is_after = change.after.as_ref().is_some_and(|a| std::ptr::eq(a, row));
    out.push(b'{');
    let mut first = true;
    let mut scratch = Vec::new();
    for (i, (col, datum)) in table.columns.iter().zip(row.iter()).enumerate() {
        if key_only && !col.is_key {
            continue;
        }
        let datum = match datum {
            Datum::UnchangedToast => {
                let old = change
                    .before
                    .as_ref()
                    .filter(|_| is_after && !change.before_is_key_only)
                    .and_then(|b| b.get(i))
                    .filter(|d| !matches!(d, Datum::UnchangedToast));
                match (old, placeholder) {
                    (Some(d), _) => d,
                    (None, Some(p)) => {
                        // Debezium's placeholder, in the column's JSON type: base64 bytes for bytea, a one-element
                        // array for arrays, else a string.
                        if !std::mem::replace(&mut first, false) {
                            out.push(b',');
                        }
                        write_json_string(out, &col.name);
                        out.push(b':');
                        if col.type_oid == oid::BYTEA {
                            out.push(b'"');
                            crate::postgres::value::append_base64(out, p.as_bytes());
                            out.push(b'"');
                        } else if crate::postgres::value::array_element_type(col.type_oid).is_some() {
                            out.push(b'[');
                            write_json_string(out, p);
                            out.push(b']');
                        } else {
                            write_json_string(out, p);
                        }
                        continue;
                    }
                    (None, None) => continue,
                }
            }
            d => d,
        };
        if !std::mem::replace(&mut first, false) {
            out.push(b',');
        }
        write_json_string(out, &col.name);
        out.push(b':');
        if matches!(datum, Datum::Null) {
            out.extend_from_slice(b"null");
            continue;
        }
        match col.type_oid {
            oid::JSON | oid::JSONB if json_as_string => {
                scratch.clear();
                write_datum(&mut scratch, table, i, datum)?;
                write_json_string(out, &String::from_utf8_lossy(&scratch));
            }
            oid::DATE | oid::TIMESTAMP | oid::TIME => {
                scratch.clear();
                write_datum(&mut scratch, table, i, datum)?;
                let text = std::str::from_utf8(&scratch).unwrap_or("").trim_matches('"');
                let number = match col.type_oid {
                    oid::DATE => iso_date_days(text).map(|d| d.clamp(i32::MIN as i64, i32::MAX as i64)),
                    oid::TIMESTAMP => iso_timestamp_micros(text),
                    _ => clock_micros(text),
                };
                match number {
                    Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                    // Not a form ficus writes: keep its text rather than lose the value.
                    None => write_json_string(out, text),
                }
            }
            _ => write_datum(out, table, i, datum)?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// Days since 1970-01-01 of ficus's ISO date (`[+-]YYYY-MM-DD`, astronomical years); ±infinity as i32's extremes.
fn iso_date_days(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i32::MAX as i64),
        "-infinity" => return Some(i32::MIN as i64),
        _ => {}
    }
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let mut parts = body.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let year = if neg { -year } else { year };
    // H. Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Microseconds since midnight of `HH:MM:SS[.ffffff]`.
fn clock_micros(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.splitn(3, ':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut micros: i64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    for _ in frac.len()..6 {
        micros *= 10;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

/// Microseconds since the epoch of ficus's ISO timestamp without time zone (`<date>T<clock>`); ±infinity as i64's
/// extremes.
fn iso_timestamp_micros(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (date, clock) = s.split_once('T')?;
    let days = iso_date_days(date)?;
    days.checked_mul(86_400_000_000)?.checked_add(clock_micros(clock)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::change::{Column, Datum, Table, TxMeta};
    use crate::lsn::Lsn;
    use crate::postgres::value::oid;

    fn update() -> Change {
        let col =
            |name: &str, type_oid, is_key| Column { name: String::from(name), type_oid, type_modifier: -1, is_key };
        let text = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
        Change {
            op: Op::Update,
            table: Arc::new(Table {
                oid: 1,
                schema: "public".into(),
                name: "orders".into(),
                columns: vec![col("id", oid::INT4, true), col("status", oid::TEXT, false)],
                replica_identity: b'f',
            }),
            before: Some(vec![text("42"), text("paid")]),
            before_is_key_only: false,
            after: Some(vec![text("42"), text("shipped")]),
            lsn: Lsn(0x16B3748),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1234, commit_lsn: Lsn(0x16B3800), commit_time_us: 1_795_334_400_123_456 }),
        }
    }

    #[test]
    fn update_in_debezium_shape() {
        let source = SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() };
        let mut pieces = Vec::new();
        Debezium::new("ficus", true, true, false).encode(&update(), &source, &mut |p| pieces.push(p)).unwrap();
        let Piece::Event { key, value, .. } = &pieces[0] else { panic!("{pieces:?}") };
        assert_eq!(key.as_deref(), Some(&br#"{"id":42}"#[..]));
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "before": {"id": 42, "status": "paid"}, "after": {"id": 42, "status": "shipped"},
                "source": {"version": format!("ficus-{}", env!("CARGO_PKG_VERSION")), "connector": "postgresql",
                           "name": "ficus", "ts_ms": 1_795_334_400_123i64, "ts_us": 1_795_334_400_123_456i64,
                           "ts_ns": 1_795_334_400_123_456_000i64, "snapshot": "false", "db": "shop",
                           "sequence": format!("[\"{}\",\"{}\"]", 0x16B3800, 0x16B3748), "schema": "public", "table": "orders", "txId": 1234,
                           "lsn": 0x16B3748, "xmin": null},
                "op": "u", "ts_ms": 1_795_334_400_123i64, "ts_us": 1_795_334_400_123_456i64,
                "ts_ns": 1_795_334_400_123_456_000i64, "transaction": null
            })
        );
    }

    fn encode_all(d: &mut Debezium, c: &Change) -> Vec<Piece> {
        let source = SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() };
        let mut out = Vec::new();
        d.encode(c, &source, &mut |p| out.push(p)).unwrap();
        out
    }

    fn event(p: &Piece) -> (serde_json::Value, serde_json::Value, Op, Option<(&'static str, String)>) {
        match p {
            Piece::Event { key, value, op, key_header } => (
                serde_json::from_slice(key.as_deref().unwrap_or(b"null")).unwrap(),
                serde_json::from_slice(value).unwrap(),
                *op,
                key_header.clone(),
            ),
            Piece::Tombstone { .. } | Piece::Transaction { .. } => panic!("not a change event: {p:?}"),
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A key change under REPLICA IDENTITY DEFAULT (old key tuple only): delete under the old key with
    /// `__debezium.newkey`, its tombstone, create under the new key with `__debezium.oldkey`.
    #[test]
    fn a_key_change_is_a_delete_a_tombstone_and_a_create() {
        let mut c = update();
        c.before = Some(vec![text("42"), Datum::Null]);
        c.before_is_key_only = true;
        c.after = Some(vec![text("43"), text("shipped")]);
        let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        let (key, value, op, header) = event(&pieces[0]);
        assert_eq!((key, op), (serde_json::json!({"id": 42}), Op::Delete));
        assert_eq!(
            (&value["op"], &value["before"], &value["after"]),
            (&"d".into(), &serde_json::json!({"id": 42}), &serde_json::Value::Null)
        );
        assert_eq!(header, Some(("__debezium.newkey", String::from(r#"{"id":43}"#))));
        match &pieces[1] {
            Piece::Tombstone { key } => assert_eq!(key, br#"{"id":42}"#),
            p => panic!("expected a tombstone, got {p:?}"),
        }
        let (key, value, op, header) = event(&pieces[2]);
        assert_eq!((key, op), (serde_json::json!({"id": 43}), Op::Insert));
        assert_eq!((&value["op"], &value["before"]), (&"c".into(), &serde_json::Value::Null));
        assert_eq!(value["after"], serde_json::json!({"id": 43, "status": "shipped"}));
        assert_eq!(header, Some(("__debezium.oldkey", String::from(r#"{"id":42}"#))));
        // Without tombstones: delete and create only. Same key under FULL identity: one update.
        assert_eq!(encode_all(&mut Debezium::new("ficus", true, false, false), &c).len(), 2);
        let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &update());
        assert_eq!(pieces.len(), 1);
        assert_eq!(event(&pieces[0]).1["op"], "u");
    }

    #[test]
    fn a_delete_is_followed_by_a_tombstone_unless_the_table_has_no_key() {
        let mut c = update();
        c.op = Op::Delete;
        c.after = None;
        let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
        assert_eq!(pieces.len(), 2);
        assert!(matches!(&pieces[1], Piece::Tombstone { key } if key == br#"{"id":42}"#));
        let mut keyless = (*c.table).clone();
        keyless.columns[0].is_key = false;
        c.table = Arc::new(keyless);
        assert_eq!(encode_all(&mut Debezium::new("ficus", true, true, false), &c).len(), 1);
    }

    /// `schemas: true`: key and value as Kafka Connect's JsonConverter writes them, with Debezium's schemas.
    #[test]
    fn schemas_wrap_key_and_value_with_connect_schemas() {
        let mut c = update();
        let mut t = (*c.table).clone();
        t.columns.push(Column { name: "day".into(), type_oid: oid::DATE, type_modifier: -1, is_key: false });
        t.columns.push(Column { name: "at".into(), type_oid: oid::TIMESTAMP, type_modifier: -1, is_key: false });
        t.columns.push(Column { name: "doc".into(), type_oid: oid::JSONB, type_modifier: -1, is_key: false });
        c.table = Arc::new(t);
        for row in [c.before.as_mut().unwrap(), c.after.as_mut().unwrap()] {
            row.extend([text("1970-01-02"), text("1970-01-01 00:00:01.5"), text(r#"{"a": 1}"#)]);
        }
        let pieces = encode_all(&mut Debezium::new("my-server", true, true, true), &c);
        let (key, value, _, _) = event(&pieces[0]);
        assert_eq!(key["payload"], serde_json::json!({"id": 42}));
        assert_eq!(
            key["schema"],
            serde_json::json!({"type": "struct", "optional": false, "name": "my_server.public.orders.Key",
                               "fields": [{"type": "int32", "optional": false, "field": "id"}]})
        );
        let schema = &value["schema"];
        assert_eq!(schema["name"], "my_server.public.orders.Envelope");
        let fields: Vec<&str> =
            schema["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]);
        let after = &schema["fields"][1];
        assert_eq!((&after["name"], &after["optional"]), (&"my_server.public.orders.Value".into(), &true.into()));
        let cols = after["fields"].as_array().unwrap();
        assert_eq!(cols[0], serde_json::json!({"type": "int32", "optional": false, "field": "id"}));
        assert_eq!(cols[1], serde_json::json!({"type": "string", "optional": true, "field": "status"}));
        assert_eq!(cols[2]["name"], "io.debezium.time.Date");
        assert_eq!(cols[3]["name"], "io.debezium.time.MicroTimestamp");
        assert_eq!(cols[4]["name"], "io.debezium.data.Json");
        assert_eq!(schema["fields"][2]["name"], "io.debezium.connector.postgresql.Source");
        let p = &value["payload"];
        assert_eq!(
            (&p["after"]["day"], &p["after"]["at"], &p["after"]["doc"]),
            (&1.into(), &1_500_000.into(), &r#"{"a": 1}"#.into())
        );
        assert_eq!(p["op"], "u");
    }

    #[test]
    fn dates_times_and_timestamps_are_debeziums_numbers() {
        assert_eq!(iso_date_days("1970-01-01"), Some(0));
        assert_eq!(iso_date_days("2026-11-22"), Some(20_779));
        assert_eq!(iso_date_days("-0043-03-15"), Some(-735_160));
        assert_eq!(iso_date_days("+10000-01-01"), Some(2_932_897));
        assert_eq!(iso_timestamp_micros("1969-12-31T23:59:59.999999"), Some(-1));
        assert_eq!(iso_timestamp_micros("2018-06-20T15:13:16.945104"), Some(1_529_507_596_945_104));
        assert_eq!(iso_timestamp_micros("infinity"), Some(i64::MAX));
        assert_eq!(clock_micros("10:00:00.5"), Some(36_000_500_000));
    }

    /// An unchanged TOASTed value the server did not send (REPLICA IDENTITY DEFAULT): Debezium's placeholder by
    /// default, left out with `unavailable_value_placeholder: null`; taken from the old row under FULL.
    #[test]
    fn unavailable_toast_values_get_debeziums_placeholder() {
        let mut c = update();
        c.before = None;
        c.after = Some(vec![text("42"), Datum::UnchangedToast]);
        let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
        assert_eq!(
            event(&pieces[0]).1["after"],
            serde_json::json!({"id": 42, "status": "__debezium_unavailable_value"})
        );
        let pieces = encode_all(&mut Debezium::new("ficus", true, true, false).with_placeholder(None), &c);
        assert_eq!(event(&pieces[0]).1["after"], serde_json::json!({"id": 42}));
        c.before = Some(vec![text("42"), text("paid")]);
        let pieces = encode_all(&mut Debezium::new("ficus", true, true, false), &c);
        assert_eq!(event(&pieces[0]).1["after"], serde_json::json!({"id": 42, "status": "paid"}));
    }

    /// The last snapshot row of a table: `snapshot: "last_in_data_collection"` (even with a column `snapshot`
    /// holding "true"); other reads `"true"`.
    #[test]
    fn the_last_snapshot_row_of_a_table_is_marked() {
        let mut c = update();
        c.op = Op::Read;
        c.before = None;
        let mut t = (*c.table).clone();
        t.columns[1].name = "snapshot".into();
        c.table = Arc::new(t);
        c.after = Some(vec![text("42"), text("true")]);
        let mut d = Debezium::new("ficus", true, true, false);
        assert_eq!(event(&encode_all(&mut d, &c)[0]).1["source"]["snapshot"], "true");
        d.set_snapshot_last(true);
        let (_, v, _, _) = event(&encode_all(&mut d, &c)[0]);
        assert_eq!(
            (&v["source"]["snapshot"], &v["after"]["snapshot"]),
            (&"last_in_data_collection".into(), &"true".into())
        );
    }
}
