//! Configuration: one YAML file, `${ENV}` interpolation, unknown keys rejected with their path.
//!
//! Loading happens in three steps so every error can name the key that is wrong:
//! 1. the YAML text is parsed into a generic tree (syntax errors carry a line and column);
//! 2. every string in the tree has `${NAME}` replaced by the environment variable `NAME` — after parsing, so a
//!    secret containing `#`, `:` or quotes can never change the YAML structure;
//! 3. the tree is deserialized into [`Config`] through `serde_path_to_error`, so an unknown key or a wrong type is
//!    reported as e.g. `kafka.propertis: unknown field ...`; then [`Config::validate`] checks the constraints
//!    serde cannot express.
//!
//! The doc comment on every field is the reference documentation of that key (docs/configuration.md mirrors it).
//! Secrets (the password in `source.url`) are only ever printed through [`crate::config::conninfo`]'s redaction.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::ident::TableName;
use crate::record::{change_topic, is_topic_name, TOPIC_NAME_RULE};

mod changes;
pub mod conninfo;
pub mod events;
mod interpolate;
pub mod kafka;
mod key_columns;
pub mod masking;
pub mod snapshot;

pub use changes::{ChangeEncoding, ChangesConfig, DebeziumOp, DebeziumOptions, JsonHandling};
pub use interpolate::interpolate_env;
use interpolate::interpolate_tree;
pub use kafka::{Delivery, KafkaConfig, Scalar};
pub use masking::{MaskAction, MaskingConfig};
pub use snapshot::{SnapshotConfig, SnapshotMode};

/// A configuration problem. The message names the key and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where changes come from.
    pub source: SourceConfig,
    /// Where events go.
    pub kafka: KafkaConfig,
    /// Local state (checkpoints).
    #[serde(default)]
    pub state: StateConfig,
    /// Raw change events, opt-in per table.
    #[serde(default)]
    pub changes: ChangesConfig,
    /// Business-event rules (see [`crate::rules`]).
    #[serde(default)]
    pub events: Vec<events::RuleSpec>,
    /// Defaults for every rule (`encoding`, `on_error`).
    #[serde(default)]
    pub event_defaults: events::EventDefaults,
    /// Initial snapshot of existing rows.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// HTTP endpoints for probes and metrics.
    #[serde(default)]
    pub health: HealthConfig,
}

/// `source:` — the PostgreSQL database to capture.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/db?sslmode=...`. Put the password in an environment variable:
    /// `postgres://ficus:${PGPASSWORD}@db:5432/shop`.
    pub url: String,
    /// Logical replication slot; created (pgoutput) if missing.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication; created `FOR TABLE <tables>` if missing, missing tables are added.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Captured tables: `schema.table`, `table` (= `public.table`), or with quoted parts: `legacy."Order Lines"`.
    pub tables: Vec<String>,
    /// Seconds between standby status updates (must stay below the server's `wal_sender_timeout / 2`).
    #[serde(default = "default_status_interval_secs")]
    pub status_interval_secs: u64,
    /// Seconds without any message from the server after which the replication connection is taken for dead and
    /// opened again (PostgreSQL's `wal_receiver_timeout` for ficus): after half of it ficus asks the server for a
    /// reply. Catches a connection whose server-to-ficus direction is lost while ficus's status updates still
    /// arrive (the server then never times out). 0 = off. Default 60.
    #[serde(default = "default_receive_timeout_secs")]
    pub receive_timeout_secs: u64,
    /// Every this many seconds, write a tiny transactional logical message (`pg_logical_emit_message`, prefix
    /// `ficus.heartbeat`) so the slot's confirmed position follows the server's WAL even when nothing captured
    /// changes and the server sends no keepalive. 0 = off (default). Off, with a warning, on a standby (it cannot
    /// write; docs/postgres-versions.md "Capture from a standby").
    #[serde(default)]
    pub heartbeat_interval_secs: u64,
    /// Longest wait between reconnection attempts after a transient failure (connection lost, server restart, slot
    /// busy); waits start at 0.5 s and double, with jitter, up to this. Default 30.
    #[serde(default = "default_reconnect_max_delay_secs")]
    pub reconnect_max_delay_secs: u64,
    /// How pgoutput sends column values: `auto` (default) requests the binary format when every captured column
    /// has a type ficus decodes in binary (cheaper for the walsender, see docs/benchmarks.md), else text;
    /// `text` always requests text.
    #[serde(default)]
    pub value_format: ValueFormat,
    /// Create the slot as a failover slot (PostgreSQL 17+: synchronized to standbys with `sync_replication_slots`,
    /// so it survives a promotion): `auto` (default) where the server supports it, `true` (required: an error on an
    /// older server or for an existing slot without failover), `false` (never).
    #[serde(default)]
    pub failover_slot: FailoverSlot,
}

