//! `snapshot:` — how existing rows are brought in (see [`crate::snapshot`]).

use serde::Deserialize;

use super::ConfigError;
use crate::ident::TableName;

/// `snapshot:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `initial` (default): on the first start (the checkpoint records no snapshot yet) copy every table of
    /// `snapshot.tables` while streaming, then keep streaming. `never`: stream only. `initial_only`: copy, then
    /// exit 0 once every copied row is in Kafka.
    #[serde(default)]
    pub mode: SnapshotMode,
    /// Tables the initial snapshot copies; default: every table of `source.tables`. Each must be captured and
    /// have a primary key (or a replica-identity index).
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// Rows per chunk: each chunk is one short read in key order. Default 10000.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// Copy workers, each with its own connection: tables copied at the same time, and the key ranges a large
    /// table is split into. Default 2.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// A table of at least this many rows (`pg_class.reltuples`) is split into `workers` key ranges copied in
    /// parallel; 0: never split. Default 100000.
    #[serde(default = "default_split_min_rows")]
    pub split_min_rows: u64,
    /// Accept `ficus backfill` requests (logical decoding messages any role with access to the database can
    /// write; see docs/snapshots.md). Default true.
    #[serde(default = "default_true")]
    pub backfill_requests: bool,
    /// What a start does when the changes after the checkpoint are gone from the server (slot dropped, re-created
    /// or invalidated; see docs/guarantees.md): `fail` (default, exit 2 with the fix) or `resnapshot` (re-create the
    /// slot if needed and copy `snapshot.tables` again).
    #[serde(default)]
    pub on_gap: OnGap,
}

/// `snapshot.on_gap`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnGap {
    #[default]
    Fail,
    Resnapshot,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            mode: SnapshotMode::default(),
            tables: None,
            chunk_size: default_chunk_size(),
            workers: default_workers(),
            split_min_rows: default_split_min_rows(),
            backfill_requests: true,
            on_gap: OnGap::Fail,
        }
    }
}

/// `snapshot.mode`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
    InitialOnly,
}

fn default_chunk_size() -> u32 {
    10_000
}
fn default_workers() -> u32 {
    2
}
fn default_split_min_rows() -> u64 {
    100_000
}
fn default_true() -> bool {
    true
}

impl SnapshotConfig {
    /// Checks the limits; `captured` is `source.tables`, parsed.
    pub fn validate(&self, captured: &[TableName]) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.chunk_size) {
            return Err(ConfigError::invalid("snapshot.chunk_size", "must be between 1 and 1000000 (default 10000)"));
        }
        if !(1..=32).contains(&self.workers) {
            return Err(ConfigError::invalid("snapshot.workers", "must be between 1 and 32 (default 2)"));
        }
        if self.split_min_rows != 0 && self.split_min_rows < 2 * u64::from(self.chunk_size) {
            // A range holds at least a chunk: splitting a table of fewer rows only adds watermarks.
            return Err(ConfigError::invalid(
                "snapshot.split_min_rows",
                format!(
                    "must be 0 (never split) or at least twice snapshot.chunk_size ({}); raise it (default \
                     100000) or lower chunk_size",
                    2 * u64::from(self.chunk_size)
                ),
            ));
        }
        self.tables(captured).map(|_| ())
    }

    /// The tables of the initial snapshot, in order. Errors name the list index.
    pub fn tables(&self, captured: &[TableName]) -> Result<Vec<TableName>, ConfigError> {
        let Some(list) = &self.tables else { return Ok(captured.to_vec()) };
        let mut out = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let key = format!("snapshot.tables[{i}]");
            let name = TableName::parse(t).map_err(|m| ConfigError::invalid(&key, m))?;
            if !captured.contains(&name) {
                return Err(ConfigError::invalid(key, format!("{name} is not in source.tables; add it there first")));
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }
}
