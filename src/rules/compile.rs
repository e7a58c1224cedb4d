//! Compiling `events:` specs into [`super::Rule`]s: names, tables, topics and every CEL expression are checked
//! once at start-up; errors name the key (`events[2].when`) and the position in the expression.

use super::*;

/// The CEL standard library plus the strings, lists and math extensions (trim, lowerAscii, substring, …) and
/// `sha256` (`hmac` is added per evaluation: [`digest`]).
pub(super) fn environment() -> Env {
    let mut env = Env::stdlib();
    for ext in [cel::extensions::strings, cel::extensions::lists, cel::extensions::math] {
        // The extensions declare disjoint names; a clash would be a bug in the cel crate, caught by the tests.
        if let Err(e) = env.add_extension(ext) {
            tracing::error!("CEL extension not available: {e:?}");
        }
    }
    if let Err(e) = digest::add_sha256(&mut env) {
        tracing::error!("CEL function sha256 not available: {e:?}");
    }
    env
}

pub(super) fn compile_rule(
    env: &Arc<Env>,
    i: usize,
    spec: &RuleSpec,
    defaults: &EventDefaults,
    captured: &[TableName],
    hmac_keys: &digest::HmacKeys,
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
    let kinds = [spec.table.is_some(), spec.message.is_some(), spec.outbox.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ConfigError::invalid(
            at("table"),
            "set exactly one of `table` (row changes), `message` (logical decoding messages) or `outbox` (an outbox table)",
        ));
    }
    let parse_table = |name: &str, key: String| -> Result<TableName, ConfigError> {
        let table = TableName::parse(name).map_err(|m| ConfigError::invalid(key.clone(), m))?;
        if !captured.contains(&table) {
            return Err(ConfigError::invalid(key, format!("{table} is not in source.tables; add it there")));
        }
        Ok(table)
    };
    let (kind, table) = match (&spec.table, &spec.message, &spec.outbox) {
        (Some(t), _, _) => (Kind::Table, Some(parse_table(t, at("table"))?)),
        (_, Some(prefix), _) => {
            if prefix.is_empty() || crate::change::is_internal_prefix(prefix) {
                return Err(ConfigError::invalid(
                    at("message"),
                    format!(
                        "the prefix given to pg_logical_emit_message, e.g. payments ({}, {} and {} are ficus's own)",
                        crate::change::HEARTBEAT_PREFIX,
                        crate::change::WATERMARK_PREFIX,
                        crate::change::BACKFILL_PREFIX
                    ),
                ));
            }
            (Kind::Message(prefix.clone()), None)
        }
        (_, _, Some(ob)) => {
            let table = parse_table(&ob.table, at("outbox.table"))?;
            for (field, value) in
                [("key", spec.key.is_some()), ("data", spec.data.is_some()), ("on", spec.on.is_some())]
            {
                if value {
                    return Err(ConfigError::invalid(
                        at(field),
                        "an outbox rule takes key, data and trigger from the outbox row (aggregateid, payload, inserts); remove it",
                    ));
                }
            }
            let template = spec.topic.clone().unwrap_or_else(|| "outbox.event.{aggregatetype}".into());
            let sample = template.replace("{aggregatetype}", "x");
            if !is_topic_name(&sample) {
                return Err(ConfigError::invalid(
                    at("topic"),
                    "a Kafka topic name of [a-zA-Z0-9._-], with {aggregatetype} where the aggregate type goes",
                ));
            }
            (Kind::Outbox(outbox::Outbox::new(ob, template)), Some(table))
        }
        (None, None, None) => unreachable!("checked above: exactly one kind"),
    };
    let topic = match (&kind, &spec.topic) {
        (Kind::Outbox(_), _) => String::new(),
        (_, Some(t)) if is_topic_name(t) => t.clone(),
        (_, Some(_)) => return Err(ConfigError::invalid(at("topic"), crate::record::TOPIC_NAME_RULE)),
        (_, None) => return Err(ConfigError::invalid(at("topic"), "required: the Kafka topic of the events")),
    };
    if !matches!(kind, Kind::Outbox(_)) && spec.key.is_none() {
        return Err(ConfigError::invalid(
            at("key"),
            "required: a CEL expression for the Kafka key, e.g. string(new.id)",
        ));
    }
    if matches!(kind, Kind::Message(_)) && spec.on.is_some() {
        return Err(ConfigError::invalid(
            at("on"),
            "message rules fire on every message with their prefix; remove `on`",
        ));
    }
    let ops = match &spec.on {
        None if matches!(kind, Kind::Outbox(_)) => vec![Op::Insert],
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
    let mut uses_hmac = false;
    let mut compile = |key: String, source: &str| -> Result<Expression, ConfigError> {
        let program =
            env.compile(source).map_err(|e| ConfigError::invalid(key.clone(), format!("invalid CEL: {e}")))?;
        uses_hmac |= hmac_keys.check(&program.expression().expr, &key)?;
        for function in program.references().functions() {
            if function != digest::HMAC && !known_function(env, function) {
                warnings.push(format!(
                    "{key}: {UNKNOWN_FUNCTION} `{function}`: every change this rule evaluates would go to the DLQ \
                     (docs/rules.md lists the functions)"
                ));
            }
        }
        let expr = &program.expression().expr;
        reads.collect(expr);
        let fast = fast::Fast::detect(expr);
        match &fast {
            Some(fast::Fast::Column { .. }) => {}
            Some(f @ fast::Fast::StringOf { .. }) => cel_reads.new_columns.push(f.column().to_string()),
            None => cel_reads.collect(expr),
        }
        let cond = cond::Cond::compile(expr);
        Ok(Expression { program, key, fast, cond, source: source.to_string() })
    };
    let when = spec.when.as_deref().map(|w| compile(at("when"), w)).transpose()?;
    let key = spec.key.as_deref().map(|k| compile(at("key"), k)).transpose()?;
    let correlation = spec.correlation.as_deref().map(|c| compile(at("correlation"), c)).transpose()?;
    let mut headers = Vec::new();
    for (name, expr) in &spec.headers {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with(RESERVED_PREFIX) {
            return Err(ConfigError::invalid(
                at(&format!("headers.{name}")),
                format!(
                    "choose another header name; ficus sets {} and ce_* (CloudEvents)",
                    RESERVED_HEADERS.join(", ")
                ),
            ));
        }
        headers.push((name.clone(), compile(at(&format!("headers.{name}")), expr)?));
    }
    let data = match &spec.data {
        None => Data::All,
        Some(v) => compile_data(v, &at("data"), &mut compile)?,
    };
    if matches!(kind, Kind::Message(_)) {
        if reads.whole_row || !reads.new_columns.is_empty() || !reads.old_columns.is_empty() {
            return Err(ConfigError::invalid(
                at("message"),
                "message rules read `content`, `prefix` and `tx`, not `new`/`old`",
            ));
        }
        if matches!(data, Data::Columns(_) | Data::Exclude(_)) {
            return Err(ConfigError::invalid(
                at("data"),
                "a message has no columns: use fields over `content`, or omit data for the whole content",
            ));
        }
    }
    if let Data::Columns(cols) | Data::Exclude(cols) = &data {
        reads.new_columns.extend(cols.iter().cloned());
    }
    let mut columns_read: Vec<String> =
        reads.new_columns.into_iter().chain(reads.old_columns.iter().cloned()).collect();
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
        topic: topic.as_str().into(),
        kind,
        data,
        headers,
        correlation,
        on_error: spec.on_error.unwrap_or(defaults.on_error),
        encoding: spec.encoding.unwrap_or(defaults.encoding),
        envelope_headers: spec.envelope_headers.unwrap_or(defaults.envelope_headers),
        reads_old: reads.old,
        reads_tx: reads.tx,
        uses_hmac,
        columns_read,
        topic_label: spec.topic.clone().unwrap_or_else(|| "outbox.event.{aggregatetype}".into()),
        cel_whole_row: cel_reads.whole_row,
        cel_columns: cel_reads.new_columns.into_iter().chain(cel_reads.old_columns).collect(),
    })
}

