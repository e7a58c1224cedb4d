//! Checkpoints: the flushed LSN, persisted so a restart resumes where Kafka's acknowledgements ended.
//!
//! This module owns the persisted format, [`Checkpoint`], and nothing else decides it: at_least_once keeps it in a
//! file in `state.dir` ([`FileCheckpointStore`]); exactly_once keeps the same JSON as the value of a compacted Kafka
//! topic, written inside the Kafka transaction of the events it covers (`kafka::checkpoint_topic`). Both are stamped
//! by one [`CheckpointStamp`], and the snapshot progress they carry ([`SnapshotState`]) is defined here too, so
//! neither writer needs the snapshot module (it hands them a [`SnapshotAt`]).
//!
//! **Guarantees of [`FileCheckpointStore`]:** a write is atomic (temporary file, fsync, rename, fsync of the
//! directory), so after a crash the file holds either the old or the new checkpoint, never a torn one. A
//! checkpoint belongs to one database system, database and slot; loading one written for another is an error,
//! because resuming from it would silently skip changes.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ident::TableName;
use crate::lsn::Lsn;

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Everything up to here is in Kafka (a commit end LSN or an idle position).
    pub lsn: String,
    /// `system` in checkpoint-topic records written before the two formats were one.
    #[serde(alias = "system")]
    pub system_id: String,
    pub database: String,
    pub slot: String,
    /// RFC 3339, for humans.
    #[serde(default)]
    pub written_at: String,
    /// Snapshot and backfill progress as of `lsn` (absent when no snapshot was ever planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotState>,
}

impl Checkpoint {
    /// The LSN as a value.
    pub fn lsn(&self) -> Result<Lsn, CheckpointError> {
        self.lsn.parse().map_err(|e: crate::lsn::ParseLsnError| CheckpointError::Corrupt(e.to_string()))
    }
    /// Whether this checkpoint was written for `stamp`'s source (system, database and slot).
    pub fn belongs_to(&self, stamp: &CheckpointStamp) -> bool {
        self.system_id == stamp.system_id && self.database == stamp.database && self.slot == stamp.slot
    }
}

/// The source a checkpoint belongs to; stamps every checkpoint, file or topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStamp {
    pub system_id: String,
    pub database: String,
    pub slot: String,
}

impl CheckpointStamp {
    /// The checkpoint at `lsn`, with the snapshot progress as of `lsn`.
    pub fn at(&self, lsn: Lsn, snapshot: Option<SnapshotState>) -> Checkpoint {
        Checkpoint {
            lsn: lsn.to_string(),
            system_id: self.system_id.clone(),
            database: self.database.clone(),
            slot: self.slot.clone(),
            written_at: chrono::Utc::now().to_rfc3339(),
            snapshot,
        }
    }
}

/// The snapshot progress as of a flushed position (the snapshot ledger's `settle`), handed to the checkpoint writers
/// so they record it without depending on the snapshot module.
pub type SnapshotAt = Arc<dyn Fn(Lsn) -> Option<SnapshotState> + Send + Sync>;

/// The persisted snapshot state (the checkpoint's `snapshot` field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotState {
    /// Copies not finished, in the order they were requested.
    pub jobs: Vec<Job>,
    /// Id of the next job.
    pub next_job: u64,
    /// Jobs finished so far (for humans).
    #[serde(default)]
    pub finished_jobs: u64,
}

/// One table to copy: the initial snapshot of a table, or a backfill request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: u64,
    pub schema: String,
    pub table: String,
    /// `ficus backfill --where`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Key (text form, key order) of the last row of the last chunk in Kafka; `None` = from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    /// Rows copied so far.
    #[serde(default)]
    pub rows: u64,
    /// The key ranges the table is copied in, in parallel, each with its own cursor (`after` above is then unused);
    /// empty: one cursor for the whole table (also every checkpoint written before ranges existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<KeyRange>,
}

/// A range of a job's table by its first key column: `from <= column < to` (text forms, compared as the column's
/// type), copied chunk by chunk in key order like a whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRange {
    /// `None`: from the table's first row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `None`: to the table's last row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Key of the last row of the range's last chunk in Kafka; `None` = from `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    /// Every row of the range is in Kafka.
    #[serde(default)]
    pub done: bool,
}

impl Job {
    pub fn table_name(&self) -> TableName {
        TableName { schema: self.schema.clone(), name: self.table.clone() }
    }
}

/// Checkpoint storage failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint file is corrupt: {0}; move it away to resume from the slot's confirmed position")]
    Corrupt(String),
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
}

/// A checkpoint file written for another source (boxed in [`CheckpointError`]: it is large and rare).
#[derive(Debug, thiserror::Error)]
#[error(
    "checkpoint in {path} belongs to system {found_system} database {found_db} slot {found_slot}, \
         not to this source (system {system} database {db} slot {slot}). If the database was re-created or \
         replaced (e.g. `docker compose down` removed its volume but not ficus's state volume) and ficus should start \
         over from it: delete {path} and start again. If source.url names the wrong server or database, fix it \
         instead. To stream several sources, use a separate state.dir per source"
)]
pub struct Mismatch {
    pub path: PathBuf,
    pub found_system: String,
    pub found_db: String,
    pub found_slot: String,
    pub system: String,
    pub db: String,
    pub slot: String,
}

