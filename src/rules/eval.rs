//! Running compiled rules on one change: the CEL context (built lazily), `when`, key, `data`, headers, and
//! the encodings of the event. Failures are `Err(reason)` naming the rule's config key; [`super::RuleSet`] turns
//! them into DLQ records, a stop, or a skip.

use super::*;

#[derive(Default)]
pub(super) struct Buffers {
    pub(super) id: Vec<u8>,
    pub(super) scratch: Vec<u8>,
    /// The last `source-table` header value: consecutive events mostly come from one table, so they share it
    /// instead of formatting it each time.
    source_table: Option<Arc<str>>,
}

impl Buffers {
    /// The `source-table` header of events from `origin`: `schema.table`, or `message <prefix>`.
    pub(super) fn source_table(&mut self, origin: &envelope::Origin<'_>) -> Arc<str> {
        let (head, sep, tail) = match origin.what {
            envelope::What::Table { schema, name } => (schema, ".", name),
            envelope::What::Message { prefix } => ("message", " ", prefix),
        };
        match &self.source_table {
            Some(last)
                if last.len() == head.len() + sep.len() + tail.len()
                    && last.starts_with(head)
                    && last[head.len()..].starts_with(sep)
                    && last.ends_with(tail) =>
            {
                last.clone()
            }
            _ => {
                let text: Arc<str> = Arc::from(format!("{head}{sep}{tail}"));
                self.source_table = Some(text.clone());
                text
            }
        }
    }
}

/// What a rule runs on: a row change or a logical decoding message.
#[derive(Clone, Copy)]
pub(super) enum Input<'c> {
    Change(&'c Change),
    Message(&'c LogicalMessage),
}

impl<'c> Input<'c> {
    fn origin(self) -> envelope::Origin<'c> {
        match self {
            Input::Change(c) => envelope::Origin::of(c),
            Input::Message(m) => envelope::Origin {
                what: envelope::What::Message { prefix: &m.prefix },
                op: "message",
                lsn: m.lsn,
                position: m.position,
                tx: &m.tx,
            },
        }
    }
}

/// The CEL context of one change or message, built on first use.
pub(super) struct LazyContext<'c> {
    pub(super) env: &'c Arc<Env>,
    pub(super) input: Input<'c>,
    pub(super) with_tx: bool,
    pub(super) mask: Option<&'c [bool]>,
    /// The keys of `hmac`, when a rule calls it.
    pub(super) hmac: Option<&'c Arc<digest::HmacKeys>>,
    pub(super) cell: OnceCell<Result<Context<'c, 'c>, String>>,
}

impl<'c> LazyContext<'c> {
    fn get(&self) -> Result<&Context<'c, 'c>, String> {
        self.cell
            .get_or_init(|| {
                let mut ctx = match self.input {
                    Input::Change(change) => change_context(self.env, change, self.with_tx, self.mask)?,
                    Input::Message(message) => message_context(self.env, message, self.with_tx),
                };
                if let Some(keys) = self.hmac {
                    keys.add_to(&mut ctx);
                }
                Ok(ctx)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The CEL variables of one change: `new`, `old` (maps or null), `op`, `table`, and `tx` when a rule reads it.
/// Column names and text values are borrowed from the change, not copied; only the columns in `mask` (all when
/// `None`) are converted.
pub(super) fn change_context<'c>(
    env: &Arc<Env>,
    change: &'c Change,
    with_tx: bool,
    mask: Option<&[bool]>,
) -> Result<Context<'c, 'c>, String> {
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
        ctx.add_variable_from_value("tx", tx_value(&change.tx));
    }
    Ok(ctx)
}

/// The CEL variables of a logical decoding message: `content` (its JSON as maps, lists and scalars when it is JSON,
/// else the text), `prefix`, `op` (`message`), and `tx`.
fn message_context<'c>(env: &Arc<Env>, message: &'c LogicalMessage, with_tx: bool) -> Context<'c, 'c> {
    let content = match serde_json::from_slice::<serde_json::Value>(&message.content) {
        Ok(json) => values::json_value(&json),
        Err(_) => Value::String(Arc::new(String::from_utf8_lossy(&message.content).into_owned())),
    };
    let mut ctx = Context::with_env(env.clone());
    ctx.add_variable_from_value("content", content);
    ctx.add_variable_as_val("prefix", Box::new(CelString::from(message.prefix.as_str())));
    ctx.add_variable_as_val("op", Box::new(CelString::from("message")));
    if with_tx {
        ctx.add_variable_from_value("tx", tx_value(&message.tx));
    }
    ctx
}

fn tx_value(tx: &TxMeta) -> HashMap<String, Value> {
    let mut map: HashMap<String, Value> = HashMap::new();
    map.insert("id".into(), Value::Int(i64::from(tx.xid)));
    map.insert("commitLsn".into(), Value::String(Arc::new(tx.commit_lsn.to_string())));
    if let Some(t) = chrono::DateTime::from_timestamp_micros(tx.commit_time_us) {
        map.insert("commitTime".into(), Value::Timestamp(t.fixed_offset()));
    }
    map
}

/// Everything of an event but its `data`.
pub(super) struct EventHead<'a> {
    pub event_type: Arc<str>,
    pub version: u32,
    pub version_text: Arc<str>,
    pub event_id: String,
    pub key: String,
    pub correlation_id: Arc<str>,
    pub topic: Arc<str>,
    pub encoding: Encoding,
    pub envelope_headers: EnvelopeHeaders,
    pub origin: envelope::Origin<'a>,
    /// The `source-table` header ([`Buffers::source_table`]).
    pub source_table: Arc<str>,
}

