//! `ficus check` on the other hosts of a multi-host `source.url`: whether each standby keeps a synchronized copy of
//! the slot (PostgreSQL 17+: `sync_replication_slots`, `hot_standby_feedback`, `primary_slot_name`, a `dbname` in
//! `primary_conninfo`, its physical slot listed in the primary's `synchronized_standby_slots`), so that a failover to
//! it keeps the slot. Read-only, like the rest of the check.

use tokio_postgres::Client;

use super::report::{CheckItem, Status};
use crate::config::conninfo::{ConnInfo, TargetSessionAttrs};
use crate::config::{version_name, Config, FailoverSlot};

/// What a standby says about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct StandbyFacts {
    pub server_version_num: i32,
    pub sync_replication_slots: bool,
    pub hot_standby_feedback: bool,
    pub primary_slot_name: String,
    pub conninfo_has_dbname: bool,
    /// The slot's copy on the standby: `Some(synced)` when it exists.
    pub slot_synced: Option<bool>,
}

/// One line per other host of the URL (none for a single-host URL or `source.failover_slot: false`).
pub(crate) async fn standby_lines(info: &ConnInfo, primary: &Client, config: &Config) -> Vec<CheckItem> {
    if info.hosts.len() < 2 || config.source.failover_slot == FailoverSlot::Off {
        return Vec::new();
    }
    let synchronized: String =
        match primary.query_one("SELECT current_setting('synchronized_standby_slots', true)", &[]).await {
            Ok(row) => row.get::<_, Option<String>>(0).unwrap_or_default(),
            Err(_) => String::new(),
        };
    let mut lines = Vec::new();
    for mut candidate in info.candidates() {
        candidate.target_session_attrs = TargetSessionAttrs::Any;
        let title = format!("standby {}", candidate.target());
        let (client, task) = match candidate.connect_control().await {
            Ok(c) => c,
            Err(e) => {
                lines.push(CheckItem {
                    status: Status::Warn,
                    title: format!("host {}", candidate.target()),
                    detail: format!("not reachable: {e}"),
                    fix: Some("check the host list of source.url".into()),
                });
                continue;
            }
        };
        let facts = read_facts(&client, &config.source.slot).await;
        task.abort();
        match facts {
            Ok(None) => {} // a primary (the one ficus uses, or another): nothing to check here.
            Ok(Some(facts)) => lines.push(standby_line(title, &facts, &synchronized, &config.source.slot)),
            Err(e) => lines.push(CheckItem {
                status: Status::Warn,
                title,
                detail: format!("cannot read its settings: {e}"),
                fix: None,
            }),
        }
    }
    lines
}

/// `None` when the server is not in recovery.
async fn read_facts(client: &Client, slot: &str) -> Result<Option<StandbyFacts>, tokio_postgres::Error> {
    let row = client.query_one("SELECT pg_is_in_recovery(), current_setting('server_version_num')::int", &[]).await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let mut facts = StandbyFacts { server_version_num: row.get(1), ..StandbyFacts::default() };
    if facts.server_version_num < 170_000 {
        return Ok(Some(facts));
    }
    let row = client
        .query_one(
            "SELECT current_setting('sync_replication_slots')::bool, current_setting('hot_standby_feedback')::bool, \
             current_setting('primary_slot_name'), current_setting('primary_conninfo') ~ '(^|\\s)dbname\\s*='",
            &[],
        )
        .await?;
    facts.sync_replication_slots = row.get(0);
    facts.hot_standby_feedback = row.get(1);
    facts.primary_slot_name = row.get(2);
    facts.conninfo_has_dbname = row.get(3);
    facts.slot_synced = client
        .query_opt("SELECT (to_jsonb(s) ->> 'synced')::bool FROM pg_replication_slots s WHERE slot_name = $1", &[&slot])
        .await?
        .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false));
    Ok(Some(facts))
}

