//! Business-event rules: legacy row changes → canonical, versioned events (DESIGN.md, `events:`).
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

pub mod envelope;
mod fast;
pub mod schema;
pub mod spec;
pub mod values;

use std::collections::{HashMap, HashSet};
use std::cell::OnceCell;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::common::types::{CelNull, CelString};
use cel::common::value::Val;
use cel::{Context, Env, Program, Value};

use crate::change::{Change, Datum, Op, Table};
use crate::config::{Config, ConfigError, TableName};
use crate::encode::{self, SourceInfo};
use crate::postgres::control::{Catalog, CheckItem, ColumnType, Status};
use crate::router::{HeaderValue, Record};
use spec::{Encoding, EventDefaults, OnError, OpName, RuleSpec};

/// Headers ficus sets on every event; a rule's `headers:` may not reuse them.
const RESERVED_HEADERS: &[&str] = &["content-type", "event-type", "event-id", "event-version", "correlation-id"];

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
    /// `name` and `version` as header values, shared by every event of the rule.
    name_shared: Arc<str>,
    version_text: Arc<str>,
    pub table: TableName,
    ops: Vec<Op>,
    when: Option<Expression>,
    key: Expression,
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

/// A rule failed for a change and its `on_error` is `fail`.
#[derive(Debug, thiserror::Error)]
#[error("rule {rule} failed for a change of {table} at {lsn}: {reason} (on_error: fail)")]
pub struct RuleFailure {
    pub rule: String,
    pub table: String,
    pub lsn: crate::lsn::Lsn,
    pub reason: String,
}

/// Every rule of the config, compiled.
pub struct RuleSet {
    rules: Vec<Rule>,
    stats: Vec<RuleStats>,
    by_table: HashMap<TableName, Vec<usize>>,
    env: Arc<Env>,
    dlq_topic: Arc<str>,
    warnings: Vec<String>,
    /// Some rule reads `tx` (built only then).
    uses_tx: bool,
    /// Per relation id: the table as last seen, its rules and the columns CEL reads.
    by_relation: HashMap<u32, RelationRules>,
    /// Default correlation id of the current transaction.
    correlation: Option<(crate::lsn::Lsn, Arc<str>)>,
    /// Reusable buffers (event id name, text conversions).
    bufs: Buffers,
}

struct RelationRules {
    table: Arc<Table>,
    rules: Arc<[usize]>,
    mask: Option<Arc<[bool]>>,
}

#[derive(Default)]
struct Buffers {
    id: Vec<u8>,
    scratch: Vec<u8>,
}

/// The CEL context of one change, built on first use.
struct LazyContext<'c> {
    env: &'c Arc<Env>,
    change: &'c Change,
    with_tx: bool,
    mask: Option<&'c [bool]>,
    cell: OnceCell<Result<Context<'c, 'c>, String>>,
}

