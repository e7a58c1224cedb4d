//! `changes.transaction_metadata` (issue 17.5): consumers rebuild source transactions from raw change events and
//! business events. Every published event carries its transaction id and positions; an END record per transaction
//! on `<topic_prefix>.transactions` gives the count, in all and per topic. Read exactly (every partition to its high
//! watermark, after the transactions were confirmed).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::support::ConsumedMessage;
use crate::{header, values, Ficus, Setup};

/// (transaction id, position, topic position) of one event, wherever its encoding puts them.
fn stamp(m: &ConsumedMessage) -> (String, u64, u64) {
    if let Some(id) = header(m, "ce_txid") {
        let n = |h: &str| header(m, h).unwrap().parse::<u64>().unwrap();
        return (id.to_string(), n("ce_txposition"), n("ce_txtopicposition"));
    }
    let v: Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
    if v.get("specversion").is_some() {
        return (
            v["txid"].as_str().unwrap().into(),
            v["txposition"].as_u64().unwrap(),
            v["txtopicposition"].as_u64().unwrap(),
        );
    }
    let t = &v["transaction"];
    (t["id"].as_str().unwrap().into(), t["position"].as_u64().unwrap(), t["topicPosition"].as_u64().unwrap())
}

/// A transaction over two tables where one change yields three events (its raw change event and two rules in two
/// encodings), one yields a DLQ record (not an event: not counted), then a one-event transaction. Positions are
/// 1..n across the transaction and 1..k per topic; END says n and k.
#[tokio::test(flavor = "multi_thread")]
async fn events_carry_transaction_positions_and_end_records_give_the_counts() {
    let s = Setup::new(
        "tx_positions",
        "CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);",
    )
    .await;
    let p = &s.prefix;
    let (ev, ce, cs, dlq) = (format!("{p}.ev"), format!("{p}.ce"), format!("{p}.cs"), format!("{p}.dlq"));
    let cfg = format!(
        "{}events:\n  \
         - {{name: AChanged, table: public.a, key: string(new.id), topic: {ev}, data: {{v: new.v}}}}\n  \
         - {{name: AChangedBinary, table: public.a, key: string(new.id), topic: {ce}, encoding: cloudevents-binary}}\n  \
         - {{name: BChanged, table: public.b, key: \"new.v == 0 ? '' : string(new.id)\", topic: {cs}, \
         encoding: cloudevents-structured}}\n",
        s.config(&["public.a", "public.b"])
            .replace("kafka:\n", &format!("kafka:\n  dlq_topic: {dlq}\n"))
            .replace("  topic_prefix:", "  transaction_metadata: true\n  topic_prefix:")
    );
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    s.sql(
        "BEGIN;
         INSERT INTO a VALUES (1, 1), (2, 2);
         INSERT INTO b VALUES (1, 0), (2, 5);
         UPDATE a SET v = 3 WHERE id = 1;
         COMMIT;
         INSERT INTO a VALUES (3, 3);",
    )
    .await;
    let topics = [s.topic("public", "a"), s.topic("public", "b"), ev.clone(), ce.clone(), cs.clone()];
    let mut positions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut per_topic: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut cloudevents = Vec::new();
    for topic in &topics {
        let records = s.read_all_confirmed(&f, topic).await;
        if *topic == ce || *topic == cs {
            cloudevents.extend(records.iter().map(crate::contract::record_json));
        }
        for m in records {
            let (id, position, topic_position) = stamp(&m);
            positions.entry(id.clone()).or_default().push(position);
            per_topic.entry((id, topic.clone())).or_default().push(topic_position);
        }
    }
    // The extensions txid, txposition, txtopicposition are valid CloudEvents attributes (the Python SDK parses both
    // modes).
    assert_eq!(crate::contract::oracle("cloudevents", &json!({"records": cloudevents})), (5, vec![]));
    assert_eq!(s.read_all_confirmed(&f, &dlq).await.len(), 1, "the empty subject went to the DLQ:\n{}", f.log());
    let ends = values(&s.read_all_confirmed(&f, &format!("{p}.transactions")).await);
    assert_eq!(ends.len(), 2, "one END per transaction: {ends:?}");
    // 3 changes of a × (raw + 2 rules) + 2 raw changes of b + 1 event of b (the other went to the DLQ).
    let expected = [
        (
            12,
            [
                (s.topic("public", "a"), 3),
                (ev.clone(), 3),
                (ce.clone(), 3),
                (s.topic("public", "b"), 2),
                (cs.clone(), 1),
            ]
            .to_vec(),
        ),
        (3, [(s.topic("public", "a"), 1), (ev.clone(), 1), (ce.clone(), 1)].to_vec()),
    ];
    for (end, (count, by_topic)) in ends.iter().zip(expected) {
        let id = end["id"].as_str().unwrap().to_string();
        assert_eq!(end["status"], "END");
        assert_eq!(end["eventCount"], json!(count), "{end}");
        let mut got = positions[&id].clone();
        got.sort();
        assert_eq!(got, (1..=count).collect::<Vec<u64>>(), "positions of {id}");
        let mut listed: Vec<(String, u64)> = end["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["topic"].as_str().unwrap().to_string(), t["eventCount"].as_u64().unwrap()))
            .collect();
        listed.sort();
        let mut want = by_topic.clone();
        want.sort();
        assert_eq!(listed, want, "{end}");
        for (topic, k) in by_topic {
            let mut got = per_topic[&(id.clone(), topic.clone())].clone();
            got.sort();
            assert_eq!(got, (1..=k).collect::<Vec<u64>>(), "topic positions of {id} on {topic}");
        }
        assert_eq!(end["txId"].as_u64().unwrap().to_string(), id.split(':').next().unwrap());
    }
    assert_eq!(f.terminate().code(), Some(0));
}
