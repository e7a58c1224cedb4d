//! What the event catalog shows of each rule (`ficus catalog`): type, version, topic, key, source, filter and a JSON
//! Schema of `data` (`schema`).

use super::*;

/// What the event catalog shows of a rule.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleDescription {
    pub event_type: String,
    pub version: u32,
    pub topic: String,
    /// The key expression.
    pub key: String,
    pub table: String,
    pub on: Vec<&'static str>,
    pub when: Option<String>,
    pub encoding: &'static str,
    pub on_error: &'static str,
    /// JSON Schema (2020-12) of `data`.
    pub schema: serde_json::Value,
}

impl Rules {
    /// A description of every rule for the event catalog; `columns` gives a table's catalog columns when the
    /// database was read.
    pub fn describe(&self, columns: &dyn Fn(&TableName) -> Option<Vec<ColumnType>>) -> Vec<RuleDescription> {
        self.rules
            .iter()
            .map(|r| {
                let cols = r.table.as_ref().and_then(columns);
                RuleDescription {
                    event_type: match &r.kind {
                        Kind::Outbox(ob) => format!("{} (eventType from column {})", r.name, ob.r#type),
                        _ => r.name.clone(),
                    },
                    version: r.version,
                    topic: r.topic_text(),
                    key: match (&r.key, &r.kind) {
                        (Some(k), _) => k.source.clone(),
                        (None, Kind::Outbox(ob)) => format!("column {}", ob.aggregateid),
                        (None, _) => String::new(),
                    },
                    table: match (&r.kind, &r.table) {
                        (Kind::Message(prefix), _) => format!("logical messages with prefix {prefix}"),
                        (_, Some(t)) => t.to_string(),
                        (_, None) => String::new(),
                    },
                    on: r.ops.iter().map(|o| o.as_str()).collect(),
                    when: r.when.as_ref().map(|w| w.source.clone()),
                    encoding: r.encoding.as_str(),
                    on_error: match r.on_error {
                        OnError::Dlq => "dlq",
                        OnError::Fail => "fail",
                        OnError::Skip => "skip",
                    },
                    schema: schema::data_schema(r, cols.as_deref()),
                }
            })
            .collect()
    }
}
