//! The `events:` section of the config, as written: one [`RuleSpec`] per business-event rule.
//!
//! These types only describe the YAML; `rules::RuleSet::compile` checks them (names, tables, CEL) and turns
//! them into executable rules. Expressions are CEL source text.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::masking::Secret;

/// One business-event rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Event type, PascalCase and past tense by convention (`OrderShipped`); warned about, not refused.
    pub name: String,
    /// Event version (`eventVersion`); bump it when `data` changes incompatibly. Default 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Source table, as in `source.tables` (a table rule). Exactly one of `table`, `message`, `outbox`.
    #[serde(default)]
    pub table: Option<String>,
    /// Prefix of transactional logical decoding messages (`pg_logical_emit_message(true, prefix, content)`) this
    /// rule turns into events (a message rule). CEL sees `content` (parsed JSON, or the text), `prefix`, `tx`.
    #[serde(default)]
    pub message: Option<String>,
    /// An outbox table with Debezium's outbox semantics (an outbox rule).
    #[serde(default)]
    pub outbox: Option<OutboxSpec>,
    /// Which row operations trigger the rule; default all row operations (insert, update, delete, read).
    #[serde(default)]
    pub on: Option<OneOrMany<OpName>>,
    /// CEL condition over `new`, `old`, `op`, `table`, `tx`; default: always.
    #[serde(default)]
    pub when: Option<String>,
    /// CEL expression for the event key (Kafka key): a string or an integer, never null. Required for table and
    /// message rules; an outbox rule's key is the `aggregateid` column.
    #[serde(default)]
    pub key: Option<String>,
    /// Kafka topic for the events. For an outbox rule a template over `{aggregatetype}`, default
    /// `outbox.event.{aggregatetype}` (Debezium's default).
    #[serde(default)]
    pub topic: Option<String>,
    /// The event's `data`: a map of field → CEL expression (nested maps allowed), or a column selection
    /// `{columns: [a, b]}` / `{exclude: [c]}` from the new row (the old row for deletes). Default: every column.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Extra Kafka headers: name → CEL expression (the value is sent as text).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// CEL expression replacing the default `correlationId` (shared by all events of one source transaction).
    #[serde(default)]
    pub correlation: Option<String>,
    /// Message format: `json` (the canonical envelope), `cloudevents-binary` or `cloudevents-structured`;
    /// default `event_defaults.encoding`, else `json`.
    #[serde(default)]
    pub encoding: Option<Encoding>,
    /// Which of ficus's own headers the events carry: `all` or `minimal` (docs/events.md); default
    /// `event_defaults.envelope_headers`, else `all`.
    #[serde(default)]
    pub envelope_headers: Option<EnvelopeHeaders>,
    /// What to do when the rule fails at run time for a change: `dlq`, `fail`, `skip`; default
    /// `event_defaults.on_error`, else `dlq`.
    #[serde(default)]
    pub on_error: Option<OnError>,
}

/// `outbox:` of a rule: the table and its column names (Debezium's by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSpec {
    /// The outbox table, as in `source.tables`. Its inserts become events; updates and deletes are ignored.
    pub table: String,
    /// Column with the event id (`eventId`; uuid or text or integer).
    #[serde(default = "col_id")]
    pub id: String,
    /// Column naming the aggregate type (fills `{aggregatetype}` of the topic template).
    #[serde(default = "col_aggregatetype")]
    pub aggregatetype: String,
    /// Column with the aggregate id (the Kafka key and `key`).
    #[serde(default = "col_aggregateid")]
    pub aggregateid: String,
    /// Column with the event type (`eventType`).
    #[serde(default = "col_type")]
    pub r#type: String,
    /// Column with the payload (`data`): jsonb/json published as JSON, not as an escaped string.
    #[serde(default = "col_payload")]
    pub payload: String,
    /// Further columns sent as Kafka headers (name = column name, value = its text).
    #[serde(default)]
    pub headers: Vec<String>,
}

fn col_id() -> String {
    "id".into()
}
fn col_aggregatetype() -> String {
    "aggregatetype".into()
}
fn col_aggregateid() -> String {
    "aggregateid".into()
}
fn col_type() -> String {
    "type".into()
}
fn col_payload() -> String {
    "payload".into()
}

