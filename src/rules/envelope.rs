//! The canonical business-event envelope (docs/events.md) and its deterministic ids.
//!
//! **Guarantees:** `eventId` is a UUIDv5 of (system id, database, commit LSN, position of the change in its
//! transaction, rule name, rule version) and `correlationId` a UUIDv5 of (system id, commit LSN): replaying the same
//! WAL after a restart produces the same ids, so consumers can deduplicate; and no two events share an id — the
//! version is part of it because v1 and v2 of one event type run side by side on the same change, and CloudEvents
//! requires (`source`, `id`) to be unique. The exact text is in docs/events.md (tested against an independent
//! UUIDv5 there and in tests/pipeline/contract.rs). The JSON is written field by field in a fixed order.

use uuid::Uuid;

use crate::change::{Change, TxMeta};
use crate::encode::SourceInfo;
use crate::lsn::Lsn;
use crate::postgres::value::{write_json_string, write_unix_micros};

/// Namespace of every ficus UUIDv5 (documented in docs/events.md so consumers can recompute ids).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_3b8e_2d4a_4c7e_9a10_3e5b_7d9f_1a2c);

/// `eventId` of the event version `version` of `rule` derives from `change`: the UUIDv5 of
/// `<system>/<database>/<commitLsn>/<position>/<rule name>/<version>`.
pub fn event_id(source: &SourceInfo, o: &Origin<'_>, rule: &str, version: u32) -> Uuid {
    let name = format!("{}/{}/{}/{}/{}/{}", source.system, source.database, o.tx.commit_lsn, o.position, rule, version);
    uuid_v5(name.as_bytes())
}

/// RFC 9562's UUIDv5 of `name` in [`NAMESPACE`]: SHA-1 of the namespace's bytes and the name, its first 16 bytes with
/// the version and variant bits set. Hashed by the `sha1` crate, which uses the CPU's SHA extensions where present
/// (the same value as `Uuid::new_v5`, which the tests compare against, at a fraction of the cost per event).
pub fn uuid_v5(name: &[u8]) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(NAMESPACE.as_bytes());
    hasher.update(name);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// [`event_id`] as text, formatting the name in `buf` (reused across events: no allocation but the result).
