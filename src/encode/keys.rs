//! `changes.key_columns` (Debezium's `message.key.columns`): the Kafka key of a table's raw change events (both
//! encodings) made of chosen columns instead of the replica-identity key. The change as raw events see it gets a
//! table whose key flags mark the chosen columns, so the key, the Debezium key schema and the key-change handling
//! (delete + create when a key column changes) all follow them. Rules keep the source table.
//!
//! The chosen columns must be replica-identity columns, or the table `REPLICA IDENTITY FULL`: otherwise a delete
//! would not carry their values (pgoutput sends only the identity columns) and an update changing them would arrive
//! without the old row, so the old key could not be deleted. `ficus check` and the start-up preflight refuse such a
//! configuration ([`crate::check::key_columns`]); a relation that changes under a running ficus (DDL) is refused
//! here, naming the table and column.

use std::sync::Arc;

use crate::change::{Change, Table};
use crate::config::TableName;

/// The chosen key columns of the configured tables, and the re-keyed table per relation.
pub struct KeyColumns {
    tables: Vec<(TableName, Vec<String>)>,
    /// Per relation: the source table and its re-keyed version (`None`: not configured).
    cache: crate::change::OidMap<(Arc<Table>, Option<Arc<Table>>)>,
}

impl KeyColumns {
    pub fn new(config: &std::collections::BTreeMap<String, Vec<String>>) -> KeyColumns {
        let tables = config.iter().filter_map(|(t, cols)| Some((TableName::parse(t).ok()?, cols.clone()))).collect();
        KeyColumns { tables, cache: crate::change::OidMap::default() }
    }

    /// `change` with its table re-keyed, or `None` when its table keeps its key.
    pub fn apply(&mut self, change: &Change) -> Result<Option<Change>, String> {
        if self.tables.is_empty() {
            return Ok(None);
        }
        let fresh = match self.cache.get(&change.table.oid) {
            Some((source, _)) => !Arc::ptr_eq(source, &change.table) && **source != *change.table,
            None => true,
        };
        if fresh {
            let rekeyed = self.rekey(&change.table)?.map(Arc::new);
            self.cache.insert(change.table.oid, (change.table.clone(), rekeyed));
        }
        let Some(table) = &self.cache.get(&change.table.oid).expect("inserted above").1 else { return Ok(None) };
        Ok(Some(Change { table: table.clone(), ..change.clone() }))
    }

    fn rekey(&self, table: &Table) -> Result<Option<Table>, String> {
        let name = TableName { schema: table.schema.clone(), name: table.name.clone() };
        let Some((_, columns)) = self.tables.iter().find(|(t, _)| *t == name) else { return Ok(None) };
        let refuse =
            |column: &str, reason: &str| format!("changes.key_columns.{}: {column}: {reason}", table.qualified_name());
        for column in columns {
            match table.columns.iter().find(|c| &c.name == column) {
                None => {
                    return Err(refuse(
                        column,
                        "the table does not have this column (renamed or dropped?); fix changes.key_columns",
                    ))
                }
                Some(c) if !c.is_key && table.replica_identity != b'f' => {
                    return Err(refuse(
                        column,
                        "not a replica-identity column and the table is not REPLICA IDENTITY FULL (deletes would \
                         not carry its value); ALTER TABLE … REPLICA IDENTITY FULL",
                    ))
                }
                Some(_) => {}
            }
        }
        let mut rekeyed = table.clone();
        for c in &mut rekeyed.columns {
            c.is_key = columns.contains(&c.name);
        }
        Ok(Some(rekeyed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, Datum, Op, TxMeta};
    use crate::lsn::Lsn;

    fn table(identity: u8) -> Arc<Table> {
        let col = |name: &str, is_key| Column { name: name.into(), type_oid: 23, type_modifier: -1, is_key };
        Arc::new(Table {
            oid: 7,
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![col("id", true), col("customer", false), col("no", false)],
            replica_identity: identity,
            json: Default::default(),
        })
    }

    fn change(t: Arc<Table>, before: Option<[&'static str; 3]>, after: [&'static str; 3]) -> Change {
        let row =
            |r: [&'static str; 3]| r.iter().map(|v| Datum::Text(bytes::Bytes::from_static(v.as_bytes()))).collect();
        Change {
            op: Op::Update,
            table: t,
            before: before.map(row),
            before_is_key_only: false,
            after: Some(row(after)),
            lsn: Lsn(1),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1, commit_lsn: Lsn(2), commit_time_us: 0 }),
        }
    }

    #[test]
    fn chosen_columns_make_the_key_and_its_changes() {
        let config = [("public.orders".to_string(), vec!["customer".to_string(), "no".to_string()])].into();
        let mut keys = KeyColumns::new(&config);
        let c = change(table(b'f'), Some(["1", "10", "5"]), ["1", "10", "6"]);
        let rekeyed = keys.apply(&c).unwrap().unwrap();
        assert_eq!(
            crate::encode::key_json(&rekeyed.table, rekeyed.after.as_ref().unwrap()).unwrap().unwrap(),
            br#"{"customer":10,"no":6}"#
        );
        assert!(crate::encode::debezium::key_changed(&rekeyed), "a chosen key column changed");
        assert!(!crate::encode::debezium::key_changed(&c), "the primary key did not");
        // Other tables keep their key; a column the table lacks, or one a delete would not carry, is refused.
        let mut other = c.clone();
        other.table = Arc::new(Table { oid: 8, name: "lines".into(), ..(*c.table).clone() });
        assert!(keys.apply(&other).unwrap().is_none());
        let err = keys.apply(&change(table(b'd'), None, ["1", "10", "6"])).unwrap_err();
        assert!(err.starts_with("changes.key_columns.public.orders: customer: not a replica-identity"), "{err}");
        let config = [("public.orders".to_string(), vec!["nope".to_string()])].into();
        let err = KeyColumns::new(&config).apply(&c).unwrap_err();
        assert!(err.starts_with("changes.key_columns.public.orders: nope: the table does not have"), "{err}");
    }
}
