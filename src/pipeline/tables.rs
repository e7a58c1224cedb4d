//! The table watch: captured tables that stop being published while ficus streams.
//!
//! A captured table that is dropped and re-created gets a new OID that is not in the publication; one removed from
//! the publication (`ALTER PUBLICATION … DROP TABLE`) simply stops appearing in the stream. Neither shows up in the
//! replication stream, so without this watch its changes would silently never be published again.
//!
//! **Guarantees.** Every few seconds the watch compares each captured table's OID and publication membership with
//! what it saw before. A table that exists but is not published is added back to the publication (ficus manages it)
//! and, when it has a key and backfill requests are on, a backfill of it is requested through the WAL, so the rows
//! written while it was unpublished arrive as `read` events in stream order (docs/snapshots.md). When it cannot be
//! repaired that way (the role may not alter the publication, the table has no key, backfills are off) the pipeline
//! stops with exit 2 and the fix; on a standby (capture from a standby) always so, since it can neither alter the
//! publication nor write a request. A dropped table is logged at ERROR once; its changes up to the drop were published.
//! On PostgreSQL 18 the same tick runs the replica-identity watch ([`super::identity_watch`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ident::TableName;
use crate::postgres::control::{self, Catalog};

use super::PipelineError;

/// How often the catalog is compared.
const INTERVAL: Duration = Duration::from_secs(2);

/// Runs until it finds a problem it cannot repair: then cancels `stop` and returns the error.
pub(super) async fn table_watch(
    client: &tokio_postgres::Client,
    config: &Config,
    catalog: &Catalog,
    stop: &CancellationToken,
) -> PipelineError {
    let tables: Vec<TableName> = catalog.tables.keys().cloned().collect();
    let mut known: HashMap<TableName, Option<u32>> =
        catalog.tables.iter().map(|(t, i)| (t.clone(), Some(i.oid))).collect();
    let mut partitions = PartitionWatch::start(client, catalog).await;
    let identity = super::identity_watch::IdentityWatch::start(client).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => std::future::pending::<()>().await,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        if let Some(e) = partitions.check(client, config).await {
            stop.cancel();
            return e;
        }
        let members = match control::publication_members(client, &config.source.publication, &tables).await {
            Ok(m) => m,
            Err(e) => {
                // The sessions see a broken connection themselves; this is only a watch.
                tracing::debug!(error = %e, "table watch: reading the catalog");
                continue;
            }
        };
        if let Some(e) = identity.check(client, config, &members).await {
            stop.cancel();
            return e;
        }
        for m in members {
            let before = known.insert(m.table.clone(), m.oid).flatten();
            match m.oid {
                None if before.is_some() => tracing::error!(
                    table = %m.table,
                    "a captured table was dropped: its changes up to the drop were published; remove it from \
                     source.tables, or re-create it (ficus then adds it to the publication and backfills it)"
                ),
                None => {}
                Some(_) if m.published => {}
                Some(oid) => {
                    let why = if before.is_some_and(|b| b != oid) {
                        "was dropped and re-created"
                    } else {
                        "was removed from the publication"
                    };
                    if let Err(e) = repair(client, config, catalog, &m.table, why).await {
                        stop.cancel();
                        return e;
                    }
                }
            }
        }
    }
}

/// Adds the table back to the publication and requests a backfill of it, or says why that is impossible.
async fn repair(
    client: &tokio_postgres::Client,
    config: &Config,
    catalog: &Catalog,
    table: &TableName,
    why: &str,
) -> Result<(), PipelineError> {
    let publication = &config.source.publication;
    let refuse = |reason: String| {
        PipelineError::Config(format!(
            "captured table {table} {why}, so its changes are no longer in publication {publication}; {reason}. Fix: \
             ALTER PUBLICATION {} ADD TABLE {}; then `ficus backfill --table {table}` to copy the rows written meanwhile",
            crate::ident::quote_ident(publication),
            table.quoted()
        ))
    };
    if control::in_recovery(client).await.unwrap_or(false) {
        // Capture from a standby: it can neither alter the publication nor write a backfill request.
        return Err(PipelineError::Config(format!(
            "captured table {table} {why}, so its changes are no longer in publication {publication}; this server is \
             a standby, which can neither alter the publication nor backfill. Fix: on the primary, ALTER PUBLICATION \
             {} ADD TABLE {}; then restart ficus; the rows written meanwhile are not in the stream: copy them from \
             the primary",
            crate::ident::quote_ident(publication),
            table.quoted()
        )));
    }
    let info =
        control::table_info(client, table).await.map_err(|e| refuse(format!("reading its catalog failed: {e}")))?;
    let Some(info) = info else { return Ok(()) };
    if info.key_columns.is_empty() {
        return Err(refuse("it has no primary key, so ficus cannot backfill it".into()));
    }
    if !config.snapshot.backfill_requests {
        return Err(refuse("snapshot.backfill_requests is off".into()));
    }
    if let Some(old) = catalog.tables.get(table) {
        if old.columns.iter().map(|c| (&c.name, c.type_oid)).ne(info.columns.iter().map(|c| (&c.name, c.type_oid))) {
            tracing::warn!(table = %table, "the re-created table has other columns than at start; rules see the new ones");
        }
    }
    crate::postgres::admin::add_to_publication(client, publication, table)
        .await
        .map_err(|e| refuse(format!("adding it back failed: {e}")))?;
    let lsn = crate::snapshot::request_backfill(client, &config.source.slot, table, None)
        .await
        .map_err(|e| refuse(format!("requesting the backfill failed: {e}")))?;
    tracing::error!(
        table = %table,
        backfill_lsn = %lsn,
        "a captured table {why}: added back to publication {publication}; a backfill copies its current rows (read events)"
    );
    metrics::counter!(crate::metrics::ERRORS, "kind" => "schema").increment(1);
    Ok(())
}

