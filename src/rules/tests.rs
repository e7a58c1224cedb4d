//! Unit tests of rule compilation and evaluation, on hand-built changes (the integration tests in
//! `tests/pipeline/rules.rs` run the same rules against PostgreSQL and the broker).

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::change::{Column, Datum, Table, TxMeta};
use crate::check::Status;
use crate::lsn::Lsn;
use crate::postgres::control::Catalog;
use crate::postgres::value::oid;

pub(super) const BASE: &str = r#"
source:
  url: postgres://ficus@127.0.0.1/shop
  tables: [public.orders, public.customers]
kafka:
  brokers: 127.0.0.1:9092
events:
"#;

fn config(events: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!("{BASE}{events}"), &|_| None)
}

fn rules(events: &str) -> RuleSet {
    RuleSet::compile(&config(events).unwrap()).unwrap()
}

/// The error loading the config and compiling its rules gives (what `ficus` prints before exit 2).
fn compile_error(events: &str) -> String {
    config(events).and_then(|c| Rules::compile(&c)).err().expect("config should be refused").to_string()
}

fn orders() -> Arc<Table> {
    let col =
        |name: &str, type_oid: u32, is_key: bool| Column { name: name.into(), type_oid, type_modifier: -1, is_key };
    Arc::new(Table {
        oid: 16384,
        schema: "public".into(),
        name: "orders".into(),
        columns: vec![
            col("id", oid::INT8, true),
            col("stat_cd", oid::TEXT, false),
            col("amt_cents", oid::INT4, false),
            col("total", oid::NUMERIC, false),
            col("shipped_ts", oid::TIMESTAMPTZ, false),
            col("notes", oid::TEXT, false),
        ],
        replica_identity: b'f',
        json: Default::default(),
    })
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

pub(super) fn row(id: &str, status: &str) -> Vec<Datum> {
    vec![text(id), text(status), text("1250"), text("12.50"), Datum::Null, text("fragile")]
}

pub(super) fn update(before: Option<Vec<Datum>>, after: Vec<Datum>, position: u32) -> Change {
    Change {
        op: Op::Update,
        table: orders(),
        before,
        before_is_key_only: false,
        after: Some(after),
        lsn: Lsn(0x16B3748 + u64::from(position)),
        position,
        tx: Arc::new(TxMeta { xid: 1234, commit_lsn: Lsn(0x16B3800), commit_time_us: 1_795_334_400_123_456 }),
    }
}

pub(super) fn source() -> SourceInfo {
    SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() }
}

fn json(record: &Record) -> serde_json::Value {
    serde_json::from_slice(&record.payload).unwrap()
}

const SHIPPED: &str = r#"
  - name: OrderShipped
    table: public.orders
    on: update
    when: old.stat_cd != 'S' && new.stat_cd == 'S'
    key: string(new.id)
    topic: shop.orders
    data:
      orderId: new.id
      amount: {cents: new.amt_cents, total: double(new.total)}
      shippedAt: new.shipped_ts
"#;

#[test]
fn a_transition_rule_fires_only_on_the_transition() {
    let mut rules = rules(SHIPPED);
    let mut out = Vec::new();
    let fired = update(Some(row("42", "P")), row("42", "S"), 0);
    assert_eq!(rules.apply(&fired, &source(), &mut out).unwrap(), 1);
    assert_eq!(out.len(), 1);
    let e = json(&out[0]);
    assert_eq!(e["eventType"], "OrderShipped");
    assert_eq!(e["eventVersion"], 1);
    assert_eq!(e["key"], "42");
    assert_eq!(e["occurredAt"], "2026-11-22T08:00:00.123456Z");
    assert_eq!(e["source"]["table"], "public.orders");
    assert_eq!(
        e["data"],
        serde_json::json!({"orderId": 42, "amount": {"cents": 1250, "total": 12.5}, "shippedAt": null})
    );
    assert_eq!(out[0].key.as_deref(), Some(&b"42"[..]));
    assert_eq!(&*out[0].topic, "shop.orders");
    for h in ["event-type", "event-id", "event-version", "correlation-id", "content-type"] {
        assert!(out[0].header(h).is_some(), "missing header {h}");
    }
    assert_eq!(out[0].header("event-id"), e["eventId"].as_str());
    // Where it came from: what a Kafka error about this record names (table and LSN), as on raw change events.
    assert_eq!(out[0].header("source-table"), Some("public.orders"));
    assert_eq!(out[0].header("source-lsn"), e["source"]["lsn"].as_str());

    // Already shipped, not shipped, and inserts: no event.
    out.clear();
    for c in [update(Some(row("42", "S")), row("42", "S"), 1), update(Some(row("42", "P")), row("42", "X"), 2)] {
        assert_eq!(rules.apply(&c, &source(), &mut out).unwrap(), 1);
    }
    let mut insert = update(None, row("43", "S"), 3);
    insert.op = Op::Insert;
    assert_eq!(rules.apply(&insert, &source(), &mut out).unwrap(), 0, "the rule is for updates only");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(rules.stats(0).events, 1);
}

