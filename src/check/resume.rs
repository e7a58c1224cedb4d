//! Where a session resumes, and the slot lifecycle cases that would otherwise be silent gaps.
//!
//! **Guarantees.** The decision is made from three facts read before anything is created: the checkpoint (file, and
//! in exactly_once mode the Kafka checkpoint), the slot as `pg_replication_slots` shows it, and the server's current
//! WAL position. ficus confirms PostgreSQL only up to its durable checkpoint (`pipeline::checkpointing`), so with a
//! checkpoint at `C`:
//! - the slot is missing or invalidated (dropped by a DBA, a failover to a server without it, `max_slot_wal_keep_size`):
//!   the changes after `C` are gone from the server;
//! - the slot's `confirmed_flush_lsn` is past `C`: it was re-created (or advanced) by something else, and the changes
//!   between `C` and it were never seen;
//! - `C` is past the server's WAL: the database was restored from a backup, or the file belongs elsewhere; trusting it
//!   would skip every change up to `C` and push the future position into the slot.
//!
//! Each of these stops ficus with exit 2 and the fix (`snapshot.on_gap: fail`, the default), or, with
//! `snapshot.on_gap: resnapshot`, re-creates the slot where needed and plans a new snapshot of `snapshot.tables`
//! (the future checkpoint is refused either way: no recovery can make it true). Without a checkpoint the session
//! starts at the slot's position (creating the slot if needed) and plans the initial snapshot: the plan depends on
//! the checkpoint, never on whether the slot existed, so a first start that failed after creating the slot still
//! copies the tables on the next start.

use crate::config::snapshot::OnGap;
use crate::lsn::Lsn;
use crate::postgres::control::Invalidation;

/// The slot as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Missing,
    /// The slot exists but cannot stream, and why.
    Invalidated(Invalidation),
    Usable {
        confirmed: Lsn,
    },
}

/// What the session does before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Drop the (invalidated) slot first.
    pub drop_slot: bool,
    /// Create the slot; the stream then starts at its consistent point.
    pub create_slot: bool,
    /// Stream from here (`None`: from the slot created now).
    pub start: Option<Lsn>,
    /// Plan a snapshot of `snapshot.tables` (a first start, or the recovery from a gap) replacing any recorded plan.
    pub plan_snapshot: bool,
    /// The gap recovered from, for the log.
    pub recovered_gap: Option<String>,
}

/// Decides how to resume; `Err` is the message of a refusal (exit 2), with the fix.
pub(crate) fn decide(
    checkpoint: Option<Lsn>,
    slot: SlotState,
    slot_may_lead: bool,
    server_wal: Lsn,
    on_gap: OnGap,
    slot_name: &str,
    checkpoint_path: &str,
) -> Result<Resume, String> {
    let Some(cp) = checkpoint else {
        return match slot {
            SlotState::Missing => Ok(Resume {
                drop_slot: false,
                create_slot: true,
                start: None,
                plan_snapshot: true,
                recovered_gap: None,
            }),
            SlotState::Usable { confirmed } => Ok(Resume {
                drop_slot: false,
                create_slot: false,
                start: Some(confirmed),
                plan_snapshot: true,
                recovered_gap: None,
            }),
            SlotState::Invalidated(why) => gap(
                on_gap,
                format!("replication slot {slot_name} was invalidated ({})", why.why()),
                GapSlot::Invalidated,
                slot_name,
                checkpoint_path,
            ),
        };
    };
    if cp > server_wal {
        return Err(format!(
            "the checkpoint in {checkpoint_path} is at {cp}, beyond the server's current WAL position {server_wal}: the \
             database was restored from a backup or promoted from an older copy, or the file belongs to another \
             server. Resuming would skip every change up to {cp}. Fix: move the checkpoint file away and start again \
             (the slot's position is used and the initial snapshot copies the tables again); check that source.url \
             names the right server"
        ));
    }
    match slot {
        SlotState::Usable { confirmed } if confirmed <= cp => {
            Ok(Resume { drop_slot: false, create_slot: false, start: Some(cp), plan_snapshot: false, recovered_gap: None })
        }
        // exactly_once without its state file: the slot legitimately leads the Kafka checkpoint by idle positions
        // (no transaction lies between them: each would have committed a newer Kafka checkpoint).
        SlotState::Usable { confirmed } if slot_may_lead => {
            Ok(Resume { drop_slot: false, create_slot: false, start: Some(confirmed), plan_snapshot: false, recovered_gap: None })
        }
        SlotState::Usable { confirmed } => gap(
            on_gap,
            format!(
                "replication slot {slot_name} is confirmed up to {confirmed}, past the checkpoint at {cp}: it was \
                 re-created or advanced by something other than this ficus, so the changes between {cp} and \
                 {confirmed} were never read"
            ),
            GapSlot::Ahead,
            slot_name,
            checkpoint_path,
        )
        .map(|r| Resume { start: Some(confirmed), ..r }),
        SlotState::Missing => gap(
            on_gap,
            format!(
                "replication slot {slot_name} does not exist but the checkpoint in {checkpoint_path} is at {cp}: the slot \
                 was dropped, or the server is a failover target without it, so the changes after {cp} are no longer \
                 available"
            ),
            GapSlot::Missing,
            slot_name,
            checkpoint_path,
        ),
        SlotState::Invalidated(why) => gap(
            on_gap,
            format!(
                "replication slot {slot_name} was invalidated ({}): the changes after the checkpoint at {cp} are no \
                 longer available",
                why.why()
            ),
            GapSlot::Invalidated,
            slot_name,
            checkpoint_path,
        ),
    }
}