/// Builds the Kafka record of an event in its encoding; `write_data` appends `data` as JSON.
pub(super) fn build_record(
    head: EventHead<'_>,
    source: &SourceInfo,
    write_data: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    extra_headers: Vec<(&'static str, HeaderValue)>,
) -> Result<Record, String> {
    let mut payload = Vec::with_capacity(512);
    let e = envelope::Envelope {
        event_type: &head.event_type,
        version: head.version,
        event_id: &head.event_id,
        correlation_id: &head.correlation_id,
        key: &head.key,
    };
    if head.encoding != Encoding::Json {
        if let Some(problem) = envelope::cloudevent_problem(&e, &head.origin) {
            return Err(format!("{problem} (encoding {})", head.encoding.as_str()));
        }
    }
    // W3C Trace Context (CloudEvents distributed-tracing extension), deterministic from the correlation and event ids;
    // computed once, for the header and (structured CloudEvents) the envelope.
    let traceparent = crate::encode::trace::traceparent(&head.correlation_id, &head.event_id);
    let content_type = match head.encoding {
        Encoding::Json => {
            envelope::write_head(&mut payload, &e, &head.origin, source);
            write_data(&mut payload)?;
            payload.push(b'}');
            "application/json"
        }
        Encoding::CloudeventsStructured => {
            envelope::write_cloudevent_head(&mut payload, &e, &head.origin, source, &traceparent);
            write_data(&mut payload)?;
            payload.push(b'}');
            "application/cloudevents+json"
        }
        Encoding::CloudeventsBinary => {
            write_data(&mut payload)?;
            "application/json"
        }
    };
    let mut headers = Vec::with_capacity(15 + extra_headers.len());
    if head.encoding == Encoding::CloudeventsBinary {
        headers.push(("ce_traceparent", HeaderValue::Shared(traceparent.clone())));
    }
    if head.encoding == Encoding::CloudeventsBinary {
        headers.extend([
            ("ce_specversion", HeaderValue::Static("1.0")),
            ("ce_id", HeaderValue::Owned(head.event_id.clone())),
            ("ce_source", HeaderValue::Owned(envelope::cloudevents_source(&head.origin, source))),
            ("ce_type", HeaderValue::Shared(head.event_type.clone())),
            ("ce_time", HeaderValue::Owned(envelope::occurred_at(&head.origin))),
            ("ce_subject", HeaderValue::Owned(head.key.clone())),
            ("ce_correlationid", HeaderValue::Shared(head.correlation_id.clone())),
            ("ce_eventversion", HeaderValue::Shared(head.version_text.clone())),
        ]);
    }
    headers.push(("content-type", HeaderValue::Static(content_type)));
    // `minimal`: no header that repeats what the record holds (the envelope's ids; the `ce_` headers).
    let binary = head.encoding == Encoding::CloudeventsBinary;
    let all = head.envelope_headers == EnvelopeHeaders::All;
    if all || !binary {
        headers.push(("event-type", HeaderValue::Shared(head.event_type)));
    }
    if all {
        headers.extend([
            ("event-id", HeaderValue::Owned(head.event_id)),
            ("event-version", HeaderValue::Shared(head.version_text)),
            ("correlation-id", HeaderValue::Shared(head.correlation_id)),
        ]);
    }
    if all || !binary {
        headers.push(("traceparent", HeaderValue::Shared(traceparent)));
    }
    headers.extend([
        // Where the event came from, as on raw change events: also what a Kafka error about this record names.
        ("source-table", HeaderValue::Shared(head.source_table)),
        ("source-lsn", HeaderValue::Lsn(head.origin.lsn.text_form())),
    ]);
    headers.extend(extra_headers);
    Ok(Record { topic: head.topic, key: Some(head.key.into_bytes()), payload, headers, tombstone: false })
}

impl Rule {
    /// Whether the rule's `when` holds (true without one).
    pub(super) fn fires(&self, ctx: &LazyContext<'_>) -> Result<bool, String> {
        let Some(when) = &self.when else { return Ok(true) };
        if let (Some(cond), Input::Change(change)) = (&when.cond, ctx.input) {
            if let Some(holds) = cond.holds(change) {
                return Ok(holds);
            }
        }
        match eval(when, ctx)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("{}: must be true or false, got a {:?}", when.key, other.type_of())),
        }
    }

    /// The event this rule derives from the change or message, `None` when `when` is false, `Err(reason)` on
    /// failure.
    pub(super) fn event(
        &self,
        ctx: &LazyContext<'_>,
        source: &SourceInfo,
        default_correlation: &Arc<str>,
        bufs: &mut Buffers,
    ) -> Result<Option<Record>, String> {
        if !self.fires(ctx)? {
            return Ok(None);
        }
        let Some(key_expr) = &self.key else { return Err("the rule has no key".into()) };
        let key = eval_text(key_expr, ctx, &mut bufs.scratch).map_err(|e| e.replacen(": ", ": the key ", 1))?;
        let origin = ctx.input.origin();
        let event_id = envelope::event_id_into(&mut bufs.id, source, &origin, &self.name, self.version);
        let source_table = bufs.source_table(&origin);
        let correlation_id: Arc<str> = match &self.correlation {
            Some(expr) => eval_text(expr, ctx, &mut bufs.scratch)?.into(),
            None => default_correlation.clone(),
        };
        let mut extra = Vec::with_capacity(self.headers.len());
        for (name, expr) in &self.headers {
            let value = eval_text(expr, ctx, &mut bufs.scratch)?;
            // Header names are `&'static str` in records; the set of names is small and fixed: interned once.
            extra.push((intern(name), HeaderValue::Owned(value)));
        }
        let head = EventHead {
            event_type: self.name_shared.clone(),
            version: self.version,
            version_text: self.version_text.clone(),
            event_id,
            key,
            correlation_id,
            topic: self.topic.clone(),
            encoding: self.encoding,
            envelope_headers: self.envelope_headers,
            origin,
            source_table,
        };
        build_record(head, source, |out| self.write_data(out, ctx), extra).map(Some)
    }

    pub(super) fn write_data(&self, out: &mut Vec<u8>, ctx: &LazyContext<'_>) -> Result<(), String> {
        let selection = match &self.data {
            Data::Fields(fields) => return write_fields(out, fields, ctx),
            selection => selection,
        };
        let change = match ctx.input {
            Input::Change(change) => change,
            // A message rule without `data`: the content, as JSON when it is JSON, else as a string.
            Input::Message(m) => {
                encode::write_json_or_string(out, &m.content);
                return Ok(());
            }
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
                Data::Columns(cols) => cols.contains(&col.name),
                Data::Exclude(cols) => !cols.contains(&col.name),
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

pub(super) fn write_fields(out: &mut Vec<u8>, fields: &[(String, Field)], ctx: &LazyContext<'_>) -> Result<(), String> {
    out.push(b'{');
    for (i, (name, field)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::postgres::value::write_json_string(out, name);
        out.push(b':');
        match field {
            Field::Map(inner) => write_fields(out, inner, ctx)?,
            Field::Expr(expr) => {
                let fast = match ctx.input {
                    Input::Change(change) => expr.fast.as_ref().and_then(|f| f.write_json(out, change)),
                    Input::Message(_) => None,
                };
                if let Some(done) = fast {
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
pub(super) fn eval_text(expr: &Expression, ctx: &LazyContext<'_>, scratch: &mut Vec<u8>) -> Result<String, String> {
    if let Input::Change(change) = ctx.input {
        if let Some(text) = expr.fast.as_ref().and_then(|f| f.text(change, scratch)) {
            return text.map_err(|e| format!("{}: {e}", expr.key));
        }
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
