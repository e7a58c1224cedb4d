//! Business-event rules: legacy row changes → canonical, versioned events (docs/rules.md, `events:`).
//!
//! [`RuleSet::compile`] checks every rule of the config once at start-up (names, tables, topics, CEL syntax) and
//! compiles its CEL expressions; errors name the key (`events[2].when`) and the position in the expression.
//! [`RuleSet::apply`] runs the rules of a change's table in config order: each rule whose `on` and `when` match
//! yields one event, so one change may yield several.
//!
//! **Guarantees:**
//! - Deterministic: the same change always yields the same events, byte for byte (ids from [`envelope`]).
//! - A rule that fails for a change at run time (CEL error, null key, unencodable value) never silently drops it:
//!   with `on_error: dlq` (default) the original change goes to the dead-letter topic with headers naming the
//!   error, rule, table and LSN, and the stream goes on; `fail` stops the pipeline; `skip` counts and logs it.
//!   DLQ records are produced in the change's transaction, so they are part of the checkpoint invariant like events.
//! - CEL is sandboxed and not Turing-complete; expressions cannot reach the database, files or network.

mod compile;
pub mod envelope;
mod eval;
mod fast;
mod outbox;
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
use crate::config::events::{Encoding, EventDefaults, OnError, OpName, RuleSpec};
use crate::config::{Config, ConfigError};
use crate::encode::{self, SourceInfo};
use crate::ident::TableName;
use crate::postgres::control::ColumnType;
use crate::record::{HeaderValue, Record};
use compile::{compile_rule, environment};
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
    /// Some expression of the rule reads `old` (the old row): needs REPLICA IDENTITY FULL for non-key columns.
    pub reads_old: bool,
    /// Columns the rule's expressions read from `new`/`old` (checked against the catalog by `ficus check`).
    pub columns_read: Vec<String>,
    /// Some expression reads `tx`.
    reads_tx: bool,
    /// Some CEL expression uses `new` or `old` as a whole (then every column goes into the CEL maps).
    cel_whole_row: bool,
    /// Columns CEL reads (only these are converted for the CEL maps).
    cel_columns: Vec<String>,
    /// `ficus_events_total{event_type, version}` and `ficus_dlq_records_total{rule}` of this rule.
    events_counter: metrics::Counter,
    dlq_counter: metrics::Counter,
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
}

/// The rules at work in one replication session: the shared [`Rules`] (also reachable through `Deref`) plus this
/// session's counters, per-relation cache, correlation id and buffers.
pub struct RuleSet {
    compiled: Arc<Rules>,
    stats: Vec<RuleStats>,
    /// Per relation id: the table as last seen, its rules and the columns CEL reads.
    by_relation: HashMap<u32, RelationRules>,
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
        for (i, spec) in config.events.iter().enumerate() {
            let rule = compile_rule(&env, i, spec, &config.event_defaults, &captured, &mut warnings)?;
            if !seen.insert((rule.name.clone(), rule.version)) {
                return Err(ConfigError::invalid(
                    format!("events[{i}].name"),
                    format!("{} version {} is defined twice; rename one or bump its version", rule.name, rule.version),
                ));
            }
            rules.push(rule);
        }
        let uses_tx = rules.iter().any(|r| r.reads_tx);
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

