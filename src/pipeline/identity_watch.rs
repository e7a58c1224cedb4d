//! The replica-identity watch (PostgreSQL 18+): a captured table whose replica identity comes to contain a generated
//! column its publication does not publish, while ficus streams.
//!
//! From 18 on PostgreSQL refuses the application's UPDATE and DELETE on such a table ("Replica identity must not
//! contain unpublished generated columns", see [`crate::postgres::generated`]). ficus refuses to start on one and never
//! adds one to a publication, but the same state can be reached afterwards without ficus doing anything: a DBA sets
//! `REPLICA IDENTITY FULL` (or an identity index over a generated column), adds a generated column to a FULL table, or
//! turns `publish_generated_columns` off on the publication. Nothing of that reaches the replication stream (the
//! failing writes never happen), so without this watch ficus would keep streaming while the application's writes
//! fail.
//!
//! **Guarantee.** Every table-watch tick (a few seconds) on 18+, each published captured table that has a generated
//! column is checked against the publication's current `publish_generated_columns`; the first conflict stops the
//! pipeline with exit 2, naming the table, the column(s) and the fix, as `ficus check` and start-up do. ficus cannot
//! undo the DDL itself (only the table's owner or the publication's owner can), and taking the table out of the
//! publication would leave a gap in its events. One catalog query per tick, plus one per table with a generated column.

use crate::config::Config;
use crate::postgres::control::{self, Membership};
use crate::postgres::generated::{self, PUBLISHES_GENERATED};

use super::PipelineError;

/// The server version, read once: the watch does nothing before [`PUBLISHES_GENERATED`].
pub(super) struct IdentityWatch {
    version: i32,
}

impl IdentityWatch {
    pub(super) async fn start(client: &tokio_postgres::Client) -> IdentityWatch {
        let version = match client.query_one("SELECT current_setting('server_version_num')::int", &[]).await {
            Ok(row) => row.get(0),
            // The other watches and the sessions report a broken connection; without a version there is nothing to do.
            Err(_) => 0,
        };
        IdentityWatch { version }
    }

    /// The first published captured table whose writes PostgreSQL now refuses, as the pipeline's error.
    pub(super) async fn check(
        &self,
        client: &tokio_postgres::Client,
        config: &Config,
        members: &[Membership],
    ) -> Option<PipelineError> {
        if self.version < PUBLISHES_GENERATED {
            return None;
        }
        let publication = &config.source.publication;
        let oids: Vec<u32> = members.iter().filter(|m| m.published).filter_map(|m| m.oid).collect();
        // Transient catalog errors are skipped: this is a watch, the next tick reads again.
        let with_generated = client
            .query(
                "SELECT DISTINCT attrelid FROM pg_attribute \
                 WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped AND attgenerated <> ''",
                &[&oids],
            )
            .await
            .ok()?;
        if with_generated.is_empty() {
            return None;
        }
        let stored = generated::publishes_stored(client, publication).await.ok()?.unwrap_or(true);
        for row in with_generated {
            let oid: u32 = row.get(0);
            let Some(member) = members.iter().find(|m| m.oid == Some(oid)) else { continue };
            let Ok(Some(info)) = control::table_info(client, &member.table).await else { continue };
            if let Some((detail, fix)) = generated::conflict(&member.table, &info, self.version, publication, stored) {
                metrics::counter!(crate::metrics::ERRORS, "kind" => "schema").increment(1);
                return Some(PipelineError::Config(format!(
                    "captured table {} changed while ficus streamed: {detail}. ficus stops rather than stream a table \
                     the application can no longer update. Fix: {fix}",
                    member.table
                )));
            }
        }
        None
    }
}