/// PostgreSQL before 15 does not publish the changes of a partition attached to a published partitioned table while a
/// walsender runs, if that walsender had already seen the table before it was attached (its publication cache entry
/// is not invalidated by `ATTACH PARTITION`; reproduced on 14.23, both with and without `publish_via_partition_root`).
/// The changes stay unpublished until the walsender restarts. On those versions the watch notices a new partition of a
/// captured partitioned table, requests a backfill of the table (so rows written to the partition meanwhile arrive as
/// `read` events), and ends the session with a transient error: the reconnect starts a new walsender.
struct PartitionWatch {
    /// Captured partitioned tables (name, OID) and their partitions when last seen; empty on PostgreSQL 15+.
    parents: Vec<(TableName, u32, Vec<u32>)>,
}

impl PartitionWatch {
    async fn start(client: &tokio_postgres::Client, catalog: &Catalog) -> PartitionWatch {
        let version: i32 = match client.query_one("SELECT current_setting('server_version_num')::int", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => return PartitionWatch { parents: Vec::new() },
        };
        let mut parents = Vec::new();
        if version < 150_000 {
            for (name, info) in &catalog.tables {
                if let Ok(children) = Self::children(client, info.oid).await {
                    if !children.is_empty() || Self::is_partitioned(client, info.oid).await {
                        parents.push((name.clone(), info.oid, children));
                    }
                }
            }
        }
        PartitionWatch { parents }
    }

    async fn is_partitioned(client: &tokio_postgres::Client, oid: u32) -> bool {
        client
            .query_one("SELECT relkind = 'p' FROM pg_class WHERE oid = $1", &[&oid])
            .await
            .is_ok_and(|r| r.get::<_, bool>(0))
    }

    /// Every partition below `parent` (sub-partitions included).
    async fn children(client: &tokio_postgres::Client, parent: u32) -> Result<Vec<u32>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT relid::oid FROM pg_partition_tree($1::oid) WHERE relid <> $1::oid::regclass ORDER BY 1",
                &[&parent],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, u32>(0)).collect())
    }

    async fn check(&mut self, client: &tokio_postgres::Client, config: &Config) -> Option<PipelineError> {
        for (name, oid, known) in &mut self.parents {
            let Ok(now) = Self::children(client, *oid).await else { continue };
            let new = now.iter().any(|c| !known.contains(c));
            *known = now;
            if !new {
                continue;
            }
            if !config.snapshot.backfill_requests {
                return Some(PipelineError::Config(format!(
                    "a partition was attached to captured table {name}; PostgreSQL before 15 does not publish its changes \
                     until the walsender restarts, and snapshot.backfill_requests is off. Fix: restart ficus, then \
                     `ficus backfill --table {name}` (or turn backfill_requests on)"
                )));
            }
            if let Err(e) = crate::snapshot::request_backfill(client, &config.source.slot, name, None).await {
                return Some(PipelineError::Config(format!(
                    "a partition was attached to captured table {name}; requesting its backfill failed: {e}"
                )));
            }
            tracing::warn!(
                table = %name,
                "a partition was attached to a captured partitioned table: PostgreSQL before 15 publishes its changes only \
                 from a new walsender on; restarting the stream, and backfilling the table so nothing written meanwhile is missed"
            );
            return Some(PipelineError::Transient(format!(
                "partition attached to {name} (PostgreSQL < 15): restarting the stream"
            )));
        }
        None
    }
}
