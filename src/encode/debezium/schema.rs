//! Kafka Connect schemas of the Debezium encoding (`changes.debezium.schemas`): Debezium's names and logical types
//! for the key and the value of a table, built once per table description.

use std::sync::Arc;

use super::CachedSchemas;
use crate::change::Table;
use crate::postgres::value::oid;

/// The schemas of `table`, built on first use and after a Relation message changed the table.
pub(super) fn cached_schemas<'c>(
    cache: &'c mut crate::change::OidMap<CachedSchemas>,
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
pub(super) fn column_schema(type_oid: u32) -> serde_json::Value {
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
pub(super) fn connect_schemas(server_name: &str, table: &Table) -> (serde_json::Value, serde_json::Value) {
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
