//! Who runs the producer's delivery reports: mostly the task that produces.
//!
//! librdkafka allocates every message — its copy of the payload and key, and one allocation per header — on the
//! thread that produces it, and frees it on the thread that polls its delivery report. rust-rdkafka's
//! `ThreadedProducer` polls on a thread of its own, so every message was freed across threads, mimalloc's slow path
//! (a delayed free list, collected later by the allocating thread): with the eight headers of a business event that
//! was the largest cost of publishing one (docs/benchmarks.md, 2026-11-30). Here the producing side polls itself,
//! right after it hands over records ([`Polled::poll_here`]), so messages are mostly freed where they were allocated.
//!
//! **Guarantee:** delivery reports are never left waiting for the next change. A background thread polls whenever
//! the producing side has not polled for [`HANDOVER`] (the pipeline idle, or waiting for queue space): a report is
//! handled at most about [`HANDOVER`] after it arrives. Both may poll at once; librdkafka hands each report to exactly
//! one of them, and the delivery callback ([`super::SinkContext`]) is thread-safe.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, ProducerContext};

/// How long the producing side may go without polling before the background thread takes over.
const HANDOVER: Duration = Duration::from_millis(2);

/// The producing side polls at most this often: a poll that finds nothing still takes librdkafka's queue lock.
const POLL_EVERY: Duration = Duration::from_micros(200);

/// Once idle this long, the background thread polls with long timeouts (few wake-ups of an idle sidecar).
const IDLE: Duration = Duration::from_millis(50);

/// A producer polled by whoever produces, with a background thread as the fallback. Clones share both; the thread
/// stops when the last clone is dropped (then the producer is destroyed by the thread dropping it, as before).
pub struct Polled<C: ProducerContext + 'static> {
    // Declared first, dropped first: the thread is joined before the producer's last reference goes.
    shared: Arc<Shared>,
    producer: Arc<BaseProducer<C>>,
}

impl<C: ProducerContext + 'static> Clone for Polled<C> {
    fn clone(&self) -> Self {
        Polled { shared: self.shared.clone(), producer: self.producer.clone() }
    }
}

/// What the producing side and the thread share. The thread holds only the atomics, never `Shared` itself, whose drop
/// stops and joins it.
struct Shared {
    clock: Clock,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// When the producing side last polled.
#[derive(Clone)]
struct Clock {
    epoch: Instant,
    /// Microseconds after `epoch`.
    last_poll: Arc<AtomicU64>,
}

impl Clock {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn since_last_poll(&self) -> Duration {
        Duration::from_micros(self.now().saturating_sub(self.last_poll.load(Ordering::Relaxed)))
    }
}

impl<C: ProducerContext + 'static> Polled<C> {
    /// Wraps `producer` and starts its background poller.
    pub fn new(producer: BaseProducer<C>) -> std::io::Result<Polled<C>> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let clock = Clock { epoch: Instant::now(), last_poll: Arc::new(AtomicU64::new(0)) };
        let (thread_producer, thread_stop, thread_clock) = (producer.clone(), stop.clone(), clock.clone());
        let thread = std::thread::Builder::new().name("kafka-delivery".into()).spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let since = thread_clock.since_last_poll();
                if since >= IDLE {
                    // Nobody produces: reports are handled here, as they come, for the next 100 ms.
                    thread_producer.poll(Duration::from_millis(100));
                } else if since >= HANDOVER {
                    // The producing side pauses (between batches, or waiting for queue space): take what has
                    // arrived without waiting for more, which would take the next reports from it too.
                    for _ in 0..8 {
                        thread_producer.poll(Duration::ZERO);
                    }
                    std::thread::sleep(HANDOVER / 2);
                } else {
                    std::thread::sleep(HANDOVER - since);
                }
            }
        })?;
        let shared = Arc::new(Shared { clock, stop, thread: Some(thread) });
        Ok(Polled { shared, producer })
    }

    /// The producer.
    pub fn producer(&self) -> &Arc<BaseProducer<C>> {
        &self.producer
    }

    /// Handles the delivery reports that have arrived, on this thread (at most every [`POLL_EVERY`]; `force`: now).
    /// Never blocks.
    pub fn poll_here(&self, force: bool) {
        let clock = &self.shared.clock;
        if force || clock.since_last_poll() >= POLL_EVERY {
            self.producer.poll(Duration::ZERO);
            clock.last_poll.store(clock.now(), Ordering::Relaxed);
        }
    }
}