pub fn event_id_into(buf: &mut Vec<u8>, source: &SourceInfo, o: &Origin<'_>, rule: &str, version: u32) -> String {
    buf.clear();
    buf.extend_from_slice(source.system.as_bytes());
    buf.push(b'/');
    buf.extend_from_slice(source.database.as_bytes());
    buf.push(b'/');
    o.tx.commit_lsn.write_to(buf);
    buf.push(b'/');
    buf.extend_from_slice(itoa::Buffer::new().format(o.position).as_bytes());
    buf.push(b'/');
    buf.extend_from_slice(rule.as_bytes());
    buf.push(b'/');
    buf.extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
    let mut text = String::with_capacity(36);
    text.push_str(uuid_v5(buf).hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    text
}

/// Default `correlationId`: one per source transaction.
pub fn correlation_id(source: &SourceInfo, tx: &TxMeta) -> Uuid {
    let name = format!("{}/{}", source.system, tx.commit_lsn);
    uuid_v5(name.as_bytes())
}

/// CloudEvents `source` of events derived from `o`: `/postgres/<system>/<database>/<schema>.<table>` (or
/// `…/message/<prefix>`), a URI reference (characters outside RFC 3986's unreserved set percent-encoded).
pub fn cloudevents_source(o: &Origin<'_>, source: &SourceInfo) -> String {
    fn escaped(out: &mut String, part: &str) {
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::from("/postgres/");
    escaped(&mut out, &source.system);
    out.push('/');
    escaped(&mut out, &source.database);
    out.push('/');
    match o.what {
        What::Table { schema, name } => {
            escaped(&mut out, schema);
            out.push('.');
            escaped(&mut out, name);
        }
        What::Message { prefix } => {
            out.push_str("message/");
            escaped(&mut out, prefix);
        }
    }
    out
}

/// The commit time as CloudEvents `time` / `occurredAt` (RFC 3339, UTC, microseconds).
pub fn occurred_at(o: &Origin<'_>) -> String {
    let mut out = Vec::with_capacity(27);
    write_unix_micros(&mut out, o.tx.commit_time_us);
    String::from_utf8(out).unwrap_or_default()
}

/// Commit times RFC 3339 can write (years 0000–9999, as microseconds since the Unix epoch): a CloudEvents `time`
/// outside is not RFC 3339 (the value mapping would write an expanded year).
const RFC3339_MICROS: std::ops::RangeInclusive<i64> = -62_167_219_200_000_000..=253_402_300_799_999_999;

/// Why `e` would not be a valid CloudEvent (CloudEvents 1.0, "Context Attributes"), or `None`: `id`, `source`,
/// `specversion` and `type` must be non-empty strings, `subject` (the key, always sent) non-empty when present,
/// `time` RFC 3339. `source` and `specversion` are ficus's own and never empty; the others come from rules and
/// rows, so an event breaking them goes to the DLQ instead of out to consumers whose SDKs would reject it.
pub fn cloudevent_problem(e: &Envelope<'_>, o: &Origin<'_>) -> Option<String> {
    if e.event_id.is_empty() {
        Some("the event id is empty: a CloudEvent's id must be a non-empty string".into())
    } else if e.event_type.is_empty() {
        Some("the event type is empty: a CloudEvent's type must be a non-empty string".into())
    } else if e.key.is_empty() {
        Some("the key is empty: a CloudEvent's subject (the key) must not be empty".into())
    } else if !RFC3339_MICROS.contains(&o.tx.commit_time_us) {
        Some(format!(
            "the commit time {} is outside the years RFC 3339 (a CloudEvent's time) can write",
            occurred_at(o)
        ))
    } else {
        None
    }
}

/// Writes a CloudEvents 1.0 structured-mode event (JSON format) up to `"data":`; the caller appends the data and
/// the closing `}`. Extensions: `correlationid`, `eventversion`, `traceparent` (distributed tracing).
pub fn write_cloudevent_head(
    out: &mut Vec<u8>,
    e: &Envelope<'_>,
    o: &Origin<'_>,
    source: &SourceInfo,
    traceparent: &str,
) {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    write_json_string(out, e.event_id);
    out.extend_from_slice(b",\"source\":");
    write_json_string(out, &cloudevents_source(o, source));
    out.extend_from_slice(b",\"type\":");
    write_json_string(out, e.event_type);
    out.extend_from_slice(b",\"time\":\"");
    write_unix_micros(out, o.tx.commit_time_us);
    out.extend_from_slice(b"\",\"subject\":");
    write_json_string(out, e.key);
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"correlationid\":");
    write_json_string(out, e.correlation_id);
    out.extend_from_slice(b",\"eventversion\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.version).as_bytes());
    out.extend_from_slice(b",\"traceparent\":");
    write_json_string(out, traceparent);
    out.extend_from_slice(b",\"data\":");
}

/// `s` escaped as inside a JSON string, without the quotes.
fn write_json_inner(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    write_json_string(out, s);
    // Drop the quotes write_json_string added (table names are short: the shift is cheap).
    out.pop();
    out.remove(start);
}

/// Where an event comes from: a row change or a logical decoding message, with its place in the WAL.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub what: What<'a>,
    /// `op` of the envelope's `source`: the change's operation, or `message`.
    pub op: &'a str,
    /// LSN of the change or message.
    pub lsn: Lsn,
    /// 0-based position in the transaction (part of `eventId`).
    pub position: u32,
    pub tx: &'a TxMeta,
}

/// The table of a row change, or the prefix of a logical decoding message.
#[derive(Debug, Clone, Copy)]
pub enum What<'a> {
    Table { schema: &'a str, name: &'a str },
    Message { prefix: &'a str },
}

impl<'a> Origin<'a> {
    /// The origin of events derived from a row change.
    pub fn of(change: &'a Change) -> Origin<'a> {
        Origin {
            what: What::Table { schema: &change.table.schema, name: &change.table.name },
            op: change.op.as_str(),
            lsn: change.lsn,
            position: change.position,
            tx: &change.tx,
        }
    }
}

/// What the envelope needs besides the origin.
pub struct Envelope<'a> {
    pub event_type: &'a str,
    pub version: u32,
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub key: &'a str,
}

/// Writes the envelope JSON of `e` for `change` up to `"data":`; the caller appends the data and the closing `}`.
pub fn write_head(out: &mut Vec<u8>, e: &Envelope<'_>, o: &Origin<'_>, source: &SourceInfo) {
    out.reserve(256);
    out.extend_from_slice(b"{\"eventId\":\"");
    out.extend_from_slice(e.event_id.as_bytes());
    out.extend_from_slice(b"\",\"eventType\":");
    write_json_string(out, e.event_type);
    out.extend_from_slice(b",\"eventVersion\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.version).as_bytes());
    out.extend_from_slice(b",\"occurredAt\":\"");
    write_unix_micros(out, o.tx.commit_time_us);
    out.extend_from_slice(b"\",\"correlationId\":");
    write_json_string(out, e.correlation_id);
    out.extend_from_slice(b",\"causationId\":null,\"source\":{\"system\":");
    write_json_string(out, &source.system);
    out.extend_from_slice(b",\"database\":");
    write_json_string(out, &source.database);
    out.extend_from_slice(b",\"table\":");
    match o.what {
        What::Table { schema, name } => {
            out.push(b'"');
            write_json_inner(out, schema);
            out.push(b'.');
            write_json_inner(out, name);
            out.push(b'"');
        }
        What::Message { .. } => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(o.op.as_bytes());
    out.extend_from_slice(b"\",\"lsn\":\"");
    o.lsn.write_to(out);
    out.extend_from_slice(b"\",\"txId\":");
    out.extend_from_slice(itoa::Buffer::new().format(o.tx.xid).as_bytes());
    if let What::Message { prefix } = o.what {
        out.extend_from_slice(b",\"prefix\":");
        write_json_string(out, prefix);
    }
    out.extend_from_slice(b"},\"key\":");
    write_json_string(out, e.key);
    out.extend_from_slice(b",\"data\":");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::change::{Op, Table, TxMeta};
    use crate::lsn::Lsn;

    fn change(position: u32, commit_lsn: u64) -> Change {
        Change {
            op: Op::Update,
            table: Arc::new(Table {
                oid: 1,
                schema: "public".into(),
                name: "orders".into(),
                columns: vec![],
                replica_identity: b'f',
                json: Default::default(),
            }),
            before: None,
            before_is_key_only: false,
            after: None,
            lsn: Lsn(commit_lsn - 8),
            position,
            tx: Arc::new(TxMeta { xid: 7, commit_lsn: Lsn(commit_lsn), commit_time_us: 1_795_334_400_123_456 }),
        }
    }

    fn source() -> SourceInfo {
        SourceInfo { system: "7301".into(), database: "shop".into(), slot: "ficus".into() }
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let (a, b, a2, c) = (change(0, 0x100), change(1, 0x100), change(0, 0x100), change(0, 0x200));
        let (a, b, a2, c) = (Origin::of(&a), Origin::of(&b), Origin::of(&a2), Origin::of(&c));
        assert_eq!(event_id(&source(), &a, "OrderShipped", 1), event_id(&source(), &a2, "OrderShipped", 1));
        assert_ne!(event_id(&source(), &a, "OrderShipped", 1), event_id(&source(), &b, "OrderShipped", 1));
        assert_ne!(event_id(&source(), &a, "OrderShipped", 1), event_id(&source(), &a, "OrderPaid", 1));
        // Two versions of one event type from the same change: distinct ids (issue 17).
        assert_ne!(event_id(&source(), &a, "OrderShipped", 1), event_id(&source(), &a, "OrderShipped", 2));
        assert_eq!(correlation_id(&source(), a.tx), correlation_id(&source(), b.tx));
        assert_ne!(correlation_id(&source(), a.tx), correlation_id(&source(), c.tx));
        assert_eq!(event_id(&source(), &a, "X", 1).get_version_num(), 5);
        let mut buf = Vec::new();
        assert_eq!(
            event_id_into(&mut buf, &source(), &a, "OrderShipped", 7),
            event_id(&source(), &a, "OrderShipped", 7).to_string()
        );
    }

    /// The formula of docs/events.md, against ids computed independently with Python's `uuid.uuid5(NAMESPACE,
    /// "7301/shop/0/16B3800/3/OrderShipped/2")` and `uuid.uuid5(NAMESPACE, "7301/0/16B3800")`.
    #[test]
    fn ids_follow_the_documented_formula() {
        let c = change(3, 0x16B3800);
        let o = Origin::of(&c);
        assert_eq!(event_id(&source(), &o, "OrderShipped", 2).to_string(), "742eb3b1-dae9-516b-98a0-2c33f0e335e0");
        assert_eq!(
            event_id_into(&mut Vec::new(), &source(), &o, "OrderShipped", 2),
            "742eb3b1-dae9-516b-98a0-2c33f0e335e0"
        );
        assert_eq!(correlation_id(&source(), o.tx).to_string(), "27dbaa92-1a78-582e-9da8-89114699e32e");
        assert_eq!(NAMESPACE.to_string(), "6f1c3b8e-2d4a-4c7e-9a10-3e5b7d9f1a2c");
    }

    /// The SHA-1 behind the ids against uuid's own UUIDv5, for names of every length across SHA-1's 64-byte blocks
    /// and its padding boundary (55/56 bytes).
    #[test]
    fn uuid_v5_is_uuids_new_v5() {
        for len in 0..300 {
            let name: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            assert_eq!(uuid_v5(&name), Uuid::new_v5(&NAMESPACE, &name), "name of {len} bytes");
        }
    }

    /// The worked example of docs/events.md ("The `eventId` formula"), read from the document itself, so the
    /// documentation and the code cannot drift apart: its name's parts, fed to ficus as a change, give its id.
    #[test]
    fn the_documented_example_id_is_what_ficus_computes() {
        let doc = include_str!("../../docs/events.md");
        let section = doc.split("**The `eventId` formula**").nth(1).expect("docs/events.md explains the formula");
        let (before, after) = section.split_once("` → `").expect("the formula's example `name` → `id`");
        let name = before.rsplit('`').next().unwrap();
        let id = after.split('`').next().unwrap();
        let parts: Vec<&str> = name.split('/').collect();
        let [system, database, hi, lo, position, rule, version] = parts[..] else { panic!("example name {name:?}") };
        let lsn: Lsn = format!("{hi}/{lo}").parse().unwrap();
        let src = SourceInfo { system: system.into(), database: database.into(), slot: "any".into() };
        let c = change(position.parse().unwrap(), lsn.0);
        let o = Origin::of(&c);
        let version = version.parse().unwrap();
        assert_eq!(event_id(&src, &o, rule, version).to_string(), id, "docs/events.md's example {name:?}");
        assert_eq!(event_id_into(&mut Vec::new(), &src, &o, rule, version), id);
        // And the example is the documented namespace's UUIDv5 of the documented name.
        let namespace = section.split("uuid5(").nth(1).and_then(|s| s.split(',').next()).unwrap();
        assert_eq!(Uuid::new_v5(&namespace.parse().unwrap(), name.as_bytes()).to_string(), id);
    }

    #[test]
    fn invalid_cloudevents_are_named() {
        let c = change(0, 0x100);
        let o = Origin::of(&c);
        let e = |event_type, event_id, key| Envelope { event_type, version: 1, event_id, correlation_id: "c", key };
        assert_eq!(cloudevent_problem(&e("T", "i", "k"), &o), None);
        assert!(cloudevent_problem(&e("T", "i", ""), &o).unwrap().contains("subject"));
        assert!(cloudevent_problem(&e("", "i", "k"), &o).unwrap().contains("type"));
        assert!(cloudevent_problem(&e("T", "", "k"), &o).unwrap().contains("id"));
        let mut far = change(0, 0x100);
        far.tx = Arc::new(TxMeta { xid: 7, commit_lsn: Lsn(0x100), commit_time_us: 253_402_300_800_000_000 });
        assert!(cloudevent_problem(&e("T", "i", "k"), &Origin::of(&far))
            .unwrap()
            .contains("commit time +10000-01-01T00:00:00"));
    }

    #[test]
    fn envelope_is_valid_json_in_the_documented_shape() {
        let c = change(3, 0x16B3800);
        let mut out = Vec::new();
        let e = Envelope { event_type: "OrderShipped", version: 2, event_id: "e", correlation_id: "c", key: "42" };
        write_head(&mut out, &e, &Origin::of(&c), &source());
        out.extend_from_slice(b"{\"orderId\":42}}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "eventId": "e", "eventType": "OrderShipped", "eventVersion": 2,
                "occurredAt": "2026-11-22T08:00:00.123456Z", "correlationId": "c", "causationId": null,
                "source": {"system": "7301", "database": "shop", "table": "public.orders", "op": "update",
                           "lsn": "0/16B37F8", "txId": 7},
                "key": "42", "data": {"orderId": 42}
            })
        );
    }
}
