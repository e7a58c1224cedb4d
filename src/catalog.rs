//! `ficus catalog`: the event catalog of a config — for every event type and version its topic, key, source table,
//! trigger, encoding and a JSON Schema (2020-12) of `data`, as Markdown (for people) or JSON (for tools).
//!
//! Column types come from the database when it is reachable (read-only catalog queries); `--offline` skips the
//! database and leaves the types of column references open (`{}`). Domains are typed as their base type and arrays
//! of non-builtin types as arrays, as the value mapping publishes them.

pub mod compare;

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::conninfo::ConnInfo;
use crate::config::Config;
use crate::ident::TableName;
use crate::postgres::control::{self, ColumnType};
use crate::rules::{RuleDescription, Rules};

/// Why the catalog could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("reading column types from the database: {0} (use --offline to build the catalog without it)")]
    Database(String),
}

/// Builds the catalog of `config`'s rules.
pub async fn build(config: &Config, rules: &Rules, offline: bool) -> Result<Vec<RuleDescription>, CatalogError> {
    let mut columns: HashMap<TableName, Vec<ColumnType>> = HashMap::new();
    if !offline {
        let info = ConnInfo::parse(&config.source.url).map_err(|e| CatalogError::Config(format!("source.url: {e}")))?;
        let (client, connection) = info.connect_control().await.map_err(|e| CatalogError::Database(e.to_string()))?;
        let tables: Vec<TableName> = rules.rules().iter().filter_map(|r| r.table.clone()).collect();
        for table in tables {
            if columns.contains_key(&table) {
                continue;
            }
            match control::table_info(&client, &table).await {
                Ok(Some(t)) => {
                    // Schemas follow the value mapping, which maps a domain as its base type and an array of a
                    // non-builtin type (enum[], a domain's array, …) as an array: type each column by the OID
                    // whose mapping applies, as the stream does (the column keeps its declared type name).
                    let oids: Vec<u32> = t.columns.iter().map(|c| c.type_oid).collect();
                    let mapped = control::value_types(&client, &oids)
                        .await
                        .map_err(|e| CatalogError::Database(e.to_string()))?;
                    // Only the columns the stream sends (no virtual generated columns, stored ones where published).
                    let sent = control::published_columns(&client, &config.source.publication, &table, &t)
                        .await
                        .map_err(|e| CatalogError::Database(e.to_string()))?;
                    let cols = t
                        .columns
                        .into_iter()
                        .filter(|c| sent.contains(&c.name))
                        .map(|c| ColumnType { type_oid: mapped.get(&c.type_oid).copied().unwrap_or(c.type_oid), ..c })
                        .collect();
                    columns.insert(table, cols);
                }
                Ok(None) => return Err(CatalogError::Database(format!("table {table} does not exist"))),
                Err(e) => return Err(CatalogError::Database(e.to_string())),
            }
        }
        drop(client);
        connection.abort();
    }
    Ok(rules.describe(&|t| columns.get(t).cloned()))
}

/// The catalog as JSON: `{"events": [...]}`.
pub fn to_json(entries: &[RuleDescription]) -> serde_json::Value {
    serde_json::json!({ "events": entries })
}

/// The catalog as Markdown: an overview table, then one section per event type and version.
pub fn to_markdown(entries: &[RuleDescription]) -> String {
    let mut out = String::from(
        "# Event catalog\n\n| event | version | topic | key | source | trigger |\n|---|---|---|---|---|---|\n",
    );
    for e in entries {
        let _ = writeln!(
            out,
            "| [{}](#{}) | {} | `{}` | `{}` | `{}` | {} |",
            e.event_type,
            anchor(e),
            e.version,
            e.topic,
            cell(&e.key),
            e.table,
            cell(&trigger(e))
        );
    }
    for e in entries {
        let _ = write!(
            out,
            "\n## {} v{}\n\n- topic: `{}` (key: `{}`)\n- source: `{}`, {}\n- encoding: {}; on error: {}\n\n`data` schema:\n\n```json\n{}\n```\n",
            e.event_type,
            e.version,
            e.topic,
            e.key,
            e.table,
            trigger(e),
            e.encoding,
            e.on_error,
            serde_json::to_string_pretty(&e.schema).unwrap_or_default()
        );
    }
    out
}