#[test]
fn one_change_yields_several_events_in_rule_order_with_deterministic_ids() {
    let events = format!(
        "{SHIPPED}{}",
        r#"
  - name: OrderChanged
    version: 2
    table: public.orders
    key: new.id
    topic: shop.audit
    data: {columns: [id, stat_cd]}
    headers: {tenant: "'acme'"}
"#
    );
    let mut rules = rules(&events);
    let change = update(Some(row("42", "P")), row("42", "S"), 5);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    rules.apply(&change, &source(), &mut a).unwrap();
    rules.apply(&change, &source(), &mut b).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(json(&a[0])["eventType"], "OrderShipped");
    let second = json(&a[1]);
    assert_eq!(second["eventType"], "OrderChanged");
    assert_eq!(second["eventVersion"], 2);
    assert_eq!(second["data"], serde_json::json!({"id": 42, "stat_cd": "S"}));
    assert_eq!(a[1].header("tenant"), Some("acme"));
    assert_ne!(json(&a[0])["eventId"], second["eventId"]);
    assert_eq!(json(&a[0])["correlationId"], second["correlationId"], "one transaction, one correlation id");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.payload, y.payload, "replaying a change gives the same bytes");
    }
}

#[test]
fn runtime_failures_go_to_the_dlq_with_the_reason() {
    let mut rules = rules(
        r#"
  - name: OrderNoted
    table: public.orders
    key: new.notes
    topic: shop.orders
    data: {n: new.amt_cents + 'x'}
"#,
    );
    let mut out = Vec::new();
    let mut null_key = row("42", "P");
    null_key[5] = Datum::Null;
    rules.apply(&update(None, null_key, 0), &source(), &mut out).unwrap();
    rules.apply(&update(None, row("42", "P"), 1), &source(), &mut out).unwrap();
    assert_eq!(out.len(), 2);
    for r in &out {
        assert_eq!(&*r.topic, "ficus.dlq");
        assert_eq!(r.header("dlq-rule"), Some("OrderNoted v1"));
        assert_eq!(r.header("source-table"), Some("public.orders"));
        assert!(r.header("source-lsn").unwrap().starts_with("0/16B374"));
        // The payload is the original change, as a raw change event.
        assert_eq!(json(r)["after"]["id"], 42);
    }
    let (first, second) = (out[0].header("dlq-error").unwrap(), out[1].header("dlq-error").unwrap());
    assert!(first.contains("events[0].key") && first.contains("null"), "{first}");
    assert!(second.contains("events[0].data.n"), "{second}");
    assert_eq!(rules.stats(0).dlq, 2);
}

