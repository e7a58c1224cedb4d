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

use crate::lsn::Lsn;
use crate::snapshot::OnGap;

/// The slot as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Missing,
    /// `wal_status = lost`: the slot exists but cannot stream.
    Invalidated,
    Usable { confirmed: Lsn },
}

/// What the session does before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resume {
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
pub(super) fn decide(
    checkpoint: Option<Lsn>,
    slot: SlotState,
    server_wal: Lsn,
    on_gap: OnGap,
    slot_name: &str,
    checkpoint_path: &str,
) -> Result<Resume, String> {
    let Some(cp) = checkpoint else {
        return match slot {
            SlotState::Missing => Ok(Resume { drop_slot: false, create_slot: true, start: None, plan_snapshot: true, recovered_gap: None }),
            SlotState::Usable { confirmed } => {
                Ok(Resume { drop_slot: false, create_slot: false, start: Some(confirmed), plan_snapshot: true, recovered_gap: None })
            }
            SlotState::Invalidated => gap(
                on_gap,
                format!("replication slot {slot_name} was invalidated (the WAL it needed was removed, see max_slot_wal_keep_size)"),
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
        SlotState::Invalidated => gap(
            on_gap,
            format!(
                "replication slot {slot_name} was invalidated (the WAL it needed was removed, see \
                 max_slot_wal_keep_size): the changes after the checkpoint at {cp} are no longer available"
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

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: OnGap = OnGap::Fail;
    const RESNAP: OnGap = OnGap::Resnapshot;

    fn d(cp: Option<u64>, slot: SlotState, wal: u64, on_gap: OnGap) -> Result<Resume, String> {
        decide(cp.map(Lsn), slot, Lsn(wal), on_gap, "s", "/state/s.checkpoint.json")
    }

    #[test]
    fn first_start_creates_the_slot_and_plans_the_snapshot() {
        let r = d(None, SlotState::Missing, 100, FAIL).unwrap();
        assert!(r.create_slot && r.plan_snapshot && !r.drop_slot && r.start.is_none());
    }

    #[test]
    fn a_slot_left_by_a_failed_first_start_still_gets_the_snapshot() {
        let r = d(None, SlotState::Usable { confirmed: Lsn(50) }, 100, FAIL).unwrap();
        assert_eq!(r, Resume { drop_slot: false, create_slot: false, start: Some(Lsn(50)), plan_snapshot: true, recovered_gap: None });
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
            let e = d(cp, SlotState::Invalidated, 100, FAIL).unwrap_err();
            assert!(e.contains("invalidated") && e.contains("drop slot s"), "{e}");
            let r = d(cp, SlotState::Invalidated, 100, RESNAP).unwrap();
            assert!(r.drop_slot && r.create_slot && r.plan_snapshot);
        }
    }

    #[test]
    fn a_checkpoint_beyond_the_server_wal_is_refused_even_with_resnapshot() {
        for on_gap in [FAIL, RESNAP] {
            let e = d(Some(200), SlotState::Usable { confirmed: Lsn(10) }, 100, on_gap).unwrap_err();
            assert!(e.contains("beyond the server's current WAL"), "{e}");
        }
    }
}