/// `source.failover_slot`: `auto`, `true` or `false` (YAML booleans or strings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailoverSlot {
    #[default]
    Auto,
    On,
    Off,
}

impl FailoverSlot {
    /// Whether the slot is created with `failover`, given the server's `server_version_num`; an error (naming the
    /// version and the fix) when `true` is asked of a server before 17.
    pub fn wanted(self, server_version_num: i32) -> Result<bool, String> {
        let supported = server_version_num >= 170_000;
        match self {
            FailoverSlot::Off => Ok(false),
            FailoverSlot::Auto => Ok(supported),
            FailoverSlot::On if supported => Ok(true),
            FailoverSlot::On => Err(format!(
                "source.failover_slot: true needs PostgreSQL 17 or later (failover slots), the server is {}; \
                 upgrade the server or set source.failover_slot: auto",
                version_name(server_version_num)
            )),
        }
    }
}

/// `170004` → `17.4`, `150018` → `15.18`.
pub fn version_name(server_version_num: i32) -> String {
    format!("{}.{}", server_version_num / 10_000, server_version_num % 10_000)
}

impl<'de> Deserialize<'de> for FailoverSlot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(FailoverSlot::On),
            Raw::Bool(false) => Ok(FailoverSlot::Off),
            Raw::Text(t) => match t.as_str() {
                "auto" => Ok(FailoverSlot::Auto),
                "true" => Ok(FailoverSlot::On),
                "false" => Ok(FailoverSlot::Off),
                other => Err(serde::de::Error::custom(format!(
                    "source.failover_slot: {other:?} is not one of auto, true, false"
                ))),
            },
        }
    }
}

/// `source.value_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    #[default]
    Auto,
    Text,
}

/// By hand: `url` may hold the password, so it prints redacted (`***` when it does not even parse). Destructured so
/// that a new field cannot be forgotten.
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SourceConfig {
            url,
            slot,
            publication,
            tables,
            status_interval_secs,
            receive_timeout_secs,
            heartbeat_interval_secs,
            reconnect_max_delay_secs,
            value_format,
            failover_slot,
        } = self;
        let url = crate::config::conninfo::ConnInfo::parse(url).map_or_else(|_| "***".to_string(), |i| i.redacted());
        f.debug_struct("SourceConfig")
            .field("url", &url)
            .field("slot", slot)
            .field("publication", publication)
            .field("tables", tables)
            .field("status_interval_secs", status_interval_secs)
            .field("receive_timeout_secs", receive_timeout_secs)
            .field("heartbeat_interval_secs", heartbeat_interval_secs)
            .field("reconnect_max_delay_secs", reconnect_max_delay_secs)
            .field("value_format", value_format)
            .field("failover_slot", failover_slot)
            .finish()
    }
}

/// `state:` — local state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for the checkpoint file. Must survive restarts (a volume in containers).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Milliseconds between checkpoint writes while the flushed LSN advances. After a crash at most this much
    /// (plus what the server had not been told yet) is replayed.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: default_state_dir(), checkpoint_interval_ms: default_checkpoint_interval_ms() }
    }
}

/// `health:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address for `/healthz`, `/readyz`, `/metrics`, `/status`: `IP:PORT` or `HOST:PORT` (resolved at load time);
    /// absent = no HTTP server.
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub listen: Option<SocketAddr>,
}

