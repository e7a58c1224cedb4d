//! The only writes ficus makes through the control connection: create the publication or add captured tables to
//! it, create and (for `snapshot.on_gap: resnapshot`) drop the slot.
//!
//! **Guarantee:** nothing here drops a publication or removes a table from one, changes the options of an existing
//! one, or adds a table whose replica identity the publication would turn into failing UPDATE and DELETE statements
//! of the application (PostgreSQL 18, [`super::generated`]): that is refused with the fix. Identifiers are quoted with
//! [`quote_ident`] or bound as parameters.

use tokio_postgres::Client;

use super::control::{publication_gap, setting, sql, table_info, ControlError};
use super::generated::{self, PUBLISHES_GENERATED};
use crate::config::Config;
use crate::ident::{quote_ident, TableName};
use crate::lsn::Lsn;

/// Adds `table` to the publication (ficus manages it), unless that would make the application's writes fail.
pub async fn add_to_publication(client: &Client, publication: &str, table: &TableName) -> Result<(), ControlError> {
    let version = server_version(client).await?;
    let stored = generated::publishes_stored(client, publication).await?.unwrap_or(false);
    refuse_breaking(client, publication, std::slice::from_ref(table), version, stored).await?;
    let stmt = format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), table.quoted());
    client.batch_execute(&stmt).await.map_err(sql(format!("{stmt} (run it as the table's owner)")))
}

/// Creates the publication `FOR TABLE` the captured tables, or adds the ones it lacks. A publication ficus creates
/// publishes partitioned tables through their root (`publish_via_partition_root`, PostgreSQL 13+): changes of every
/// partition, present or attached later, arrive under the configured parent's name and schema; on 18+ it publishes
/// stored generated columns (`publish_generated_columns = stored`), so a replica identity containing one (FULL, a key
/// or identity index over one) keeps the application's UPDATE and DELETE working. A table the publication cannot
/// carry that way is refused before anything changes.
pub async fn ensure_publication(client: &Client, config: &Config) -> Result<(), ControlError> {
    let tables = config.captured_tables().map_err(|e| ControlError::Invalid(e.to_string()))?;
    let publication = &config.source.publication;
    let (exists, _, missing) = publication_gap(client, publication, &tables).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let version = server_version(client).await?;
    let stored = match generated::publishes_stored(client, publication).await? {
        Some(stored) => stored,
        None => version >= PUBLISHES_GENERATED,
    };
    refuse_breaking(client, publication, &missing, version, stored).await?;
    let list = missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
    let stmt = if exists {
        format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(publication))
    } else {
        let mut options = Vec::new();
        if version >= 130_000 {
            options.push("publish_via_partition_root = true");
        }
        if version >= PUBLISHES_GENERATED {
            options.push("publish_generated_columns = stored");
        }
        let with = if options.is_empty() { String::new() } else { format!(" WITH ({})", options.join(", ")) };
        format!("CREATE PUBLICATION {} FOR TABLE {list}{with}", quote_ident(publication))
    };
    tracing::info!(publication = %publication, tables = %list, "{}", if exists { "adding tables to publication" } else { "creating publication" });
    client.batch_execute(&stmt).await.map_err(sql(format!("{stmt} (run it as the tables' owner)")))
}

async fn server_version(client: &Client) -> Result<i32, ControlError> {
    Ok(setting(client, "server_version_num").await?.parse().unwrap_or(0))
}

/// Refuses, with the fix, when publishing one of `tables` in `publication` (which publishes stored generated columns
/// or not: `stored`) would make the application's UPDATE and DELETE on it fail.
async fn refuse_breaking(
    client: &Client,
    publication: &str,
    tables: &[TableName],
    version: i32,
    stored: bool,
) -> Result<(), ControlError> {
    if version < PUBLISHES_GENERATED {
        return Ok(());
    }
    for table in tables {
        let Some(info) = table_info(client, table).await? else { continue };
        if let Some((detail, fix)) = generated::conflict(table, &info, version, publication, stored) {
            return Err(ControlError::Invalid(format!(
                "not adding {table} to publication {publication}: {detail}. Fix: {fix}"
            )));
        }
    }
    Ok(())
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
