//! A rule failed for a change: `on_error: fail` stops the pipeline, `skip` counts and logs it, `dlq` (default)
//! publishes the original change (raw change event, or the logical message as JSON) to the dead-letter topic with
//! headers naming the error, the rule, the table and the position — in the change's transaction, so a DLQ record is
//! part of the checkpoint invariant like an event.

use super::*;

impl RuleSet {
    pub(super) fn fail(
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
                self.counters[i].dlq.increment(1);
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
                        ("source-lsn", HeaderValue::Lsn(lsn.text_form())),
                        ("op", HeaderValue::Static(op)),
                    ],
                    tombstone: false,
                });
                Ok(())
            }
        }
    }
}

/// A logical decoding message as JSON for the DLQ: prefix, content (embedded when it is JSON), position.
pub(super) fn message_json(m: &LogicalMessage, source: &SourceInfo) -> Vec<u8> {
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
        format!(
            ",\"lsn\":\"{}\",\"commitLsn\":\"{}\",\"position\":{},\"txId\":{},\"commitTime\":\"{}\"}}}}",
            m.lsn,
            m.tx.commit_lsn,
            m.position,
            m.tx.xid,
            crate::postgres::value::format_unix_micros(m.tx.commit_time_us)
        )
        .as_bytes(),
    );
    out
}