#[test]
fn on_error_fail_stops_and_skip_counts() {
    let rule = |on_error: &str| {
        format!("  - {{name: OrderNoted, table: public.orders, key: new.nope, topic: t, on_error: {on_error}}}\n")
    };
    let mut fail = rules(&rule("fail"));
    let err = fail.apply(&update(None, row("1", "P"), 0), &source(), &mut Vec::new()).unwrap_err();
    assert_eq!(err.rule, "OrderNoted");
    assert!(err.to_string().contains("on_error: fail"), "{err}");

    let mut skip = rules(&rule("skip"));
    let mut out = Vec::new();
    skip.apply(&update(None, row("1", "P"), 0), &source(), &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(skip.stats(0).skipped, 1);
}

#[test]
fn unchanged_toast_is_absent_and_has_tells() {
    let mut rules = rules(
        r#"
  - name: OrderNoted
    table: public.orders
    key: string(new.id)
    topic: t
    data: {notes: "has(new.notes) ? new.notes : 'unknown'"}
"#,
    );
    let mut after = row("7", "P");
    after[5] = Datum::UnchangedToast;
    let mut out = Vec::new();
    rules.apply(&update(None, after, 0), &source(), &mut out).unwrap();
    assert_eq!(json(&out[0])["data"]["notes"], "unknown");
}

#[test]
fn config_errors_name_the_key_and_the_fix() {
    let cases = [
        ("  - {name: A, table: public.orders, key: 'new.id +', topic: t}\n", "events[0].key"),
        ("  - {name: A, table: public.nope, key: new.id, topic: t}\n", "events[0].table"),
        ("  - {name: A, table: public.orders, key: new.id, topic: 'bad topic'}\n", "events[0].topic"),
        ("  - {name: A, table: public.orders, key: new.id, topic: t, version: 0}\n", "events[0].version"),
        ("  - {name: A, table: public.orders, key: new.id, topic: t, headers: {event-id: '1'}}\n", "events[0].headers.event-id"),
        ("  - {name: A, table: public.orders, key: new.id, topic: t, data: {a: {b: 'new.x('}}}\n", "events[0].data.a.b"),
        ("  - {name: A, table: public.orders, key: new.id, topic: t, on: [upsert]}\n", "events[0].on"),
        ("  - {name: A, table: public.orders, key: new.id, topic: t, colour: red}\n", "events[0]"),
        (
            "  - {name: A, table: public.orders, key: new.id, topic: t}\n  - {name: A, table: public.orders, key: new.id, topic: u}\n",
            "events[1].name",
        ),
    ];
    for (events, key) in cases {
        let err = compile_error(events);
        assert!(err.starts_with(key), "expected an error at {key}, got: {err}");
    }
    let err = compile_error("  - {name: A, table: public.orders, key: 'new.id +', topic: t}\n");
    assert!(err.contains("invalid CEL"), "{err}");
    assert!(err.contains("line 1") || err.contains("column") || err.contains('^'), "position missing: {err}");
    let err = compile_error("  - {name: A, table: public.nope, key: new.id, topic: t}\n");
    assert!(err.contains("add it there"), "{err}");
}

#[test]
fn style_is_warned_not_refused_and_reads_are_collected() {
    let r = rules(
        r#"
  - name: order_shipped
    table: public.orders
    when: old.stat_cd != new.stat_cd && has(new.notes) && [new.total].size() > 0
    key: string(new.id)
    topic: t
"#,
    );
    assert_eq!(r.warnings().len(), 1, "{:?}", r.warnings());
    let rule = &r.rules()[0];
    assert!(rule.reads_old);
    assert_eq!(rule.columns_read, vec!["id", "notes", "stat_cd", "total"]);
}

#[test]
fn catalog_preflight_names_unknown_columns_and_missing_old_rows() {
    use crate::postgres::control::{ColumnType, TableInfo};
    let r = rules(&format!(
        "{SHIPPED}  - {{name: OrderTyped, table: public.orders, key: new.id, topic: t, data: {{x: new.stat}}}}\n"
    ));
    let mut catalog = Catalog::default();
    let columns = orders()
        .columns
        .iter()
        .map(|c| ColumnType {
            name: c.name.clone(),
            type_oid: c.type_oid,
            type_name: "x".into(),
            not_null: c.is_key,
            generated: Default::default(),
        })
        .collect();
    let info =
        TableInfo { oid: 1, replica_identity: b'd', key_columns: vec!["id".into()], has_primary_key: true, columns };
    catalog.tables.insert(TableName::parse("public.orders").unwrap(), info);
    let items = crate::check::preflight::rule_lines(&r, &catalog, false);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].status, Status::Warn, "{items:?}");
    assert!(items[0].fix.as_deref().unwrap().contains("REPLICA IDENTITY FULL"));
    assert_eq!(items[1].status, Status::Fail);
    assert!(items[1].detail.contains("stat"), "{items:?}");
}