/// `health.listen`: `IP:PORT` or `HOST:PORT` (a host name is resolved once, at load time; IPv4 preferred, as a
/// name like `localhost` usually means 127.0.0.1 to probes).
fn deserialize_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    use serde::de::Error;
    let form = "write HOST:PORT or IP:PORT, e.g. 0.0.0.0:8080, 127.0.0.1:8080 or localhost:8080";
    let text = match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => return Err(D::Error::custom(format!("{n} is only a port; {form}"))),
        _ => return Err(D::Error::custom(format!("expected an address; {form}"))),
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(D::Error::custom(format!("{text:?} is not an address with a port; {form}"))),
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text.as_str())
        .map_err(|e| D::Error::custom(format!("cannot resolve {text:?}: {e}; {form}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{text:?} resolves to no address; {form}")))
}

fn default_slot() -> String {
    "ficus".into()
}
fn default_publication() -> String {
    "ficus".into()
}
fn default_reconnect_max_delay_secs() -> u64 {
    30
}
fn default_status_interval_secs() -> u64 {
    10
}
fn default_receive_timeout_secs() -> u64 {
    60
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./ficus-state")
}
fn default_checkpoint_interval_ms() -> u64 {
    1000
}
fn default_topic_prefix() -> String {
    "ficus".into()
}

/// serde-saphyr's defaults, minus the source excerpt in errors: the lines around a syntax error may hold a literal
/// password (`source.url`, `kafka.properties.sasl.password`).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::Options { with_snippet: false, ..serde_saphyr::Options::default() }
}

/// A YAML error as its position and the parser's description. The description is about the syntax; a scalar the
/// parser quotes in it (a value it could not read) is cut off so no value from the file is printed.
fn yaml_error(e: serde_saphyr::Error) -> ConfigError {
    let position = e.location().map(|l| format!("line {}, column {}: ", l.line(), l.column())).unwrap_or_default();
    let text = e.to_string();
    // The description comes first; anything after its first line would be an excerpt.
    let first = text.lines().next().unwrap_or_default();
    let first = first.split_once(" at line ").map_or(first, |(d, _)| d);
    ConfigError::Yaml(format!("{position}{}", redact_quoted(first)))
}

/// Replaces every quoted part (`"..."`, `'...'`, `` `...` ``) of `s` by `"…"`.
fn redact_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if matches!(c, '"' | '\'' | '`') {
            out.push('…');
            for d in chars.by_ref() {
                if d == c {
                    out.push(d);
                    break;
                }
            }
        }
    }
    out
}

