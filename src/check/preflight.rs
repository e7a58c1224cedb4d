//! The preflight: every condition streaming needs, read from the database through the control connection, each
//! failure with its fix (server settings, privileges, keys and replica identity of the captured tables, the
//! publication, the slot, WAL retention, the rules against the tables' columns).
//!
//! **Guarantee:** the preflight never changes the database; the writes are in `postgres::admin`.

use tokio_postgres::Client;

use super::report::{CheckItem, Report, Status};
pub(crate) use super::rule_lines::rule_lines;
use crate::config::snapshot::OnGap;
use crate::config::Config;
use crate::ident::{quote_ident, TableName};
use crate::postgres::control::{publication_gap, setting, slot_info, sql, table_info, Catalog, ControlError};
use crate::postgres::generated;
use crate::rules::Rules;

/// Runs every check without changing anything. Returns the report and the catalog of the tables found.
pub async fn preflight(client: &Client, config: &Config, rules: &Rules) -> Result<(Report, Catalog), ControlError> {
    let mut report = Report::default();
    let mut catalog = Catalog::default();

    let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
    let version_text = setting(client, "server_version").await?;
    if version < 100_000 {
        report.push(
            Status::Fail,
            "server version",
            format!("{version_text} has no pgoutput"),
            Some("upgrade to PostgreSQL 10 or later".into()),
        );
    } else {
        report.push(Status::Ok, "server version", version_text, None);
    }

    let wal_level = setting(client, "wal_level").await?;
    if wal_level == "logical" {
        report.push(Status::Ok, "wal_level", "logical", None);
    } else {
        report.push(
            Status::Fail,
            "wal_level",
            format!("is {wal_level}, logical decoding needs logical"),
            Some("ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL".into()),
        );
    }

    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the role"))?;
    let user: String = row.get(0);
    let can_replicate: bool = row.get(1);
    let is_super: bool = row.get(2);
    if can_replicate {
        report.push(Status::Ok, "replication privilege", format!("role {user}"), None);
    } else {
        report.push(
            Status::Fail,
            "replication privilege",
            format!("role {user} lacks REPLICATION"),
            Some(format!("ALTER ROLE {} WITH REPLICATION;", quote_ident(&user))),
        );
    }

    // Tables. A publication ficus creates publishes stored generated columns on 18+ (postgres::admin).
    let tables = config.captured_tables().map_err(|e| ControlError::Invalid(e.to_string()))?;
    let stored = generated::publishes_stored(client, &config.source.publication).await?.unwrap_or(true);
    for table in &tables {
        match table_info(client, table).await {
            Err(ControlError::Invalid(msg)) => report.push(Status::Fail, format!("table {table}"), msg, None),
            Err(e) => return Err(e),
            Ok(None) => {
                let hint = similar_table(client, table).await?;
                report.push(
                    Status::Fail,
                    format!("table {table}"),
                    "does not exist",
                    Some(match hint {
                        Some(found) => format!("did you mean {found}? (quote mixed-case names: schema.\"Name\")"),
                        None => "fix source.tables or create the table".into(),
                    }),
                );
            }
            Ok(Some(info)) => {
                let select: bool = client
                    .query_one("SELECT has_table_privilege($1::oid, 'SELECT')", &[&info.oid])
                    .await
                    .map_err(sql("checking SELECT privilege"))?
                    .get(0);
                let q = table.quoted();
                // FULL is recommended only where it keeps the application's writes working (PostgreSQL 18).
                let full = generated::full_identity_fix(table, &info, version, &config.source.publication, stored);
                let conflict = generated::conflict(table, &info, version, &config.source.publication, stored);
                match (conflict, info.replica_identity, info.key_columns.is_empty()) {
                    // The publication would make the application's writes fail (PostgreSQL 18).
                    (Some((detail, fix)), _, _) => report.push(Status::Fail, format!("table {table}"), detail, Some(fix)),
                    (None, b'f', _) => report.push(Status::Ok, format!("table {table}"), "REPLICA IDENTITY FULL: before images complete", None),
                    (None, b'n', _) | (None, b'd', true) => report.push(
                        Status::Fail,
                        format!("table {table}"),
                        "has no replica identity: once published, the legacy application's UPDATE and DELETE on it would fail",
                        Some(match &full {
                            Ok(full) => format!("{full}  -- or add a primary key"),
                            Err(why) => format!("add a primary key ({why})"),
                        }),
                    ),
                    _ => report.push(
                        Status::Warn,
                        format!("table {table}"),
                        format!("REPLICA IDENTITY {}: `before` holds only the key ({})",
                            if info.replica_identity == b'i' { "USING INDEX" } else { "DEFAULT" },
                            info.key_columns.join(", ")),
                        Some(match &full {
                            Ok(full) => format!("{full}  -- for complete before images"),
                            Err(why) => format!("none: {why}"),
                        }),
                    ),
                }
                if !select {
                    report.push(
                        Status::Warn,
                        format!("table {table}"),
                        format!("role {user} cannot SELECT it (needed for snapshots)"),
                        Some(format!("GRANT SELECT ON {q} TO {};", quote_ident(&user))),
                    );
                }
                let snapshotted = config.snapshot.mode != crate::config::SnapshotMode::Never
                    && config
                        .captured_tables()
                        .and_then(|captured| config.snapshot.tables(&captured))
                        .is_ok_and(|t| t.contains(table));
                if snapshotted && info.key_columns.is_empty() {
                    // Only a first start (a new slot) plans the snapshot, so this warns rather than blocks.
                    report.push(
                        Status::Warn,
                        format!("table {table}"),
                        "has no primary key: the initial snapshot refuses it (exit 2 on a first start)",
                        Some("add a primary key, or leave the table out of snapshot.tables".to_string()),
                    );
                }
                catalog.tables.insert(table.clone(), info);
            }
        }
    }

    report.items.extend(rule_lines(rules, &catalog, version >= generated::PUBLISHES_GENERATED && stored));
    // A standby (capture from a standby, 16+) cannot write: its own lines, and no publication or failover writes.
    let recovery = super::recovery::read(client, config).await?;
    if let Some(facts) = &recovery {
        report.items.extend(super::recovery::lines(config, facts));
    }
    report.items.extend(super::key_columns::lines(config, &catalog));
    check_publication(client, config, &tables, is_super, recovery.is_some(), &mut report).await?;
    check_slot(client, config, &mut report).await?;
    if recovery.is_none() {
        check_failover(client, config, &mut report).await?;
    }
    Ok((report, catalog))
}

