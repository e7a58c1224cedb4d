//! [`Record`]: a message for Kafka, independent of librdkafka, and the rules for Kafka topic names. The bottom
//! floor: the router and the rules produce records, the Kafka stage sends them, and none of them has to know the
//! others for it.

use std::sync::Arc;
/// A message for Kafka, independent of librdkafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    /// `None` = null key (the table has no primary key nor replica-identity index).
    pub key: Option<Vec<u8>>,
    /// The value; empty and ignored for a tombstone.
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// A tombstone: the value is null (not empty), which log compaction reads as "delete this key". Debezium follows
    /// every delete with one (`changes.debezium.tombstones`).
    pub tombstone: bool,
}

/// A header value; shared or static where possible, so a record costs few allocations.
#[derive(Debug, Clone)]
pub enum HeaderValue {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    /// An LSN's text, inline (no allocation per record).
    Lsn(crate::lsn::LsnText),
}

impl HeaderValue {
    pub fn as_str(&self) -> &str {
        match self {
            HeaderValue::Static(s) => s,
            HeaderValue::Shared(s) => s,
            HeaderValue::Owned(s) => s,
            HeaderValue::Lsn(t) => t.as_str(),
        }
    }
}

impl Record {
    /// A tombstone for `key` on `topic`: a null value.
    pub fn tombstone(topic: Arc<str>, key: Vec<u8>, headers: Vec<(&'static str, HeaderValue)>) -> Record {
        Record { topic, key: Some(key), payload: Vec::new(), headers, tombstone: true }
    }

    /// Key and value bytes (what Kafka's transaction and batch sizes count).
    pub fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }

    /// Value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// What Kafka accepts as a topic name, for messages.
pub const TOPIC_NAME_RULE: &str = "a Kafka topic name: 1 to 249 of [a-zA-Z0-9._-], not \".\" or \"..\"";

/// Whether Kafka accepts `t` as a topic name (the broker's own rule: legal characters, length, not `.` or `..`).
/// Checked at load time: a bad name would otherwise fail only at the first event, after the stream started.
pub fn is_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Kafka topic for raw changes of `schema.table`: characters Kafka cannot hold become `_`.
pub fn change_topic(prefix: &str, schema: &str, table: &str) -> String {
    sanitize_topic(&format!("{prefix}.{schema}.{table}"))
}

/// `raw` as a Kafka topic name: characters outside `[a-zA-Z0-9._-]` become `_`, at most 249 characters.
pub fn sanitize_topic(raw: &str) -> String {
    let mut topic: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    // Kafka's limit is 249 characters.
    topic.truncate(249);
    topic
}
