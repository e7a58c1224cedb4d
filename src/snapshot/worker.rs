//! A snapshot worker: copies one table (or one key range of a split table) at a time, chunk by chunk, on its own
//! read-only connection. The first worker to take a large table splits it into key ranges (the first key column's
//! histogram in `pg_stats`, else sampled values of it) and queues the other ranges for the other workers.
//!
//! Per chunk: low watermark → one `COPY (SELECT ... ORDER BY key LIMIT n)` → hand the rows over → high watermark →
//! next chunk after the last key. A worker reads its next chunk only once the sink took the previous one: at most
//! one chunk per worker is in memory (two per worker held 69–71 MiB peak in the 5M-row snapshot → broker run against
//! 53–54 MiB with one, at the same rows per second: docs/benchmarks.md).
//! No statement holds a snapshot longer than one chunk's read, so the copy never holds back vacuum.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::change::{Column, Datum, Row, Table};
use crate::config::conninfo::ConnInfo;
use crate::encode::EncodedRow;
use crate::ident::TableName;
use crate::postgres::control;

use super::chunk::{self, ChunkQuery};
use super::ledger::Mutation;
use super::window::Watermark;
use super::{CopySettings, Handover, KeyRange, ReadyChunk, SnapshotError, Snapshots, Unit, WATERMARK_PREFIX};

/// How a job ended.
pub(super) enum Outcome {
    Finished,
    /// Shutdown: the job continues from the checkpoint at the next start.
    Stopped,
}

/// Takes jobs until `stop`. Definite failures of a job (table gone, no key, bad filter) end that job with an error
/// in the log and `/status`; connection failures end the worker (the pipeline reconnects).
pub(super) async fn run(
    shared: Arc<Snapshots>,
    info: ConnInfo,
    settings: CopySettings,
    stop: CancellationToken,
) -> Result<(), SnapshotError> {
    let mut conn: Option<Client> = None;
    while let Some(mut unit) = shared.next_unit(&stop).await {
        let client = match &conn {
            Some(c) if !c.is_closed() => c,
            _ => conn.insert(connect(&info).await.inspect_err(|_| shared.requeue(unit.clone()))?),
        };
        // A chunk query can wait on a table lock for as long as another session holds it (an ALTER TABLE, a
        // LOCK): a shutdown does not wait for it. The copy resumes from the checkpoint at the next start.
        let outcome = tokio::select! {
            r = copy_unit(&shared, client, &mut unit, &settings, &stop) => r,
            _ = stop.cancelled() => {
                tracing::info!(table = %unit.job.table_name(), "snapshot: stopping without waiting for the running chunk query");
                Ok(Outcome::Stopped)
            }
        };
        match outcome {
            Ok(Outcome::Finished) => shared.unit_finished(&unit),
            Ok(Outcome::Stopped) => {
                shared.requeue(unit);
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                shared.requeue(unit);
                return Err(e);
            }
            Err(e) => shared.job_failed(&unit.job, &e),
        }
    }
    Ok(())
}

async fn connect(info: &ConnInfo) -> Result<Client, SnapshotError> {
    let (client, _connection) = info.connect_control().await.map_err(|e| SnapshotError::Connect(e.to_string()))?;
    // Read-only: the one write a worker makes is its watermarks, which PostgreSQL allows in read-only transactions.
    // synchronous_commit on: the walsender only sends flushed WAL, so with the server's default set to off a
    // watermark would wait for the WAL writer (up to wal_writer_delay, 200 ms) — per watermark, twice per chunk.
    client
        .batch_execute(
            "SET default_transaction_read_only = on; SET standard_conforming_strings = on; \
             SET synchronous_commit = on; SET application_name = 'ficus snapshot'; SET statement_timeout = 0",
        )
        .await
        .map_err(SnapshotError::sql("setting up the snapshot session"))?;
    Ok(client)
}