    /// A description of every rule for the event catalog; `columns` gives a table's catalog columns when the
    /// database was read.
    pub fn describe(&self, columns: &dyn Fn(&TableName) -> Option<Vec<ColumnType>>) -> Vec<RuleDescription> {
        self.rules
            .iter()
            .map(|r| {
                let cols = r.table.as_ref().and_then(|t| columns(t));
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

    /// The dead-letter topic.
    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }

    /// The compiled rules, in config order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl RuleSet {
    /// A session's runner of `compiled`.
    pub fn new(compiled: Arc<Rules>) -> RuleSet {
        RuleSet {
            stats: vec![RuleStats::default(); compiled.rules.len()],
            compiled,
            by_relation: HashMap::new(),
            correlation: None,
            bufs: Buffers::default(),
        }
    }

    /// Compiles `config`'s rules for one runner (tests; the binary compiles once and shares [`Rules`]).
    #[cfg(test)]
    pub fn compile(config: &Config) -> Result<RuleSet, ConfigError> {
        Ok(RuleSet::new(Arc::new(Rules::compile(config)?)))
    }

    /// Every rule's counts, for `/status`.
    pub fn counts(&self) -> Vec<crate::health::RuleCounts> {
        self.compiled
            .rules
            .iter()
            .zip(&self.stats)
            .map(|(r, st)| crate::health::RuleCounts {
                name: r.name.clone(),
                version: r.version,
                events: st.events,
                dlq: st.dlq,
                skipped: st.skipped,
            })
            .collect()
    }

    /// Counters of rule `i`.
    pub fn stats(&self, i: usize) -> RuleStats {
        self.stats.get(i).copied().unwrap_or_default()
    }

    /// Runs the rules of `change`'s table; appends events (and DLQ records) to `out`. Returns how many rules
    /// matched the table and op (0 = no rule is about this change).
    pub fn apply(&mut self, change: &Change, source: &SourceInfo, out: &mut Vec<Record>) -> Result<usize, RuleFailure> {
        let (indices, mask) = self.rules_of(&change.table);
        let matching = indices.iter().filter(|&&i| self.compiled.rules[i].ops.contains(&change.op)).count();
        if matching == 0 {
            return Ok(0);
        }
        let correlation = self.correlation_id(source, &change.tx);
        // The CEL maps are built on first use: rules made of column references never need them.
        let env = self.compiled.env.clone();
        let input = Input::Change(change);
        let lazy = LazyContext {
            env: &env,
            input,
            with_tx: self.compiled.uses_tx,
            mask: mask.as_deref(),
            cell: OnceCell::new(),
        };
        for &i in indices.iter() {
            if !self.compiled.rules[i].ops.contains(&change.op) {
                continue;
            }
            let mut bufs = std::mem::take(&mut self.bufs);
            let rule = &self.compiled.rules[i];
            let result = match &rule.kind {
                Kind::Outbox(ob) => ob.event(rule, &lazy, change, source, &correlation, &mut bufs),
                _ => rule.event(&lazy, source, &correlation, &mut bufs),
            };
            self.bufs = bufs;
            self.settle(i, result, input, source, out)?;
        }
        Ok(matching)
    }

    /// Runs the message rules of `message`'s prefix; appends events (and DLQ records) to `out`. Returns how many
    /// rules matched the prefix.
    pub fn apply_message(
        &mut self,
        message: &LogicalMessage,
        source: &SourceInfo,
        out: &mut Vec<Record>,
    ) -> Result<usize, RuleFailure> {
        let Some(indices) = self.compiled.by_prefix.get(&message.prefix).cloned() else { return Ok(0) };
        let correlation = self.correlation_id(source, &message.tx);
        let env = self.compiled.env.clone();
        let input = Input::Message(message);
        let lazy = LazyContext { env: &env, input, with_tx: self.compiled.uses_tx, mask: None, cell: OnceCell::new() };
        for &i in &indices {
            let mut bufs = std::mem::take(&mut self.bufs);
            let result = self.compiled.rules[i].event(&lazy, source, &correlation, &mut bufs);
            self.bufs = bufs;
            self.settle(i, result, input, source, out)?;
        }
        Ok(indices.len())
    }

    /// Counts an event, or handles a failure as the rule's `on_error` says.
    fn settle(
        &mut self,
        i: usize,
        result: Result<Option<Record>, String>,
        input: Input<'_>,
        source: &SourceInfo,
        out: &mut Vec<Record>,
    ) -> Result<(), RuleFailure> {
        match result {
            Ok(Some(record)) => {
                // librdkafka would refuse it (and stop the pipeline): the DLQ takes the change instead. Headers
                // and framing count towards the limit too, hence the margin.
                let size = record.payload.len()
                    + record.key.as_ref().map_or(0, Vec::len)
                    + record.headers.iter().map(|(k, v)| k.len() + v.as_str().len()).sum::<usize>();
                if size + 512 > self.compiled.max_message_bytes {
                    let reason = format!(
                        "the event is {size} bytes, more than message.max.bytes ({}) allows; raise kafka.properties.message.max.bytes and the topic's max.message.bytes, or make data smaller",
                        self.compiled.max_message_bytes
                    );
                    return self.fail(i, input, source, &reason, out);
                }
                self.stats[i].events += 1;
                self.compiled.rules[i].events_counter.increment(1);
                tracing::debug!(
                    event_type = record.header("event-type").unwrap_or(""),
                    event_id = record.header("event-id").unwrap_or(""),
                    correlation_id = record.header("correlation-id").unwrap_or(""),
                    topic = %record.topic,
                    "event"
                );
                out.push(record);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason) => self.fail(i, input, source, &reason, out),
        }
    }

    /// Indices of the rules of `table` and which columns CEL reads (`None` = all), cached per relation (a pointer
    /// comparison per change).
    fn rules_of(&mut self, table: &Arc<Table>) -> (Arc<[usize]>, Option<Arc<[bool]>>) {
        if let Some(r) = self.by_relation.get(&table.oid) {
            if Arc::ptr_eq(&r.table, table) {
                return (r.rules.clone(), r.mask.clone());
            }
        }
        let name = TableName { schema: table.schema.clone(), name: table.name.clone() };
        let rules: Arc<[usize]> =
            self.compiled.by_table.get(&name).map(|v| v.as_slice().into()).unwrap_or_else(|| Arc::from([]));
        let mask: Option<Arc<[bool]>> = if rules.iter().any(|&i| self.compiled.rules[i].cel_whole_row) {
            None
        } else {
            Some(
                table
                    .columns
                    .iter()
                    .map(|c| rules.iter().any(|&i| self.compiled.rules[i].cel_columns.contains(&c.name)))
                    .collect(),
            )
        };
        self.by_relation
            .insert(table.oid, RelationRules { table: table.clone(), rules: rules.clone(), mask: mask.clone() });
        (rules, mask)
    }

    /// The default `correlationId` of a transaction, computed once per transaction.
    fn correlation_id(&mut self, source: &SourceInfo, tx: &TxMeta) -> Arc<str> {
        match &self.correlation {
            Some((lsn, id)) if *lsn == tx.commit_lsn => id.clone(),
            _ => {
                let id: Arc<str> = envelope::correlation_id(source, tx).to_string().into();
                self.correlation = Some((tx.commit_lsn, id.clone()));
                id
            }
        }
    }

    fn fail(
        &mut self,
        i: usize,
        input: Input<'_>,
        source: &SourceInfo,
        reason: &str,
        out: &mut Vec<Record>,
    ) -> Result<(), RuleFailure> {
        let rule = &self.compiled.rules[i];
        let (table, lsn, op) = match input {
            Input::Change(c) => (c.table.qualified_name(), c.lsn, c.op.as_str()),
            Input::Message(m) => (format!("message {}", m.prefix), m.lsn, "message"),
        };
        match rule.on_error {
            OnError::Fail => Err(RuleFailure { rule: rule.name.clone(), table, lsn, reason: reason.to_string() }),
            OnError::Skip => {
                self.stats[i].skipped += 1;
                tracing::warn!(rule = %rule.name, table, lsn = %lsn, "rule failed; change skipped (on_error: skip): {reason}");
                Ok(())
            }
            OnError::Dlq => {
                self.stats[i].dlq += 1;
                rule.dlq_counter.increment(1);
                tracing::warn!(rule = %rule.name, table, lsn = %lsn, topic = %self.compiled.dlq_topic, "rule failed; change sent to the DLQ: {reason}");
                let (key, payload) = match input {
                    Input::Change(change) => match encode::raw_change(change, source) {
                        Ok(kp) => kp,
                        // Not even the raw change encodes: the DLQ record carries the reason and the position.
                        Err(e) => (
                            None,
                            format!("{{\"error\":\"raw change not encodable: {}\"}}", e.to_string().replace('"', "'"))
                                .into_bytes(),
                        ),
                    },
                    Input::Message(m) => (None, message_json(m, source)),
                };
                out.push(Record {
                    topic: self.compiled.dlq_topic.clone(),
                    key,
                    payload,
                    headers: vec![
                        ("content-type", HeaderValue::Static("application/json")),
                        ("dlq-error", HeaderValue::Owned(reason.to_string())),
                        ("dlq-rule", HeaderValue::Owned(format!("{} v{}", rule.name, rule.version))),
                        ("source-table", HeaderValue::Owned(table)),
                        ("source-lsn", HeaderValue::Owned(lsn.to_string())),
                        ("op", HeaderValue::Static(op)),
                    ],
                    tombstone: false,
                });
                Ok(())
            }
        }
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

/// A logical decoding message as JSON for the DLQ: prefix, content (embedded when it is JSON), position.
fn message_json(m: &LogicalMessage, source: &SourceInfo) -> Vec<u8> {
    use crate::postgres::value::write_json_string;
    let mut out = Vec::with_capacity(m.content.len() + 200);
    out.extend_from_slice(b"{\"op\":\"message\",\"prefix\":");
    write_json_string(&mut out, &m.prefix);
    out.extend_from_slice(b",\"content\":");
    encode::write_json_or_string(&mut out, &m.content);
    out.extend_from_slice(b",\"source\":{\"system\":");
    write_json_string(&mut out, &source.system);
    out.extend_from_slice(b",\"database\":");
    write_json_string(&mut out, &source.database);
    out.extend_from_slice(
        format!(",\"lsn\":\"{}\",\"commitLsn\":\"{}\",\"txId\":{}}}}}", m.lsn, m.tx.commit_lsn, m.tx.xid).as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests;

/// The largest record librdkafka accepts: `message.max.bytes` (default 1,000,000), and at most its whole queue
/// (`queue.buffering.max.kbytes`, 8192 KiB here by default) — a record larger than the queue would wait for room forever.
fn max_record_bytes(config: &Config) -> usize {
    let property = |key: &str| {
        config.kafka.properties.get(key).and_then(|v| v.to_string().trim_matches('"').parse::<usize>().ok())
    };
    let message_max = property("message.max.bytes").unwrap_or(1_000_000);
    let queue_max = property("queue.buffering.max.kbytes").unwrap_or(8192).saturating_mul(1024);
    message_max.min(queue_max)
}
