//! Outbox rules (Debezium's outbox semantics): the application inserts an event row into an outbox table in the
//! same transaction as its business change; ficus publishes it.
//!
//! From the inserted row: `eventId` = `id`, `eventType` = `type`, Kafka key and `key` = `aggregateid`, `data` =
//! `payload` (json/jsonb embedded as JSON, not as an escaped string; a text payload that holds JSON likewise), the
//! topic = the template with `{aggregatetype}` replaced (characters Kafka cannot hold become `_`), and the
//! configured extra columns as headers. Updates and deletes of the outbox (cleanup) publish nothing. The event
//! goes out in the rule's encoding, with the transaction's `correlationId`. A row with an empty `id` or `type` is
//! a failure of the rule (→ `on_error`, by default the DLQ), never an event; so is an empty `aggregateid` in the
//! CloudEvents encodings (an empty `subject`).

use super::eval::{build_record, Buffers, EventHead, LazyContext};
use super::*;
use crate::config::events::OutboxSpec;

/// A compiled outbox rule: the column names and the topic template.
pub(super) struct Outbox {
    pub(super) id: String,
    pub(super) aggregatetype: String,
    pub(super) aggregateid: String,
    pub(super) r#type: String,
    pub(super) payload: String,
    pub(super) headers: Vec<String>,
    topic: String,
}

impl Outbox {
    pub(super) fn new(spec: &OutboxSpec, topic: String) -> Outbox {
        Outbox {
            id: spec.id.clone(),
            aggregatetype: spec.aggregatetype.clone(),
            aggregateid: spec.aggregateid.clone(),
            r#type: spec.r#type.clone(),
            payload: spec.payload.clone(),
            headers: spec.headers.clone(),
            topic,
        }
    }

    pub(super) fn topic_template(&self) -> &str {
        &self.topic
    }

    /// Every column the rule reads (checked against the catalog by `ficus check`).
    pub(super) fn columns(&self) -> Vec<String> {
        let mut c = vec![
            self.id.clone(),
            self.aggregatetype.clone(),
            self.aggregateid.clone(),
            self.r#type.clone(),
            self.payload.clone(),
        ];
        c.extend(self.headers.iter().cloned());
        c
    }

    /// The event of an inserted outbox row; `None` when the rule's `when` is false.
    pub(super) fn event(
        &self,
        rule: &Rule,
        ctx: &LazyContext<'_>,
        change: &Change,
        source: &SourceInfo,
        default_correlation: &Arc<str>,
        bufs: &mut Buffers,
    ) -> Result<Option<Record>, String> {
        if !rule.fires(ctx)? {
            return Ok(None);
        }
        let text = |col: &str, scratch: &mut Vec<u8>| -> Result<String, String> {
            let (_, json) = column_json(change, col, scratch)?;
            match serde_json::from_slice::<serde_json::Value>(json) {
                Ok(serde_json::Value::String(s)) => Ok(s),
                Ok(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Ok(serde_json::Value::Null) => Err(format!("outbox column {col} is null")),
                _ => Err(format!("outbox column {col} is not text or a number")),
            }
        };
        let event_id = text(&self.id, &mut bufs.scratch)?;
        let aggregate_type = text(&self.aggregatetype, &mut bufs.scratch)?;
        let key = text(&self.aggregateid, &mut bufs.scratch)?;
        let event_type = text(&self.r#type, &mut bufs.scratch)?;
        // Consumers deduplicate on the id and route on the type, in every encoding (CloudEvents forbids both empty).
        for (column, value) in [(&self.id, &event_id), (&self.r#type, &event_type)] {
            if value.is_empty() {
                let what = if column == &self.id { "id" } else { "type" };
                return Err(format!("outbox column {column} (the event {what}) is empty"));
            }
        }
        let topic = crate::record::sanitize_topic(&self.topic.replace("{aggregatetype}", &aggregate_type));
        let mut headers = Vec::with_capacity(self.headers.len());
        for col in &self.headers {
            // Header names are `&'static str` in records; the set is small and fixed: interned once.
            let value = match text(col, &mut bufs.scratch) {
                Ok(v) => v,
                Err(_) => continue, // a null extra column: no header
            };
            headers.push((eval::intern(col), HeaderValue::Owned(value)));
        }
        let (_, payload) = column_json(change, &self.payload, &mut bufs.scratch)?;
        // A text payload that holds JSON is published as that JSON.
        let payload: Vec<u8> = match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(serde_json::Value::String(s)) if serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok() => {
                s.into_bytes()
            }
            _ => payload.to_vec(),
        };
        let head = EventHead {
            event_type: event_type.into(),
            version: rule.version,
            version_text: rule.version_text.clone(),
            event_id,
            key,
            correlation_id: default_correlation.clone(),
            topic: topic.into(),
            encoding: rule.encoding,
            envelope_headers: rule.envelope_headers,
            origin: envelope::Origin::of(change),
            source_table: bufs.source_table(&envelope::Origin::of(change)),
        };
        build_record(
            head,
            source,
            |out| {
                out.extend_from_slice(&payload);
                Ok(())
            },
            headers,
        )
        .map(Some)
    }
}

/// The JSON of column `name` of the new row, as the value mapping writes it, in `scratch`.
fn column_json<'s>(change: &Change, name: &str, scratch: &'s mut Vec<u8>) -> Result<(usize, &'s [u8]), String> {
    let row = change.after.as_ref().ok_or("the outbox change has no new row")?;
    let i = change
        .table
        .columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| format!("the outbox table has no column {name}"))?;
    let datum = row.get(i).ok_or_else(|| format!("the outbox table has no column {name}"))?;
    if *datum == Datum::UnchangedToast {
        return Err(format!("outbox column {name}: unchanged TOAST value not sent"));
    }
    scratch.clear();
    encode::write_datum(scratch, &change.table, i, datum).map_err(|e| e.to_string())?;
    Ok((i, scratch))
}