async fn copy_unit(
    shared: &Snapshots,
    client: &Client,
    unit: &mut Unit,
    settings: &CopySettings,
    stop: &CancellationToken,
) -> Result<Outcome, SnapshotError> {
    let chunk_size = settings.chunk_size;
    let job = &mut unit.job;
    let name = job.table_name();
    let (table, mut query) = table_meta(client, &shared.publication, &name).await?;
    query.filter = job.filter.clone();
    let encode_rows = settings.changes.publishes_unaltered_json(&name);
    if unit.range.is_none() {
        // The job's first unit in this session: a job not started yet may be split, a split one resumes its ranges.
        let estimate = estimate_rows(client, table.oid, &name, job.filter.is_some()).await;
        shared.job_started(job, estimate);
        tracing::info!(table = %name, job = job.id, resume_after = job.after.as_ref().map(|a| a.join(", ")), estimated_rows = estimate, "snapshot of table started");
        let splittable = settings.workers > 1 && settings.split_min_rows > 0 && job.after.is_none();
        if job.ranges.is_empty() && splittable && estimate.is_some_and(|e| e >= settings.split_min_rows) {
            let ranges = plan_ranges(client, &query, estimate.unwrap_or(0), settings.workers as usize).await;
            if ranges.len() > 1 {
                tracing::info!(table = %name, job = job.id, ranges = ranges.len(), "snapshot: table split into key ranges copied in parallel");
                // A plan, not work done: effective at once, before any chunk of a range is recorded.
                shared.ledger.record(crate::lsn::Lsn::INVALID, Mutation::Split { job: job.id, ranges: ranges.clone() });
                job.ranges = ranges;
            }
        }
        if !job.ranges.is_empty() && shared.take_ranges(unit).is_none() {
            return Ok(Outcome::Finished);
        }
    }
    let job = &mut unit.job;
    if let Some(r) = unit.range {
        let range = &job.ranges[r];
        query.range = Some((range.from.clone(), range.to.clone()));
        // The range's cursor stands in for the job's in this unit.
        job.after = range.after.clone();
        tracing::debug!(table = %name, job = job.id, range = r, from = range.from, to = range.to, "snapshot: copying a key range");
    }
    // One chunk at a time: the next one is read once the sink reached this one's high watermark. That bounds the
    // memory (module docs) and keeps the checkpoint's cursor honest: a chunk that must be read again (the commit
    // race, `window`) is never overtaken by a later one whose cursor the checkpoint would record first.
    // Rows per chunk: at most `chunk_size`, and as many as fit CHUNK_MEMORY at the size the rows read so far had.
    // The first chunk is small, its rows' size not known yet (a legacy table of 1 MB documents must not be read
    // `chunk_size` rows at a time).
    let mut limit = chunk_size.min(FIRST_CHUNK_ROWS);
    let outcome = loop {
        let id = shared.next_chunk_id();
        emit(client, shared, id, "low", table.oid).await?;
        let sql = query.sql(job.after.as_deref(), limit);
        let (read, unseen) = read_chunk_in_snapshot(client, &sql, &table, encode_rows).await?;
        let n = read.rows.len() as u64;
        let chunk_limit = limit;
        limit = rows_per_chunk(chunk_size, table.columns.len(), read.text_bytes, n).unwrap_or(limit);
        let after = match read.rows.last() {
            Some(last) => Some(key_text(last, &query.key)?),
            None => job.after.clone(),
        };
        let finished = n < u64::from(chunk_limit);
        let (taken, took) = oneshot::channel();
        shared.put_chunk(
            id,
            ReadyChunk {
                job: job.id,
                table: table.clone(),
                rows: read.rows,
                encoded: read.encoded,
                after: after.clone(),
                range: unit.range,
                finished,
                ranges_left: unit.ranges_left.clone(),
                unseen,
                taken,
            },
        );
        if let Err(e) = emit(client, shared, id, "high", table.oid).await {
            shared.take_chunk(id);
            return Err(e);
        }
        let handover = tokio::select! {
            _ = stop.cancelled() => None,
            // Err: the session ended before the stream reached the high watermark.
            r = took => r.ok(),
        };
        match handover {
            None => {
                // Forgotten: the next session reads it again from the checkpoint.
                shared.take_chunk(id);
                return Ok(Outcome::Stopped);
            }
            // The same chunk again, after the same key (the tap logged why).
            Some(Handover::ReadAgain) => continue,
            Some(Handover::Taken) => {}
        }
        job.after = after;
        job.rows += n;
        shared.chunk_done(job.id, &name, n);
        if finished {
            break Outcome::Finished;
        }
    };
    Ok(outcome)
}

/// About the memory one chunk's rows may take while they are read and handed over (a worker holds one chunk; the
/// sink publishes it while the worker reads the next). Narrow rows stay at `chunk_size` rows or close to it; wide
/// ones are read fewer at a time.
const CHUNK_MEMORY: u64 = 2 << 20;
/// What a row costs in memory besides its text, twice over (decoded values and encoded JSON): the row's vector and
/// change, and per value its slot and JSON member.
const ROW_OVERHEAD: u64 = 256;
const VALUE_OVERHEAD: u64 = 48;
/// The first chunk's rows, before their size is known.
const FIRST_CHUNK_ROWS: u32 = 100;

