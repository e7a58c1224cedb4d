//! The source's handling of Relation messages: which columns are the key (following DDL), how column types map to
//! values, partitions published under their captured root, and renames said loudly. Runs on the control
//! connection only when a Relation message needs the catalog, after making sure its snapshot sees the transaction
//! that sent it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Source, SourceError};
use crate::change::{Column, Table};
use crate::ident::TableName;
use crate::postgres::pgoutput;
use crate::postgres::value::binary;

impl<'c> Source<'c> {
    /// A Relation message: the table's columns, key and value types as the stream describes them from here on.
    pub(super) async fn on_relation(&mut self, r: pgoutput::Relation) -> Result<(), SourceError> {
        if self.binary {
            if let Some(c) = r.columns.iter().find(|c| !binary::supports(c.type_oid)) {
                return Err(SourceError::NeedsTextValues {
                    table: format!("{}.{}", r.namespace, r.name),
                    column: c.name.clone(),
                    type_oid: c.type_oid,
                });
            }
        }
        let mut r = r;
        self.map_partition_to_root(&mut r).await?;
        let keys = self.key_columns(&r).await?;
        self.resolve_value_types(&r).await?;
        let columns = r
            .columns
            .into_iter()
            .map(|c| Column {
                is_key: keys.contains(&c.name),
                type_oid: self.value_types.get(&c.type_oid).copied().unwrap_or(c.type_oid),
                name: c.name,
                type_modifier: c.type_modifier,
            })
            .collect();
        let table = Table {
            oid: r.oid,
            schema: r.namespace,
            name: r.name,
            columns,
            replica_identity: r.replica_identity,
            json: Default::default(),
        };
        self.warn_on_rename(&table);
        tracing::debug!(table = %table.qualified_name(), oid = table.oid, keys = %keys.join(", "), "relation");
        self.described.insert(r.oid);
        self.relations.insert(r.oid, Arc::new(table));
        Ok(())
    }

    /// The event key of a table as a Relation message describes it. Under REPLICA IDENTITY DEFAULT and USING INDEX
    /// the message flags exactly the identity columns — the only ones a delete or key change carries — so they are the
    /// key, and they follow DDL (a renamed or moved primary key, a new identity index) at the right point of the
    /// stream. Under FULL the flags mark every column and under NOTHING none: the key is then the primary key as the
    /// catalog states it, read again after DDL (the first description in a session uses the start-up catalog).
    async fn key_columns(&mut self, r: &pgoutput::Relation) -> Result<Vec<String>, SourceError> {
        if matches!(r.replica_identity, b'd' | b'i') {
            return Ok(r.columns.iter().filter(|c| c.flags & 1 == 1).map(|c| c.name.clone()).collect());
        }
        let name = TableName { schema: r.namespace.clone(), name: r.name.clone() };
        let known = self.catalog.tables.get(&name).filter(|t| t.oid == r.oid).map(|t| t.key_columns.clone());
        let fresh = match (known, self.control) {
            (Some(keys), _) if !self.described.contains(&r.oid) => Some(keys),
            (_, Some(client)) => {
                self.catalog_sees_tx(client).await?;
                crate::postgres::control::table_info_by_oid(client, r.oid)
                    .await
                    .map_err(|e| {
                        SourceError::Catalog(format!("reading the key of {name} after a Relation message: {e}"))
                    })?
                    .map(|(_, info)| info.key_columns)
            }
            (known, None) => known,
        };
        let keys = fresh.unwrap_or_default();
        if r.replica_identity == b'n' {
            tracing::warn!(
                table = %name,
                "REPLICA IDENTITY NOTHING: updates carry no before image and the source database refuses UPDATE/DELETE \
                 on this published table; set REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
            );
        }
        if !keys.iter().all(|k| r.columns.iter().any(|c| c.name == *k)) {
            // The catalog is already past this point of the stream (a later DDL renamed or dropped a key column).
            // No key is better than a wrong one; the next Relation message of the table brings it back.
            tracing::error!(
                table = %name,
                catalog_key = %keys.join(", "),
                "the table's current primary key is not among the columns the stream describes (DDL since): its \
                 events carry no Kafka key until its next Relation message"
            );
            metrics::counter!(crate::metrics::ERRORS, "kind" => "schema").increment(1);
            return Ok(Vec::new());
        }
        Ok(keys)
    }

