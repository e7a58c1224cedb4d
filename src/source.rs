//! The source stage: reads the replication stream, decodes pgoutput, and hands [`SourceEvent`]s downstream.
//!
//! **Guarantees.**
//! - Transactions whose commit record lies before the checkpoint are skipped whole: after a restart nothing that was
//!   already flushed is published again, even if the server resends it (its confirmed position may lag ours).
//! - Events are forwarded in stream order through a bounded channel, in batches; a batch ending in a commit is sent
//!   as soon as no further message is already buffered, so batching never delays a commit for data still to come.
//!   When the channel is full the source stops
//!   reading the socket (TCP backpressure to the walsender) but keeps sending standby status updates, so the server
//!   never times the connection out while Kafka is slow.
//! - The standby status update reports `write` = last received commit, `flush` = `apply` = the flushed LSN from
//!   [`crate::progress`] — never more.
//! - A server that sends nothing for `source.receive_timeout_secs` (ficus asks it for a reply after half of it)
//!   ends the session with a transient error, so the pipeline reconnects: a connection whose server-to-ficus
//!   direction died while ficus's status updates still arrive would otherwise hang forever (the server never times
//!   it out). Time spent not reading because the channel is full does not count as silence.
//! - Keepalives outside a transaction become [`SourceEvent::Idle`] positions: once everything before them is in
//!   Kafka they are confirmed, so a slot whose tables are idle does not pin the WAL of a busy database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::change::{Change, Datum, OidMap, Op, Table, TxMeta};
use crate::lsn::Lsn;
use crate::postgres::control::Catalog;
use crate::postgres::pgoutput::{self, DecodeError, Message, OldKind};
use crate::postgres::replication::{ReplicationError, ReplicationMessage, ReplicationStream};

mod relations;

/// What the source hands to the sink, in stream order.
#[derive(Debug)]
pub enum SourceEvent {
    Begin(Arc<TxMeta>),
    Change(Change),
    /// A transactional logical decoding message.
    Message(crate::change::LogicalMessage),
    /// End of the open transaction; `end_lsn` is what PostgreSQL expects as flush position.
    Commit {
        end_lsn: Lsn,
    },
    /// A server position with no transaction open (see module docs).
    Idle(Lsn),
}

/// Events travel in batches to keep channel overhead off the per-change path.
pub type Batch = Vec<SourceEvent>;

const BATCH: usize = 256;

/// A batch also closes once its messages hold this many bytes of pgoutput data. Counted in changes alone, 64 × 256
/// wide rows (a few KB each) kept tens of MB of decoded rows in flight (156 MiB peak RSS with 4 KB rows); with this
/// cap the channel holds at most [`CHANNEL_BATCHES`] × 256 KiB whatever the row size.
const BATCH_BYTES: usize = 256 * 1024;

/// Batches the channel from the source to the route task holds: at most 16 × 256 KiB = 4 MiB of pgoutput data
/// (decoded rows take more), or 4096 changes: ~15 ms at the walsender's fastest pace, enough to smooth the route
/// task's pauses. 64 (16 MiB) until issue 16: more peak RSS, no measured throughput (docs/benchmarks.md).
pub const CHANNEL_BATCHES: usize = 16;

/// Messages the source handles in a row when they are already received, before it looks at its timer and the
/// shutdown token again.
const BURST: usize = 32;

/// How long a shutdown waits for the end of a transaction it interrupted (the whole shutdown stays under 30 s:
/// this, then the producer's flush).
pub const FINISH_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Source failures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("replication stream: {0}")]
    Replication(#[from] ReplicationError),
    #[error("pgoutput message at {lsn}: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("the server ended the replication stream")]
    Ended,
    /// The control connection failed while reading a changed table's key.
    #[error("{0}")]
    Catalog(String),
    /// The stream sends binary values and a Relation message names a column type ficus cannot map from binary
    /// (the table changed after the stream started). The pipeline restarts the stream in text mode.
    #[error("column {table}.{column} has type OID {type_oid}, which has no binary mapping; text values needed")]
    NeedsTextValues { table: String, column: String, type_oid: u32 },
}