/// What the failover lines need to know about the server (read by [`check_failover`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct FailoverFacts {
    pub server_version_num: i32,
    /// The slot's `failover` and `synced` flags, when it exists (both `None` before PostgreSQL 17).
    pub slot: Option<(Option<bool>, Option<bool>)>,
    /// `synchronized_standby_slots` (17+).
    pub synchronized_standby_slots: String,
    /// The physical slots it names that do not exist.
    pub unknown_standby_slots: Vec<String>,
    /// Physical slots on the server (a standby streams through one); without any, there is no standby to fail over
    /// to and the failover advice stays quiet.
    pub physical_slots: i64,
}

/// `source.failover_slot` against the server: the slot's `failover`/`synced` flags and the primary's
/// `synchronized_standby_slots` (docs/reliability.md "Failover").
async fn check_failover(client: &Client, config: &Config, report: &mut Report) -> Result<(), ControlError> {
    let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
    let slot = slot_info(client, &config.source.slot).await?.map(|s| (s.failover, s.synced));
    let mut facts = FailoverFacts { server_version_num: version, slot, ..FailoverFacts::default() };
    if version >= 170_000 {
        facts.synchronized_standby_slots = setting(client, "synchronized_standby_slots").await?;
        facts.physical_slots = client
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical'", &[])
            .await
            .map_err(sql("reading pg_replication_slots"))?
            .get(0);
        for name in facts.synchronized_standby_slots.split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "*") {
            let exists = client
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
                    &[&name],
                )
                .await
                .map_err(sql("reading pg_replication_slots"))?
                .is_some();
            if !exists {
                facts.unknown_standby_slots.push(name.to_string());
            }
        }
    }
    report.items.extend(failover_lines(config, &facts));
    Ok(())
}