#[test]
fn documented_recipes_work() {
    let mut r = rules(
        r#"
  - name: OrderRecipes
    table: public.orders
    when: old.stat_cd != new.stat_cd && op == 'update' && table == 'public.orders'
    key: string(new.id) + '-' + string(tx.id)
    topic: t
    data:
      amount: double(new.amt_cents) / 100.0
      status: "{'N': 'new', 'P': 'paid', 'S': 'shipped'}[new.stat_cd.trim()]"
      lower: new.notes.upperAscii().lowerAscii()
      shippedOn: string(new.shipped_ts).substring(0, 10)
      year: new.shipped_ts.getFullYear()
      committed: tx.commitTime
      rounded: math.round(2.5)
      literal: 2
"#,
    );
    let mut after = row("42", "S ");
    after[4] = text("2026-11-22 07:59:59.25+00");
    let mut out = Vec::new();
    r.apply(&update(Some(row("42", "P")), after, 0), &source(), &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header("dlq-error"), None);
    let e = json(&out[0]);
    assert_eq!(e["key"], "42-1234");
    assert_eq!(
        e["data"],
        serde_json::json!({"amount": 12.5, "status": "shipped", "lower": "fragile", "shippedOn": "2026-11-22",
                           "year": 2026, "committed": "2026-11-22T08:00:00.123456Z", "rounded": 3.0, "literal": 2})
    );
}

