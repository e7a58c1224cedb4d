//! `changes.key_columns` (Debezium's `message.key.columns`) as configuration: the checks that need no database.
//! The columns' existence and replica identity are checked against the catalog by `ficus check` and the start-up
//! preflight (`check::key_columns`), and again by the router when DDL changes a table under a running ficus.

use super::{ChangesConfig, ConfigError, MaskAction, TableName};

/// `changes.key_columns`: captured tables, at least one column, each once, not masked other than by `hash` (the
/// key must stay unique). That the columns exist is checked against the database (`ficus check`, start-up).
pub(super) fn validate(changes: &ChangesConfig, captured: &[TableName]) -> Result<(), ConfigError> {
    for (table, columns) in &changes.key_columns {
        let key = format!("changes.key_columns.{table}");
        let name = TableName::parse(table).map_err(|m| ConfigError::invalid(&key, m))?;
        if !captured.contains(&name) {
            return Err(ConfigError::invalid(key, format!("{name} is not in source.tables")));
        }
        if columns.is_empty() {
            return Err(ConfigError::invalid(key, "list the key columns, e.g. [customer_id, order_no]"));
        }
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].contains(column) {
                return Err(ConfigError::invalid(key, format!("{column} is listed twice")));
            }
            if let Some(action) = changes.masking.action(&name, column).filter(|a| *a != MaskAction::Hash) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{column} is a key column: mask it with hash, not {action:?}"),
                ));
            }
        }
    }
    Ok(())
}