fn trigger(e: &RuleDescription) -> String {
    let ops = e.on.join(", ");
    match &e.when {
        Some(w) => format!("on {ops} when `{w}`"),
        None => format!("on {ops}"),
    }
}

/// GitHub's heading anchor of `## Name vN`.
fn anchor(e: &RuleDescription) -> String {
    format!("{}-v{}", e.event_type.to_lowercase(), e.version).replace('.', "")
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
source:
  url: postgres://ficus@127.0.0.1/shop
  tables: [public.orders]
kafka:
  brokers: 127.0.0.1:9092
events:
  - name: OrderShipped
    table: public.orders
    on: update
    when: old.status != 'shipped' && new.status == 'shipped'
    key: string(new.id)
    topic: shop.orders
    data:
      orderId: new.id
      label: "'#' + string(new.id)"
      total: {cents: new.amt_cents, euros: double(new.amt_cents) / 100.0, big: new.amt_cents > 10000, scaled: new.rate * 2.0}
      status: "{'N': 'new', 'S': 'shipped'}[new.status]"
  - {name: OrderSnapshot, table: public.orders, key: new.id, topic: shop.raw, data: {columns: [id, note]}}
"#;

    fn columns() -> Vec<ColumnType> {
        let c = |name: &str, type_oid, not_null| ColumnType {
            name: name.into(),
            type_oid,
            type_name: "t".into(),
            not_null,
            generated: Default::default(),
        };
        use crate::postgres::value::oid;
        vec![
            c("id", oid::INT8, true),
            c("status", oid::TEXT, true),
            c("amt_cents", oid::INT4, true),
            c("note", oid::TEXT, false),
            c("rate", oid::FLOAT8, false),
        ]
    }

    #[test]
    fn schemas_follow_expressions_and_column_types() {
        let config = Config::from_yaml(CONFIG, &|_| None).unwrap();
        let rules = crate::rules::Rules::compile(&config).unwrap();
        let cols = columns();
        let d = rules.describe(&|_| Some(cols.clone()));
        let s = &d[0].schema;
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["properties"]["orderId"]["type"], "integer");
        assert_eq!(s["properties"]["label"]["type"], "string");
        assert_eq!(s["properties"]["total"]["properties"]["cents"]["type"], "integer");
        // double division: a number, or NaN/±Infinity as strings (as the value mapping publishes them).
        let float = serde_json::json!({"type": ["number", "string"], "pattern": "^(NaN|-?Infinity)$"});
        assert_eq!(s["properties"]["total"]["properties"]["euros"], float);
        assert_eq!(s["properties"]["total"]["properties"]["scaled"], float, "arithmetic on a float column");
        assert_eq!(s["properties"]["total"]["properties"]["big"]["type"], "boolean");
        assert_eq!(s["properties"]["status"]["type"], "string");
        assert_eq!(s["required"], serde_json::json!(["orderId", "label", "total", "status"]));
        assert_eq!(d[1].schema["properties"]["note"]["type"], serde_json::json!(["string", "null"]));
        assert!(d[1].schema["properties"].get("status").is_none());

        let offline = rules.describe(&|_| None);
        assert_eq!(offline[0].schema["properties"]["orderId"], serde_json::json!({}));
        assert_eq!(offline[0].schema["properties"]["label"]["type"], "string");

        let md = to_markdown(&d);
        assert!(md.contains("| [OrderShipped](#ordershipped-v1) | 1 | `shop.orders` | `string(new.id)` | `public.orders` | on update when"), "{md}");
        assert!(md.contains("## OrderSnapshot v1"));
        let json = to_json(&d);
        assert_eq!(json["events"][0]["eventType"], "OrderShipped");
        assert_eq!(json["events"][0]["on"], serde_json::json!(["update"]));
    }
}
