//! ficus's own transaction metadata (`changes.transaction_metadata`), so consumers can rebuild source
//! transactions from raw change events (`json` encoding) and business events: every such event carries
//! `transaction {id, position, topicPosition}` (CloudEvents: the extensions `txid`, `txposition`,
//! `txtopicposition`), and at the commit an END record on `<topic_prefix>.transactions` gives the count, in all and
//! per topic.
//!
//! The count of a transaction is known only at its commit: the router publishes every change as it arrives (it
//! never buffers a transaction, which may be larger than memory), so the count travels in a trailing record, as
//! Debezium's END record. A consumer has the whole transaction when it holds positions 1..n of its topic, n being
//! the topic's `eventCount` in the END record (or, across topics, positions 1..`eventCount`).
//! Positions count only what is published on the event topics: not DLQ records, tombstones, Debezium-encoded raw
//! events (they have Debezium's own metadata), nor the metadata records themselves. Deterministic: a replay of the
//! transaction gives the same positions and END record.

use std::sync::Arc;

use crate::change::TxMeta;
use crate::encode::SourceInfo;
use crate::json::write_json_string;
use crate::record::{HeaderValue, Record};

/// The published events of the current source transaction.
pub(super) struct Transactions {
    /// `<topic_prefix>.transactions`.
    topic: Arc<str>,
    /// The transaction counted, `<txId>:<commit LSN>` (as Debezium's transaction id).
    tx: Option<(Arc<TxMeta>, String)>,
    total: u32,
    /// Events per topic, in order of first appearance (a transaction touches few topics: a list beats a map).
    per_topic: Vec<(Arc<str>, u32)>,
}

impl Transactions {
    pub(super) fn new(topic_prefix: &str) -> Transactions {
        Transactions {
            topic: Arc::from(crate::record::sanitize_topic(&format!("{topic_prefix}.transactions"))),
            tx: None,
            total: 0,
            per_topic: Vec::new(),
        }
    }

