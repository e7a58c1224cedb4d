//! `changes:` — raw change events: which tables, which encoding, and the Debezium encoding's options.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{default_topic_prefix, MaskingConfig, TableName};

/// `changes:` — raw change events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// Tables whose changes are published as raw change events; `"*"` = every captured table.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Topic = `<topic_prefix>.<schema>.<table>` (characters outside `[a-zA-Z0-9._-]` become `_`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Envelope of raw change events: `json` (ficus's own, default) or `debezium` (Debezium-compatible).
    #[serde(default)]
    pub encoding: ChangeEncoding,
    /// Options of the `debezium` encoding (ignored by `json`).
    #[serde(default)]
    pub debezium: DebeziumOptions,
    /// Masking of personal data in raw change events (`exclude`, `hash`, `redact`, `truncate` per column).
    #[serde(default)]
    pub masking: MaskingConfig,
    /// ficus's own transaction metadata for raw change events (`json` encoding) and business events: every event
    /// carries its transaction id and position, and an END record per source transaction on
    /// `<topic_prefix>.transactions` gives the event count, per topic (default `false`).
    #[serde(default)]
    pub transaction_metadata: bool,
    /// Debezium's `message.key.columns`: `schema.table` → the columns of the Kafka key of its raw change events
    /// (both encodings) instead of the replica-identity key.
    #[serde(default)]
    pub key_columns: BTreeMap<String, Vec<String>>,
}

impl ChangesConfig {
    /// Whether `table`'s raw change events are ficus's JSON of the row as read: published (`tables`), JSON encoding,
    /// no masked column and no `key_columns` entry. Only then can a snapshot worker encode the row in advance.
    pub fn publishes_unaltered_json(&self, table: &TableName) -> bool {
        let named = |t: &String| TableName::parse(t).as_ref() == Ok(table);
        self.encoding == ChangeEncoding::Json
            && self.tables.iter().any(|t| t == "*" || named(t))
            && !self.masking.covers(table)
            && !self.key_columns.keys().any(named)
    }
}

impl Default for ChangesConfig {
    fn default() -> Self {
        ChangesConfig {
            tables: Vec::new(),
            topic_prefix: default_topic_prefix(),
            encoding: ChangeEncoding::default(),
            debezium: DebeziumOptions::default(),
            masking: MaskingConfig::default(),
            transaction_metadata: false,
            key_columns: BTreeMap::new(),
        }
    }
}

/// `changes.debezium:` — where the Debezium encoding may differ from Debezium's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebeziumOptions {
    /// Operations not published as raw change events, as Debezium's `skipped.operations` (letters `c`, `u`, `d`,
    /// `t`); Debezium's default skips truncates (`[t]`), which consumers such as Flink's debezium-json reject.
    /// `[]` publishes every operation.
    #[serde(default = "default_skipped_operations")]
    pub skipped_operations: Vec<DebeziumOp>,
    /// json/jsonb values: `string` (Debezium's `io.debezium.data.Json`, a string holding the JSON text; default) or
    /// `embedded` (JSON, as ficus's own encoding).
    #[serde(default)]
    pub json_handling: JsonHandling,
    /// A tombstone (same key, null value) after every delete, as Debezium's `tombstones.on.delete` (default `true`),
    /// so log compaction can drop the key. Tables without a key get none (a null key compacts nothing).
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Key and value wrapped as Kafka Connect's JsonConverter with `schemas.enable=true` writes them:
    /// `{"schema": <Connect schema>, "payload": …}` (default `false`: the payload alone, as `schemas.enable=false`).
    #[serde(default)]
    pub schemas: bool,
    /// What stands in `after` for an unchanged TOASTed value the server did not send (REPLICA IDENTITY DEFAULT), as
    /// Debezium's `unavailable.value.placeholder` (default `__debezium_unavailable_value`); `null` leaves the column
    /// out of `after` instead (ficus's own encoding does that and names it in `unavailable`).
    #[serde(default = "default_placeholder")]
    pub unavailable_value_placeholder: Option<String>,
    /// Debezium's `provide.transaction.metadata`: a BEGIN and an END record per source transaction on
    /// `<topic_prefix>.transaction` (END with the event count per table), and `transaction {id, total_order,
    /// data_collection_order}` in every event (default `false`, as Debezium: `transaction` is null).
    #[serde(default)]
    pub transaction_metadata: bool,
}

fn default_placeholder() -> Option<String> {
    Some(String::from("__debezium_unavailable_value"))
}

fn default_true() -> bool {
    true
}

impl Default for DebeziumOptions {
    fn default() -> Self {
        DebeziumOptions {
            skipped_operations: default_skipped_operations(),
            json_handling: JsonHandling::default(),
            tombstones: true,
            schemas: false,
            unavailable_value_placeholder: default_placeholder(),
            transaction_metadata: false,
        }
    }
}

/// `changes.debezium.json_handling`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonHandling {
    #[default]
    String,
    Embedded,
}

fn default_skipped_operations() -> Vec<DebeziumOp> {
    vec![DebeziumOp::Truncate]
}

/// A Debezium `op` letter, in `changes.debezium.skipped_operations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DebeziumOp {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    #[serde(rename = "t")]
    Truncate,
}

impl DebeziumOp {
    /// Whether this letter names `op` (`c` is an insert; snapshot reads, `r`, are never skipped, as in Debezium).
    pub fn matches(self, op: crate::change::Op) -> bool {
        use crate::change::Op;
        matches!(
            (self, op),
            (DebeziumOp::Create, Op::Insert)
                | (DebeziumOp::Update, Op::Update)
                | (DebeziumOp::Delete, Op::Delete)
                | (DebeziumOp::Truncate, Op::Truncate)
        )
    }
}

/// `changes.encoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeEncoding {
    /// The raw change event of docs/events.md.
    #[default]
    Json,
    /// Debezium's PostgreSQL connector envelope (`before`, `after`, `source`, `op` c/u/d/r/t, `ts_ms`).
    Debezium,
}