impl<'c> LazyContext<'c> {
    fn get(&self) -> Result<&Context<'c, 'c>, String> {
        self.cell
            .get_or_init(|| change_context(self.env, self.change, self.with_tx, self.mask))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl RuleSet {
    /// Checks and compiles `config.events`.
    pub fn compile(config: &Config) -> Result<RuleSet, ConfigError> {
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
        for (i, r) in rules.iter().enumerate() {
            by_table.entry(r.table.clone()).or_default().push(i);
        }
        let dlq_topic = config.kafka.dlq_topic.clone().unwrap_or_else(|| format!("{}.dlq", config.changes.topic_prefix));
        Ok(RuleSet {
            stats: vec![RuleStats::default(); rules.len()],
            rules,
            by_table,
            env,
            dlq_topic: dlq_topic.into(),
            warnings,
            uses_tx,
            by_relation: HashMap::new(),
            correlation: None,
            bufs: Buffers::default(),
        })
    }

    /// Style warnings found while compiling (e.g. an event name that is not PascalCase); not errors.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Checks the rules against the database catalog (for `ficus check` and the start-up preflight): a column
    /// an expression reads that the table lacks fails; a rule reading `old` on a table whose replica identity
    /// is not FULL warns (pgoutput then sends no old row for most updates, so `old.col` fails → DLQ).
    pub fn preflight(&self, catalog: &Catalog) -> Vec<CheckItem> {
        let mut items = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let title = format!("events[{i}] {} v{}", rule.name, rule.version);
            let Some(info) = catalog.tables.get(&rule.table) else { continue };
            let unknown: Vec<&str> = rule
                .columns_read
                .iter()
                .filter(|c| !info.columns.iter().any(|x| &x.name == *c))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                let known: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
                items.push(CheckItem {
                    status: Status::Fail,
                    title: title.clone(),
                    detail: format!("reads column(s) {} that {} does not have", unknown.join(", "), rule.table),
                    fix: Some(format!("use one of: {}", known.join(", "))),
                });
                continue;
            }
            if rule.reads_old && info.replica_identity != b'f' && rule.ops.iter().any(|o| *o == Op::Update) {
                items.push(CheckItem {
                    status: Status::Warn,
                    title: title.clone(),
                    detail: format!(
                        "reads `old` on update, but {} does not have REPLICA IDENTITY FULL: updates arrive without the old row and the rule fails for them (→ {})",
                        rule.table,
                        match rule.on_error { OnError::Dlq => "DLQ", OnError::Fail => "stop", OnError::Skip => "skipped" }
                    ),
                    fix: Some(format!("ALTER TABLE {} REPLICA IDENTITY FULL;", rule.table.quoted())),
                });
                continue;
            }
            items.push(CheckItem { status: Status::Ok, title, detail: format!("{} → {}", rule.table, rule.topic), fix: None });
        }
        items
    }