    /// Waits (at most 2 s) until the control connection's snapshots see the open transaction. The walsender decodes
    /// a commit as soon as its WAL is flushed, a moment before the committing backend leaves the proc array: a catalog
    /// read in that moment would not yet see the DDL that made PostgreSQL send this Relation message (a partition
    /// created in the same transaction, a new primary key, a new type).
    async fn catalog_sees_tx(&mut self, client: &tokio_postgres::Client) -> Result<(), SourceError> {
        let Some(xid) = self.tx.as_ref().map(|t| t.xid) else { return Ok(()) };
        if self.visible_xid == Some(xid) {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            // txid_* (64-bit, with epoch) compared on their low 32 bits: the xid of pgoutput's Begin.
            let row = client
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM txid_snapshot_xip(txid_current_snapshot()) x WHERE x % 4294967296 = $1) \
                     AND txid_snapshot_xmax(txid_current_snapshot()) % 4294967296 > $1",
                    &[&i64::from(xid)],
                )
                .await
                .map_err(|e| SourceError::Catalog(format!("reading the current snapshot: {}", crate::postgres::connect::describe(&e))))?;
            if row.get::<_, bool>(0) || Instant::now() >= deadline {
                self.visible_xid = Some(xid);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads the value mapping of column types not seen before that do not map by OID alone (domains, enums, arrays
    /// of them, extension types).
    async fn resolve_value_types(&mut self, r: &pgoutput::Relation) -> Result<(), SourceError> {
        let Some(client) = self.control else { return Ok(()) };
        let mut new: Vec<u32> = r
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|t| !self.value_types.contains_key(t) && !crate::postgres::value::maps_by_oid(*t))
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Ok(());
        }
        self.catalog_sees_tx(client).await?;
        let resolved = crate::postgres::control::value_types(client, &new).await.map_err(|e| {
            SourceError::Catalog(format!("resolving the column types of {}.{}: {e}", r.namespace, r.name))
        })?;
        self.value_types.extend(resolved);
        Ok(())
    }

    /// A publication without `publish_via_partition_root` sends the changes of a captured partitioned table under
    /// each partition's own name. They are published as the captured parent's (its topic, its rules), whatever the
    /// partition — also one attached while streaming; the relation OID stays the partition's.
    async fn map_partition_to_root(&mut self, r: &mut pgoutput::Relation) -> Result<(), SourceError> {
        let name = TableName { schema: r.namespace.clone(), name: r.name.clone() };
        if self.catalog.tables.contains_key(&name) {
            return Ok(());
        }
        let Some(client) = self.control else { return Ok(()) };
        self.catalog_sees_tx(client).await?;
        let row = client
            .query_opt(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = pg_partition_root($1::oid)",
                &[&r.oid],
            )
            .await;
        let row = match row {
            Ok(row) => row,
            // PostgreSQL before 12 has no pg_partition_root (nor this publication shape): nothing to map.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => None,
            Err(e) => {
                return Err(SourceError::Catalog(format!(
                    "reading the partition root of {name}: {}",
                    crate::postgres::connect::describe(&e)
                )))
            }
        };
        if let Some(row) = row {
            let root = TableName { schema: row.get(0), name: row.get(1) };
            if root != name && self.catalog.tables.contains_key(&root) {
                tracing::debug!(partition = %name, root = %root, "partition published under its captured root");
                r.namespace = root.schema;
                r.name = root.name;
            }
        }
        Ok(())
    }

    /// A captured table renamed while streaming keeps its OID (and its place in the publication): its raw events
    /// move to the topic of the new name and rules written for the old name stop matching. Said loudly, once per
    /// Relation message.
    fn warn_on_rename(&self, table: &Table) {
        let before = self.relations.get(&table.oid).map(|t| (t.schema.clone(), t.name.clone())).or_else(|| {
            self.catalog
                .tables
                .iter()
                .find(|(_, info)| info.oid == table.oid)
                .map(|(n, _)| (n.schema.clone(), n.name.clone()))
        });
        if let Some((schema, name)) = before {
            if schema != table.schema || name != table.name {
                tracing::error!(
                    table = %format!("{schema}.{name}"),
                    renamed_to = %table.qualified_name(),
                    oid = table.oid,
                    "a captured table was renamed: its raw change events now go to the topic of the new name and rules \
                     for the old name no longer match; update source.tables, changes and events to the new name and restart"
                );
                metrics::counter!(crate::metrics::ERRORS, "kind" => "schema").increment(1);
            }
        }
    }
}