/// The `failover slot` and `synchronized_standby_slots` lines of `ficus check`.
pub(crate) fn failover_lines(config: &Config, facts: &FailoverFacts) -> Vec<CheckItem> {
    use crate::config::{version_name, FailoverSlot};
    let mode = config.source.failover_slot;
    let slot = &config.source.slot;
    let version = version_name(facts.server_version_num);
    let item = |status, detail: String, fix: Option<String>| CheckItem {
        status,
        title: "failover slot".to_string(),
        detail,
        fix,
    };
    let wanted = match mode.wanted(facts.server_version_num) {
        Err(e) => return vec![item(Status::Fail, e, Some("source.failover_slot: auto".into()))],
        Ok(w) => w,
    };
    if facts.server_version_num < 170_000 {
        let detail = match mode {
            FailoverSlot::Off => "off (source.failover_slot: false)".to_string(),
            _ => format!(
                "not available on PostgreSQL {version} (17+): the slot exists on this server only; after a failover \
                 to a standby ficus stops with exit 2 (the slot is missing there), see docs/reliability.md"
            ),
        };
        return vec![item(Status::Ok, detail, None)];
    }
    let alter = format!(
        "psql \"dbname=<db> replication=database\" -c 'ALTER_REPLICATION_SLOT {} (FAILOVER true)'  -- with ficus stopped (PostgreSQL 17+)",
        crate::postgres::replication::quote_ident(slot)
    );
    let mut lines = Vec::new();
    let failover_on = match facts.slot {
        None if wanted => {
            lines.push(item(Status::Ok, format!("slot {slot} will be created with failover"), None));
            true
        }
        None => {
            lines.push(item(Status::Ok, format!("off: slot {slot} will be created without failover"), None));
            false
        }
        Some((failover, synced)) => {
            let failover = failover.unwrap_or(false);
            let synced = if synced.unwrap_or(false) { ", synced from a former primary" } else { "" };
            if failover {
                lines.push(item(Status::Ok, format!("slot {slot} has failover{synced}"), None));
            } else if mode == FailoverSlot::On {
                lines.push(item(
                    Status::Fail,
                    format!(
                        "slot {slot} exists without failover (source.failover_slot: true): a standby does not get it"
                    ),
                    Some(alter),
                ));
            } else if mode == FailoverSlot::Auto {
                let status = if facts.physical_slots > 0 { Status::Warn } else { Status::Ok };
                lines.push(item(
                    status,
                    format!("slot {slot} exists without failover (created before, or by a PostgreSQL before 17): a standby does not get it"),
                    Some(alter),
                ));
            } else {
                lines.push(item(Status::Ok, format!("off: slot {slot} has no failover{synced}"), None));
            }
            failover
        }
    };
    if failover_on {
        let title = "synchronized_standby_slots".to_string();
        let fix = Some(
            "ALTER SYSTEM SET synchronized_standby_slots = '<the standby's physical slot>';  SELECT pg_reload_conf();"
                .to_string(),
        );
        let value = facts.synchronized_standby_slots.trim();
        if value.is_empty() && facts.physical_slots == 0 {
            lines.push(CheckItem {
                status: Status::Ok,
                title,
                detail: "is empty (no physical slot on this server, so no standby to fail over to yet)".to_string(),
                fix: None,
            });
        } else if value.is_empty() {
            lines.push(CheckItem {
                status: Status::Warn,
                title,
                detail: "is empty: ficus may publish changes a standby has not received yet; after a failover to that \
                         standby they are gone from the database although consumers saw them, and ficus stops with \
                         exit 2 if its checkpoint is ahead of the new primary's WAL or, once the new primary has \
                         written past it, skips the new primary's changes before its checkpoint"
                    .to_string(),
                fix,
            });
        } else if !facts.unknown_standby_slots.is_empty() {
            lines.push(CheckItem {
                status: Status::Warn,
                title,
                detail: format!(
                    "names {} which is not a physical slot on this server: logical decoding waits for it",
                    facts.unknown_standby_slots.join(", ")
                ),
                fix,
            });
        } else {
            lines.push(CheckItem {
                status: Status::Ok,
                title,
                detail: format!("{value}: ficus reads only what these standbys have received"),
                fix: None,
            });
        }
    }
    lines
}

async fn similar_table(client: &Client, table: &TableName) -> Result<Option<String>, ControlError> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('r','p') LIMIT 1",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql("looking for similar tables"))?;
    Ok(row.map(|r| TableName { schema: r.get(0), name: r.get(1) }.quoted()))
}

async fn check_publication(
    client: &Client,
    config: &Config,
    tables: &[TableName],
    is_super: bool,
    in_recovery: bool,
    report: &mut Report,
) -> Result<(), ControlError> {
    let publication = &config.source.publication;
    let (exists, owned, missing) = publication_gap(client, publication, tables).await?;
    if in_recovery {
        report.items.push(super::recovery::publication_line(publication, exists, &missing));
        return Ok(());
    }
    let list = missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
    let title = format!("publication {publication}");
    if !exists {
        let can_create: bool = client
            .query_one("SELECT has_database_privilege(current_database(), 'CREATE')", &[])
            .await
            .map_err(sql("checking CREATE privilege"))?
            .get(0);
        let status = if can_create || is_super { Status::Ok } else { Status::Fail };
        report.push(
            status,
            title,
            if status == Status::Ok {
                "missing, ficus will create it".to_string()
            } else {
                "missing and this role cannot create it".to_string()
            },
            (status == Status::Fail).then(|| {
                format!("CREATE PUBLICATION {} FOR TABLE {list};  -- as the tables' owner", quote_ident(publication))
            }),
        );
    } else if missing.is_empty() {
        report.push(Status::Ok, title, "includes every captured table", None);
    } else {
        let status = if owned || is_super { Status::Warn } else { Status::Fail };
        report.push(
            status,
            title,
            format!("lacks {list}{}", if status == Status::Warn { "; ficus will add them" } else { "" }),
            Some(format!("ALTER PUBLICATION {} ADD TABLE {list};", quote_ident(publication))),
        );
    }
    Ok(())
}