/// The next chunk's row limit, from the chunk just read (`rows` rows, `text_bytes` of COPY text); `None` when it
/// read no row (nothing learnt).
fn rows_per_chunk(chunk_size: u32, columns: usize, text_bytes: u64, rows: u64) -> Option<u32> {
    if rows == 0 {
        return None;
    }
    let per_row = 2 * text_bytes.div_ceil(rows) + ROW_OVERHEAD + VALUE_OVERHEAD * columns as u64;
    Some((CHUNK_MEMORY / per_row).clamp(1, u64::from(chunk_size)) as u32)
}

/// The key ranges to copy a table of about `estimate` rows in, one per worker: from the first key column's histogram
/// in `pg_stats` (equal-frequency bounds ANALYZE computed), else from a sample of the column; one range (no split)
/// when neither gives enough distinct values. Bounds only decide how even the ranges are: they always cover every
/// value once, however stale the statistics.
async fn plan_ranges(client: &Client, query: &ChunkQuery, estimate: u64, workers: usize) -> Vec<KeyRange> {
    let column = &query.columns[query.key[0]];
    // `histogram_bounds` is anyarray: through its text form into text[], which parses the element quoting.
    let histogram: Option<Vec<String>> = client
        .query_opt(
            "SELECT histogram_bounds::text::text[] FROM pg_stats \
             WHERE schemaname = $1 AND tablename = $2 AND attname = $3 AND histogram_bounds IS NOT NULL \
             ORDER BY inherited DESC LIMIT 1",
            &[&query.table.schema, &query.table.name, column],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0));
    let sorted = match histogram {
        Some(bounds) if bounds.len() > workers => bounds,
        _ => {
            // TABLESAMPLE SYSTEM reads whole pages: on a small sample they cluster, so the ranges are only roughly even.
            let sql = chunk::sample_sql(query, estimate, 100 * workers as u64);
            match client.query(&sql, &[]).await {
                Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                Err(e) => {
                    tracing::info!(table = %query.table, error = %e, "snapshot: the table's keys could not be sampled; it is copied as one range");
                    return Vec::new();
                }
            }
        }
    };
    chunk::ranges_from_sample(&sorted, workers)
        .into_iter()
        .map(|(from, to)| KeyRange { from, to, after: None, done: false })
        .collect()
}

/// The table as the stream would describe it (the columns `publication` publishes: no virtual generated columns, stored
/// ones only where a PostgreSQL 18 publication publishes them, a column list's columns) and its chunk query.
async fn table_meta(
    client: &Client,
    publication: &str,
    name: &TableName,
) -> Result<(Arc<Table>, ChunkQuery), SnapshotError> {
    let info = control::table_info(client, name)
        .await
        .map_err(|e| SnapshotError::Definite(e.to_string()))?
        .ok_or_else(|| SnapshotError::Definite(format!("table {name} does not exist")))?;
    if info.key_columns.is_empty() {
        return Err(SnapshotError::Definite(no_key_message(name)));
    }
    let published = control::published_columns(client, publication, name, &info)
        .await
        .map_err(|e| SnapshotError::Definite(e.to_string()))?;
    let rows = client
        .query(
            "SELECT attname::text, atttypid, atttypmod FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname = ANY($2::text[]) ORDER BY attnum",
            &[&info.oid, &published],
        )
        .await
        .map_err(SnapshotError::sql("reading the columns"))?;
    // The same value mapping as the stream's (domains as their base type, arrays of anything as JSON arrays).
    let declared: Vec<u32> = rows.iter().map(|r| r.get(1)).collect();
    let value_types =
        control::value_types(client, &declared).await.map_err(|e| SnapshotError::Definite(e.to_string()))?;
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let declared: u32 = r.get(1);
            let type_oid = value_types.get(&declared).copied().unwrap_or(declared);
            Column { is_key: info.key_columns.contains(&name), name, type_oid, type_modifier: r.get(2) }
        })
        .collect();
    let key = info
        .key_columns
        .iter()
        .map(|k| columns.iter().position(|c| &c.name == k))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            SnapshotError::Definite(format!("a key column of {name} is not published (generated, or outside the publication's column list); ficus cannot snapshot it"))
        })?;
    let query = ChunkQuery {
        table: name.clone(),
        columns: columns.iter().map(|c| c.name.clone()).collect(),
        key,
        filter: None,
        range: None,
    };
    let table = Table {
        oid: info.oid,
        schema: name.schema.clone(),
        name: name.name.clone(),
        columns,
        replica_identity: info.replica_identity,
        json: Default::default(),
    };
    Ok((Arc::new(table), query))
}

