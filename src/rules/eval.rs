//! Running compiled rules on one change: the CEL context (built lazily), `when`, key, `data`, headers, and
//! the encodings of the event. Failures are `Err(reason)` naming the rule's config key; [`super::RuleSet`] turns
//! them into DLQ records, a stop, or a skip.

use super::*;

#[derive(Default)]
pub(super) struct Buffers {
    id: Vec<u8>,
    scratch: Vec<u8>,
}

/// The CEL context of one change, built on first use.
pub(super) struct LazyContext<'c> {
    pub(super) env: &'c Arc<Env>,
    pub(super) change: &'c Change,
    pub(super) with_tx: bool,
    pub(super) mask: Option<&'c [bool]>,
    pub(super) cell: OnceCell<Result<Context<'c, 'c>, String>>,
}

impl<'c> LazyContext<'c> {
    fn get(&self) -> Result<&Context<'c, 'c>, String> {
        self.cell
            .get_or_init(|| change_context(self.env, self.change, self.with_tx, self.mask))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The CEL variables of one change: `new`, `old` (maps or null), `op`, `table`, and `tx` when a rule reads it.
/// Column names and text values are borrowed from the change, not copied; only the columns in `mask` (all when
/// `None`) are converted.
pub(super) fn change_context<'c>(env: &Arc<Env>, change: &'c Change, with_tx: bool, mask: Option<&[bool]>) -> Result<Context<'c, 'c>, String> {
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
    pub(super) fn event(
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

    pub(super) fn write_data(&self, out: &mut Vec<u8>, ctx: &LazyContext<'_>, change: &Change) -> Result<(), String> {
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

pub(super) fn write_fields(out: &mut Vec<u8>, fields: &[(String, Field)], ctx: &LazyContext<'_>, change: &Change) -> Result<(), String> {
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

pub(super) fn eval(expr: &Expression, ctx: &LazyContext<'_>) -> Result<Value, String> {
    expr.program.execute(ctx.get()?).map_err(|e| format!("{}: {e}", expr.key))
}

/// A key, header or correlation value as text (fast path for column references). Errors start with the key.
pub(super) fn eval_text(expr: &Expression, ctx: &LazyContext<'_>, change: &Change, scratch: &mut Vec<u8>) -> Result<String, String> {
    if let Some(text) = expr.fast.as_ref().and_then(|f| f.text(change, scratch)) {
        return text.map_err(|e| format!("{}: {e}", expr.key));
    }
    values::cel_to_text(&eval(expr, ctx)?).map_err(|e| format!("{}: {e}", expr.key))
}

/// A `&'static str` for a header name configured by a rule (a handful per config, interned once).
pub(super) fn intern(name: &str) -> &'static str {
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
