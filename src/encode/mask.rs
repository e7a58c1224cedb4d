//! Masking of raw change events (`changes.masking`, [`crate::config::masking`]): the change as raw events publish
//! it, with excluded columns removed and hashed, redacted or truncated values replaced by text. The router applies
//! it before encoding a raw change event (JSON or Debezium) and to the raw change inside DLQ records, so streamed
//! changes, snapshot rows, DLQ records and dry-run output are masked alike. Tables without masking cost one branch.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::change::{Change, Column, Datum, Row, Table};
use crate::config::{MaskAction, MaskingConfig, TableName};
use crate::encode::{write_datum, EncodeError};
use crate::postgres::value::{oid, ValueError};

/// Per relation: the table as published and what happens to each source column.
struct TableMask {
    /// The source table the plan was made for.
    source: Arc<Table>,
    /// `None`: the table has no masked column.
    masked: Option<(Arc<Table>, Vec<Option<MaskAction>>)>,
}

/// The masking of one router.
pub struct Masking {
    config: MaskingConfig,
    secret: Vec<u8>,
    cache: crate::change::OidMap<TableMask>,
}

impl Masking {
    pub fn new(config: &MaskingConfig) -> Masking {
        Masking {
            secret: config.secret.as_ref().map(|s| s.0.as_bytes().to_vec()).unwrap_or_default(),
            config: config.clone(),
            cache: crate::change::OidMap::default(),
        }
    }

    /// `change` as raw change events publish it, or `None` when its table has no masked column (publish it as
    /// it is). A key column may only be hashed (the key stays unique); any other action on one is an error.
    pub fn apply(&mut self, change: &Change) -> Result<Option<Change>, EncodeError> {
        if self.config.tables.is_empty() {
            return Ok(None);
        }
        let fresh = match self.cache.get(&change.table.oid) {
            Some(m) => !Arc::ptr_eq(&m.source, &change.table) && *m.source != *change.table,
            None => true,
        };
        if fresh {
            let plan = self.plan(&change.table)?;
            self.cache.insert(change.table.oid, plan);
        }
        let Some((table, actions)) = &self.cache.get(&change.table.oid).expect("inserted above").masked else {
            return Ok(None);
        };
        let source = &change.table;
        let mask_row = |row: &Row| -> Result<Row, EncodeError> {
            let mut out = Vec::with_capacity(table.columns.len());
            let mut scratch = Vec::new();
            for (i, datum) in row.iter().enumerate() {
                match actions.get(i).copied().flatten() {
                    None => out.push(datum.clone()),
                    Some(MaskAction::Exclude) => {}
                    Some(action) => out.push(match datum {
                        Datum::Null | Datum::UnchangedToast => datum.clone(),
                        d => {
                            scratch.clear();
                            write_datum(&mut scratch, source, i, d)?;
                            let text = value_text(&scratch);
                            Datum::Text(Bytes::from(mask_text(action, &self.secret, &text)))
                        }
                    }),
                }
            }
            Ok(out)
        };
        Ok(Some(Change {
            op: change.op,
            table: table.clone(),
            before: change.before.as_ref().map(mask_row).transpose()?,
            before_is_key_only: change.before_is_key_only,
            after: change.after.as_ref().map(mask_row).transpose()?,
            lsn: change.lsn,
            position: change.position,
            tx: change.tx.clone(),
        }))
    }

    fn plan(&self, table: &Arc<Table>) -> Result<TableMask, EncodeError> {
        let name = TableName { schema: table.schema.clone(), name: table.name.clone() };
        if !self.config.covers(&name) {
            return Ok(TableMask { source: table.clone(), masked: None });
        }
        let actions: Vec<Option<MaskAction>> =
            table.columns.iter().map(|c| self.config.action(&name, &c.name)).collect();
        if let Some(configured) = self.config.tables.iter().find(|(t, _)| TableName::parse(t).as_ref() == Ok(&name)) {
            for column in configured.1.keys() {
                if !table.columns.iter().any(|c| &c.name == column) {
                    tracing::warn!(table = %name, column, "changes.masking names a column the table does not have");
                }
            }
        }
        let mut columns = Vec::with_capacity(table.columns.len());
        for (col, action) in table.columns.iter().zip(&actions) {
            match action {
                None => columns.push(col.clone()),
                Some(MaskAction::Exclude | MaskAction::Redact | MaskAction::Truncate(_)) if col.is_key => {
                    return Err(EncodeError {
                        table: table.qualified_name(),
                        column: col.name.clone(),
                        source: ValueError::Invalid {
                            type_oid: col.type_oid,
                            reason: "changes.masking: a key column may only be hashed (exclude, redact and truncate \
                                     would break the event key)",
                        },
                    });
                }
                Some(MaskAction::Exclude) => {}
                // A masked value is text whatever the column's type.
                Some(_) => columns.push(Column { type_oid: oid::TEXT, type_modifier: -1, ..col.clone() }),
            }
        }
        let masked = Table { columns, ..(**table).clone() };
        Ok(TableMask { source: table.clone(), masked: Some((Arc::new(masked), actions)) })
    }
}

/// The text of a value as raw events write it: a JSON string's characters, else the JSON text (`42`, `[1,2]`).
fn value_text(json: &[u8]) -> String {
    if json.first() == Some(&b'"') {
        if let Ok(s) = serde_json::from_slice::<String>(json) {
            return s;
        }
    }
    String::from_utf8_lossy(json).into_owned()
}