/// The line of one standby: what is missing for slot synchronization, with the fix.
pub(crate) fn standby_line(title: String, facts: &StandbyFacts, synchronized: &str, slot: &str) -> CheckItem {
    if facts.server_version_num < 170_000 {
        return CheckItem {
            status: Status::Ok,
            title,
            detail: format!(
                "PostgreSQL {}: no slot synchronization before 17, so a failover to it stops ficus with exit 2 (the \
                 slot is missing there)",
                version_name(facts.server_version_num)
            ),
            fix: None,
        };
    }
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if !facts.sync_replication_slots {
        missing.push("sync_replication_slots is off".to_string());
        fixes.push("ALTER SYSTEM SET sync_replication_slots = on;".to_string());
    }
    if !facts.hot_standby_feedback {
        missing.push("hot_standby_feedback is off".to_string());
        fixes.push("ALTER SYSTEM SET hot_standby_feedback = on;".to_string());
    }
    if facts.primary_slot_name.is_empty() {
        missing.push("primary_slot_name is not set".to_string());
        fixes.push("ALTER SYSTEM SET primary_slot_name = '<its physical slot on the primary>';".to_string());
    }
    if !facts.conninfo_has_dbname {
        missing.push("primary_conninfo has no dbname".to_string());
        fixes.push("add dbname=<any database> to primary_conninfo;".to_string());
    }
    let listed = synchronized.split(',').map(str::trim).any(|n| n == "*" || n == facts.primary_slot_name);
    if !facts.primary_slot_name.is_empty() && !listed {
        missing
            .push(format!("its slot {} is not in the primary's synchronized_standby_slots", facts.primary_slot_name));
        fixes.push(format!(
            "on the primary: ALTER SYSTEM SET synchronized_standby_slots = '{}';  SELECT pg_reload_conf();",
            facts.primary_slot_name
        ));
    }
    if !missing.is_empty() {
        fixes.push("SELECT pg_reload_conf();  -- on the standby".to_string());
        return CheckItem {
            status: Status::Warn,
            title,
            detail: format!(
                "a failover to it loses slot {slot} (ficus then stops with exit 2): {}",
                missing.join(", ")
            ),
            fix: Some(fixes.join("\n")),
        };
    }
    let slot_state = match facts.slot_synced {
        Some(true) => format!("slot {slot} synced"),
        Some(false) => format!("slot {slot} exists but is not a synced copy"),
        None => format!("slot {slot} not synchronized yet"),
    };
    CheckItem {
        status: Status::Ok,
        title,
        detail: format!(
            "sync_replication_slots on, hot_standby_feedback on, primary_slot_name {} (in synchronized_standby_slots); {slot_state}",
            facts.primary_slot_name
        ),
        fix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> StandbyFacts {
        StandbyFacts {
            server_version_num: 170_010,
            sync_replication_slots: true,
            hot_standby_feedback: true,
            primary_slot_name: "sb1".into(),
            conninfo_has_dbname: true,
            slot_synced: Some(true),
        }
    }

    #[test]
    fn a_ready_standby_is_ok_and_says_whether_the_slot_is_synced() {
        let line = standby_line("standby h:1".into(), &ready(), "sb1", "ficus");
        assert_eq!(line.status, Status::Ok);
        assert!(line.detail.contains("slot ficus synced"), "{}", line.detail);
        let line = standby_line("s".into(), &StandbyFacts { slot_synced: None, ..ready() }, "*", "ficus");
        assert_eq!(line.status, Status::Ok);
        assert!(line.detail.contains("not synchronized yet"), "{}", line.detail);
    }

    #[test]
    fn what_a_standby_lacks_is_named_with_its_fix() {
        let facts = StandbyFacts { sync_replication_slots: false, conninfo_has_dbname: false, ..ready() };
        let line = standby_line("s".into(), &facts, "other", "ficus");
        assert_eq!(line.status, Status::Warn);
        for needle in ["sync_replication_slots is off", "primary_conninfo has no dbname", "sb1 is not in the primary's"]
        {
            assert!(line.detail.contains(needle), "{needle}: {}", line.detail);
        }
        let fix = line.fix.unwrap();
        assert!(
            fix.contains("sync_replication_slots = on") && fix.contains("synchronized_standby_slots = 'sb1'"),
            "{fix}"
        );
        let old = StandbyFacts { server_version_num: 160_014, ..StandbyFacts::default() };
        let line = standby_line("s".into(), &old, "", "ficus");
        assert!(line.status == Status::Ok && line.detail.contains("16.14"), "{}", line.detail);
    }
}