fn is_topic_name(t: &str) -> bool {
    crate::record::is_topic_name(t)
}

pub(super) fn compile_data(
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

pub(super) fn compile_fields(
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
pub(super) struct Reads {
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

/// Start of the warning about a function the CEL environment does not know (`ficus check` shows these).
pub(super) const UNKNOWN_FUNCTION: &str = "unknown CEL function";

/// Whether `name` is a function of `env`. The cel crate resolves functions only when an expression runs, so an
/// unknown one would fail every evaluation; this probes the environment once per name at start-up: a call that
/// fails with "undeclared reference" to the name itself, both as a global and as a member function, is unknown.
/// Macros (expanded by the parser) and names the probe cannot express are taken as known: the probe may only ever
/// warn too little, never refuse a valid expression.
fn known_function(env: &Arc<Env>, name: &str) -> bool {
    const MACROS: &[&str] = &["has", "all", "exists", "exists_one", "map", "filter"];
    if MACROS.contains(&name) || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return true;
    }
    let ctx = cel::Context::with_env(env.clone());
    for probe in [format!("{name}()"), format!("''.{name}()")] {
        let undeclared = match env.compile(&probe) {
            Ok(p) => matches!(p.execute(&ctx), Err(cel::ExecutionError::UndeclaredReference(r)) if r.as_str() == name),
            Err(_) => false,
        };
        if !undeclared {
            return true;
        }
    }
    false
}