impl SourceError {
    /// Worth reconnecting for.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Replication(e) => e.is_transient(),
            SourceError::Ended => true,
            // The control connection broke; a reconnect reads the key again.
            SourceError::Catalog(_) => true,
            _ => false,
        }
    }
}

/// Where the source ended; handed back so the pipeline can send the final status update after the sink drained.
pub struct Stopped {
    pub stream: ReplicationStream,
    pub received: Lsn,
}

/// The source task's state. `'c` is the control connection it reads changed tables' keys from.
pub struct Source<'c> {
    stream: ReplicationStream,
    /// Reads the current key of a table whose Relation message cannot state it (REPLICA IDENTITY FULL/NOTHING).
    control: Option<&'c tokio_postgres::Client>,
    /// Relation OIDs described by a Relation message in this session (the start-up catalog is only trusted for the
    /// first description of a table; a later one follows DDL).
    described: std::collections::HashSet<u32>,
    /// Declared column type → the type whose value mapping applies (domains → base type, arrays of anything → JSON
    /// arrays; see `control::value_types`), read from the catalog once per type.
    value_types: HashMap<u32, u32>,
    /// The transaction whose catalog changes the control connection is known to see (see [`Self::catalog_sees_tx`]).
    visible_xid: Option<u32>,
    out: mpsc::Sender<Batch>,
    flushed: watch::Receiver<Lsn>,
    catalog: Catalog,
    relations: OidMap<Arc<Table>>,
    skip_before: Lsn,
    received: Lsn,
    reported: Lsn,
    last_status: Instant,
    status_interval: Duration,
    tx: Option<Arc<TxMeta>>,
    skipping: bool,
    position: u32,
    batch: Batch,
    /// pgoutput bytes of the messages in `batch` (see [`BATCH_BYTES`]).
    batch_bytes: usize,
    last_idle: Lsn,
    /// The stream was started with pgoutput's `binary` option.
    binary: bool,
    /// Where `/status.receivedLsn` goes (see [`Source::with_status`]), and the position last written there.
    status: Option<Arc<crate::health::Health>>,
    wal_received: Lsn,
    status_received: Lsn,
    /// See [`Source::with_receive_timeout`]; `None` = off.
    receive_timeout: Option<Duration>,
    /// A reply was asked for in the current silence.
    pinged: bool,
    /// When the source last went back to reading the socket after waiting for channel capacity.
    reading_since: Instant,
}