#[test]
fn cloudevents_binary_and_structured_modes() {
    let events = r#"
event_defaults: {encoding: cloudevents-binary}
events:
  - {name: OrderShipped, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
  - {name: OrderShipped, version: 2, encoding: cloudevents-structured, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
  - {name: OrderShipped, version: 3, encoding: json, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
"#;
    let cfg = Config::from_yaml(&format!("{}{}", BASE.trim_end_matches("events:\n"), events), &|_| None).unwrap();
    let mut r = RuleSet::compile(&cfg).unwrap();
    let mut out = Vec::new();
    r.apply(&update(None, row("42", "S"), 0), &source(), &mut out).unwrap();
    let (bin, structured, canonical) = (&out[0], &out[1], &out[2]);

    assert_eq!(json(bin), serde_json::json!({"orderId": 42}), "binary mode: the value is the data");
    assert_eq!(bin.header("ce_specversion"), Some("1.0"));
    assert_eq!(bin.header("ce_type"), Some("OrderShipped"));
    assert_eq!(bin.header("ce_source"), Some("/postgres/7301/shop/public.orders"));
    assert_eq!(bin.header("ce_time"), Some("2026-11-22T08:00:00.123456Z"));
    assert_eq!(bin.header("ce_subject"), Some("42"));
    assert_eq!(bin.header("ce_eventversion"), Some("1"));
    assert_eq!(bin.header("ce_id"), bin.header("event-id"));
    assert_eq!(bin.header("ce_correlationid"), bin.header("correlation-id"));
    assert_eq!(bin.header("content-type"), Some("application/json"));

    let s = json(structured);
    assert_eq!(structured.header("content-type"), Some("application/cloudevents+json"));
    assert_eq!(s["specversion"], "1.0");
    assert_eq!(s["type"], "OrderShipped");
    assert_eq!(s["eventversion"], 2);
    assert_eq!(s["id"], structured.header("event-id").unwrap());
    assert_eq!(s["datacontenttype"], "application/json");
    assert_eq!(s["data"], serde_json::json!({"orderId": 42}));
    assert!(structured.header("ce_id").is_none());

    assert_eq!(json(canonical)["eventVersion"], 3);
    assert_eq!(canonical.header("content-type"), Some("application/json"));
    // ce_ headers are CloudEvents' own.
    assert!(compile_error("  - {name: A, table: public.orders, key: new.id, topic: t, headers: {ce_id: '1'}}\n")
        .starts_with("events[0].headers.ce_id"));
}

/// `envelope_headers: minimal` leaves out the headers that repeat what the record holds, per encoding; `all` (the
/// default, and a rule's own setting over `event_defaults`) keeps every one.
#[test]
fn minimal_envelope_headers_leave_out_what_the_record_holds() {
    let events = r#"
event_defaults: {envelope_headers: minimal}
events:
  - {name: OrderShipped, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
  - {name: OrderShipped, version: 2, encoding: cloudevents-binary, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
  - {name: OrderShipped, version: 3, encoding: cloudevents-structured, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
  - {name: OrderShipped, version: 4, envelope_headers: all, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
"#;
    let cfg = Config::from_yaml(&format!("{}{}", BASE.trim_end_matches("events:\n"), events), &|_| None).unwrap();
    let mut r = RuleSet::compile(&cfg).unwrap();
    let mut out = Vec::new();
    r.apply(&update(None, row("42", "S"), 0), &source(), &mut out).unwrap();
    let names = |i: usize| out[i].headers.iter().map(|(k, _)| *k).collect::<Vec<_>>();
    assert_eq!(names(0), ["content-type", "event-type", "traceparent", "source-table", "source-lsn"]);
    let binary = names(1);
    assert!(binary.iter().filter(|h| h.starts_with("ce_")).count() == 9, "{binary:?}");
    assert_eq!(
        binary.iter().copied().filter(|h| !h.starts_with("ce_")).collect::<Vec<_>>(),
        ["content-type", "source-table", "source-lsn"]
    );
    assert_eq!(names(2), ["content-type", "event-type", "traceparent", "source-table", "source-lsn"]);
    assert_eq!(
        names(3),
        [
            "content-type",
            "event-type",
            "event-id",
            "event-version",
            "correlation-id",
            "traceparent",
            "source-table",
            "source-lsn"
        ]
    );
    // What minimal leaves out is in the value: the envelope's ids are those `all` sends as headers.
    let (minimal, full) = (json(&out[0]), &out[3]);
    assert!(minimal["eventId"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(minimal["correlationId"].as_str(), full.header("correlation-id"));
    assert_eq!(json(full)["eventId"].as_str(), full.header("event-id"));
    assert!(compile_error(
        "  - {name: A, table: public.orders, key: string(new.id), topic: t, envelope_headers: some}\n"
    )
    .starts_with("events[0].envelope_headers"));
}

fn outbox_table() -> Arc<Table> {
    let col =
        |name: &str, type_oid: u32, is_key: bool| Column { name: name.into(), type_oid, type_modifier: -1, is_key };
    Arc::new(Table {
        oid: 16400,
        schema: "public".into(),
        name: "customers".into(),
        columns: vec![
            col("id", oid::UUID, true),
            col("aggregatetype", oid::TEXT, false),
            col("aggregateid", oid::TEXT, false),
            col("type", oid::TEXT, false),
            col("payload", oid::JSONB, false),
            col("tenant", oid::TEXT, false),
        ],
        replica_identity: b'd',
        json: Default::default(),
    })
}

#[test]
fn outbox_rows_become_events_with_their_own_id_type_key_and_payload() {
    let mut r = rules("  - {name: ShopOutbox, outbox: {table: public.customers, headers: [tenant]}}\n");
    let id = "7f1c3b8e-2d4a-4c7e-9a10-3e5b7d9f1a2c";
    let mut change = update(
        None,
        vec![text(id), text("Order Line"), text("42"), text("OrderCreated"), text(r#"{"total": 12.5}"#), text("acme")],
        0,
    );
    change.op = Op::Insert;
    change.table = outbox_table();
    let mut out = Vec::new();
    r.apply(&change, &source(), &mut out).unwrap();
    assert_eq!(out.len(), 1, "{:?}", out.first().map(|r| r.header("dlq-error")));
    let e = json(&out[0]);
    assert_eq!(&*out[0].topic, "outbox.event.Order_Line", "template over aggregatetype, sanitized");
    assert_eq!(out[0].key.as_deref(), Some(&b"42"[..]));
    assert_eq!(e["eventId"], id);
    assert_eq!(e["eventType"], "OrderCreated");
    assert_eq!(e["data"], serde_json::json!({"total": 12.5}), "payload as JSON, not an escaped string");
    assert_eq!(out[0].header("tenant"), Some("acme"));
    // Deleting outbox rows (cleanup) publishes nothing.
    change.op = Op::Delete;
    out.clear();
    r.apply(&change, &source(), &mut out).unwrap();
    assert!(out.is_empty());
    for (bad, key) in [
        ("  - {name: A, outbox: {table: public.customers}, key: new.id}\n", "events[0].key"),
        ("  - {name: A, outbox: {table: public.customers}, topic: 'a b {aggregatetype}'}\n", "events[0].topic"),
        ("  - {name: A, outbox: {table: public.nope}}\n", "events[0].outbox.table"),
        ("  - {name: A, table: public.orders, message: x, key: '1', topic: t}\n", "events[0].table"),
        ("  - {name: A, message: pay, key: string(new.id), topic: t}\n", "events[0].message"),
        ("  - {name: A, message: pay, key: content.id, on: insert, topic: t}\n", "events[0].on"),
        ("  - {name: A, table: public.orders, topic: t}\n", "events[0].key"),
        // ficus's own logical messages never reach rules: a rule on one of their prefixes would never fire.
        ("  - {name: A, message: ficus.heartbeat, key: prefix, topic: t}\n", "events[0].message"),
        ("  - {name: A, message: ficus.snapshot, key: prefix, topic: t}\n", "events[0].message"),
        ("  - {name: A, message: ficus.backfill, key: prefix, topic: t}\n", "events[0].message"),
    ] {
        let err = compile_error(bad);
        assert!(err.starts_with(key), "{bad}: {err}");
    }
}

#[test]
fn logical_messages_become_events_and_failures_go_to_the_dlq() {
    let mut r = rules(
        r#"
  - name: PaymentCaptured
    message: payments
    when: content.kind == 'capture'
    key: content.paymentId
    topic: shop.payments
    data: {paymentId: content.paymentId, amount: content.amount, at: tx.commitTime}
  - {name: PaymentNoted, message: payments, key: prefix, topic: shop.notes}
"#,
    );
    let tx = Arc::new(TxMeta { xid: 9, commit_lsn: Lsn(0x2000), commit_time_us: 1_795_334_400_000_000 });
    let msg = |content: &str, position| crate::change::LogicalMessage {
        prefix: "payments".into(),
        content: Bytes::copy_from_slice(content.as_bytes()),
        lsn: Lsn(0x1F00),
        position,
        tx: tx.clone(),
    };
    let mut out = Vec::new();
    r.apply_message(&msg(r#"{"kind": "capture", "paymentId": "p-1", "amount": 12}"#, 0), &source(), &mut out).unwrap();
    assert_eq!(out.len(), 2);
    let e = json(&out[0]);
    assert_eq!(e["eventType"], "PaymentCaptured");
    assert_eq!(e["key"], "p-1");
    assert_eq!(e["data"], serde_json::json!({"paymentId": "p-1", "amount": 12, "at": "2026-11-22T08:00:00Z"}));
    assert_eq!(e["source"]["op"], "message");
    assert_eq!(e["source"]["prefix"], "payments");
    assert_eq!(e["source"]["table"], serde_json::Value::Null);
    assert_eq!(json(&out[1])["data"], serde_json::json!({"kind": "capture", "paymentId": "p-1", "amount": 12}));

    // Not JSON: `content` is the text; the first rule fails (a string has no fields) → DLQ with the message.
    out.clear();
    r.apply_message(&msg("plain text", 1), &source(), &mut out).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(&*out[0].topic, "ficus.dlq");
    assert_eq!(json(&out[0])["content"], "plain text");
    assert_eq!(out[0].header("op"), Some("message"));
    assert_eq!(json(&out[1])["data"], "plain text");
    // Other prefixes: no rule.
    let mut other = msg("{}", 2);
    other.prefix = "audit".into();
    assert_eq!(r.apply_message(&other, &source(), &mut Vec::new()).unwrap(), 0);
}

#[test]
fn an_event_larger_than_message_max_bytes_goes_to_the_dlq() {
    let cfg = format!(
        "{}{}",
        BASE.replace(
            "  brokers: 127.0.0.1:9092\n",
            "  brokers: 127.0.0.1:9092\n  properties: {message.max.bytes: 2000}\n"
        ),
        "  - {name: OrderNoted, table: public.orders, key: string(new.id), topic: t, data: {notes: new.notes}}\n"
    );
    let mut r = RuleSet::compile(&Config::from_yaml(&cfg, &|_| None).unwrap()).unwrap();
    let mut big = row("1", "P");
    big[5] = text(&"x".repeat(3000));
    let mut out = Vec::new();
    r.apply(&update(None, big, 0), &source(), &mut out).unwrap();
    assert_eq!(&*out[0].topic, "ficus.dlq");
    assert!(out[0].header("dlq-error").unwrap().contains("message.max.bytes"), "{:?}", out[0].header("dlq-error"));
    out.clear();
    r.apply(&update(None, row("1", "P"), 1), &source(), &mut out).unwrap();
    assert_eq!(&*out[0].topic, "t", "small events pass");
}

#[test]
fn an_unknown_cel_function_is_warned_at_start_and_known_ones_are_not() {
    let r = rules(
        r#"
  - name: OrderNoted
    table: public.orders
    when: nosuch(new.stat_cd) && new.notes.lowerAscii().startsWith('x') && size(new.notes) > int('1')
    key: string(new.id)
    topic: t
    data:
      at: timestamp('2026-01-01T00:00:00Z')
      any: '[1, 2].exists(v, v > 1) && [1].all(v, v > 0) && has(new.notes) && [1].map(v, v + 1).size() == 1'
      trimmed: new.notes.trim()
      biggest: math.greatest(1, 2)
      parts: new.notes.split(',')
      missing: new.notes.nosuchmember()
"#,
    );
    let unknown: Vec<&String> = r.warnings().iter().filter(|w| w.contains(compile::UNKNOWN_FUNCTION)).collect();
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert!(unknown[0].starts_with("events[0].when") && unknown[0].contains("`nosuch`"), "{unknown:?}");
    assert!(unknown[1].contains("`nosuchmember`"), "{unknown:?}");
    let info = crate::postgres::control::TableInfo {
        oid: 1,
        replica_identity: b'f',
        key_columns: vec!["id".into()],
        has_primary_key: true,
        columns: Vec::new(),
    };
    let catalog = Catalog {
        tables: [(TableName { schema: "public".into(), name: "orders".into() }, info)].into_iter().collect(),
    };
    let items = crate::check::preflight::rule_lines(&r, &catalog, false);
    assert!(items.iter().any(|i| i.status == Status::Warn && i.detail.contains("`nosuch`")), "{items:?}");
}

#[test]
fn hmac_keys_come_from_the_environment_and_unknown_names_are_config_errors() {
    let load = |extra: &str, expr: &str| {
        let yaml = format!(
            "{BASE}  - {{name: CustomerSeen, table: public.customers, key: 'string(new.id)', topic: customers, \
             data: {{customer: \"{expr}\"}}}}\n{extra}"
        );
        Config::from_yaml(&yaml, &|name| (name == "CUSTOMER_KEY").then(|| "k3y".to_string()))
            .and_then(|c| Rules::compile(&c))
            .map_err(|e| e.to_string())
    };
    let hex = serde_json::json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
    let keys = "event_defaults: {hmac_keys: {customer: '${CUSTOMER_KEY}'}}";
    // The catalog types both helpers as lowercase hex strings.
    let r = load(keys, "hmac('customer', new.email)").unwrap();
    assert_eq!(schema::data_schema(&r.rules[0], None)["properties"]["customer"], hex);
    let r = load("", "sha256(new.email)").unwrap();
    assert_eq!(schema::data_schema(&r.rules[0], None)["properties"]["customer"], hex);
    let err = load(keys, "hmac('crm', new.email)").err().unwrap();
    assert!(
        err.contains("events[0].data.customer") && err.contains("\"crm\"") && err.contains("event_defaults.hmac_keys"),
        "{err}"
    );
    let err = load("event_defaults: {hmac_keys: {customer: k3y}}", "hmac('customer', new.email)").err().unwrap();
    assert!(err.contains("event_defaults.hmac_keys.customer") && err.contains("${"), "{err}");
    assert!(!err.contains("k3y"), "the literal is not echoed: {err}");
}
