//! Business-event rules: legacy row changes → canonical, versioned events (docs/rules.md, `events:`).
//!
//! [`Rules::compile`] checks every rule of the config once, while the config loads (names, tables, topics, CEL
//! syntax), and compiles its CEL expressions; errors name the key (`events[2].when`) and the position in the
//! expression. The compiled [`Rules`] are immutable and shared; each replication session runs them through its own
//! [`RuleSet`] (`runtime`): [`RuleSet::apply`] runs the rules of a change's table in config order, each rule whose
//! `on` and `when` match yields one event, so one change may yield several. Failures are settled in `dlq`; the
//! catalog's view of the rules is `describe`.
//!
//! **Guarantees:**
//! - Deterministic: the same change always yields the same events, byte for byte (ids from [`envelope`]).
//! - A rule that fails for a change at run time (CEL error, null key, unencodable value) never silently drops it:
//!   with `on_error: dlq` (default) the original change goes to the dead-letter topic with headers naming the
//!   error, rule, table and LSN, and the stream goes on; `fail` stops the pipeline; `skip` counts and logs it.
//!   DLQ records are produced in the change's transaction, so they are part of the checkpoint invariant like events.
//! - CEL is sandboxed and not Turing-complete; expressions cannot reach the database, files or network.

mod compile;
mod cond;
mod describe;
mod digest;
mod dlq;
pub mod envelope;
mod eval;
mod fast;
mod outbox;
mod runtime;
pub mod schema;

pub mod values;

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::common::types::{CelNull, CelString};
use cel::common::value::Val;
use cel::{Context, Env, Program, Value};

use crate::change::{Change, Datum, LogicalMessage, Op, Table, TxMeta};
use crate::config::events::{Encoding, EnvelopeHeaders, EventDefaults, OnError, OpName, RuleSpec};
use crate::config::{Config, ConfigError};
use crate::encode::{self, SourceInfo};
use crate::ident::TableName;
use crate::postgres::control::ColumnType;
use crate::record::{HeaderValue, Record};
use compile::{compile_rule, environment};
pub use describe::RuleDescription;
use eval::{Buffers, Input, LazyContext};

/// Headers ficus sets on every event; a rule's `headers:` may not reuse them.
const RESERVED_HEADERS: &[&str] =
    &["content-type", "event-type", "event-id", "event-version", "correlation-id", "source-table", "source-lsn"];

/// Prefix of the CloudEvents binary-mode headers, also reserved.
const RESERVED_PREFIX: &str = "ce_";

/// One compiled CEL expression and where it came from (for errors).
struct Expression {
    program: Program,
    /// Config key, e.g. `events[2].data.orderId`.
    key: String,
    /// Set when the expression is a plain column reference, read without CEL.
    fast: Option<fast::Fast>,
    /// Set when the expression is a condition [`cond::Cond`] evaluates without CEL (used for `when`).
    cond: Option<cond::Cond>,
    /// The CEL source, as written.
    source: String,
}

/// How a rule builds `data`.
enum Data {
    /// Every column of the row.
    All,
    Columns(Vec<String>),
    Exclude(Vec<String>),
    Fields(Vec<(String, Field)>),
}

enum Field {
    Expr(Expression),
    Map(Vec<(String, Field)>),
}

/// A compiled rule.
pub struct Rule {
    pub name: String,
    pub version: u32,
    kind: Kind,
    /// `name` and `version` as header values, shared by every event of the rule.
    name_shared: Arc<str>,
    version_text: Arc<str>,
    /// The source table (None for message rules).
    pub table: Option<TableName>,
    ops: Vec<Op>,
    when: Option<Expression>,
    key: Option<Expression>,
    topic: Arc<str>,
    data: Data,
    headers: Vec<(String, Expression)>,
    correlation: Option<Expression>,
    pub on_error: OnError,
    pub encoding: Encoding,
    pub envelope_headers: EnvelopeHeaders,
    /// Some expression of the rule reads `old` (the old row): needs REPLICA IDENTITY FULL for non-key columns.
    pub reads_old: bool,
    /// Columns the rule's expressions read from `new`/`old` (checked against the catalog by `ficus check`).
    pub columns_read: Vec<String>,
    /// Some expression reads `tx`.
    reads_tx: bool,
    /// Some expression calls `hmac`.
    uses_hmac: bool,
    /// Some CEL expression uses `new` or `old` as a whole (then every column goes into the CEL maps).
    cel_whole_row: bool,
    /// Columns CEL reads (only these are converted for the CEL maps).
    cel_columns: Vec<String>,
    /// The `topic` label of `ficus_events_total` (the topic, or the outbox topic template).
    topic_label: String,
}

