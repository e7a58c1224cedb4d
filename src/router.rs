//! Routing: one [`Change`] in, zero or more Kafka [`Record`]s out.
//!
//! A change becomes a raw change event on `<topic_prefix>.<schema>.<table>` when its table is listed in
//! `changes.tables`, then one business event per matching rule ([`crate::rules`]), in rule order, and DLQ records
//! for rules that failed on it. A change that produces no record is dropped on purpose (no rule matched and raw
//! changes are not published for its table) and counted per table in [`Router::dropped`].
//! Records are produced in the order returned, which keeps per-key order.

mod transactions;

use std::collections::HashMap;
use std::sync::Arc;

use crate::change::{Change, OidMap, Op};
use crate::config::{ChangeEncoding, Config};
use crate::encode::{self, SourceInfo};
use crate::ident::TableName;
use crate::record::{change_topic, HeaderValue, Record};
use crate::rules::{RuleFailure, RuleSet};

/// Why a change could not be routed; both stop the pipeline (exit 1) without confirming the change.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Encode(#[from] encode::EncodeError),
    #[error(transparent)]
    Rule(#[from] RuleFailure),
    /// The configuration does not fit the table as the stream now describes it (e.g. a key column dropped).
    #[error("{0}")]
    Config(String),
}

/// What the router decided for one relation, valid while the change's table is this very `Arc`.
struct Route {
    table: Arc<crate::change::Table>,
    /// `None` = not published as raw changes.
    topic: Option<Arc<str>>,
    /// `schema.table`, for the `source-table` header.
    qualified: Arc<str>,
    /// `ficus_changes_received_total{table, op}` per op (insert, update, delete, truncate, read), created once.
    received: [metrics::Counter; 5],
    raw_events: metrics::Counter,
    dropped_counter: metrics::Counter,
    /// Changes received and dropped on purpose through this route (for `/status`; no map lookup per change).
    changes: u64,
    dropped: u64,
}

/// Changes of one table that produced no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub table: Arc<str>,
    pub count: u64,
}

/// Turns changes into records.
pub struct Router {
    source: SourceInfo,
    prefix: String,
    encoding: ChangeEncoding,
    /// Operations the Debezium encoding does not publish (`changes.debezium.skipped_operations`).
    skipped: Vec<crate::config::DebeziumOp>,
    /// `changes.masking`: applied to raw change events and to the raw change in DLQ records.
    masking: encode::mask::Masking,
    /// `changes.key_columns`: the raw change events' key columns per table.
    keys: encode::keys::KeyColumns,
    /// `<topic_prefix>.transaction`: Debezium's transaction metadata topic.
    tx_topic: Arc<str>,
    /// The Debezium encoder (`changes.encoding: debezium`) with its options and schema cache.
    debezium: encode::debezium::Debezium,
    changes_tables: Vec<String>,
    /// Per relation id: the decision for the latest schema of that relation.
    routes: OidMap<Route>,
    rules: RuleSet,
    /// Counts of routes replaced by a new relation (table renamed or re-created), and of logical messages no rule
    /// took, per name: `(received, dropped)`. Updated rarely, never per change.
    retired: HashMap<Arc<str>, (u64, u64)>,
    /// `changes.transaction_metadata`: transaction ids and positions in events, END records.
    transactions: Option<transactions::Transactions>,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Read => 4,
    }
}

impl Router {
    /// Builds the router for `config`; `source` identifies the database in every event.
    pub fn new(config: &Config, source: SourceInfo, rules: RuleSet) -> Router {
        Router {
            source,
            prefix: config.changes.topic_prefix.clone(),
            encoding: config.changes.encoding,
            skipped: match config.changes.encoding {
                ChangeEncoding::Debezium => config.changes.debezium.skipped_operations.clone(),
                ChangeEncoding::Json => Vec::new(),
            },
            masking: encode::mask::Masking::new(&config.changes.masking),
            keys: encode::keys::KeyColumns::new(&config.changes.key_columns),
            debezium: encode::debezium::Debezium::new(
                &config.changes.topic_prefix,
                config.changes.debezium.json_handling == crate::config::JsonHandling::String,
                config.changes.debezium.tombstones,
                config.changes.debezium.schemas,
            )
            .with_placeholder(config.changes.debezium.unavailable_value_placeholder.clone())
            .with_transaction_metadata(
                config.changes.encoding == ChangeEncoding::Debezium && config.changes.debezium.transaction_metadata,
            ),
            tx_topic: Arc::from(crate::record::sanitize_topic(&format!("{}.transaction", config.changes.topic_prefix))),
            changes_tables: config.changes.tables.clone(),
            routes: OidMap::default(),
            rules,
            retired: HashMap::new(),
            transactions: config
                .changes
                .transaction_metadata
                .then(|| transactions::Transactions::new(&config.changes.topic_prefix)),
        }
    }