/// Why a table without a key cannot be snapshotted, and what to do.
pub fn no_key_message(name: &TableName) -> String {
    format!(
        "{name} has no primary key (nor replica-identity index): a snapshot reads a table in key order, chunk by chunk, \
         and needs a key to resume and to match rows with concurrent changes; add a primary key, or leave the table \
         out of snapshot.tables"
    )
}

/// `pg_class.reltuples`, or an exact count when the table was never analyzed and is small. `None` with a filter.
async fn estimate_rows(client: &Client, oid: u32, name: &TableName, filtered: bool) -> Option<u64> {
    if filtered {
        return None;
    }
    let row = client
        .query_one("SELECT reltuples::float8, pg_relation_size(oid) FROM pg_class WHERE oid = $1", &[&oid])
        .await
        .ok()?;
    let (tuples, size): (f64, i64) = (row.get(0), row.get(1));
    if tuples >= 0.0 {
        return Some(tuples as u64);
    }
    if size > 64 << 20 {
        return None;
    }
    let row = client.query_one(&format!("SELECT count(*) FROM {}", name.quoted()), &[]).await.ok()?;
    Some(row.get::<_, i64>(0).max(0) as u64)
}

async fn emit(client: &Client, shared: &Snapshots, chunk: u64, mark: &str, oid: u32) -> Result<(), SnapshotError> {
    let content = serde_json::to_string(&Watermark {
        slot: shared.slot.clone(),
        run: shared.run.clone(),
        chunk,
        mark: mark.into(),
        oid,
    })
    .expect("a watermark serializes");
    client
        .execute("SELECT pg_logical_emit_message(true, $1, $2)", &[&WATERMARK_PREFIX, &content])
        .await
        .map_err(SnapshotError::sql("writing a snapshot watermark (pg_logical_emit_message)"))?;
    Ok(())
}

/// Runs one chunk's COPY and parses its rows.
/// Reads a chunk and, in the same snapshot, the transactions that snapshot saw in progress (`pg_current_snapshot()`'s
/// list, as 32-bit xids): the stream side checks that none of them committed before the chunk's low watermark (the
/// commit race, `window` module docs).
async fn read_chunk_in_snapshot(
    client: &Client,
    sql: &str,
    table: &Table,
    encode: bool,
) -> Result<(ChunkRows, Vec<u32>), SnapshotError> {
    // A transaction that committed just before the low watermark may still be in the snapshot's in-progress list
    // (its backend has not left the process array yet): the commit log already says committed. Such a snapshot is
    // dropped and taken again a moment later, so the race the stream side checks for (`window`) is prevented here
    // in all but the rarest case (a backend descheduled between writing its commit record and the commit log).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(SnapshotError::sql("starting the chunk's read"))?;
        let read = async {
            let row = client
                .query_one(
                    "SELECT pg_current_snapshot()::text, \
                     coalesce(bool_or(pg_xact_status(x) = 'committed'), false) \
                     FROM pg_snapshot_xip(pg_current_snapshot()) AS x",
                    &[],
                )
                .await
                .map_err(SnapshotError::sql("reading the chunk's snapshot"))?;
            let (snapshot, committing): (String, bool) = (row.get(0), row.get(1));
            if committing && std::time::Instant::now() < deadline {
                return Ok(None);
            }
            let unseen = in_progress(&snapshot)
                .ok_or_else(|| SnapshotError::Definite(format!("pg_current_snapshot() returned {snapshot:?}")))?;
            let rows = read_chunk(client, sql, table, encode).await?;
            Ok(Some((rows, unseen)))
        }
        .await;
        // Read-only: COMMIT and ROLLBACK are the same; ROLLBACK also ends a failed transaction.
        let end = client.batch_execute("ROLLBACK").await.map_err(SnapshotError::sql("ending the chunk's read"));
        let read = read?;
        end?;
        match read {
            Some(read) => return Ok(read),
            None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    }
}

