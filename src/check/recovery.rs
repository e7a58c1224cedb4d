//! Capture from a standby: `source.url` names a hot standby (`pg_is_in_recovery()`), where PostgreSQL 16+ decodes
//! a logical slot of its own. A standby cannot write, so everything ficus would write there is refused here with the
//! reason and the fix, or turned off with a warning — never tried and never silently skipped
//! (docs/postgres-versions.md "Capture from a standby").
//!
//! **Guarantees:** before 16 a standby is refused (exit 2). On 16+ the publication must already exist with every
//! captured table (created on the primary, replicated here): ficus does not create or extend it. A start that would
//! plan a snapshot is refused (`snapshot::SNAPSHOT_ON_STANDBY`, by the session and `resume::state_report`): its
//! watermarks are WAL writes. The heartbeat
//! is off with a warning. A slot created here has no `failover` (PostgreSQL refuses it on a standby), so
//! `source.failover_slot: true` is refused. Nothing here changes the database.

use tokio_postgres::Client;

use super::report::{CheckItem, Status};
use crate::config::{version_name, Config, FailoverSlot};
use crate::ident::{quote_ident, TableName};
use crate::postgres::control::{setting, slot_info, ControlError};

/// What the standby lines need to know (read by [`read`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct RecoveryFacts {
    pub in_recovery: bool,
    pub server_version_num: i32,
    pub hot_standby_feedback: bool,
    pub primary_slot_name: String,
    pub slot_exists: bool,
}

/// Reads the facts; `None` when the server is not a standby (nothing to say).
pub(crate) async fn read(client: &Client, config: &Config) -> Result<Option<RecoveryFacts>, ControlError> {
    if !crate::postgres::control::in_recovery(client).await? {
        return Ok(None);
    }
    Ok(Some(RecoveryFacts {
        in_recovery: true,
        server_version_num: setting(client, "server_version_num").await?.parse().unwrap_or(0),
        hot_standby_feedback: setting(client, "hot_standby_feedback").await? == "on",
        primary_slot_name: setting(client, "primary_slot_name").await?,
        slot_exists: slot_info(client, &config.source.slot).await?.is_some(),
    }))
}

/// The `standby capture` lines of `ficus check` (and the preflight of `ficus run`).
pub(crate) fn lines(config: &Config, facts: &RecoveryFacts) -> Vec<CheckItem> {
    let item = |status, title: &str, detail: String, fix: Option<String>| CheckItem {
        status,
        title: title.to_string(),
        detail,
        fix,
    };
    if !facts.in_recovery {
        return Vec::new();
    }
    let version = version_name(facts.server_version_num);
    if facts.server_version_num < 160_000 {
        return vec![item(
            Status::Fail,
            "standby capture",
            format!(
                "the server is a standby (in recovery) running PostgreSQL {version}: logical decoding on a standby \
                 needs PostgreSQL 16 or later"
            ),
            Some("point source.url at the primary, or upgrade the standby and its primary to PostgreSQL 16+".into()),
        )];
    }
    let mut out = vec![item(
        Status::Ok,
        "standby capture",
        format!(
            "the server is a standby (in recovery, PostgreSQL {version}): ficus decodes its own slot here and writes \
             nothing; unavailable on a standby: the initial snapshot, backfills, the heartbeat, creating or extending \
             the publication{}",
            if facts.slot_exists {
                ""
            } else {
                "; creating the slot waits for the primary's next running-transactions record (SELECT \
                 pg_log_standby_snapshot(); on the primary ends the wait)"
            }
        ),
        None,
    )];
    if facts.hot_standby_feedback {
        out.push(item(Status::Ok, "hot_standby_feedback", "on".into(), None));
    } else {
        out.push(item(
            Status::Warn,
            "hot_standby_feedback",
            "is off: the primary may vacuum catalog rows the slot still needs; PostgreSQL then invalidates the slot \
             (rows_removed) and ficus stops with exit 2"
                .into(),
            Some("ALTER SYSTEM SET hot_standby_feedback = on;  SELECT pg_reload_conf();  -- on this standby".into()),
        ));
    }
    if facts.primary_slot_name.is_empty() {
        out.push(item(
            Status::Warn,
            "primary_slot_name",
            "is empty: without a physical slot on the primary, the primary may remove WAL and catalog rows this \
             standby (and its logical slot) still needs while it is disconnected"
                .into(),
            Some(
                "SELECT pg_create_physical_replication_slot('<name>');  -- on the primary, then on this standby: \
                 ALTER SYSTEM SET primary_slot_name = '<name>';  SELECT pg_reload_conf();"
                    .into(),
            ),
        ));
    }
    if config.source.heartbeat_interval_secs > 0 {
        out.push(item(
            Status::Warn,
            "heartbeat",
            "off on a standby (source.heartbeat_interval_secs is set): it writes a logical message, which a standby \
             cannot; the same message written on the primary replicates here"
                .into(),
            Some(format!(
                "source.heartbeat_interval_secs: 0, and on the primary every minute: SELECT \
                 pg_logical_emit_message(true, '{}', now()::text);",
                crate::change::HEARTBEAT_PREFIX
            )),
        ));
    }
    if config.source.failover_slot == FailoverSlot::On && !facts.slot_exists {
        out.push(item(
            Status::Fail,
            "failover slot",
            "source.failover_slot: true, but PostgreSQL cannot create a failover slot on a standby".into(),
            Some("source.failover_slot: auto".into()),
        ));
    }
    out
}