/// Warns when the slot retains more than 1 GiB of WAL (or more than half of `max_slot_wal_keep_size`), and when no
/// limit protects the server's disk.
async fn check_retained_wal(client: &Client, slot: &str, title: &str, report: &mut Report) -> Result<(), ControlError> {
    let current = crate::postgres::control::CURRENT_WAL_LSN;
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT ({current} - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1), \
                 pg_size_bytes(current_setting('max_slot_wal_keep_size'))"
            ),
            &[&slot],
        )
        .await;
    // pg_size_bytes('-1') fails on some versions; treat any error as "unknown limit".
    let (retained, limit): (Option<i64>, Option<i64>) = match row {
        Ok(r) => (r.get(0), r.get(1)),
        Err(_) => (None, None),
    };
    let limit = limit.filter(|l| *l > 0);
    if let Some(r) = retained {
        let threshold = limit.map(|l| l / 2).unwrap_or(1 << 30).min(1 << 30);
        if r > threshold {
            report.push(
                Status::Warn,
                title.to_string(),
                format!("retains {} MiB of WAL on the server", r >> 20),
                Some("start ficus (it confirms as it streams), or drop the slot if it is abandoned".into()),
            );
        }
    }
    if limit.is_none() {
        report.push(
            Status::Warn,
            "max_slot_wal_keep_size",
            "is unlimited: a slot whose consumer is down keeps WAL until the disk is full",
            Some("ALTER SYSTEM SET max_slot_wal_keep_size = '10GB';  SELECT pg_reload_conf();".into()),
        );
    }
    Ok(())
}

async fn check_slot(client: &Client, config: &Config, report: &mut Report) -> Result<(), ControlError> {
    let slot = &config.source.slot;
    let title = format!("replication slot {slot}");
    let database: String =
        client.query_one("SELECT current_database()::text", &[]).await.map_err(sql("reading database"))?.get(0);
    match slot_info(client, slot).await? {
        None => {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::bigint",
                    &[],
                )
                .await
                .map_err(sql("counting slots"))?;
            let (used, max): (i64, i64) = (row.get(0), row.get(1));
            if used >= max {
                report.push(
                    Status::Fail,
                    title,
                    format!("missing, and all {max} slots are in use"),
                    Some(
                        "ALTER SYSTEM SET max_replication_slots = <more>;  -- then restart; or drop an unused slot"
                            .into(),
                    ),
                );
            } else {
                report.push(Status::Ok, title, "missing, ficus will create it (pgoutput)", None);
            }
        }
        Some(info) => {
            let fix_drop = format!(
                "SELECT pg_drop_replication_slot('{}');  -- only if nothing else uses it",
                slot.replace('\'', "''")
            );
            if info.plugin.as_deref() != Some("pgoutput") {
                let plugin = info.plugin.as_deref().unwrap_or("none (a physical slot)");
                report.push(Status::Fail, title, format!("uses plugin {plugin}, ficus needs pgoutput"), Some(fix_drop));
            } else if info.database.as_deref() != Some(database.as_str()) {
                let db = info.database.as_deref().unwrap_or("none (a physical slot)");
                report.push(
                    Status::Fail,
                    title,
                    format!("belongs to database {db}, not {database}"),
                    Some("choose another source.slot".into()),
                );
            } else if let Some(why) = info.invalidated().filter(|_| config.snapshot.on_gap == OnGap::Resnapshot) {
                report.push(
                    Status::Warn,
                    title,
                    format!("was invalidated ({}); snapshot.on_gap: resnapshot drops and re-creates it and copies snapshot.tables again", why.why()),
                    None,
                );
            } else if let Some(why) = info.invalidated() {
                report.push(
                    Status::Fail,
                    title,
                    format!("was invalidated ({}); changes since then are lost", why.why()),
                    Some(format!("{fix_drop}\nthen restart ficus to recreate it and re-snapshot the tables")),
                );
            } else if let Some(pid) = info.active_pid {
                report.push(
                    Status::Fail,
                    title,
                    format!("in use by another process (pid {pid}): another ficus instance?"),
                    Some(format!("stop the other consumer, or SELECT pg_terminate_backend({pid});")),
                );
            } else {
                let at = info.confirmed_flush.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
                report.push(Status::Ok, title, format!("exists, confirmed up to {at}"), None);
            }
            check_retained_wal(client, slot, &format!("replication slot {slot}"), report).await?;
        }
    }
    let row = client
        .query_one("SELECT (SELECT count(*) FROM pg_stat_replication), current_setting('max_wal_senders')::bigint", &[])
        .await
        .map_err(sql("counting WAL senders"))?;
    let (used, max): (i64, i64) = (row.get(0), row.get(1));
    if used >= max {
        report.push(
            Status::Fail,
            "WAL senders",
            format!("all {max} in use"),
            Some("ALTER SYSTEM SET max_wal_senders = <more>;  -- then restart".into()),
        );
    } else {
        report.push(Status::Ok, "WAL senders", format!("{used} of {max} in use"), None);
    }
    Ok(())
}