/// The in-progress list of a `pg_current_snapshot()` text (`xmin:xmax:xip,xip,…`), as the 32-bit xids pgoutput
/// sends (the low 32 bits of each 64-bit xid).
fn in_progress(snapshot: &str) -> Option<Vec<u32>> {
    let mut parts = snapshot.splitn(3, ':');
    let (_xmin, _xmax, xip) = (parts.next()?, parts.next()?, parts.next()?);
    xip.split(',').filter(|x| !x.is_empty()).map(|x| x.trim().parse::<u64>().ok().map(|x| x as u32)).collect()
}

/// A chunk's rows as read, with their encoding when the worker encodes (see [`ReadyChunk::encoded`]).
pub(super) struct ChunkRows {
    pub rows: Vec<Row>,
    pub encoded: Option<Vec<EncodedRow>>,
    /// The COPY text the rows came in (sizes the next chunk).
    pub text_bytes: u64,
}

/// Reads and parses the chunk; with `encode`, also encodes each row as it arrives (while the server is still
/// sending the next ones), so the route task only assembles events.
async fn read_chunk(client: &Client, sql: &str, table: &Table, encode: bool) -> Result<ChunkRows, SnapshotError> {
    let columns = table.columns.len();
    let stream = client.copy_out(sql).await.map_err(SnapshotError::sql("reading a chunk"))?;
    futures_util::pin_mut!(stream);
    let mut rows: Vec<Row> = Vec::new();
    let mut encoded = encode.then(Vec::new);
    let mut partial = BytesMut::new();
    let mut text_bytes = 0u64;
    while let Some(data) = stream.next().await {
        let data = data.map_err(SnapshotError::sql("reading a chunk"))?;
        text_bytes += data.len() as u64;
        // PostgreSQL sends one row per CopyData message; split anyway in case a message holds several or a part.
        let data: Bytes = if partial.is_empty() {
            data
        } else {
            partial.extend_from_slice(&data);
            partial.split().freeze()
        };
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &data) {
            let line = data.slice(start..=nl);
            let row =
                chunk::parse_row(&line, columns, rows.len()).map_err(|e| SnapshotError::Definite(e.to_string()))?;
            if let Some(out) = &mut encoded {
                match EncodedRow::of(table, &row) {
                    Ok(e) => out.push(e),
                    // The route task meets the same error with this row and reports it.
                    Err(_) => encoded = None,
                }
            }
            rows.push(row);
            start = nl + 1;
        }
        if start < data.len() {
            partial.extend_from_slice(&data[start..]);
        }
    }
    if !partial.is_empty() {
        return Err(SnapshotError::Definite("COPY output ended inside a row".into()));
    }
    Ok(ChunkRows { rows, encoded, text_bytes })
}

/// The key columns of `row` in text form (for the next chunk's `WHERE` and the checkpoint).
fn key_text(row: &Row, key: &[usize]) -> Result<Vec<String>, SnapshotError> {
    key.iter()
        .map(|&i| match &row[i] {
            Datum::Text(b) => {
                String::from_utf8(b.to_vec()).map_err(|_| SnapshotError::Definite("a key value is not UTF-8".into()))
            }
            _ => Err(SnapshotError::Definite("a key value is NULL".into())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Narrow rows keep `chunk_size`; wide ones get fewer rows per chunk, never none; an empty chunk changes nothing.
    #[test]
    fn chunks_are_sized_by_the_rows_read_so_far() {
        use super::rows_per_chunk;
        // The benchmark's 5-column rows (~85 bytes of text): ~2 MiB / 666 B.
        assert_eq!(rows_per_chunk(10_000, 5, 85 * 100, 100), Some(3148));
        assert_eq!(rows_per_chunk(1_000, 5, 85 * 100, 100), Some(1_000));
        // 32 KB documents: 31 rows per chunk; 10 MB ones: one.
        assert_eq!(rows_per_chunk(10_000, 2, 32 << 20, 1_000), Some(31));
        assert_eq!(rows_per_chunk(10_000, 2, 10 << 20, 1), Some(1));
        assert_eq!(rows_per_chunk(10_000, 2, 0, 0), None);
    }

    #[test]
    fn the_in_progress_list_of_a_snapshot_as_32_bit_xids() {
        assert_eq!(super::in_progress("100:104:100,102"), Some(vec![100, 102]));
        assert_eq!(super::in_progress("100:100:"), Some(vec![]));
        // Past the first wraparound the text holds the epoch too; pgoutput sends the low 32 bits.
        assert_eq!(super::in_progress("4294967396:4294967400:4294967397"), Some(vec![101]));
        assert_eq!(super::in_progress("garbage"), None);
        assert_eq!(super::in_progress("1:2:x"), None);
    }
}