    /// A description of every rule for the event catalog; `columns` gives a table's catalog columns when the
    /// database was read.
    pub fn describe(&self, columns: &dyn Fn(&TableName) -> Option<Vec<ColumnType>>) -> Vec<RuleDescription> {
        self.rules
            .iter()
            .map(|r| {
                let cols = columns(&r.table);
                RuleDescription {
                    event_type: r.name.clone(),
                    version: r.version,
                    topic: r.topic.to_string(),
                    key: r.key.source.clone(),
                    table: r.table.to_string(),
                    on: r.ops.iter().map(|o| o.as_str()).collect(),
                    when: r.when.as_ref().map(|w| w.source.clone()),
                    encoding: match r.encoding {
                        Encoding::Json => "json",
                        Encoding::CloudeventsBinary => "cloudevents-binary",
                        Encoding::CloudeventsStructured => "cloudevents-structured",
                    },
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

    /// Counters of rule `i`.
    pub fn stats(&self, i: usize) -> RuleStats {
        self.stats.get(i).copied().unwrap_or_default()
    }

    /// Whether any rule reads changes of `table`.
    pub fn covers(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table)
    }

    /// Runs the rules of `change`'s table; appends events (and DLQ records) to `out`. Returns how many rules
    /// matched the table and op (0 = no rule is about this change).
    pub fn apply(&mut self, change: &Change, source: &SourceInfo, out: &mut Vec<Record>) -> Result<usize, RuleFailure> {
        let (indices, mask) = self.rules_of(&change.table);
        let matching = indices.iter().filter(|&&i| self.rules[i].ops.contains(&change.op)).count();
        if matching == 0 {
            return Ok(0);
        }
        let correlation = self.correlation_id(source, change);
        // The CEL maps are built on first use: rules made of column references never need them.
        let env = self.env.clone();
        let lazy = LazyContext { env: &env, change, with_tx: self.uses_tx, mask: mask.as_deref(), cell: OnceCell::new() };
        for &i in indices.iter() {
            if !self.rules[i].ops.contains(&change.op) {
                continue;
            }
            let mut bufs = std::mem::take(&mut self.bufs);
            let result = self.rules[i].event(&lazy, change, source, &correlation, &mut bufs);
            self.bufs = bufs;
            match result {
                Ok(Some(record)) => {
                    self.stats[i].events += 1;
                    out.push(record);
                }
                Ok(None) => {}
                Err(reason) => self.fail(i, change, source, &reason, out)?,
            }
        }
        Ok(matching)
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
        let rules: Arc<[usize]> = self.by_table.get(&name).map(|v| v.as_slice().into()).unwrap_or_else(|| Arc::from([]));
        let mask: Option<Arc<[bool]>> = if rules.iter().any(|&i| self.rules[i].cel_whole_row) {
            None
        } else {
            Some(table.columns.iter().map(|c| rules.iter().any(|&i| self.rules[i].cel_columns.contains(&c.name))).collect())
        };
        self.by_relation.insert(table.oid, RelationRules { table: table.clone(), rules: rules.clone(), mask: mask.clone() });
        (rules, mask)
    }

    /// The default `correlationId` of `change`'s transaction, computed once per transaction.
    fn correlation_id(&mut self, source: &SourceInfo, change: &Change) -> Arc<str> {
        match &self.correlation {
            Some((lsn, id)) if *lsn == change.tx.commit_lsn => id.clone(),
            _ => {
                let id: Arc<str> = envelope::correlation_id(source, &change.tx).to_string().into();
                self.correlation = Some((change.tx.commit_lsn, id.clone()));
                id
            }
        }
    }

    fn fail(&mut self, i: usize, change: &Change, source: &SourceInfo, reason: &str, out: &mut Vec<Record>) -> Result<(), RuleFailure> {
        let rule = &self.rules[i];
        let table = change.table.qualified_name();
        match rule.on_error {
            OnError::Fail => Err(RuleFailure { rule: rule.name.clone(), table, lsn: change.lsn, reason: reason.to_string() }),
            OnError::Skip => {
                self.stats[i].skipped += 1;
                tracing::warn!(rule = %rule.name, table, lsn = %change.lsn, "rule failed; change skipped (on_error: skip): {reason}");
                Ok(())
            }
            OnError::Dlq => {
                self.stats[i].dlq += 1;
                tracing::warn!(rule = %rule.name, table, lsn = %change.lsn, topic = %self.dlq_topic, "rule failed; change sent to the DLQ: {reason}");
                let (key, payload) = match encode::raw_change(change, source) {
                    Ok(kp) => kp,
                    // Not even the raw change encodes: the DLQ record carries the reason and the position.
                    Err(e) => (None, format!("{{\"error\":\"raw change not encodable: {}\"}}", e.to_string().replace('"', "'")).into_bytes()),
                };
                out.push(Record {
                    topic: self.dlq_topic.clone(),
                    key,
                    payload,
                    headers: vec![
                        ("content-type", HeaderValue::Static("application/json")),
                        ("dlq-error", HeaderValue::Owned(reason.to_string())),
                        ("dlq-rule", HeaderValue::Owned(format!("{} v{}", rule.name, rule.version))),
                        ("source-table", HeaderValue::Owned(table)),
                        ("source-lsn", HeaderValue::Owned(change.lsn.to_string())),
                        ("op", HeaderValue::Static(change.op.as_str())),
                    ],
                });
                Ok(())
            }
        }
    }
}

/// The CEL standard library plus the strings, lists and math extensions (trim, lowerAscii, substring, …).
fn environment() -> Env {
    let mut env = Env::stdlib();
    for ext in [cel::extensions::strings, cel::extensions::lists, cel::extensions::math] {
        // The extensions declare disjoint names; a clash would be a bug in the cel crate, caught by the tests.
        if let Err(e) = env.add_extension(ext) {
            tracing::error!("CEL extension not available: {e:?}");
        }
    }
    env
}

/// The CEL variables of one change: `new`, `old` (maps or null), `op`, `table`, and `tx` when a rule reads it.
/// Column names and text values are borrowed from the change, not copied; only the columns in `mask` (all when
/// `None`) are converted.
fn change_context<'c>(env: &Arc<Env>, change: &'c Change, with_tx: bool, mask: Option<&[bool]>) -> Result<Context<'c, 'c>, String> {
    let table = &*change.table;
    let mut scratch = Vec::new();
    let full_before = change.before.as_deref().filter(|_| !change.before_is_key_only);
    let new: Box<dyn Val + 'c> = match &change.after {
        Some(row) => values::row_to_val(table, row, false, full_before, mask, &mut scratch)?,
        None => Box::new(CelNull),
    };
    let old: Box<dyn Val + 'c> = match &change.before {
        Some(row) => values::row_to_val(table, row, change.before_is_key_only, None, mask, &mut scratch)?,
        None => Box::new(CelNull),
    };
    let mut ctx = Context::with_env(env.clone());
    ctx.add_variable_as_val("new", new);
    ctx.add_variable_as_val("old", old);
    ctx.add_variable_as_val("op", Box::new(CelString::from(change.op.as_str())));
    ctx.add_variable_as_val("table", Box::new(CelString::from(format!("{}.{}", table.schema, table.name))));
    if with_tx {
        let mut tx: HashMap<String, Value> = HashMap::new();
        tx.insert("id".into(), Value::Int(i64::from(change.tx.xid)));
        tx.insert("commitLsn".into(), Value::String(Arc::new(change.tx.commit_lsn.to_string())));
        if let Some(t) = chrono::DateTime::from_timestamp_micros(change.tx.commit_time_us) {
            tx.insert("commitTime".into(), Value::Timestamp(t.fixed_offset()));
        }
        ctx.add_variable_from_value("tx", tx);
    }
    Ok(ctx)
}