fn default_version() -> u32 {
    1
}

/// A YAML scalar or list: `on: update` or `on: [insert, update]`.
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// By hand rather than `#[serde(untagged)]`: serde's untagged error ("data did not match any variant of untagged enum
/// OneOrMany") would hide the item's own error (`unknown variant `updat`, expected one of insert, update, ...`).
impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| T::deserialize(item).map_err(|e| D::Error::custom(format!("[{i}]: {e}"))))
                .collect::<Result<_, _>>()
                .map(OneOrMany::Many),
            one => T::deserialize(one).map(OneOrMany::One).map_err(D::Error::custom),
        }
    }
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// An operation a rule can trigger on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpName {
    Insert,
    Update,
    Delete,
    Read,
    Truncate,
}

/// `encoding:` of a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// The canonical JSON envelope (docs/events.md).
    #[default]
    Json,
    /// CloudEvents 1.0 Kafka protocol binding, binary mode: `ce_*` headers, value = `data`.
    CloudeventsBinary,
    /// CloudEvents 1.0 Kafka protocol binding, structured mode: `application/cloudevents+json`.
    CloudeventsStructured,
}

impl Encoding {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::CloudeventsBinary => "cloudevents-binary",
            Encoding::CloudeventsStructured => "cloudevents-structured",
        }
    }
}

/// `envelope_headers:` of a rule: which of ficus's own headers its events carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeHeaders {
    /// Every header of docs/events.md, in every encoding.
    #[default]
    All,
    /// Only what the record does not already hold: not `event-id`, `event-version`, `correlation-id` (in the JSON
    /// envelope and the structured CloudEvent), and in `cloudevents-binary` neither `event-type` nor `traceparent`
    /// (`ce_type`, `ce_traceparent`). Each header is an allocation, a copy and a free in librdkafka per event.
    Minimal,
}

/// `event_defaults:` — defaults for every rule of `events:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDefaults {
    /// Default `encoding` of rules.
    #[serde(default)]
    pub encoding: Encoding,
    /// Default `on_error` of rules.
    #[serde(default)]
    pub on_error: OnError,
    /// Default `envelope_headers` of rules.
    #[serde(default)]
    pub envelope_headers: EnvelopeHeaders,
    /// The keys of the CEL function `hmac('<name>', value)`: name → secret, written `${NAME}` or
    /// `${file:/run/secrets/…}` (a literal is refused: the key would sit in the config file). Never printed.
    #[serde(default)]
    pub hmac_keys: BTreeMap<String, Secret>,
}

impl EventDefaults {
    /// Checks `hmac_keys`: names a rule can write as a CEL string, non-empty secrets.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        for (name, Secret(secret)) in &self.hmac_keys {
            let key = format!("event_defaults.hmac_keys.{name}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(super::ConfigError::invalid(
                    key,
                    "name keys with letters, digits, '_' or '-', e.g. customer",
                ));
            }
            if secret.is_empty() {
                return Err(super::ConfigError::invalid(
                    key,
                    "is empty; set it from a secret, e.g. ${file:/run/secrets/customer-key}",
                ));
            }
        }
        Ok(())
    }
}

/// Refuses an `event_defaults.hmac_keys` secret written literally in the YAML (checked before interpolation: the
/// value must contain a `${…}`), so the key lives in the environment or a secret file, not in the config.
pub(super) fn refuse_literal_hmac_keys(tree: &serde_json::Value) -> Result<(), super::ConfigError> {
    let Some(keys) = tree.get("event_defaults").and_then(|d| d.get("hmac_keys")).and_then(|k| k.as_object()) else {
        return Ok(());
    };
    for (name, value) in keys {
        if value.as_str().is_some_and(|s| !s.contains("${")) {
            return Err(super::ConfigError::invalid(
                format!("event_defaults.hmac_keys.{name}"),
                "write the secret as ${NAME} (an environment variable) or ${file:/run/secrets/…}, not literally in the config",
            ));
        }
    }
    Ok(())
}

/// `on_error:` of a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Publish the original change to `kafka.dlq_topic` with the reason, and go on.
    #[default]
    Dlq,
    /// Stop ficus (exit 1); the change is retried after the rule is fixed.
    Fail,
    /// Count it, log it, and go on without an event.
    Skip,
}