    /// Stamps `record`, an event of the transaction `tx`, with its transaction id and positions.
    pub(super) fn stamp(&mut self, tx: &Arc<TxMeta>, record: &mut Record) {
        let same = matches!(&self.tx, Some((t, _)) if t.xid == tx.xid && t.commit_lsn == tx.commit_lsn);
        if !same {
            // A new transaction (the previous one ended with `end`, or was cut off by a reconnect: the router is
            // new then).
            self.tx = Some((tx.clone(), format!("{}:{}", tx.xid, tx.commit_lsn)));
            self.total = 0;
            self.per_topic.clear();
        }
        let id = self.tx.as_ref().expect("set above").1.clone();
        self.total += 1;
        let topic_position = match self.per_topic.iter_mut().find(|(t, _)| **t == *record.topic) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.per_topic.push((record.topic.clone(), 1));
                1
            }
        };
        let position = itoa::Buffer::new().format(self.total).to_string();
        let topic_position = itoa::Buffer::new().format(topic_position).to_string();
        if record.header("ce_specversion").is_some() {
            // CloudEvents binary mode: the value is `data` alone; extensions travel as headers.
            record.headers.extend([
                ("ce_txid", HeaderValue::Owned(id)),
                ("ce_txposition", HeaderValue::Owned(position)),
                ("ce_txtopicposition", HeaderValue::Owned(topic_position)),
            ]);
            return;
        }
        // Every other event is one JSON object written by ficus: the fields go before its closing brace.
        if record.payload.last() != Some(&b'}') {
            return;
        }
        record.payload.pop();
        let structured =
            record.headers.iter().any(|(k, v)| *k == "content-type" && v.as_str() == "application/cloudevents+json");
        let out = &mut record.payload;
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        // Structured CloudEvents: three extension attributes; otherwise one `transaction` object. Same values.
        let (open, [id_key, position_key, topic_key], close): (&[u8], [&[u8]; 3], &[u8]) = if structured {
            (b"", [b"\"txid\":", b",\"txposition\":", b",\"txtopicposition\":"], b"")
        } else {
            (b"\"transaction\":{", [b"\"id\":", b",\"position\":", b",\"topicPosition\":"], b"}")
        };
        out.extend_from_slice(open);
        out.extend_from_slice(id_key);
        write_json_string(out, &id);
        out.extend_from_slice(position_key);
        out.extend_from_slice(position.as_bytes());
        out.extend_from_slice(topic_key);
        out.extend_from_slice(topic_position.as_bytes());
        out.extend_from_slice(close);
        out.push(b'}');
    }

    /// `<topic_prefix>.transactions`, the topic of the END records.
    pub(super) fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// The END record (key, value) of the transaction whose events were stamped, at its commit; `None` when it
    /// published none.
    pub(super) fn end(&mut self, source: &SourceInfo) -> Option<(Vec<u8>, Vec<u8>)> {
        let (tx, id) = self.tx.take()?;
        let mut value = Vec::with_capacity(256);
        value.extend_from_slice(b"{\"status\":\"END\",\"id\":");
        write_json_string(&mut value, &id);
        value.extend_from_slice(b",\"txId\":");
        value.extend_from_slice(itoa::Buffer::new().format(tx.xid).as_bytes());
        value.extend_from_slice(b",\"commitLsn\":\"");
        tx.commit_lsn.write_to(&mut value);
        value.extend_from_slice(b"\",\"commitTime\":\"");
        crate::postgres::value::write_unix_micros(&mut value, tx.commit_time_us);
        value.extend_from_slice(b"\",\"correlationId\":\"");
        value.extend_from_slice(crate::rules::envelope::correlation_id(source, &tx).to_string().as_bytes());
        value.extend_from_slice(b"\",\"eventCount\":");
        value.extend_from_slice(itoa::Buffer::new().format(self.total).as_bytes());
        value.extend_from_slice(b",\"topics\":[");
        for (i, (topic, n)) in self.per_topic.drain(..).enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(b"{\"topic\":");
            write_json_string(&mut value, &topic);
            value.extend_from_slice(b",\"eventCount\":");
            value.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            value.push(b'}');
        }
        value.extend_from_slice(b"]}");
        let mut key = Vec::with_capacity(id.len() + 10);
        key.extend_from_slice(b"{\"id\":");
        write_json_string(&mut key, &id);
        key.push(b'}');
        self.total = 0;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn event(topic: &str, payload: &str, headers: Vec<(&'static str, HeaderValue)>) -> Record {
        Record { topic: Arc::from(topic), key: None, payload: payload.as_bytes().to_vec(), headers, tombstone: false }
    }

    #[test]
    fn positions_count_the_events_of_a_transaction_and_end_gives_the_counts() {
        let source = SourceInfo { system: "7301".into(), database: "shop".into(), slot: "s".into() };
        let tx = Arc::new(TxMeta { xid: 1234, commit_lsn: Lsn(0x16B3800), commit_time_us: 1_795_334_400_123_456 });
        let mut t = Transactions::new("ficus");
        let mut a = event("a", r#"{"eventId":"x","data":{}}"#, vec![]);
        let mut b = event("b", "{}", vec![("content-type", HeaderValue::Static("application/cloudevents+json"))]);
        let mut c = event("a", r#"{"v":1}"#, vec![("ce_specversion", HeaderValue::Static("1.0"))]);
        for r in [&mut a, &mut b, &mut c] {
            t.stamp(&tx, r);
        }
        assert_eq!(
            String::from_utf8(a.payload).unwrap(),
            r#"{"eventId":"x","data":{},"transaction":{"id":"1234:0/16B3800","position":1,"topicPosition":1}}"#
        );
        assert_eq!(
            String::from_utf8(b.payload).unwrap(),
            r#"{"txid":"1234:0/16B3800","txposition":2,"txtopicposition":1}"#
        );
        assert_eq!(c.payload, br#"{"v":1}"#, "binary mode: headers only");
        assert_eq!(c.header("ce_txposition"), Some("3"));
        assert_eq!(c.header("ce_txtopicposition"), Some("2"));
        assert_eq!(c.header("ce_txid"), Some("1234:0/16B3800"));
        let (key, value) = t.end(&source).unwrap();
        assert_eq!(&**t.topic(), "ficus.transactions");
        assert_eq!(key, br#"{"id":"1234:0/16B3800"}"#);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "END", "id": "1234:0/16B3800", "txId": 1234, "commitLsn": "0/16B3800",
                "commitTime": "2026-11-22T08:00:00.123456Z",
                "correlationId": crate::rules::envelope::correlation_id(&source, &tx).to_string(),
                "eventCount": 3, "topics": [{"topic": "a", "eventCount": 2}, {"topic": "b", "eventCount": 1}]})
        );
        assert!(t.end(&source).is_none(), "one END per transaction");
        // The next transaction counts from 1 again.
        let next = Arc::new(TxMeta { xid: 1235, commit_lsn: Lsn(0x16B3900), commit_time_us: 0 });
        let mut d = event("a", "{}", vec![]);
        t.stamp(&next, &mut d);
        assert!(String::from_utf8(d.payload).unwrap().contains(r#""position":1,"topicPosition":1"#));
    }
}