impl Config {
    /// Reads, interpolates, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates YAML text; `lookup` resolves `${NAME}`.
    pub fn from_yaml(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut tree: serde_json::Value =
            serde_saphyr::from_str_with_options(text, yaml_options()).map_err(yaml_error)?;
        events::refuse_literal_hmac_keys(&tree)?;
        interpolate_tree(&mut tree, &mut Vec::new(), lookup)?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(top level)".to_string() } else { key };
            ConfigError::invalid(key, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks constraints serde cannot express. Every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.source.tables.is_empty() {
            return Err(ConfigError::invalid(
                "source.tables",
                "list at least one table to capture, e.g. [public.orders]",
            ));
        }
        let captured = self.captured_tables()?;
        self.check_topic_collisions(&captured)?;
        for (i, t) in self.changes.tables.iter().enumerate() {
            if t == "*" {
                continue;
            }
            let name = TableName::parse(t).map_err(|m| ConfigError::invalid(format!("changes.tables[{i}]"), m))?;
            if !captured.contains(&name) {
                return Err(ConfigError::invalid(
                    format!("changes.tables[{i}]"),
                    format!("{name} is not in source.tables; add it there or use \"*\" for all captured tables"),
                ));
            }
        }
        for (key, value) in [("source.slot", &self.source.slot), ("source.publication", &self.source.publication)] {
            if value.is_empty() || value.len() > 63 {
                return Err(ConfigError::invalid(key, "must be 1 to 63 bytes long (a PostgreSQL identifier)"));
            }
        }
        if !self.source.slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(ConfigError::invalid(
                "source.slot",
                "replication slot names may contain only lower-case letters, digits and underscores",
            ));
        }
        if self.source.status_interval_secs == 0 || self.source.status_interval_secs > 30 {
            return Err(ConfigError::invalid(
                "source.status_interval_secs",
                "must be between 1 and 30 (below wal_sender_timeout / 2; the server default timeout is 60 s)",
            ));
        }
        let receive_timeout = self.source.receive_timeout_secs;
        if receive_timeout == 1 {
            return Err(ConfigError::invalid("source.receive_timeout_secs", "must be 0 (off) or at least 2"));
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.brokers", "set the bootstrap servers, e.g. 127.0.0.1:9092"));
        }
        kafka::check_user_properties(&self.kafka.properties)?;
        let topics = [
            ("changes.topic_prefix", Some(&self.changes.topic_prefix)),
            ("kafka.dlq_topic", self.kafka.dlq_topic.as_ref()),
            ("kafka.checkpoint_topic", self.kafka.checkpoint_topic.as_ref()),
        ];
        for (key, topic) in topics {
            if let Some(topic) = topic.filter(|t| !is_topic_name(t)) {
                return Err(ConfigError::invalid(key, format!("{topic:?} is not {TOPIC_NAME_RULE}")));
            }
        }
        self.snapshot.validate(&captured)?;
        self.changes.masking.validate(&captured)?;
        self.event_defaults.validate()?;
        key_columns::validate(&self.changes, &captured)?;
        if self.changes.debezium.schemas && self.changes.debezium.json_handling == JsonHandling::Embedded {
            return Err(ConfigError::invalid(
                "changes.debezium.schemas",
                "a Kafka Connect schema cannot describe embedded JSON of any shape: with schemas: true use \
                 json_handling: string (Debezium's io.debezium.data.Json)",
            ));
        }
        if self.changes.tables.is_empty() && self.events.is_empty() {
            return Err(ConfigError::invalid(
                "changes.tables",
                "nothing would be published: list tables whose raw changes to publish, or \"*\", or add `events:` rules",
            ));
        }
        if self.state.checkpoint_interval_ms == 0 {
            return Err(ConfigError::invalid("state.checkpoint_interval_ms", "must be at least 1"));
        }
        Ok(())
    }

    /// Two tables whose raw change topics are the same name (`a."b.c"` and `"a.b".c` both give `<prefix>.a.b.c`;
    /// characters Kafka cannot hold become `_`) would interleave on one topic: refused, naming both.
    fn check_topic_collisions(&self, captured: &[TableName]) -> Result<(), ConfigError> {
        let all = self.changes.tables.iter().any(|t| t == "*");
        let mut seen: std::collections::HashMap<String, &TableName> = std::collections::HashMap::new();
        for table in captured {
            if !all && !self.changes.tables.iter().any(|t| TableName::parse(t).is_ok_and(|n| n == *table)) {
                continue;
            }
            let topic = change_topic(&self.changes.topic_prefix, &table.schema, &table.name);
            if let Some(other) = seen.insert(topic.clone(), table) {
                return Err(ConfigError::invalid(
                    "changes.tables",
                    format!(
                        "{} and {} would both publish to topic {topic}; capture only one of them raw, or rename one",
                        other.quoted(),
                        table.quoted()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `source.tables`, parsed. Errors name the list index.
    pub fn captured_tables(&self) -> Result<Vec<TableName>, ConfigError> {
        let mut out: Vec<TableName> = Vec::new();
        for (i, t) in self.source.tables.iter().enumerate() {
            let name = TableName::parse(t).map_err(|m| ConfigError::invalid(format!("source.tables[{i}]"), m))?;
            if out.contains(&name) {
                return Err(ConfigError::invalid(format!("source.tables[{i}]"), format!("{name} is listed twice")));
            }
            out.push(name);
        }
        Ok(out)
    }

    /// Whether raw change events are published for `table`.
    pub fn publishes_changes_of(&self, table: &TableName) -> bool {
        self.changes.tables.iter().any(|t| t == "*" || TableName::parse(t).as_ref() == Ok(table))
    }

    /// `state.checkpoint_interval_ms` as a duration.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.state.checkpoint_interval_ms)
    }
}

#[cfg(test)]
mod tests;
