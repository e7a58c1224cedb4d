//! `ficus backfill`: re-snapshot one captured table while ficus runs. The command checks the table, its key, the
//! slot and the condition, then writes the request into the WAL (`snapshot::request_backfill`); the instance
//! streaming the slot takes it up in stream order (docs/snapshots.md).
//!
//! **Guarantee:** nothing is written unless the request is valid and would be taken up: a table outside
//! `source.tables`, a table without a key, a missing slot or a bad condition is refused with the fix.

use crate::config::conninfo::ConnInfo;
use crate::config::Config;
use crate::ident::TableName;
use crate::snapshot::BackfillRequestError;

/// Why a backfill was not requested.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The request is not valid or would never be taken up (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// The server was busy (a lock held on the table past the lock timeout) or failed (exit 1).
    #[error("{0}")]
    Busy(String),
}

impl BackfillError {
    /// The documented exit code: 2 = fix the request, 1 = try again.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackfillError::Invalid(_) => 2,
            BackfillError::Busy(_) => 1,
        }
    }
}

/// Checks `table` and `filter` and writes the backfill request; returns the message for the operator.
pub async fn request(config: &Config, table: &str, filter: Option<&str>) -> Result<String, BackfillError> {
    let invalid = BackfillError::Invalid;
    let name = TableName::parse(table).map_err(|e| invalid(format!("--table: {e}")))?;
    let captured = config.captured_tables().map_err(|e| invalid(e.to_string()))?;
    if !captured.contains(&name) {
        return Err(invalid(format!(
            "--table: {name} is not in source.tables of this config; only captured tables can be backfilled"
        )));
    }
    let info = ConnInfo::parse(&config.source.url).map_err(|e| invalid(format!("source.url: {e}")))?;
    let (client, connection) = info.connect_control().await.map_err(|e| invalid(format!("source.url: {e}")))?;
    client
        .batch_execute(crate::snapshot::BACKFILL_SESSION_SETTINGS)
        .await
        .map_err(|e| BackfillError::Busy(format!("setting lock_timeout on the connection: {e}")))?;
    let table_info = crate::postgres::control::table_info(&client, &name)
        .await
        .map_err(|e| BackfillError::Busy(e.to_string()))?
        .ok_or_else(|| invalid(format!("--table: {name} does not exist")))?;
    if table_info.key_columns.is_empty() {
        return Err(invalid(format!("--table: {}", crate::snapshot::no_key_message(&name))));
    }
    let lsn =
        crate::snapshot::request_backfill(&client, &config.source.slot, &name, filter).await.map_err(|e| match e {
            BackfillRequestError::Invalid(m) => BackfillError::Invalid(m),
            BackfillRequestError::Busy(m) => BackfillError::Busy(m),
        })?;
    drop(client);
    connection.abort();
    Ok(format!(
        "backfill of {name} requested (WAL position {lsn}); the ficus instance streaming slot {slot} takes it up in \
         stream order: now if it runs, else when it starts. Progress: its log (\"snapshot progress\") and GET /status.",
        slot = config.source.slot
    ))
}
