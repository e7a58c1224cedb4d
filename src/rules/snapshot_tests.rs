//! Snapshot tests (insta) of whole records as they go to Kafka: the canonical envelope, both CloudEvents modes and
//! a Debezium change event, topic, key, headers and value — so any change to what consumers read shows up as a
//! reviewed diff of `src/rules/snapshots/*.snap` (`cargo insta review`, or `INSTA_UPDATE=always` and `git diff`),
//! not only where a field-by-field assertion happens to look. The inputs are fixed (ids, LSNs, times), so nothing
//! needs redacting but the crate version.

use super::tests::{row, source, update, BASE};
use super::*;
use crate::encode::debezium::{Debezium, Piece};

/// A record as text: topic, key, headers in order, then the value as indented JSON.
fn render(record: &Record) -> String {
    let mut out = format!(
        "topic: {}\nkey: {}\n",
        record.topic,
        String::from_utf8_lossy(record.key.as_deref().unwrap_or(b"(null)"))
    );
    for (name, value) in &record.headers {
        out.push_str(&format!("header {name}: {}\n", value.as_str()));
    }
    let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    out.push_str(&serde_json::to_string_pretty(&value).unwrap());
    out
}

#[test]
fn business_event_records() {
    let events = r#"
  - name: OrderShipped
    version: 2
    table: public.orders
    on: update
    key: string(new.id)
    topic: shop.orders
    headers: {tenant: "'acme'"}
    data: {orderId: new.id, status: new.stat_cd, amount: {cents: new.amt_cents, total: new.total}}
  - {name: OrderShipped, version: 3, encoding: cloudevents-binary, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
  - {name: OrderShipped, version: 4, encoding: cloudevents-structured, table: public.orders, key: string(new.id), topic: t, data: {orderId: new.id}}
"#;
    let cfg = Config::from_yaml(&format!("{BASE}{events}"), &|_| None).unwrap();
    let mut rules = RuleSet::compile(&cfg).unwrap();
    let mut out = Vec::new();
    rules.apply(&update(Some(row("42", "P")), row("42", "S"), 3), &source(), &mut out).unwrap();
    assert_eq!(out.len(), 3);
    insta::assert_snapshot!("canonical", render(&out[0]));
    insta::assert_snapshot!("cloudevents_binary", render(&out[1]));
    insta::assert_snapshot!("cloudevents_structured", render(&out[2]));
}

#[test]
fn debezium_change_event() {
    let mut pieces = Vec::new();
    let change = update(Some(row("42", "P")), row("42", "S"), 3);
    Debezium::new("shop", true, true, false).encode(&change, &source(), &mut |p| pieces.push(p)).unwrap();
    let rendered: Vec<String> = pieces
        .iter()
        .map(|p| match p {
            Piece::Event { key, value, op, key_header } => {
                let value: serde_json::Value = serde_json::from_slice(value).unwrap();
                format!(
                    "event {op:?} key: {} key_header: {key_header:?}\n{}",
                    String::from_utf8_lossy(key.as_deref().unwrap_or(b"(null)")),
                    serde_json::to_string_pretty(&value).unwrap()
                )
            }
            other => format!("{other:?}"),
        })
        .collect();
    // The connector version follows the crate's: not part of what is reviewed here.
    let version = concat!("ficus-", env!("CARGO_PKG_VERSION"));
    insta::assert_snapshot!("debezium_update", rendered.join("\n---\n").replace(version, "ficus-<version>"));
}