impl<'c> Source<'c> {
    /// `skip_before` is the checkpoint: transactions committed before it are not forwarded again.
    pub fn new(
        stream: ReplicationStream,
        out: mpsc::Sender<Batch>,
        flushed: watch::Receiver<Lsn>,
        catalog: Catalog,
        skip_before: Lsn,
        status_interval: Duration,
    ) -> Source<'c> {
        Source {
            stream,
            control: None,
            described: Default::default(),
            value_types: HashMap::new(),
            visible_xid: None,
            out,
            flushed,
            catalog,
            relations: OidMap::default(),
            skip_before,
            received: skip_before,
            reported: Lsn::INVALID,
            last_status: Instant::now(),
            status_interval,
            tx: None,
            skipping: false,
            position: 0,
            batch: Vec::with_capacity(BATCH),
            batch_bytes: 0,
            last_idle: skip_before,
            binary: false,
            status: None,
            wal_received: Lsn::INVALID,
            status_received: Lsn::INVALID,
            receive_timeout: None,
            pinged: false,
            reading_since: Instant::now(),
        }
    }

    /// Ends the stream with a transient error when the server sent nothing for `secs` seconds (0 = never), asking
    /// it for a reply after half of that (see the module docs).
    pub fn with_receive_timeout(mut self, secs: u64) -> Source<'c> {
        self.receive_timeout = (secs > 0).then(|| Duration::from_secs(secs));
        self
    }

    /// Declares that the stream was started with binary values: a relation whose column types cannot be mapped
    /// from binary then stops the source with [`SourceError::NeedsTextValues`] before any of its rows.
    pub fn with_binary_values(mut self, binary: bool) -> Source<'c> {
        self.binary = binary;
        self
    }

    /// Reports the last position received from the server as `/status.receivedLsn`: the highest WAL position the
    /// server's messages carried (a data message's position, a keepalive's WAL end), as PostgreSQL's own
    /// subscribers report `received_lsn`. Written at most twice a second.
    pub fn with_status(mut self, health: Arc<crate::health::Health>) -> Source<'c> {
        self.status = Some(health);
        self
    }

    /// The control connection used to re-read the key of a REPLICA IDENTITY FULL/NOTHING table after DDL.
    pub fn with_control(mut self, control: &'c tokio_postgres::Client) -> Source<'c> {
        self.control = Some(control);
        self
    }

    /// Streams until `shutdown` fires or an error occurs. A shutdown in the middle of a transaction first reads the
    /// rest of it (at most [`FINISH_TRANSACTION_TIMEOUT`]), so a clean stop ends at a transaction boundary: what was
    /// published of it is confirmed whole and the restart does not publish it again.
    #[tracing::instrument(name = "source", skip_all)]
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Stopped, SourceError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut finishing: Option<Instant> = None;
        'stream: loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if finishing.is_none() => {
                    if self.tx.is_none() || self.skipping {
                        break;
                    }
                    tracing::info!(xid = self.tx.as_ref().map(|t| t.xid), "shutdown: reading the rest of the open transaction first");
                    finishing = Some(Instant::now() + FINISH_TRANSACTION_TIMEOUT);
                }
                _ = tokio::time::sleep_until(finishing.unwrap_or_else(Instant::now)), if finishing.is_some() => {
                    tracing::warn!(
                        timeout_secs = FINISH_TRANSACTION_TIMEOUT.as_secs(),
                        "shutdown: the open transaction did not end in time; what was published of it is not confirmed \
                         and the next start publishes it again, whole"
                    );
                    break;
                }
                _ = tick.tick() => {
                    self.check_silence().await?;
                    self.maybe_status(false).await?;
                }
                msg = self.stream.next() => {
                    let mut msg = msg;
                    let mut handled = 0;
                    loop {
                        match msg? {
                            None => return Err(SourceError::Ended),
                            Some(m) => self.handle(m, &shutdown).await?,
                        }
                        if finishing.is_some() && self.tx.is_none() {
                            tracing::info!("shutdown: the open transaction ended; stopping at its commit");
                            break 'stream;
                        }
                        // Messages already received are handled here, not through another turn of the select, which
                        // registers a waiter on the shutdown token and reads the clock for the tick each time (~5%
                        // of the source's CPU at full speed). At most BURST: the status tick and a shutdown are still
                        // looked at every few dozen messages (microseconds).
                        handled += 1;
                        if handled == BURST || !self.stream.message_buffered() {
                            break;
                        }
                        // Between transactions a pending shutdown stops the stream right there, as the select would
                        // (not after the next transaction began).
                        if finishing.is_none() && self.tx.is_none() && shutdown.is_cancelled() {
                            break;
                        }
                        // `next` is cancel-safe: dropped when it would wait for the socket, nothing is lost.
                        match futures_util::FutureExt::now_or_never(self.stream.next()) {
                            Some(next) => msg = next,
                            None => break,
                        }
                    }
                }
            }
        }
        // Hand over what is complete; a partial transaction without its commit is never flushed anyway.
        self.flush_batch(&shutdown, true).await?;
        Ok(Stopped { stream: self.stream, received: self.received })
    }

    /// Sends a standby status update when forced, when the flushed LSN moved, or when the interval elapsed.
    async fn maybe_status(&mut self, force: bool) -> Result<(), SourceError> {
        if let (Some(health), true) = (&self.status, self.wal_received > self.status_received) {
            self.status_received = self.wal_received;
            let at = self.wal_received.to_string();
            health.update(|s| s.received_lsn = Some(at));
        }
        let flushed = *self.flushed.borrow();
        let due = self.last_status.elapsed() >= self.status_interval;
        if force || due || flushed != self.reported {
            self.stream.send_status(self.received.max(flushed), flushed, flushed, false).await?;
            self.reported = flushed;
            self.last_status = Instant::now();
        }
        Ok(())
    }

    /// The receive timeout (see the module docs): fails after `receive_timeout` without a message, asks for a
    /// reply (a status update with reply requested, which the server answers with a keepalive) after half of it.
    async fn check_silence(&mut self) -> Result<(), SourceError> {
        let Some(timeout) = self.receive_timeout else { return Ok(()) };
        let silent = self.stream.last_received().max(self.reading_since).elapsed();
        if silent >= timeout {
            return Err(SourceError::Replication(ReplicationError::Timeout(format!(
                "waiting for the server: nothing received for {} s (source.receive_timeout_secs), the connection \
                 is taken for dead",
                silent.as_secs()
            ))));
        }
        if silent < timeout / 2 {
            self.pinged = false;
        } else if !self.pinged {
            self.pinged = true;
            let flushed = *self.flushed.borrow();
            self.stream.send_status(self.received.max(flushed), flushed, flushed, true).await?;
            self.reported = flushed;
            self.last_status = Instant::now();
        }
        Ok(())
    }

    async fn handle(&mut self, msg: ReplicationMessage, shutdown: &CancellationToken) -> Result<(), SourceError> {
        match msg {
            ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                self.wal_received = self.wal_received.max(wal_start).max(wal_end);
                // The decoded change borrows its values from this message's bytes (zero-copy).
                self.batch_bytes += data.len();
                let decoded =
                    pgoutput::decode(data).map_err(|source| SourceError::Decode { lsn: wal_start, source })?;
                self.on_message(wal_start, decoded, shutdown).await
            }
            ReplicationMessage::KeepAlive { wal_end, reply_requested, .. } => {
                self.wal_received = self.wal_received.max(wal_end);
                if self.tx.is_none() && !self.skipping && wal_end > self.last_idle {
                    self.last_idle = wal_end;
                    self.batch.push(SourceEvent::Idle(wal_end));
                    self.flush_batch(shutdown, false).await?;
                }
                if reply_requested {
                    self.maybe_status(true).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_message(&mut self, lsn: Lsn, msg: Message, shutdown: &CancellationToken) -> Result<(), SourceError> {
        match msg {
            Message::Begin(b) => {
                if self.tx.is_some() {
                    return Err(SourceError::Protocol(format!("Begin at {lsn} inside an open transaction")));
                }
                self.position = 0;
                let meta = Arc::new(TxMeta { xid: b.xid, commit_lsn: b.final_lsn, commit_time_us: b.commit_time_us });
                self.skipping = b.final_lsn < self.skip_before;
                if self.skipping {
                    tracing::debug!(commit_lsn = %b.final_lsn, checkpoint = %self.skip_before, "skipping transaction already flushed");
                } else {
                    self.batch.push(SourceEvent::Begin(meta.clone()));
                }
                self.tx = Some(meta);
            }
            Message::Commit(c) => {
                if self.tx.take().is_none() {
                    return Err(SourceError::Protocol(format!("Commit at {lsn} without Begin")));
                }
                self.received = self.received.max(c.end_lsn);
                if !self.skipping {
                    self.batch.push(SourceEvent::Commit { end_lsn: c.end_lsn });
                    // A commit is handed on at once unless the next message is already here: then the batch goes
                    // on filling (up to BATCH / BATCH_BYTES, or the first commit after which the socket has nothing
                    // buffered). Many one-row transactions thus share a channel send and a wake-up of the route task
                    // instead of paying one each, and a commit never waits for data that has not arrived.
                    if !self.stream.message_buffered() {
                        self.flush_batch(shutdown, true).await?;
                    }
                }
                self.skipping = false;
            }
            Message::Relation(r) => self.on_relation(r).await?,
            Message::Insert { relation, new } => self.change(lsn, Op::Insert, relation, None, false, Some(new))?,
            Message::Update { relation, old, new } => {
                let (old, key_only) = split_old(old);
                self.change(lsn, Op::Update, relation, old, key_only, Some(new))?
            }
            Message::Delete { relation, old } => {
                let (old, key_only) = split_old(Some(old));
                self.change(lsn, Op::Delete, relation, old, key_only, None)?
            }
            Message::Truncate { relations, .. } => {
                for relation in relations {
                    self.change(lsn, Op::Truncate, relation, None, false, None)?;
                }
            }
            Message::LogicalMessage { transactional: true, lsn: msg_lsn, prefix, content } => {
                let Some(tx) = self.tx.clone() else {
                    return Err(SourceError::Protocol(format!("transactional message at {lsn} outside a transaction")));
                };
                let position = self.position;
                self.position += 1;
                if !self.skipping {
                    self.batch.push(SourceEvent::Message(crate::change::LogicalMessage {
                        prefix,
                        content,
                        lsn: msg_lsn,
                        position,
                        tx,
                    }));
                }
            }
            Message::LogicalMessage { transactional: false, prefix, .. } => {
                // Not part of a transaction, so not covered by the checkpoint: rules take transactional messages only.
                tracing::warn!(prefix = %prefix, lsn = %lsn, "non-transactional logical message ignored; emit it with pg_logical_emit_message(true, ...)");
            }
            Message::Origin { .. } | Message::Type { .. } => {}
        }
        if self.batch.len() >= BATCH || self.batch_bytes >= BATCH_BYTES {
            self.flush_batch(shutdown, false).await?;
        }
        Ok(())
    }

    fn change(
        &mut self,
        lsn: Lsn,
        op: Op,
        relation: u32,
        before: Option<Vec<Datum>>,
        before_is_key_only: bool,
        after: Option<Vec<Datum>>,
    ) -> Result<(), SourceError> {
        let Some(tx) = self.tx.clone() else {
            return Err(SourceError::Protocol(format!("row change at {lsn} outside a transaction")));
        };
        let position = self.position;
        self.position += 1;
        if self.skipping {
            return Ok(());
        }
        let table = self.relations.get(&relation).cloned().ok_or_else(|| {
            SourceError::Protocol(format!("change at {lsn} for relation {relation} before its Relation message"))
        })?;
        for row in [&before, &after].into_iter().flatten() {
            if row.len() != table.columns.len() {
                return Err(SourceError::Protocol(format!(
                    "change at {lsn} for {} has {} columns, its Relation message {}",
                    table.qualified_name(),
                    row.len(),
                    table.columns.len()
                )));
            }
        }
        self.batch.push(SourceEvent::Change(Change {
            op,
            table,
            before,
            after,
            before_is_key_only,
            lsn,
            position,
            tx,
        }));
        Ok(())
    }

    /// Sends the pending batch, waiting for channel capacity while still answering the server.
    async fn flush_batch(&mut self, shutdown: &CancellationToken, _commit: bool) -> Result<(), SourceError> {
        self.batch_bytes = 0;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let out = self.out.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                permit = out.reserve() => {
                    // Waiting for capacity is not reading: the server's silence counts from here again.
                    self.reading_since = Instant::now();
                    match permit {
                        Ok(p) => { p.send(batch); return Ok(()); }
                        // The sink is gone; the pipeline reports its error.
                        Err(_) => return Ok(()),
                    }
                }
                _ = shutdown.cancelled() => {
                    // Still deliver: the sink drains the channel until it closes.
                    let _ = out.send(batch).await;
                    return Ok(());
                }
                _ = tick.tick() => self.maybe_status(false).await?,
            }
        }
    }
}

fn split_old(old: Option<pgoutput::OldTuple>) -> (Option<Vec<Datum>>, bool) {
    match old {
        None => (None, false),
        Some(o) => {
            let key_only = matches!(o.kind, OldKind::Key);
            (Some(o.values), key_only)
        }
    }
}
