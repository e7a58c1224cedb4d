//! The rules against the catalog, as `ficus check` lines: a column a rule reads that its table lacks, or that the
//! stream never sends (a generated column that is not published), fails, a rule reading `old` without REPLICA IDENTITY FULL warns (with FULL as the fix only where it keeps the application's
//! writes working), an unknown CEL function warns.

use super::report::{CheckItem, Status};
use crate::config::events::OnError;
use crate::postgres::control::{Catalog, Generated};
use crate::postgres::generated;
use crate::rules::Rules;

/// The rules against the catalog: a column an expression reads that the table lacks fails; a rule reading `old` on
/// a table whose replica identity is not FULL warns (pgoutput then sends no old row for most updates, so `old.col`
/// fails for them); an unknown CEL function warns. A generated column counts as missing unless the stream sends it:
/// virtual ones never, stored ones only where the publication publishes them (`sends_stored`: PostgreSQL 18,
/// `publish_generated_columns = stored`).
pub(crate) fn rule_lines(rules: &Rules, catalog: &Catalog, sends_stored: bool) -> Vec<CheckItem> {
    let mut items = Vec::new();
    for (title, detail) in rules.unknown_function_warnings() {
        items.push(CheckItem { status: Status::Warn, title: title.to_string(), detail: detail.to_string(), fix: None });
    }
    for rule in rules.requirements() {
        let table = rule.table;
        let Some(info) = catalog.tables.get(table) else { continue };
        let unknown: Vec<&str> =
            rule.columns.iter().filter(|c| !info.columns.iter().any(|x| &x.name == *c)).map(String::as_str).collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
            items.push(CheckItem {
                status: Status::Fail,
                title: rule.title,
                detail: format!("reads column(s) {} that {table} does not have", unknown.join(", ")),
                fix: Some(format!("use one of: {}", known.join(", "))),
            });
            continue;
        }
        let unsent: Vec<&str> = info
            .columns
            .iter()
            .filter(|c| rule.columns.contains(&c.name))
            .filter(|c| c.generated == Generated::Virtual || (c.generated == Generated::Stored && !sends_stored))
            .map(|c| c.name.as_str())
            .collect();
        if !unsent.is_empty() {
            items.push(CheckItem {
                status: Status::Fail,
                title: rule.title,
                detail: format!(
                    "reads generated column(s) {} of {table} that the stream never sends (virtual generated columns \
                     are never published, stored ones only by PostgreSQL 18 with publish_generated_columns = stored)",
                    unsent.join(", ")
                ),
                fix: Some("compute the value in the rule from the columns it is generated from".into()),
            });
            continue;
        }
        if rule.reads_old_on_update && info.replica_identity != b'f' {
            items.push(CheckItem {
                status: Status::Warn,
                title: rule.title,
                detail: format!(
                    "reads `old` on update, but {} does not have REPLICA IDENTITY FULL: updates arrive without the old row and the rule fails for them (→ {})",
                    table,
                    match rule.on_error {
                        OnError::Dlq => "DLQ",
                        OnError::Fail => "stop",
                        OnError::Skip => "skipped",
                    }
                ),
                // Virtual generated columns rule FULL out (the publication's options are checked elsewhere).
                fix: Some(generated::full_identity_fix(table, info, 0, "", true).unwrap_or_else(|why| format!("none: {why}"))),
            });
            continue;
        }
        items.push(CheckItem {
            status: Status::Ok,
            title: rule.title,
            detail: format!("{table} → {}", rule.topic),
            fix: None,
        });
    }
    items
}