impl Rule {
    /// The event this rule derives from the change, `None` when `when` is false, `Err(reason)` on failure.
    fn event(
        &self,
        ctx: &LazyContext<'_>,
        change: &Change,
        source: &SourceInfo,
        default_correlation: &Arc<str>,
        bufs: &mut Buffers,
    ) -> Result<Option<Record>, String> {
        if let Some(when) = &self.when {
            match eval(when, ctx)? {
                Value::Bool(true) => {}
                Value::Bool(false) => return Ok(None),
                other => return Err(format!("{}: must be true or false, got a {:?}", when.key, other.type_of())),
            }
        }
        let key = eval_text(&self.key, ctx, change, &mut bufs.scratch).map_err(|e| e.replacen(": ", ": the key ", 1))?;
        let mut payload = Vec::with_capacity(512);
        let origin = envelope::Origin::of(change);
        let event_id = envelope::event_id_into(&mut bufs.id, source, &origin, &self.name);
        let correlation_id: Arc<str> = match &self.correlation {
            Some(expr) => eval_text(expr, ctx, change, &mut bufs.scratch)?.into(),
            None => default_correlation.clone(),
        };
        let e = envelope::Envelope {
            event_type: &self.name,
            version: self.version,
            event_id: &event_id,
            correlation_id: &correlation_id,
            key: &key,
        };
        let content_type = match self.encoding {
            Encoding::Json => {
                envelope::write_head(&mut payload, &e, &origin, source);
                self.write_data(&mut payload, ctx, change)?;
                payload.push(b'}');
                "application/json"
            }
            Encoding::CloudeventsStructured => {
                envelope::write_cloudevent_head(&mut payload, &e, &origin, source);
                self.write_data(&mut payload, ctx, change)?;
                payload.push(b'}');
                "application/cloudevents+json"
            }
            Encoding::CloudeventsBinary => {
                self.write_data(&mut payload, ctx, change)?;
                "application/json"
            }
        };
        let mut headers = Vec::with_capacity(13 + self.headers.len());
        if self.encoding == Encoding::CloudeventsBinary {
            headers.extend([
                ("ce_specversion", HeaderValue::Static("1.0")),
                ("ce_id", HeaderValue::Owned(event_id.clone())),
                ("ce_source", HeaderValue::Owned(envelope::cloudevents_source(&origin, source))),
                ("ce_type", HeaderValue::Shared(self.name_shared.clone())),
                ("ce_time", HeaderValue::Owned(envelope::occurred_at(&origin))),
                ("ce_subject", HeaderValue::Owned(key.clone())),
                ("ce_correlationid", HeaderValue::Shared(correlation_id.clone())),
                ("ce_eventversion", HeaderValue::Shared(self.version_text.clone())),
            ]);
        }
        headers.extend([
            ("content-type", HeaderValue::Static(content_type)),
            ("event-type", HeaderValue::Shared(self.name_shared.clone())),
            ("event-id", HeaderValue::Owned(event_id)),
            ("event-version", HeaderValue::Shared(self.version_text.clone())),
            ("correlation-id", HeaderValue::Shared(correlation_id)),
        ]);
        for (name, expr) in &self.headers {
            let value = eval_text(expr, ctx, change, &mut bufs.scratch)?;
            // Header names are `&'static str` in records; the set of names is small and fixed: interned once.
            headers.push((intern(name), HeaderValue::Owned(value)));
        }
        Ok(Some(Record { topic: self.topic.clone(), key: Some(key.into_bytes()), payload, headers }))
    }