/// The slot of a gap: usable (ahead of the checkpoint), missing, or invalidated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GapSlot {
    Ahead,
    Missing,
    Invalidated,
}

fn gap(on_gap: OnGap, what: String, slot: GapSlot, slot_name: &str, checkpoint_path: &str) -> Result<Resume, String> {
    let invalidated = slot == GapSlot::Invalidated;
    match on_gap {
        OnGap::Resnapshot => Ok(Resume {
            drop_slot: invalidated,
            create_slot: slot != GapSlot::Ahead,
            start: None,
            plan_snapshot: true,
            recovered_gap: Some(what),
        }),
        OnGap::Fail => Err(format!(
            "{what}. Fix: set snapshot.on_gap: resnapshot to {}re-snapshot snapshot.tables (consumers then see `read` \
             events for every row), or, to accept the gap, move {checkpoint_path} away{} and start again",
            if invalidated { format!("drop and re-create slot {slot_name} and ") } else { String::new() },
            if invalidated { format!(" and drop slot {slot_name}") } else { String::new() },
        )),
    }
}

/// What `ficus run` would decide about its own state, as `ficus check` lines: `state.dir` usable, the checkpoint
/// readable and of this source, no slot gap, no checkpoint beyond the server's WAL, and a key for every table of a
/// snapshot that the start would plan. Every case `run` refuses is a `✗` here.
pub(crate) async fn state_report(
    client: &tokio_postgres::Client,
    info: &crate::config::conninfo::ConnInfo,
    config: &crate::config::Config,
    catalog: &crate::postgres::control::Catalog,
) -> Vec<super::CheckItem> {
    use super::{CheckItem, Status};
    let item = |status, title: &str, detail: String, fix: Option<String>| CheckItem {
        status,
        title: title.to_string(),
        detail,
        fix,
    };
    let mut out = Vec::new();
    let dir = &config.state.dir;
    let mut store = match crate::checkpoint::FileCheckpointStore::open(dir, &config.source.slot) {
        Ok(s) => s,
        Err(e) => {
            out.push(item(
                Status::Fail,
                "state.dir",
                e.to_string(),
                Some(format!("make {} a writable directory", dir.display())),
            ));
            return out;
        }
    };
    out.push(item(Status::Ok, "state.dir", format!("{} is writable", dir.display()), None));
    let system = async {
        let mut repl = crate::postgres::replication::ReplicationConnection::connect(info).await?;
        repl.identify_system().await
    };
    let system = match system.await {
        Ok(s) => s,
        Err(e) => {
            out.push(item(
                Status::Fail,
                "replication connection",
                e.to_string(),
                Some("check the role's REPLICATION privilege and pg_hba.conf".into()),
            ));
            return out;
        }
    };
    let database = system.dbname.clone().unwrap_or_else(|| info.dbname.clone());
    let path = store.path().display().to_string();
    let checkpoint = match store.load_for(&system.systemid, &database, &config.source.slot) {
        Ok(c) => c.map(|(lsn, _)| lsn),
        Err(e) => {
            out.push(item(Status::Fail, "checkpoint", e.to_string(), None));
            return out;
        }
    };
    let slot = match crate::postgres::control::slot_info(client, &config.source.slot).await {
        Ok(None) => SlotState::Missing,
        Ok(Some(s)) => match s.invalidated() {
            Some(why) => SlotState::Invalidated(why),
            None => SlotState::Usable { confirmed: s.confirmed_flush.unwrap_or(Lsn::INVALID) },
        },
        Err(e) => {
            out.push(item(Status::Fail, "checkpoint", format!("reading the slot: {e}"), None));
            return out;
        }
    };
    // `check` reads the file checkpoint only; with it, the slot never leads legitimately.
    match decide(checkpoint, slot, false, system.xlogpos, config.snapshot.on_gap, &config.source.slot, &path) {
        Err(e) => {
            let (detail, fix) =
                e.split_once(" Fix: ").map_or((e.clone(), None), |(d, f)| (d.to_string(), Some(f.to_string())));
            out.push(item(Status::Fail, "checkpoint", detail, fix));
        }
        Ok(r) => {
            let detail = match (checkpoint, &r.recovered_gap) {
                (_, Some(gap)) => format!("{gap}; snapshot.on_gap: resnapshot would copy snapshot.tables again"),
                (Some(cp), None) => format!("{path}: resume at {cp}"),
                (None, None) => format!("none yet ({path}): the first start begins at the slot's position"),
            };
            out.push(item(
                if r.recovered_gap.is_some() { Status::Warn } else { Status::Ok },
                "checkpoint",
                detail,
                None,
            ));
            let snapshots = config.snapshot.mode != crate::config::SnapshotMode::Never || r.recovered_gap.is_some();
            // A standby cannot write the watermarks: `ficus run` refuses the planned snapshot there (exit 2).
            if r.plan_snapshot && snapshots && crate::postgres::control::in_recovery(client).await.unwrap_or(false) {
                out.push(item(
                    Status::Fail,
                    "snapshot",
                    format!("this start plans a snapshot, but {}", crate::snapshot::SNAPSHOT_ON_STANDBY),
                    Some("snapshot.mode: never".into()),
                ));
            } else if r.plan_snapshot && snapshots {
                match snapshot_blockers(client, config, catalog).await {
                    Ok(blockers) => {
                        for b in blockers {
                            out.push(item(
                                Status::Fail,
                                &format!("snapshot of {}", b.table),
                                format!(
                                    "this start plans a snapshot and {}: `ficus run` refuses it (exit 2)",
                                    b.problem
                                ),
                                Some(b.fix),
                            ));
                        }
                    }
                    Err(e) => out.push(item(Status::Fail, "snapshot", e.to_string(), None)),
                }
            }
        }
    }
    out
}