    /// (received, dropped) so far per `schema.table` (or `message <prefix>`).
    fn counts(&self) -> HashMap<Arc<str>, (u64, u64)> {
        let mut out = self.retired.clone();
        for r in self.routes.values() {
            let e = out.entry(r.qualified.clone()).or_insert((0, 0));
            e.0 += r.changes;
            e.1 += r.dropped;
        }
        out
    }

    /// Changes received and dropped on purpose so far, per `schema.table` (or `message <prefix>`).
    pub fn table_counts(&self) -> std::collections::BTreeMap<String, crate::health::TableCounts> {
        self.counts()
            .into_iter()
            .map(|(t, (changes, dropped))| (t.to_string(), crate::health::TableCounts { changes, dropped }))
            .collect()
    }

    /// The compiled rules and their counters.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Changes dropped on purpose so far, per table (sorted by table).
    pub fn dropped(&self) -> Vec<Dropped> {
        let mut v: Vec<Dropped> = self
            .counts()
            .into_iter()
            .filter(|(_, (_, d))| *d > 0)
            .map(|(table, (_, count))| Dropped { table, count })
            .collect();
        v.sort_by(|a, b| a.table.cmp(&b.table));
        v
    }

    /// Makes `routes[change.table.oid]` the decision for the change's relation.
    fn ensure_route(&mut self, change: &Change) {
        let t = &change.table;
        // Same Arc = same Relation message: the common case costs one pointer comparison.
        let fresh = match self.routes.get(&t.oid) {
            Some(r) => !Arc::ptr_eq(&r.table, t) && (r.table.schema != t.schema || r.table.name != t.name),
            None => true,
        };
        if fresh {
            let name = TableName { schema: t.schema.clone(), name: t.name.clone() };
            let publish = self.changes_tables.iter().any(|x| x == "*" || TableName::parse(x).as_ref() == Ok(&name));
            let topic = publish.then(|| Arc::from(change_topic(&self.prefix, &t.schema, &t.name)));
            let qualified = t.qualified_name();
            let received = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read].map(
                |op| metrics::counter!(crate::metrics::CHANGES, "table" => qualified.clone(), "op" => op.as_str()),
            );
            let raw_events = metrics::counter!(crate::metrics::RAW_EVENTS, "table" => qualified.clone());
            let dropped_counter = metrics::counter!(crate::metrics::DROPPED, "table" => qualified.clone());
            let route = Route {
                table: t.clone(),
                topic,
                qualified: Arc::from(qualified),
                received,
                raw_events,
                dropped_counter,
                changes: 0,
                dropped: 0,
            };
            if let Some(old) = self.routes.insert(t.oid, route) {
                let e = self.retired.entry(old.qualified).or_insert((0, 0));
                e.0 += old.changes;
                e.1 += old.dropped;
            }
        } else if let Some(r) = self.routes.get_mut(&t.oid) {
            // A new Relation message with the same name: keep the decision, remember the new Arc.
            r.table = t.clone();
        }
    }

    /// Records for one transactional logical decoding message (the events of the message rules for its prefix).
    pub fn route_message(
        &mut self,
        message: &crate::change::LogicalMessage,
        out: &mut Vec<Record>,
    ) -> Result<(), RouteError> {
        if crate::change::is_internal_prefix(&message.prefix) {
            return Ok(());
        }
        let start = out.len();
        self.rules.apply_message(message, &self.source, out)?;
        if out.len() == start {
            self.retired.entry(Arc::from(format!("message {}", message.prefix))).or_insert((0, 0)).1 += 1;
        }
        self.stamp(&message.tx, &mut out[start..]);
        Ok(())
    }

    /// Records at the commit of the current source transaction: Debezium's END record when transaction metadata is
    /// on and the transaction published raw events.
    pub fn route_commit(&mut self, out: &mut Vec<Record>) {
        if let Some((key, value)) = self.debezium.end_transaction() {
            out.push(tx_record(&self.tx_topic, key, value));
        }
        if let Some(t) = &mut self.transactions {
            if let Some((key, value)) = t.end(&self.source) {
                out.push(tx_record(t.topic(), key, value));
            }
        }
    }

    /// `changes.transaction_metadata`: stamps the events among `records` (a change's or message's records) with
    /// their transaction positions. DLQ records and tombstones are not events; Debezium-encoded raw events carry
    /// Debezium's own metadata.
    fn stamp(&mut self, tx: &Arc<crate::change::TxMeta>, records: &mut [Record]) {
        let Some(transactions) = &mut self.transactions else { return };
        let debezium = self.encoding == ChangeEncoding::Debezium;
        for record in records {
            let raw_debezium = debezium && record.header("event-id").is_none();
            if record.tombstone || record.header("dlq-rule").is_some() || raw_debezium || record.topic == self.tx_topic
            {
                continue;
            }
            transactions.stamp(tx, record);
        }
    }

    /// Records for one snapshot row; `last`: the last row of its table's snapshot (Debezium's
    /// `snapshot: "last_in_data_collection"`).
    /// `encoded`: the row's key and `after` as its snapshot worker encoded them, used by a raw JSON event that neither
    /// masking nor `changes.key_columns` alters.
    pub fn route_snapshot_row(
        &mut self,
        change: &Change,
        last: bool,
        encoded: Option<&encode::EncodedRow>,
        out: &mut Vec<Record>,
    ) -> Result<(), RouteError> {
        self.debezium.set_snapshot_last(last);
        let result = self.route_with(change, encoded, out);
        self.debezium.set_snapshot_last(false);
        result
    }

    /// Records for one change, in publishing order.
    pub fn route(&mut self, change: &Change, out: &mut Vec<Record>) -> Result<(), RouteError> {
        self.route_with(change, None, out)
    }

    fn route_with(
        &mut self,
        change: &Change,
        encoded: Option<&encode::EncodedRow>,
        out: &mut Vec<Record>,
    ) -> Result<(), RouteError> {
        let start = out.len();
        self.ensure_route(change);
        let (source, encoding) = (&self.source, self.encoding);
        // Field-level borrows: the route stays borrowed while the rules run.
        let route = self.routes.get_mut(&change.table.oid).expect("ensure_route inserted it");
        route.received[op_index(change.op)].increment(1);
        route.changes += 1;
        // A skipped operation publishes no raw change event; when no rule takes the change either, it counts as
        // dropped on purpose below.
        let skipped = self.skipped.iter().any(|o| o.matches(change.op));
        // The change as raw events show it (`changes.masking`); `None` = unmasked.
        let masked = self.masking.apply(change)?;
        if let Some(topic) = route.topic.as_ref().filter(|_| !skipped) {
            let change = masked.as_ref().unwrap_or(change);
            // The key columns chosen by `changes.key_columns` (after masking: a hashed key column keys by its hash).
            let rekeyed = self.keys.apply(change).map_err(RouteError::Config)?;
            let change = rekeyed.as_ref().unwrap_or(change);
            route.raw_events.increment(1);
            let headers = |op: Op| {
                vec![
                    ("content-type", HeaderValue::Static("application/json")),
                    ("source-lsn", HeaderValue::Lsn(change.lsn.text_form())),
                    ("op", HeaderValue::Static(op.as_str())),
                    ("source-table", HeaderValue::Shared(route.qualified.clone())),
                ]
            };
            match encoding {
                ChangeEncoding::Json => {
                    // The worker encoded the row as it read it: valid only for the row unaltered.
                    let encoded = encoded.filter(|_| masked.is_none() && rekeyed.is_none());
                    let (key, payload) = encode::raw_change_with(change, source, encoded)?;
                    out.push(Record {
                        topic: topic.clone(),
                        key,
                        payload,
                        headers: headers(change.op),
                        tombstone: false,
                    });
                }
                ChangeEncoding::Debezium => {
                    // Usually one record; a delete adds a tombstone, a key change becomes delete (+ tombstone) and
                    // create, as Debezium.
                    self.debezium.encode(change, source, &mut |piece| match piece {
                        encode::debezium::Piece::Event { key, value, op, key_header } => {
                            let mut headers = headers(op);
                            if let Some((name, k)) = key_header {
                                headers.push((name, HeaderValue::Owned(k)));
                            }
                            out.push(Record { topic: topic.clone(), key, payload: value, headers, tombstone: false });
                        }
                        encode::debezium::Piece::Transaction { key, value } => {
                            out.push(tx_record(&self.tx_topic, key, value));
                        }
                        encode::debezium::Piece::Tombstone { key } => {
                            let mut headers = headers(Op::Delete);
                            headers.remove(0); // no content, no content type
                            out.push(Record::tombstone(topic.clone(), key, headers));
                        }
                    })?;
                }
            }
        }
        let rules_start = out.len();
        self.rules.apply(change, source, out)?;
        // DLQ records carry the raw change event of the change: masked as raw events are.
        if let Some(masked) = &masked {
            for record in out[rules_start..].iter_mut().filter(|r| r.header("dlq-rule").is_some()) {
                // `ficus dlq replay` must not build events from masked values.
                record.headers.push(("dlq-masked", HeaderValue::Static("true")));
                (record.key, record.payload) = match encode::raw_change(masked, source) {
                    Ok(kp) => kp,
                    // Never the unmasked event: the reason only, as for a change that does not encode at all.
                    Err(e) => (
                        None,
                        serde_json::json!({"error": format!("raw change not encodable: {e}")}).to_string().into_bytes(),
                    ),
                };
            }
        }
        if out.len() == start {
            route.dropped_counter.increment(1);
            route.dropped += 1;
        }
        self.stamp(&change.tx, &mut out[start..]);
        Ok(())
    }
}