/// What a rule turns into events.
enum Kind {
    /// Row changes of `Rule::table`.
    Table,
    /// Transactional logical decoding messages with this prefix.
    Message(String),
    /// Inserts into the outbox table `Rule::table`.
    Outbox(outbox::Outbox),
}

/// Per-rule counters (exported as metrics by the health endpoint).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleStats {
    pub events: u64,
    pub dlq: u64,
    pub skipped: u64,
}

/// What one table rule needs from its table ([`Rules::requirements`]).
#[derive(Debug, Clone)]
pub struct Requirement<'a> {
    /// `events[i] Name vN`.
    pub title: String,
    pub table: &'a TableName,
    /// Columns the rule reads.
    pub columns: Vec<String>,
    /// Reads `old` on update: needs REPLICA IDENTITY FULL (pgoutput sends no old row otherwise).
    pub reads_old_on_update: bool,
    pub on_error: OnError,
    /// The topic, or the topic template of an outbox rule.
    pub topic: String,
}

/// A rule failed for a change and its `on_error` is `fail`.
#[derive(Debug, thiserror::Error)]
#[error("rule {rule} failed for a change of {table} at {lsn}: {reason} (on_error: fail)")]
pub struct RuleFailure {
    pub rule: String,
    pub table: String,
    pub lsn: crate::lsn::Lsn,
    pub reason: String,
}

/// Every rule of the config, compiled once while the config loads and shared, immutable, by every session,
/// `ficus check` and `ficus catalog`.
pub struct Rules {
    rules: Vec<Rule>,
    by_table: HashMap<TableName, Vec<usize>>,
    /// Message rules per prefix.
    by_prefix: HashMap<String, Vec<usize>>,
    /// The largest record librdkafka takes (`message.max.bytes`, and its queue): a larger event goes to the DLQ
    /// instead of stopping the pipeline.
    max_message_bytes: usize,
    env: Arc<Env>,
    dlq_topic: Arc<str>,
    warnings: Vec<String>,
    /// Some rule reads `tx` (built only then).
    uses_tx: bool,
    /// The keys of `hmac`, when some rule calls it (the function is added to each evaluation only then).
    hmac: Option<Arc<digest::HmacKeys>>,
}

/// The rules at work in one replication session: the shared [`Rules`] (also reachable through `Deref`) plus this
/// session's counters, per-relation cache, correlation id and buffers.
pub struct RuleSet {
    compiled: Arc<Rules>,
    stats: Vec<RuleStats>,
    /// Per rule: `ficus_events_total{event_type, version, topic}` and `ficus_dlq_records_total{rule}`. Registered
    /// here, per session, not when the rules are compiled: compiling happens while the config loads, before the
    /// metrics recorder is installed, and a handle taken then would count into nothing.
    counters: Vec<RuleCounters>,
    /// Per relation id: the table as last seen, its rules and the columns CEL reads.
    by_relation: crate::change::OidMap<RelationRules>,
    /// Default correlation id of the current transaction.
    correlation: Option<(crate::lsn::Lsn, Arc<str>)>,
    /// Reusable buffers (event id name, text conversions).
    bufs: Buffers,
}

impl std::ops::Deref for RuleSet {
    type Target = Rules;
    fn deref(&self) -> &Rules {
        &self.compiled
    }
}

struct RuleCounters {
    events: metrics::Counter,
    dlq: metrics::Counter,
}

struct RelationRules {
    table: Arc<Table>,
    rules: Arc<[usize]>,
    mask: Option<Arc<[bool]>>,
}