    fn write_data(&self, out: &mut Vec<u8>, ctx: &LazyContext<'_>, change: &Change) -> Result<(), String> {
        let selection = match &self.data {
            Data::Fields(fields) => return write_fields(out, fields, ctx, change),
            selection => selection,
        };
        // A column selection: the columns as raw change events map them, in table order.
        let (row, other, key_only) = match (&change.after, &change.before) {
            (Some(r), before) => (r, before.as_ref().filter(|_| !change.before_is_key_only), false),
            (None, Some(r)) => (r, None, change.before_is_key_only),
            (None, None) => {
                out.extend_from_slice(b"{}");
                return Ok(());
            }
        };
        let table: &Table = &change.table;
        out.push(b'{');
        let mut first = true;
        for (i, col) in table.columns.iter().enumerate() {
            let keep = match selection {
                Data::Columns(cols) => cols.iter().any(|x| *x == col.name),
                Data::Exclude(cols) => !cols.iter().any(|x| *x == col.name),
                _ => true,
            };
            if !keep || (key_only && !col.is_key) {
                continue;
            }
            // An unchanged TOAST value comes from the old row when the server sent it, else the column is absent.
            let datum = match row.get(i) {
                Some(Datum::UnchangedToast) => match other.and_then(|o| o.get(i)) {
                    Some(d) if *d != Datum::UnchangedToast => d,
                    _ => continue,
                },
                Some(d) => d,
                None => continue,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            crate::postgres::value::write_json_string(out, &col.name);
            out.push(b':');
            encode::write_datum(out, table, i, datum).map_err(|e| e.to_string())?;
        }
        out.push(b'}');
        Ok(())
    }
}

fn write_fields(out: &mut Vec<u8>, fields: &[(String, Field)], ctx: &LazyContext<'_>, change: &Change) -> Result<(), String> {
    out.push(b'{');
    for (i, (name, field)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::postgres::value::write_json_string(out, name);
        out.push(b':');
        match field {
            Field::Map(inner) => write_fields(out, inner, ctx, change)?,
            Field::Expr(expr) => {
                if let Some(done) = expr.fast.as_ref().and_then(|f| f.write_json(out, change)) {
                    done.map_err(|e| format!("{}: {e}", expr.key))?;
                    continue;
                }
                let v = eval(expr, ctx)?;
                values::write_cel_json(out, &v).map_err(|e| format!("{}: {e}", expr.key))?;
            }
        }
    }
    out.push(b'}');
    Ok(())
}

fn eval(expr: &Expression, ctx: &LazyContext<'_>) -> Result<Value, String> {
    expr.program.execute(ctx.get()?).map_err(|e| format!("{}: {e}", expr.key))
}

/// A key, header or correlation value as text (fast path for column references). Errors start with the key.
fn eval_text(expr: &Expression, ctx: &LazyContext<'_>, change: &Change, scratch: &mut Vec<u8>) -> Result<String, String> {
    if let Some(text) = expr.fast.as_ref().and_then(|f| f.text(change, scratch)) {
        return text.map_err(|e| format!("{}: {e}", expr.key));
    }
    values::cel_to_text(&eval(expr, ctx)?).map_err(|e| format!("{}: {e}", expr.key))
}

/// A `&'static str` for a header name configured by a rule (a handful per config, interned once).
fn intern(name: &str) -> &'static str {
    use std::sync::Mutex;
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(leaked);
    leaked
}