/// A table of `snapshot.tables` a snapshot cannot copy.
pub(crate) struct SnapshotBlocker {
    pub table: crate::ident::TableName,
    pub problem: String,
    pub fix: String,
    /// The whole sentence, for the error of `ficus run`.
    pub message: String,
}

/// What stops a snapshot of `snapshot.tables` before it starts: a table without a key (keyset chunks need one) or
/// that the role cannot SELECT. `ficus run` refuses a start that would plan such a snapshot (exit 2) before it
/// creates anything; `ficus check` lists the same lines.
pub(crate) async fn snapshot_blockers(
    client: &tokio_postgres::Client,
    config: &crate::config::Config,
    catalog: &crate::postgres::control::Catalog,
) -> Result<Vec<SnapshotBlocker>, crate::postgres::control::ControlError> {
    use crate::postgres::control::ControlError;
    let captured = config.captured_tables().map_err(|e| ControlError::Invalid(e.to_string()))?;
    let mut out = Vec::new();
    for table in config.snapshot.tables(&captured).map_err(|e| ControlError::Invalid(e.to_string()))? {
        let Some(info) = catalog.tables.get(&table) else { continue };
        if info.key_columns.is_empty() {
            out.push(SnapshotBlocker {
                problem: "the table has no primary key".into(),
                fix: "add a primary key, or leave the table out of snapshot.tables".into(),
                message: crate::snapshot::no_key_message(&table),
                table,
            });
            continue;
        }
        let select: bool = client
            .query_one("SELECT has_table_privilege($1::oid, 'SELECT')", &[&info.oid])
            .await
            .map_err(|source| ControlError::Sql { context: format!("checking SELECT on {table}"), source })?
            .get(0);
        if !select {
            let fix = format!(
                "GRANT SELECT ON {} TO <the role of source.url>;  -- or leave the table out of snapshot.tables",
                table.quoted()
            );
            out.push(SnapshotBlocker {
                problem: "the role cannot SELECT the table".into(),
                message: format!("{table}: the role cannot SELECT it; fix: {fix}"),
                fix,
                table,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: OnGap = OnGap::Fail;
    const RESNAP: OnGap = OnGap::Resnapshot;

    fn d(cp: Option<u64>, slot: SlotState, wal: u64, on_gap: OnGap) -> Result<Resume, String> {
        decide(cp.map(Lsn), slot, false, Lsn(wal), on_gap, "s", "/state/s.checkpoint.json")
    }

    #[test]
    fn first_start_creates_the_slot_and_plans_the_snapshot() {
        let r = d(None, SlotState::Missing, 100, FAIL).unwrap();
        assert!(r.create_slot && r.plan_snapshot && !r.drop_slot && r.start.is_none());
    }

    #[test]
    fn a_slot_left_by_a_failed_first_start_still_gets_the_snapshot() {
        let r = d(None, SlotState::Usable { confirmed: Lsn(50) }, 100, FAIL).unwrap();
        assert_eq!(
            r,
            Resume {
                drop_slot: false,
                create_slot: false,
                start: Some(Lsn(50)),
                plan_snapshot: true,
                recovered_gap: None
            }
        );
    }

    #[test]
    fn normal_restart_resumes_at_the_checkpoint() {
        for confirmed in [10, 40] {
            let r = d(Some(40), SlotState::Usable { confirmed: Lsn(confirmed) }, 100, FAIL).unwrap();
            assert_eq!(r.start, Some(Lsn(40)));
            assert!(!r.plan_snapshot && !r.create_slot);
        }
    }

    #[test]
    fn a_dropped_slot_is_a_gap() {
        let e = d(Some(40), SlotState::Missing, 100, FAIL).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("snapshot.on_gap: resnapshot"), "{e}");
        let r = d(Some(40), SlotState::Missing, 100, RESNAP).unwrap();
        assert!(r.create_slot && r.plan_snapshot && !r.drop_slot && r.start.is_none() && r.recovered_gap.is_some());
    }

    #[test]
    fn a_recreated_slot_ahead_of_the_checkpoint_is_a_gap() {
        let e = d(Some(40), SlotState::Usable { confirmed: Lsn(41) }, 100, FAIL).unwrap_err();
        assert!(e.contains("past the checkpoint"), "{e}");
        let r = d(Some(40), SlotState::Usable { confirmed: Lsn(41) }, 100, RESNAP).unwrap();
        assert_eq!(r.start, Some(Lsn(41)));
        assert!(r.plan_snapshot && !r.create_slot);
    }

    #[test]
    fn an_invalidated_slot_is_a_gap_with_or_without_checkpoint() {
        for cp in [None, Some(40)] {
            let e = d(cp, SlotState::Invalidated(Invalidation::WalRemoved), 100, FAIL).unwrap_err();
            assert!(e.contains("invalidated") && e.contains("drop slot s"), "{e}");
            let r = d(cp, SlotState::Invalidated(Invalidation::WalRemoved), 100, RESNAP).unwrap();
            assert!(r.drop_slot && r.create_slot && r.plan_snapshot);
        }
    }

    #[test]
    fn an_invalidated_slot_names_its_reason_and_the_fix() {
        let slot = |wal_status: &str, reason: Option<&str>| crate::postgres::control::SlotInfo {
            plugin: Some("pgoutput".into()),
            database: Some("db".into()),
            active_pid: None,
            confirmed_flush: None,
            wal_status: Some(wal_status.into()),
            failover: None,
            synced: None,
            invalidation_reason: reason.map(str::to_string),
        };
        let cases = [
            // Before 17 there is no invalidation_reason: lost is the WAL removal.
            (slot("lost", None), "max_slot_wal_keep_size"),
            (slot("lost", Some("wal_removed")), "max_slot_wal_keep_size"),
            (slot("lost", Some("idle_timeout")), "idle_replication_slot_timeout"),
            (slot("lost", Some("rows_removed")), "hot_standby_feedback = on"),
            (slot("lost", Some("wal_level_insufficient")), "wal_level = logical on the primary"),
            (slot("lost", Some("something_new")), "pg_replication_slots.invalidation_reason"),
        ];
        for (info, fix) in cases {
            let why = info.invalidated().expect("invalidated");
            for cp in [None, Some(40)] {
                let e = d(cp, SlotState::Invalidated(why), 100, FAIL).unwrap_err();
                assert!(e.contains(fix), "{:?}: {e}", info.invalidation_reason);
                if fix != "max_slot_wal_keep_size" {
                    assert!(!e.contains("max_slot_wal_keep_size"), "{e}");
                }
            }
        }
        assert_eq!(slot("reserved", None).invalidated(), None);
    }

    #[test]
    fn exactly_once_without_its_file_resumes_where_the_slot_leads_the_kafka_checkpoint() {
        let r =
            decide(Some(Lsn(40)), SlotState::Usable { confirmed: Lsn(45) }, true, Lsn(100), FAIL, "s", "/f").unwrap();
        assert_eq!(r.start, Some(Lsn(45)));
        assert!(!r.plan_snapshot && r.recovered_gap.is_none());
        // A missing slot is still a gap.
        assert!(decide(Some(Lsn(40)), SlotState::Missing, true, Lsn(100), FAIL, "s", "/f").is_err());
    }

    #[test]
    fn a_checkpoint_beyond_the_server_wal_is_refused_even_with_resnapshot() {
        for on_gap in [FAIL, RESNAP] {
            let e = d(Some(200), SlotState::Usable { confirmed: Lsn(10) }, 100, on_gap).unwrap_err();
            assert!(e.contains("beyond the server's current WAL"), "{e}");
        }
    }
}
