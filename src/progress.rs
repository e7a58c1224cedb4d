//! Ordered acknowledgement tracking: which LSN is safe to confirm.
//!
//! The sink registers every source transaction in stream order ([`Progress::begin`]), counts each Kafka message
//! it hands to the producer ([`Progress::add_message`]) and closes the transaction with its commit end LSN
//! ([`Progress::commit`]). librdkafka's delivery callback calls [`Progress::ack`] from its own thread.
//!
//! **Guarantee:** the flushed LSN published by [`Progress::subscribe`] only ever moves forward, and only to the end
//! LSN of a transaction whose every message was acknowledged *and* whose predecessors were all flushed. Nothing
//! else in ficus decides what to confirm to PostgreSQL or to write as a checkpoint: both read this value.
//! A failed delivery freezes the flushed LSN before that transaction and is reported as fatal.
//!
//! Idle positions ([`Progress::idle`]) are server WAL positions seen in keepalives while no transaction was open:
//! once everything before them is flushed they can be confirmed too, so a slot on quiet tables does not pin WAL.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};

use crate::lsn::Lsn;

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Identifies a registered transaction (its position in the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxSeq(pub u64);

#[derive(Debug)]
struct Pending {
    outstanding: u64,
    /// `None` until the commit was seen.
    end: Option<Lsn>,
    /// Commit time of the source transaction (Unix µs), for the commit → ack latency; `None` for idle positions.
    commit_time_us: Option<i64>,
}

#[derive(Debug)]
struct Inner {
    /// Sequence number of `pending[0]`.
    base: u64,
    pending: VecDeque<Pending>,
    flushed: Lsn,
    in_flight: u64,
    /// Acknowledgements so far (the monitor tells stalled deliveries by this count not moving).
    acks: u64,
    failure: Option<String>,
    /// The failure is worth a new session (see [`Progress::fail_transient`]).
    failure_transient: bool,
    /// Gated trackers: the highest position a committed Kafka transaction covers ([`Progress::release`]). The
    /// published flushed LSN is `min(flushed, released)`, recomputed whenever either moves — so acknowledgements
    /// that arrive after the commit returned still publish.
    released: Lsn,
}

/// Shared ack tracker; see the module docs.
#[derive(Debug)]
pub struct Progress {
    inner: Mutex<Inner>,
    /// exactly_once: acknowledged is not enough, the Kafka transaction must be committed; the flushed LSN is then
    /// published only by [`Progress::release`].
    gated: bool,
    flushed: watch::Sender<Lsn>,
    /// Woken by acks while someone waits: the sink waits on it when librdkafka's queue is full.
    acked: Notify,
    /// Tasks in [`Progress::wait_for_ack`]: an ack wakes them only when there are any (waking takes `Notify`'s lock,
    /// and acks arrive once per message).
    waiting: std::sync::atomic::AtomicUsize,
}

impl Progress {
    /// Starts from an already flushed position (the checkpoint).
    pub fn new(start: Lsn) -> Progress {
        let (flushed, _) = watch::channel(start);
        Progress {
            inner: Mutex::new(Inner {
                base: 0,
                pending: VecDeque::new(),
                flushed: start,
                in_flight: 0,
                acks: 0,
                failure: None,
                failure_transient: false,
                released: start,
            }),
            flushed,
            acked: Notify::new(),
            waiting: Default::default(),
            gated: false,
        }
    }

    /// A tracker for exactly_once: positions become flushed only through [`Progress::release`], after the Kafka
    /// transaction that holds them committed.
    pub fn gated(start: Lsn) -> Progress {
        Progress { gated: true, ..Progress::new(start) }
    }

    /// exactly_once: everything up to `upto` is committed in Kafka; publishes it (never past what was acknowledged).
    pub fn release(&self, upto: Lsn) {
        let mut inner = self.lock();
        inner.released = inner.released.max(upto);
        let target = inner.released.min(inner.flushed);
        drop(inner);
        self.publish(target);
    }

    fn publish(&self, target: Lsn) {
        self.flushed.send_if_modified(|cur| {
            if target > *cur {
                *cur = target;
                true
            } else {
                false
            }
        });
    }

    /// A receiver of the flushed LSN.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.flushed.subscribe()
    }

    /// Current flushed LSN.
    pub fn flushed(&self) -> Lsn {
        *self.flushed.borrow()
    }

    /// Messages handed to the producer and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    /// The first delivery failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Resolves after the next ack; used for backpressure. An ack that lands between the caller's look at the queue
    /// and this call is not seen: callers wait with a timeout.
    pub async fn wait_for_ack(&self) {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        // Registered before it is counted: an ack that sees the count wakes this future even before its first poll.
        let notified = self.acked.notified();
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        notified.await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; the data stays consistent
        // (every method updates it in one step), so recover rather than poison the whole pipeline.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the next transaction of the stream.
    pub fn begin(&self) -> TxSeq {
        self.register(None)
    }

    /// [`Progress::begin`] of a source transaction committed at `commit_time_us` (Unix µs; pgoutput's BEGIN carries
    /// it): from now until Kafka acknowledged all of it, [`Progress::lag_seconds`] counts from that time — also while
    /// a large transaction is still streaming.
    pub fn begin_at(&self, commit_time_us: i64) -> TxSeq {
        self.register(Some(commit_time_us))
    }

    fn register(&self, commit_time_us: Option<i64>) -> TxSeq {
        let mut inner = self.lock();
        let seq = inner.base + inner.pending.len() as u64;
        inner.pending.push_back(Pending { outstanding: 0, end: None, commit_time_us });
        TxSeq(seq)
    }

    /// How many messages Kafka acknowledged since this tracker was made (a count that stops moving while messages
    /// are in flight means the deliveries stalled).
    pub fn acked_total(&self) -> u64 {
        self.lock().acks
    }

    /// Counts one message of `tx` about to be produced. Call *before* handing it to the producer.
    #[cfg(test)]
    pub fn add_message(&self, tx: TxSeq) {
        self.add_messages(tx, 1)
    }

    /// Counts `n` messages of `tx` about to be produced, under one lock. Call *before* handing the first to the
    /// producer.
    pub fn add_messages(&self, tx: TxSeq, n: u64) {
        if n == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.in_flight += n;
        if let Some(p) = Self::slot(&mut inner, tx) {
            p.outstanding += n;
        }
    }

    /// Undoes [`Progress::add_message`] for a message the producer refused synchronously.
    pub fn remove_message(&self, tx: TxSeq) {
        self.ack(tx);
    }

    /// One message of `tx` was acknowledged by Kafka.
    pub fn ack(&self, tx: TxSeq) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        inner.acks += 1;
        if let Some(p) = Self::slot(&mut inner, tx) {
            p.outstanding = p.outstanding.saturating_sub(1);
        }
        self.advance(&mut inner);
        drop(inner);
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.acked.notify_waiters();
        }
    }

    /// A message of `tx` could not be delivered: nothing from `tx` on will ever be flushed.
    pub fn fail(&self, tx: TxSeq, reason: String) {
        self.fail_as(tx, reason, false)
    }

    /// Like [`Progress::fail`], for a failure that a new session can get past (the producer lost its state, e.g.
    /// after a broker restart): the pipeline reconnects and replays from the flushed position.
    pub fn fail_transient(&self, tx: TxSeq, reason: String) {
        self.fail_as(tx, reason, true)
    }

    /// Whether the first failure was transient.
    pub fn failure_is_transient(&self) -> bool {
        self.lock().failure_transient
    }

    fn fail_as(&self, tx: TxSeq, reason: String, transient: bool) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if inner.failure.is_none() {
            inner.failure = Some(reason);
            inner.failure_transient = transient;
        }
        // Keep `outstanding` > 0 so the transaction never flushes.
        let _ = tx;
        drop(inner);
        self.acked.notify_waiters();
    }

    /// The commit of `tx` was seen; `end` is the commit's end LSN (what PostgreSQL expects as flush position).
    pub fn commit(&self, tx: TxSeq, end: Lsn) {
        let mut inner = self.lock();
        if let Some(p) = Self::slot(&mut inner, tx) {
            p.end = Some(end);
        }
        self.advance(&mut inner);
    }

    /// [`Progress::commit`] of a source transaction committed at `commit_time_us` (Unix µs): when it flushes, the
    /// commit → ack latency is recorded.
    pub fn commit_at(&self, tx: TxSeq, end: Lsn, commit_time_us: i64) {
        let mut inner = self.lock();
        if let Some(p) = Self::slot(&mut inner, tx) {
            p.commit_time_us = Some(commit_time_us);
        }
        drop(inner);
        self.commit(tx, end);
    }

    /// The replication lag in seconds: now − the commit time of the oldest transaction registered (its BEGIN seen, by
    /// [`Progress::begin_at`] or [`Progress::commit_at`]) that Kafka has not acknowledged completely; 0 when every
    /// such transaction is acknowledged. A large transaction counts from its BEGIN on, not from its COMMIT.
    pub fn lag_seconds(&self) -> f64 {
        let inner = self.lock();
        let oldest = inner.pending.iter().find_map(|p| p.commit_time_us);
        match oldest {
            Some(us) => ((now_us() - us) as f64 / 1e6).max(0.0),
            None => 0.0,
        }
    }

    /// A server WAL position seen while no transaction was open (see module docs).
    pub fn idle(&self, at: Lsn) {
        let tx = self.begin();
        self.commit(tx, at);
    }

    fn slot(inner: &mut Inner, tx: TxSeq) -> Option<&mut Pending> {
        let idx = tx.0.checked_sub(inner.base)?;
        inner.pending.get_mut(usize::try_from(idx).ok()?)
    }

    fn advance(&self, inner: &mut Inner) {
        if inner.failure.is_some() {
            return;
        }
        let before = inner.flushed;
        while let Some(front) = inner.pending.front() {
            match front.end {
                Some(end) if front.outstanding == 0 => {
                    if let Some(us) = front.commit_time_us {
                        metrics::histogram!(crate::metrics::COMMIT_ACK_LATENCY)
                            .record(((now_us() - us) as f64 / 1e6).max(0.0));
                    }
                    inner.flushed = inner.flushed.max(end);
                    inner.pending.pop_front();
                    inner.base += 1;
                }
                _ => break,
            }
        }
        if inner.flushed != before {
            let lsn = if self.gated { inner.flushed.min(inner.released) } else { inner.flushed };
            self.publish(lsn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_only_in_order_and_only_when_all_acked() {
        let p = Progress::new(Lsn(10));
        let a = p.begin();
        p.add_message(a);
        p.add_message(a);
        p.commit(a, Lsn(100));
        let b = p.begin();
        p.add_message(b);
        p.commit(b, Lsn(200));
        p.ack(b);
        assert_eq!(p.flushed(), Lsn(10), "b acked but a is not");
        p.ack(a);
        assert_eq!(p.flushed(), Lsn(10), "a has one message left");
        p.ack(a);
        assert_eq!(p.flushed(), Lsn(200));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn open_transaction_blocks_flush_even_when_acked() {
        let p = Progress::new(Lsn(0));
        let a = p.begin();
        p.add_message(a);
        p.ack(a);
        assert_eq!(p.flushed(), Lsn(0));
        p.commit(a, Lsn(5));
        assert_eq!(p.flushed(), Lsn(5));
    }

    #[test]
    fn gated_progress_publishes_only_released_positions() {
        let p = Progress::gated(Lsn(0));
        let a = p.begin();
        p.add_message(a);
        p.commit(a, Lsn(50));
        p.ack(a);
        assert_eq!(p.flushed(), Lsn(0), "acknowledged is not committed");
        p.release(Lsn(80));
        assert_eq!(p.flushed(), Lsn(50), "never past what was acknowledged");
        let b = p.begin();
        p.add_message(b);
        p.commit(b, Lsn(90));
        p.release(Lsn(90));
        assert_eq!(p.flushed(), Lsn(50), "b is not acknowledged yet");
        // The acknowledgement may come after the commit returned: it publishes then.
        p.ack(b);
        assert_eq!(p.flushed(), Lsn(90));
        // An idle position released later flushes once acknowledged positions reach it.
        p.idle(Lsn(120));
        assert_eq!(p.flushed(), Lsn(90), "not released yet");
        p.release(Lsn(120));
        assert_eq!(p.flushed(), Lsn(120));
    }

    #[test]
    fn idle_positions_flush_after_predecessors() {
        let p = Progress::new(Lsn(0));
        let a = p.begin();
        p.add_message(a);
        p.commit(a, Lsn(50));
        p.idle(Lsn(80));
        assert_eq!(p.flushed(), Lsn(0));
        p.ack(a);
        assert_eq!(p.flushed(), Lsn(80));
        p.idle(Lsn(70)); // never moves backwards
        assert_eq!(p.flushed(), Lsn(80));
    }

    #[test]
    fn lag_counts_from_begin_while_a_transaction_streams() {
        let p = Progress::new(Lsn(0));
        assert_eq!(p.lag_seconds(), 0.0);
        let committed = now_us() - 5_000_000;
        let a = p.begin_at(committed);
        p.add_message(a);
        // Its COMMIT is not seen yet (a large transaction still streaming): the lag is already counted.
        let lag = p.lag_seconds();
        assert!((5.0..6.0).contains(&lag), "{lag}");
        p.commit_at(a, Lsn(10), committed);
        p.ack(a);
        assert_eq!(p.lag_seconds(), 0.0, "everything acknowledged");
        assert_eq!(p.acked_total(), 1);
    }

    #[test]
    fn failure_freezes_flush() {
        let p = Progress::new(Lsn(0));
        let a = p.begin();
        p.add_message(a);
        p.commit(a, Lsn(10));
        p.fail(a, "too large".into());
        let b = p.begin();
        p.commit(b, Lsn(20));
        assert_eq!(p.flushed(), Lsn(0));
        assert_eq!(p.failure().as_deref(), Some("too large"));
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod proptests;