#[cfg(test)]
mod failover_tests {
    use super::*;

    fn config(mode: &str) -> Config {
        let yaml = format!(
            "source:\n  url: postgres://u@h/d\n  failover_slot: {mode}\n  tables: [public.t]\nkafka:\n  brokers: b:9092\nchanges:\n  tables: ['*']\n"
        );
        Config::from_yaml(&yaml, &|_| None).unwrap()
    }

    fn facts(version: i32, slot: Option<(Option<bool>, Option<bool>)>, standby: &str) -> FailoverFacts {
        FailoverFacts {
            server_version_num: version,
            slot,
            synchronized_standby_slots: standby.into(),
            unknown_standby_slots: vec![],
            physical_slots: 1,
        }
    }

    #[test]
    fn true_before_17_fails_naming_the_version() {
        let lines = failover_lines(&config("true"), &facts(150_018, None, ""));
        assert_eq!(lines[0].status, Status::Fail);
        assert!(lines[0].detail.contains("15.18") && lines[0].detail.contains("17"), "{}", lines[0].detail);
        let lines = failover_lines(&config("auto"), &facts(160_014, None, ""));
        assert_eq!((lines.len(), lines[0].status), (1, Status::Ok));
        assert!(lines[0].detail.contains("not available"), "{}", lines[0].detail);
    }

    #[test]
    fn an_existing_slot_without_failover_says_how_to_alter_it() {
        let lines = failover_lines(&config("true"), &facts(170_010, Some((Some(false), Some(false))), "sb"));
        assert_eq!(lines[0].status, Status::Fail);
        assert!(lines[0].fix.as_deref().unwrap().contains("ALTER_REPLICATION_SLOT \"ficus\" (FAILOVER true)"));
        let mut f = facts(170_010, Some((Some(false), Some(false))), "sb");
        assert_eq!(failover_lines(&config("auto"), &f)[0].status, Status::Warn);
        // No standby (no physical slot): nothing to fail over to, no warning.
        f.physical_slots = 0;
        let lines = failover_lines(&config("auto"), &f);
        assert_eq!((lines.len(), lines[0].status), (1, Status::Ok));
        assert_eq!(failover_lines(&config("true"), &f)[0].status, Status::Fail);
        let lines = failover_lines(&config("false"), &facts(170_010, Some((Some(false), Some(false))), ""));
        assert_eq!((lines.len(), lines[0].status), (1, Status::Ok));
    }

    #[test]
    fn a_failover_slot_reports_synced_and_the_standby_slots_setting() {
        let lines = failover_lines(&config("auto"), &facts(170_010, Some((Some(true), Some(true))), ""));
        assert_eq!(lines[0].status, Status::Ok);
        assert!(lines[0].detail.contains("has failover, synced"), "{}", lines[0].detail);
        assert_eq!((lines[1].title.as_str(), lines[1].status), ("synchronized_standby_slots", Status::Warn));
        let mut f = facts(170_010, Some((Some(true), Some(false))), "");
        f.physical_slots = 0;
        assert_eq!(failover_lines(&config("auto"), &f)[1].status, Status::Ok);
        let lines = failover_lines(&config("auto"), &facts(180_004, None, "standby1"));
        assert!(lines[0].detail.contains("will be created with failover"), "{}", lines[0].detail);
        assert_eq!(lines[1].status, Status::Ok);
        assert!(lines[1].detail.starts_with("standby1"), "{}", lines[1].detail);
        let mut f = facts(170_010, Some((Some(true), Some(false))), "gone");
        f.unknown_standby_slots = vec!["gone".into()];
        assert_eq!(failover_lines(&config("true"), &f)[1].status, Status::Warn);
    }
}