/// The publication line on a standby: ficus cannot create or extend it there, so a gap fails with the SQL to run on
/// the primary (it replicates to the standby).
pub(crate) fn publication_line(publication: &str, exists: bool, missing: &[TableName]) -> CheckItem {
    let title = format!("publication {publication}");
    let list = missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
    let (detail, fix) = match (exists, missing.is_empty()) {
        (true, true) => {
            return CheckItem { status: Status::Ok, title, detail: "includes every captured table".into(), fix: None }
        }
        (false, _) => (
            "missing, and a standby cannot create it".to_string(),
            format!(
                "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true);  -- on the primary, \
                 as the tables' owner; it replicates to this standby",
                quote_ident(publication)
            ),
        ),
        (true, false) => (
            format!("lacks {list}, and a standby cannot add them"),
            format!(
                "ALTER PUBLICATION {} ADD TABLE {list};  -- on the primary; it replicates to this standby",
                quote_ident(publication)
            ),
        ),
    };
    CheckItem { status: Status::Fail, title, detail, fix: Some(fix) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "source:\n  url: postgres://u@h/d\n  tables: [public.t]\n{extra}kafka:\n  brokers: b:9092\nchanges:\n  tables: ['*']\n"
        );
        Config::from_yaml(&yaml, &|_| None).unwrap()
    }

    fn facts(version: i32) -> RecoveryFacts {
        RecoveryFacts {
            in_recovery: true,
            server_version_num: version,
            hot_standby_feedback: true,
            primary_slot_name: "standby1".into(),
            slot_exists: true,
        }
    }

    fn status_of<'a>(lines: &'a [CheckItem], title: &str) -> Option<&'a CheckItem> {
        lines.iter().find(|l| l.title == title)
    }

    #[test]
    fn a_primary_says_nothing_and_a_standby_before_16_fails_naming_the_version() {
        assert!(lines(&config(""), &RecoveryFacts::default()).is_empty());
        let l = lines(&config(""), &facts(150_010));
        assert_eq!((l.len(), l[0].status), (1, Status::Fail));
        assert!(l[0].detail.contains("15.10") && l[0].detail.contains("16"), "{}", l[0].detail);
        assert!(l[0].fix.as_deref().unwrap().contains("primary"));
    }

    #[test]
    fn a_standby_on_16_lists_what_is_unavailable_and_refuses_what_writes() {
        let l = lines(&config(""), &facts(160_004));
        assert_eq!(l.iter().map(|i| i.status).collect::<Vec<_>>(), [Status::Ok, Status::Ok]);
        assert!(l[0].detail.contains("unavailable") && l[0].detail.contains("heartbeat"), "{}", l[0].detail);
        let mut f = facts(170_000);
        f.slot_exists = false;
        f.hot_standby_feedback = false;
        f.primary_slot_name.clear();
        let l = lines(&config("  heartbeat_interval_secs: 5\n  failover_slot: true\n"), &f);
        assert!(l[0].detail.contains("pg_log_standby_snapshot"), "{}", l[0].detail);
        assert_eq!(status_of(&l, "hot_standby_feedback").unwrap().status, Status::Warn);
        assert_eq!(status_of(&l, "primary_slot_name").unwrap().status, Status::Warn);
        assert_eq!(status_of(&l, "heartbeat").unwrap().status, Status::Warn);
        assert_eq!(status_of(&l, "failover slot").unwrap().status, Status::Fail);
        // An existing slot's failover flag is the failover lines' business.
        let l = lines(&config("  failover_slot: true\n"), &facts(170_000));
        assert!(status_of(&l, "failover slot").is_none());
    }

    #[test]
    fn a_publication_gap_on_a_standby_fails_with_the_sql_for_the_primary() {
        let t = TableName { schema: "public".into(), name: "t".into() };
        assert_eq!(publication_line("p", true, &[]).status, Status::Ok);
        let missing = publication_line("p", false, std::slice::from_ref(&t));
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.fix.as_deref().unwrap().starts_with("CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"t\""));
        assert!(missing.fix.as_deref().unwrap().contains("on the primary"));
        let lacks = publication_line("p", true, &[t]);
        assert!(lacks.fix.as_deref().unwrap().starts_with("ALTER PUBLICATION \"p\" ADD TABLE"), "{:?}", lacks.fix);
    }
}