fn compile_rule(
    env: &Env,
    i: usize,
    spec: &RuleSpec,
    defaults: &EventDefaults,
    captured: &[TableName],
    warnings: &mut Vec<String>,
) -> Result<Rule, ConfigError> {
    let at = |field: &str| format!("events[{i}].{field}");
    if spec.name.is_empty() || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return Err(ConfigError::invalid(at("name"), "use letters, digits, '_' or '.', e.g. OrderShipped"));
    }
    if !spec.name.starts_with(|c: char| c.is_ascii_uppercase()) || spec.name.contains('_') {
        warnings.push(format!(
            "{}: event names are PascalCase and past tense by convention (e.g. OrderShipped), got {}",
            at("name"),
            spec.name
        ));
    }
    if spec.version == 0 {
        return Err(ConfigError::invalid(at("version"), "versions start at 1"));
    }
    let table = TableName::parse(&spec.table).map_err(|m| ConfigError::invalid(at("table"), m))?;
    if !captured.contains(&table) {
        return Err(ConfigError::invalid(at("table"), format!("{table} is not in source.tables; add it there")));
    }
    if spec.topic.is_empty()
        || spec.topic.len() > 249
        || !spec.topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ConfigError::invalid(at("topic"), "a Kafka topic name: 1 to 249 of [a-zA-Z0-9._-]"));
    }
    let ops = match &spec.on {
        None => vec![Op::Insert, Op::Update, Op::Delete, Op::Read],
        Some(on) => on
            .to_vec()
            .into_iter()
            .map(|o| match o {
                OpName::Insert => Op::Insert,
                OpName::Update => Op::Update,
                OpName::Delete => Op::Delete,
                OpName::Read => Op::Read,
                OpName::Truncate => Op::Truncate,
            })
            .collect(),
    };
    if ops.is_empty() {
        return Err(ConfigError::invalid(at("on"), "list at least one of insert, update, delete, read, truncate"));
    }
    let mut reads = Reads::default();
    // What CEL itself reads (column references with a fast path need no CEL map, except `string(...)` of an
    // unusual type, which falls back to CEL at run time: its column is kept).
    let mut cel_reads = Reads::default();
    let mut compile = |key: String, source: &str| -> Result<Expression, ConfigError> {
        let program = env.compile(source).map_err(|e| ConfigError::invalid(key.clone(), format!("invalid CEL: {e}")))?;
        let expr = &program.expression().expr;
        reads.collect(expr);
        let fast = fast::Fast::detect(expr);
        match &fast {
            Some(fast::Fast::Column { .. }) => {}
            Some(f @ fast::Fast::StringOf { .. }) => cel_reads.new_columns.push(f.column().to_string()),
            None => cel_reads.collect(expr),
        }
        Ok(Expression { program, key, fast, source: source.to_string() })
    };
    let when = spec.when.as_deref().map(|w| compile(at("when"), w)).transpose()?;
    let key = compile(at("key"), &spec.key)?;
    let correlation = spec.correlation.as_deref().map(|c| compile(at("correlation"), c)).transpose()?;
    let mut headers = Vec::new();
    for (name, expr) in &spec.headers {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with(RESERVED_PREFIX) {
            return Err(ConfigError::invalid(
                at(&format!("headers.{name}")),
                format!("choose another header name; ficus sets {} and ce_* (CloudEvents)", RESERVED_HEADERS.join(", ")),
            ));
        }
        headers.push((name.clone(), compile(at(&format!("headers.{name}")), expr)?));
    }
    let data = match &spec.data {
        None => Data::All,
        Some(v) => compile_data(v, &at("data"), &mut compile)?,
    };
    if let Data::Columns(cols) | Data::Exclude(cols) = &data {
        reads.new_columns.extend(cols.iter().cloned());
    }
    let mut columns_read: Vec<String> = reads.new_columns.into_iter().chain(reads.old_columns.iter().cloned()).collect();
    columns_read.sort();
    columns_read.dedup();
    Ok(Rule {
        name: spec.name.clone(),
        version: spec.version,
        name_shared: spec.name.as_str().into(),
        version_text: spec.version.to_string().into(),
        table,
        ops,
        when,
        key,
        topic: spec.topic.as_str().into(),
        data,
        headers,
        correlation,
        on_error: spec.on_error.unwrap_or(defaults.on_error),
        encoding: spec.encoding.unwrap_or(defaults.encoding),
        reads_old: reads.old,
        reads_tx: reads.tx,
        columns_read,
        cel_whole_row: cel_reads.whole_row,
        cel_columns: cel_reads.new_columns.into_iter().chain(cel_reads.old_columns).collect(),
    })
}