/// A record of the transaction metadata topic.
fn tx_record(topic: &Arc<str>, key: Vec<u8>, value: Vec<u8>) -> Record {
    Record {
        topic: topic.clone(),
        key: Some(key),
        payload: value,
        headers: vec![
            ("content-type", HeaderValue::Static("application/json")),
            ("source-table", HeaderValue::Static("transaction")),
        ],
        tombstone: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_nothing_publishes_are_counted_per_table() {
        use crate::change::{Column, Datum, Table, TxMeta};
        let config = Config::from_yaml(
            "source: {url: 'postgres://x@h/db', tables: [public.a, public.b]}\nkafka: {brokers: 'k:9092'}\n\
             changes: {tables: [public.a]}\nevents:\n  - {name: BInserted, table: public.b, on: insert, key: string(new.id), topic: t}\n",
            &|_| None,
        )
        .unwrap();
        let rules = RuleSet::compile(&config).unwrap();
        let source = SourceInfo { system: "1".into(), database: "db".into(), slot: "s".into() };
        let mut router = Router::new(&config, source, rules);
        let table = |oid, name: &str| {
            Arc::new(Table {
                oid,
                schema: "public".into(),
                name: name.into(),
                columns: vec![Column { name: "id".into(), type_oid: 23, type_modifier: -1, is_key: true }],
                replica_identity: b'd',
                json: Default::default(),
            })
        };
        let tx = Arc::new(TxMeta { xid: 1, commit_lsn: crate::lsn::Lsn(9), commit_time_us: 0 });
        let change = |t: &Arc<Table>, op| Change {
            op,
            table: t.clone(),
            before: None,
            before_is_key_only: false,
            after: Some(vec![Datum::Text(bytes::Bytes::from_static(b"1"))]),
            lsn: crate::lsn::Lsn(1),
            position: 0,
            tx: tx.clone(),
        };
        let (a, b) = (table(1, "a"), table(2, "b"));
        let mut out = Vec::new();
        router.route(&change(&a, Op::Update), &mut out).unwrap(); // raw change
        router.route(&change(&b, Op::Insert), &mut out).unwrap(); // event
        router.route(&change(&b, Op::Update), &mut out).unwrap(); // nothing: dropped
        router.route(&change(&b, Op::Update), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(router.dropped(), vec![Dropped { table: Arc::from("public.b"), count: 2 }]);
        assert_eq!(router.rules().stats(0).events, 1);
    }

    #[test]
    fn topic_names_are_sanitized() {
        assert_eq!(change_topic("ficus", "legacy", "Order Lines"), "ficus.legacy.Order_Lines");
        assert_eq!(change_topic("ficus", "public", "orders"), "ficus.public.orders");
        assert_eq!(change_topic("f", "Sch\"ema", "tä"), "f.Sch_ema.t_");
    }
}