/// The masked text of `text` (not excluded).
fn mask_text(action: MaskAction, secret: &[u8], text: &str) -> Vec<u8> {
    match action {
        MaskAction::Hash => hex(&hmac_sha256(secret, text.as_bytes())).into_bytes(),
        MaskAction::Redact => b"***".to_vec(),
        MaskAction::Truncate(n) => text.chars().take(n).collect::<String>().into_bytes(),
        MaskAction::Exclude => Vec::new(),
    }
}

/// Lowercase hex of `bytes` (the form of `hash` and of the rules' `sha256`/`hmac`).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Op, TxMeta};
    use crate::config::masking::Secret;
    use crate::encode::{raw_change, SourceInfo};
    use crate::lsn::Lsn;

    /// RFC 4231 test cases 1 and 6 (a key longer than the block).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn col(name: &str, type_oid: u32, is_key: bool) -> Column {
        Column { name: name.into(), type_oid, type_modifier: -1, is_key }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn config(yaml: &str) -> MaskingConfig {
        let mut c: MaskingConfig = serde_json::from_value(serde_saphyr::from_str(yaml).unwrap()).unwrap();
        c.secret = Some(Secret("k".into()));
        c
    }

    #[test]
    fn masked_columns_never_reach_the_raw_event() {
        let table = Arc::new(Table {
            oid: 7,
            schema: "public".into(),
            name: "customers".into(),
            columns: vec![
                col("id", oid::INT4, true),
                col("email", oid::TEXT, false),
                col("name", oid::TEXT, false),
                col("ssn", oid::TEXT, false),
                col("notes", oid::TEXT, false),
                col("age", oid::INT4, false),
            ],
            replica_identity: b'f',
            json: Default::default(),
        });
        let row =
            |email: &str| vec![text("1"), text(email), text("Anne"), text("123-45-6789"), text("Jährlich"), text("42")];
        let change = Change {
            op: Op::Update,
            table,
            before: Some(row("old@example.com")),
            before_is_key_only: false,
            after: Some(row("new@example.com")),
            lsn: Lsn(1),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1, commit_lsn: Lsn(2), commit_time_us: 0 }),
        };
        let mut m = Masking::new(&config(
            "tables: {public.customers: {email: hash, name: redact, ssn: exclude, notes: {truncate: 2}, age: hash}}",
        ));
        let masked = m.apply(&change).unwrap().expect("the table is masked");
        let source = SourceInfo { system: "1".into(), database: "d".into(), slot: "s".into() };
        let (key, value) = raw_change(&masked, &source).unwrap();
        assert_eq!(key.unwrap(), br#"{"id":1}"#);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let hex = |s: &str| hmac_sha256(b"k", s.as_bytes()).iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            v["after"],
            serde_json::json!({"id": 1, "email": hex("new@example.com"), "name": "***", "notes": "Jä", "age": hex("42")})
        );
        assert_eq!(v["before"]["email"], hex("old@example.com"));
        let text = String::from_utf8_lossy(&value);
        for secret in ["example.com", "Anne", "123-45", "hrlich"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        // Another table: untouched. A key column only hashed.
        let mut other = change.clone();
        other.table = Arc::new(Table { oid: 8, name: "orders".into(), ..(*change.table).clone() });
        assert!(m.apply(&other).unwrap().is_none());
        let mut bad = Masking::new(&config("tables: {public.customers: {id: redact}}"));
        let err = bad.apply(&change).unwrap_err().to_string();
        assert!(err.contains("customers") && err.contains("id") && err.contains("key column"), "{err}");
        let mut hashed_key = Masking::new(&config("tables: {public.customers: {id: hash}}"));
        let (key, _) = raw_change(&hashed_key.apply(&change).unwrap().unwrap(), &source).unwrap();
        assert_eq!(key.unwrap(), format!("{{\"id\":\"{}\"}}", hex("1")).into_bytes());
    }

    /// The Debezium encoding of a masked change: masked columns are strings in the payload and in the Connect
    /// schema (`schemas: true`), excluded ones absent from both.
    #[test]
    fn debezium_schemas_describe_masked_columns_as_strings() {
        let table = Arc::new(Table {
            oid: 9,
            schema: "public".into(),
            name: "p".into(),
            columns: vec![col("id", oid::INT4, true), col("age", oid::INT4, false), col("ssn", oid::TEXT, false)],
            replica_identity: b'd',
            json: Default::default(),
        });
        let change = Change {
            op: Op::Insert,
            table,
            before: None,
            before_is_key_only: false,
            after: Some(vec![text("1"), text("42"), text("111-22-3333")]),
            lsn: Lsn(1),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1, commit_lsn: Lsn(2), commit_time_us: 0 }),
        };
        let masked =
            Masking::new(&config("tables: {public.p: {age: hash, ssn: exclude}}")).apply(&change).unwrap().unwrap();
        let source = SourceInfo { system: "1".into(), database: "d".into(), slot: "s".into() };
        let mut d = crate::encode::debezium::Debezium::new("f", true, true, true);
        let mut pieces = Vec::new();
        d.encode(&masked, &source, &mut |p| pieces.push(p)).unwrap();
        let crate::encode::debezium::Piece::Event { value, .. } = &pieces[0] else { panic!("{pieces:?}") };
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        let fields = &v["schema"]["fields"][1]["fields"];
        assert_eq!(fields.as_array().unwrap().len(), 2, "{fields}");
        assert_eq!(fields[1], serde_json::json!({"type": "string", "optional": true, "field": "age"}));
        assert_eq!(v["payload"]["after"]["age"].as_str().unwrap().len(), 64);
        assert!(!String::from_utf8_lossy(value).contains("111-22"));
    }
}