fn compile_data(
    v: &serde_json::Value,
    key: &str,
    compile: &mut dyn FnMut(String, &str) -> Result<Expression, ConfigError>,
) -> Result<Data, ConfigError> {
    let serde_json::Value::Object(map) = v else {
        return Err(ConfigError::invalid(key, "a map of field: CEL expression, or {columns: [..]} / {exclude: [..]}"));
    };
    if map.len() == 1 {
        for (sel, is_columns) in [("columns", true), ("exclude", false)] {
            if let Some(serde_json::Value::Array(items)) = map.get(sel) {
                let cols = items
                    .iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| ConfigError::invalid(format!("{key}.{sel}"), "a list of column names"))?;
                return Ok(if is_columns { Data::Columns(cols) } else { Data::Exclude(cols) });
            }
        }
    }
    Ok(Data::Fields(compile_fields(map, key, compile)?))
}

fn compile_fields(
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    compile: &mut dyn FnMut(String, &str) -> Result<Expression, ConfigError>,
) -> Result<Vec<(String, Field)>, ConfigError> {
    let mut fields = Vec::with_capacity(map.len());
    for (name, v) in map {
        let k = format!("{key}.{name}");
        let field = match v {
            serde_json::Value::String(s) => Field::Expr(compile(k, s)?),
            // YAML scalars are CEL literals: `version: 2`, `active: true`.
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Field::Expr(compile(k, &v.to_string())?),
            serde_json::Value::Null => Field::Expr(compile(k, "null")?),
            serde_json::Value::Object(inner) => Field::Map(compile_fields(inner, &k, compile)?),
            serde_json::Value::Array(_) => {
                return Err(ConfigError::invalid(k, "write a list as a CEL expression, e.g. '[new.a, new.b]'"));
            }
        };
        fields.push((name.clone(), field));
    }
    Ok(fields)
}

/// What a rule's expressions read: `old` at all, and which columns of `new` and `old`.
#[derive(Default)]
struct Reads {
    old: bool,
    tx: bool,
    /// `new` or `old` used other than as `new.col`.
    whole_row: bool,
    new_columns: Vec<String>,
    old_columns: Vec<String>,
}

impl Reads {
    fn collect(&mut self, e: &Expr) {
        match e {
            Expr::Ident(name) if name == "old" => {
                self.old = true;
                self.whole_row = true;
            }
            Expr::Ident(name) if name == "new" => self.whole_row = true,
            Expr::Ident(name) if name == "tx" => self.tx = true,
            Expr::Select(s) => {
                if let Expr::Ident(root) = &s.operand.expr {
                    match root.as_str() {
                        "new" => self.new_columns.push(s.field.clone()),
                        "old" => {
                            self.old = true;
                            self.old_columns.push(s.field.clone());
                        }
                        "tx" => self.tx = true,
                        _ => {}
                    }
                } else {
                    self.collect(&s.operand.expr);
                }
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.collect(&t.expr);
                }
                for a in &c.args {
                    self.collect(&a.expr);
                }
            }
            Expr::Comprehension(c) => {
                for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.collect(&x.expr);
                }
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.collect(&x.expr)),
            Expr::Map(m) => m.entries.iter().for_each(|x| self.collect_entry(&x.expr)),
            Expr::Struct(s) => s.entries.iter().for_each(|x| self.collect_entry(&x.expr)),
            _ => {}
        }
    }

    fn collect_entry(&mut self, e: &EntryExpr) {
        match e {
            EntryExpr::StructField(f) => self.collect(&f.value.expr),
            EntryExpr::MapEntry(m) => {
                self.collect(&m.key.expr);
                self.collect(&m.value.expr);
            }
        }
    }
}

#[cfg(test)]
mod tests;