/// Where checkpoints live.
pub trait CheckpointStore: Send {
    /// The last stored checkpoint, if any.
    fn load(&mut self) -> Result<Option<Checkpoint>, CheckpointError>;
    /// Persists `checkpoint` durably before returning.
    fn store(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;
}

/// A JSON file `<state.dir>/<slot>.checkpoint.json`.
#[derive(Debug)]
pub struct FileCheckpointStore {
    dir: PathBuf,
    path: PathBuf,
}

impl FileCheckpointStore {
    /// Creates the directory if needed.
    pub fn open(dir: &Path, slot: &str) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
        // Fail now, before a slot is created or anything is published, rather than at the first checkpoint.
        let probe = dir.join(format!(".{slot}.write-test"));
        std::fs::write(&probe, b"ficus")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
        Ok(FileCheckpointStore { dir: dir.to_path_buf(), path: dir.join(format!("{slot}.checkpoint.json")) })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads and checks that the checkpoint belongs to this source; returns its LSN and snapshot state.
    pub fn load_for(
        &mut self,
        system_id: &str,
        database: &str,
        slot: &str,
    ) -> Result<Option<(Lsn, Option<SnapshotState>)>, CheckpointError> {
        let Some(cp) = self.load()? else { return Ok(None) };
        if cp.system_id != system_id || cp.database != database || cp.slot != slot {
            return Err(CheckpointError::Mismatch(Box::new(Mismatch {
                path: self.path.clone(),
                found_system: cp.system_id,
                found_db: cp.database,
                found_slot: cp.slot,
                system: system_id.into(),
                db: database.into(),
                slot: slot.into(),
            })));
        }
        Ok(Some((cp.lsn()?, cp.snapshot)))
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io { path: self.path.clone(), source }
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&mut self) -> Result<Option<Checkpoint>, CheckpointError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| CheckpointError::Corrupt(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn store(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(checkpoint).map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        // Written in two halves so that a test build can crash in between (a torn write): the checkpoint in place
        // must survive it (tests/pipeline/crash_points.rs).
        let (head, tail) = body.split_at(body.len() / 2);
        f.write_all(head).map_err(|e| self.io(e))?;
        #[cfg(feature = "failpoints")]
        fail::fail_point!("checkpoint-mid-write", |_| {
            eprintln!("failpoint checkpoint-mid-write: aborting");
            std::process::abort()
        });
        f.write_all(tail).and_then(|_| f.sync_all()).map_err(|e| self.io(e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        // The rename is only durable once the directory entry is.
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| self.io(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One format for file and topic: a stamped checkpoint reads back as itself, and a checkpoint-topic record of the
    /// earlier topic format (`system`, no `writtenAt`) still reads, so an upgrade resumes where it was.
    #[test]
    fn one_format_for_file_and_topic_and_the_earlier_topic_records_still_read() {
        let stamp = CheckpointStamp { system_id: "7301".into(), database: "shop".into(), slot: "ficus".into() };
        let state = SnapshotState { jobs: Vec::new(), next_job: 3, finished_jobs: 2 };
        let cp = stamp.at(Lsn(0x16B3800), Some(state.clone()));
        let json = serde_json::to_vec(&cp).unwrap();
        let back: Checkpoint = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, cp);
        assert!(back.belongs_to(&stamp));
        let old = r#"{"slot":"ficus","lsn":"0/16B3800","system":"7301","database":"shop","snapshot":{"jobs":[],"nextJob":3,"finishedJobs":2}}"#;
        let old: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!((old.lsn().unwrap(), old.snapshot.clone()), (Lsn(0x16B3800), Some(state)));
        assert!(old.belongs_to(&stamp));
        assert!(!old.belongs_to(&CheckpointStamp { database: "other".into(), ..stamp }));
    }

    fn cp(lsn: &str) -> Checkpoint {
        Checkpoint {
            lsn: lsn.into(),
            system_id: "7301".into(),
            database: "shop".into(),
            slot: "ficus".into(),
            written_at: "now".into(),
            snapshot: None,
        }
    }

    #[test]
    fn stores_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileCheckpointStore::open(&dir.path().join("state"), "ficus").unwrap();
        assert_eq!(s.load_for("7301", "shop", "ficus").unwrap(), None);
        s.store(&cp("0/16B3748")).unwrap();
        s.store(&cp("0/16B3800")).unwrap();
        assert_eq!(s.load_for("7301", "shop", "ficus").unwrap(), Some((Lsn(0x16B3800), None)));
        assert!(!s.path().with_extension("json.tmp").exists());
    }

    #[test]
    fn refuses_checkpoint_of_another_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileCheckpointStore::open(dir.path(), "ficus").unwrap();
        s.store(&cp("0/1")).unwrap();
        let err = s.load_for("9999", "shop", "ficus").unwrap_err().to_string();
        assert!(err.contains("separate state.dir"), "{err}");
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileCheckpointStore::open(dir.path(), "ficus").unwrap();
        std::fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(s.load(), Err(CheckpointError::Corrupt(_))));
    }
}