impl Rules {
    /// Checks and compiles `config.events`: the validation of `events:` (names, tables, topics, CEL syntax), with
    /// errors naming the key.
    pub fn compile(config: &Config) -> Result<Rules, ConfigError> {
        let env = Arc::new(environment());
        let captured = config.captured_tables()?;
        let mut rules = Vec::with_capacity(config.events.len());
        let mut seen = HashSet::new();
        let mut warnings = Vec::new();
        let hmac_keys = digest::HmacKeys::new(&config.event_defaults.hmac_keys);
        for (i, spec) in config.events.iter().enumerate() {
            let rule = compile_rule(&env, i, spec, &config.event_defaults, &captured, &hmac_keys, &mut warnings)?;
            if !seen.insert((rule.name.clone(), rule.version)) {
                return Err(ConfigError::invalid(
                    format!("events[{i}].name"),
                    format!("{} version {} is defined twice; rename one or bump its version", rule.name, rule.version),
                ));
            }
            rules.push(rule);
        }
        let uses_tx = rules.iter().any(|r| r.reads_tx);
        let hmac = rules.iter().any(|r| r.uses_hmac).then(|| Arc::new(hmac_keys));
        let mut by_table: HashMap<TableName, Vec<usize>> = HashMap::new();
        let mut by_prefix: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            match (&r.kind, &r.table) {
                (Kind::Message(prefix), _) => by_prefix.entry(prefix.clone()).or_default().push(i),
                (_, Some(table)) => by_table.entry(table.clone()).or_default().push(i),
                (_, None) => {}
            }
        }
        let dlq_topic =
            config.kafka.dlq_topic.clone().unwrap_or_else(|| format!("{}.dlq", config.changes.topic_prefix));
        Ok(Rules {
            rules,
            by_table,
            by_prefix,
            max_message_bytes: max_record_bytes(config),
            env,
            dlq_topic: dlq_topic.into(),
            warnings,
            uses_tx,
            hmac,
        })
    }

    /// Style warnings found while compiling (e.g. an event name that is not PascalCase); not errors.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// What every table rule needs from its table, for the preflight (`check::preflight` checks it against the
    /// catalog: columns that exist, REPLICA IDENTITY FULL for `old`).
    pub fn requirements(&self) -> Vec<Requirement<'_>> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                Some(Requirement {
                    title: format!("events[{i}] {} v{}", rule.name, rule.version),
                    table: rule.table.as_ref()?,
                    columns: match &rule.kind {
                        Kind::Outbox(ob) => ob.columns(),
                        _ => rule.columns_read.clone(),
                    },
                    reads_old_on_update: rule.reads_old && rule.ops.contains(&Op::Update),
                    on_error: rule.on_error,
                    topic: rule.topic_text(),
                })
            })
            .collect()
    }

    /// Warnings about CEL functions the runtime does not know (`(config key, message)`): each would fail every
    /// change it sees, so the preflight shows them.
    pub fn unknown_function_warnings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.warnings
            .iter()
            .filter(|w| w.contains(compile::UNKNOWN_FUNCTION))
            .map(|w| w.split_once(": ").unwrap_or(("events", w)))
    }

    /// The dead-letter topic.
    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }

    /// The compiled rules, in config order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Rule {
    /// The topic, or the topic template of an outbox rule.
    fn topic_text(&self) -> String {
        match &self.kind {
            Kind::Outbox(ob) => ob.topic_template().to_string(),
            _ => self.topic.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod snapshot_tests;

/// The largest record librdkafka accepts: `message.max.bytes` (default 1,000,000), and at most its whole queue
/// (`queue.buffering.max.kbytes`, 2048 KiB here by default) — a record larger than the queue would wait for room forever.
fn max_record_bytes(config: &Config) -> usize {
    let message_max = crate::kafka::property_usize(&config.kafka, "message.max.bytes").unwrap_or(1_000_000);
    let queue_max = crate::kafka::queue_bytes(&config.kafka);
    // `changes.transaction_metadata` stamps events after the rules built them (the router adds the transaction id
    // and positions: under 256 bytes of value and headers), so an event that fits now still fits then.
    let stamp = if config.changes.transaction_metadata { 256 } else { 0 };
    message_max.min(queue_max).saturating_sub(stamp)
}
