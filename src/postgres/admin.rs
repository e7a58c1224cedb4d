//! The only writes ficus makes through the control connection: create the publication or add captured tables to
//! it, create and (for `snapshot.on_gap: resnapshot`) drop the slot.
//!
//! **Guarantee:** nothing here drops a publication or removes a table from one; identifiers are quoted with
//! [`quote_ident`] or bound as parameters.

use tokio_postgres::Client;

use super::control::{publication_gap, setting, sql, ControlError};
use crate::config::Config;
use crate::ident::{quote_ident, TableName};
use crate::lsn::Lsn;

/// Adds `table` to the publication (ficus manages it).
pub async fn add_to_publication(client: &Client, publication: &str, table: &TableName) -> Result<(), ControlError> {
    let stmt = format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), table.quoted());
    client.batch_execute(&stmt).await.map_err(sql(format!("{stmt} (run it as the table's owner)")))
}

/// Creates the publication `FOR TABLE` the captured tables, or adds the ones it lacks. A publication ficus creates
/// publishes partitioned tables through their root (`publish_via_partition_root`, PostgreSQL 13+): changes of every
/// partition, present or attached later, arrive under the configured parent's name and schema.
pub async fn ensure_publication(client: &Client, config: &Config) -> Result<(), ControlError> {
    let tables = config.captured_tables().map_err(|e| ControlError::Invalid(e.to_string()))?;
    let publication = &config.source.publication;
    let (exists, _, missing) = publication_gap(client, publication, &tables).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
    let stmt = if exists {
        format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(publication))
    } else {
        let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
        let via_root = if version >= 130_000 { " WITH (publish_via_partition_root = true)" } else { "" };
        format!("CREATE PUBLICATION {} FOR TABLE {list}{via_root}", quote_ident(publication))
    };
    tracing::info!(publication = %publication, tables = %list, "{}", if exists { "adding tables to publication" } else { "creating publication" });
    client.batch_execute(&stmt).await.map_err(sql(format!("{stmt} (run it as the tables' owner)")))
}

/// Creates the logical slot (pgoutput), with `failover` (PostgreSQL 17+: synchronized to standbys that run
/// `sync_replication_slots`) when asked; returns its consistent point, where its stream starts.
pub async fn create_slot(client: &Client, slot: &str, failover: bool) -> Result<Lsn, ControlError> {
    tracing::info!(slot, failover, "creating logical replication slot (pgoutput)");
    let stmt = if failover {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', failover => true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let row = client.query_one(stmt, &[&slot]).await.map_err(sql(format!("creating replication slot {slot}")))?;
    row.get::<_, String>(0).parse().map_err(|e| {
        ControlError::Invalid(format!(
            "creating replication slot {slot}: the server returned an LSN that does not parse: {e}"
        ))
    })
}

/// Drops the slot (only for the explicit `snapshot.on_gap: resnapshot` recovery from an invalidated slot).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), ControlError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(sql(format!("dropping replication slot {slot}")))?;
    Ok(())
}
