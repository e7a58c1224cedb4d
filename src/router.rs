//! Routing: one [`Change`] in, zero or more Kafka [`Record`]s out.
//!
//! Today a change becomes a raw change event on `<topic_prefix>.<schema>.<table>` when its table is listed in
//! `changes.tables`; business-event rules will add records here. A change that nothing publishes is dropped on
//! purpose (the source only captures configured tables, so this is a choice of the config, not a loss).
//! Records are produced in the order returned, which keeps per-key order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::change::Change;
use crate::config::{Config, TableName};
use crate::encode::{self, SourceInfo};

/// A message for Kafka, independent of librdkafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    /// `None` = null key (the table has no primary key nor replica-identity index).
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Record {
    /// Value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Kafka topic for raw changes of `schema.table`: characters Kafka cannot hold become `_`.
pub fn change_topic(prefix: &str, schema: &str, table: &str) -> String {
    let raw = format!("{prefix}.{schema}.{table}");
    let mut topic: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    // Kafka's limit is 249 characters.
    topic.truncate(249);
    topic
}

/// Turns changes into records.
pub struct Router {
    source: SourceInfo,
    prefix: String,
    changes_tables: Vec<String>,
    /// Per relation id: the qualified name it was decided for and the topic (None = not published).
    topics: HashMap<u32, (String, Option<Arc<str>>)>,
}

impl Router {
    /// Builds the router for `config`; `source` identifies the database in every event.
    pub fn new(config: &Config, source: SourceInfo) -> Router {
        Router {
            source,
            prefix: config.changes.topic_prefix.clone(),
            changes_tables: config.changes.tables.clone(),
            topics: HashMap::new(),
        }
    }

    fn topic_for(&mut self, change: &Change) -> Option<Arc<str>> {
        let t = &change.table;
        let qualified = t.qualified_name();
        if let Some((name, topic)) = self.topics.get(&t.oid) {
            if *name == qualified {
                return topic.clone();
            }
        }
        let name = TableName { schema: t.schema.clone(), name: t.name.clone() };
        let publish = self.changes_tables.iter().any(|x| x == "*" || TableName::parse(x).as_ref() == Ok(&name));
        let topic = publish.then(|| Arc::from(change_topic(&self.prefix, &t.schema, &t.name)));
        self.topics.insert(t.oid, (qualified, topic.clone()));
        topic
    }

    /// Records for one change, in publishing order.
    pub fn route(&mut self, change: &Change, out: &mut Vec<Record>) -> Result<(), encode::EncodeError> {
        let Some(topic) = self.topic_for(change) else { return Ok(()) };
        let (key, payload) = encode::raw_change(change, &self.source)?;
        out.push(Record {
            topic,
            key,
            payload,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("source-lsn", change.lsn.to_string()),
                ("op", change.op.as_str().to_string()),
                ("source-table", change.table.qualified_name()),
            ],
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_sanitized() {
        assert_eq!(change_topic("ficus", "legacy", "Order Lines"), "ficus.legacy.Order_Lines");
        assert_eq!(change_topic("ficus", "public", "orders"), "ficus.public.orders");
        assert_eq!(change_topic("f", "Sch\"ema", "tä"), "f.Sch_ema.t_");
    }
}
