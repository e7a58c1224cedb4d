//! The rules at work: [`RuleSet`] runs the compiled [`Rules`] of a change's table (or a logical message's prefix)
//! in config order, counts what each rule did, and settles every result — an event, nothing (`when` false), or a
//! failure handled as the rule's `on_error` says (`dlq`).

use std::cell::OnceCell;
use std::sync::Arc;

use super::*;

impl RuleSet {
    /// A session's runner of `compiled`.
    pub fn new(compiled: Arc<Rules>) -> RuleSet {
        let counters = compiled
            .rules
            .iter()
            .map(|r| RuleCounters {
                events: metrics::counter!(
                    crate::metrics::EVENTS,
                    "event_type" => r.name.clone(),
                    "version" => r.version.to_string(),
                    "topic" => r.topic_label.clone()
                ),
                dlq: metrics::counter!(crate::metrics::DLQ, "rule" => format!("{} v{}", r.name, r.version)),
            })
            .collect();
        RuleSet {
            stats: vec![RuleStats::default(); compiled.rules.len()],
            counters,
            compiled,
            by_relation: crate::change::OidMap::default(),
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
        // Without rules a change costs nothing here; with rules, a change no rule is about costs one lookup and no
        // reference count.
        if self.compiled.rules.is_empty() {
            return Ok(0);
        }
        self.ensure_rules_of(&change.table);
        let of_table = &self.by_relation[&change.table.oid];
        let matching = of_table.rules.iter().filter(|&&i| self.compiled.rules[i].ops.contains(&change.op)).count();
        if matching == 0 {
            return Ok(0);
        }
        let (indices, mask) = (of_table.rules.clone(), of_table.mask.clone());
        let correlation = self.correlation_id(source, &change.tx);
        // The CEL maps are built on first use: rules made of column references never need them.
        let env = self.compiled.env.clone();
        let hmac = self.compiled.hmac.clone();
        let input = Input::Change(change);
        let lazy = LazyContext {
            env: &env,
            input,
            with_tx: self.compiled.uses_tx,
            mask: mask.as_deref(),
            hmac: hmac.as_ref(),
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
        let hmac = self.compiled.hmac.clone();
        let input = Input::Message(message);
        let lazy = LazyContext {
            env: &env,
            input,
            with_tx: self.compiled.uses_tx,
            mask: None,
            hmac: hmac.as_ref(),
            cell: OnceCell::new(),
        };
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
                self.counters[i].events.increment(1);
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

    /// Makes `by_relation[table.oid]` the indices of the rules of `table` and which columns CEL reads (`None` = all):
    /// cached per relation (a pointer comparison per change), recomputed for a new relation or a new schema of it.
    fn ensure_rules_of(&mut self, table: &Arc<Table>) {
        if self.by_relation.get(&table.oid).is_some_and(|r| Arc::ptr_eq(&r.table, table)) {
            return;
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
        self.by_relation.insert(table.oid, RelationRules { table: table.clone(), rules, mask });
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
}
