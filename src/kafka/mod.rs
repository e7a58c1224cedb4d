//! Kafka sink: an idempotent librdkafka producer whose acknowledgements drive [`crate::progress`].
//!
//! **Guarantees.** The producer always runs with `enable.idempotence=true` and `acks=all`, so a retried batch is
//! never written twice and an acknowledged message is on every in-sync replica. Messages are handed to librdkafka in
//! stream order; each carries its transaction's [`TxSeq`] as delivery opaque, and the delivery callback reports it
//! to [`Progress`]. A message that librdkafka gives up on (too large, authorization, or an explicit
//! `message.timeout.ms`) is fatal: the flushed LSN never passes its transaction, so nothing after it is confirmed.
//!
//! **Backpressure.** librdkafka's queue is bounded (`queue.buffering.max.kbytes`, 2 MiB by default here). When it
//! is full, [`KafkaSink::send`] waits for acknowledgements instead of buffering; the pipeline's bounded channel then
//! fills and the source stops reading the replication socket. Memory stays flat whatever the transaction size.
//!
//! `message.timeout.ms` defaults to 0 (retry forever): a broker outage stalls the pipeline (readiness turns false)
//! rather than failing deliveries, and no change is lost. librdkafka types stay inside this module.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

pub use crate::config::kafka::describe_error;
use crate::config::kafka::FORCED;
use crate::config::KafkaConfig;
use crate::progress::{Progress, TxSeq};
use crate::record::Record;

pub mod checkpoint_topic;
pub mod exactly_once;
mod polling;
pub mod read;

/// `queue.buffering.max.kbytes` unless the user sets it.
const DEFAULT_QUEUE_KBYTES: usize = 2048;

/// A numeric `kafka.properties` value as the user wrote it (`None`: not set or not a number).
pub(crate) fn property_usize(cfg: &KafkaConfig, key: &str) -> Option<usize> {
    cfg.properties.get(key).and_then(|v| v.to_string().trim_matches('"').parse::<usize>().ok())
}

/// librdkafka's queue in bytes (`queue.buffering.max.kbytes`, the user's or ficus's default): a record whose payload
/// is larger can never be queued (librdkafka counts payloads only against it). The sink and the rules' largest-record
/// check both read it here.
pub(crate) fn queue_bytes(cfg: &KafkaConfig) -> usize {
    property_usize(cfg, "queue.buffering.max.kbytes").unwrap_or(DEFAULT_QUEUE_KBYTES).saturating_mul(1024)
}

/// Defaults users may override.
const DEFAULTS: &[(&str, &str)] = &[
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("message.timeout.ms", "0"),
    // 2 MiB, not librdkafka's 1 GiB nor the 8 MiB ficus used before issue 16: the queue holds encoded events (plus
    // librdkafka's per-message bookkeeping, not counted here), so it is the largest buffer of a streaming run. 2 MiB
    // still holds two 1 MB message sets (`message.max.bytes`), enough to keep a request in flight while the next
    // fills. 8 MiB and the 64-batch source channel together added 15–40 MiB of peak RSS for no measured throughput
    // (docs/benchmarks.md, issue 16).
    ("queue.buffering.max.kbytes", "2048"),
    ("queue.buffering.max.messages", "100000"),
    ("batch.size", "1000000"),
    ("client.id", "ficus"),
];

/// The librdkafka configuration ficus uses for `cfg` (also used by `ficus check` to probe the broker).
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in DEFAULTS {
        cc.set(*k, *v);
    }
    for (k, v) in &cfg.properties {
        cc.set(k.as_str(), v.to_string());
    }
    for (k, v) in FORCED {
        cc.set(*k, *v);
    }
    cc.set("bootstrap.servers", cfg.brokers.as_str());
    cc
}

/// Sink failures.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer could not be created: a librdkafka property is invalid.
    #[error("kafka.properties: librdkafka refused the producer configuration: {0}")]
    Config(String),
    /// A message can never be delivered (fatal; the stream stops before it).
    #[error("{0}")]
    Delivery(String),
    /// The broker did not answer within the wait (transient).
    #[error("Kafka broker {brokers} unreachable: {reason}")]
    Unreachable { brokers: String, reason: String },
    /// exactly_once: a Kafka transaction could not be begun or committed (broker away, coordinator moved, timeout).
    /// It is aborted and the session restarts from the checkpoint committed in Kafka (transient).
    #[error("{0}; the Kafka transaction is aborted and the stream replays from the last committed checkpoint")]
    Transaction(String),
    /// A delivery failed for a reason a new session gets past (see `permanent`); the stream replays from the flushed
    /// position (transient).
    #[error("{0}; reconnecting and replaying from the last confirmed position")]
    Retriable(String),
    /// exactly_once: the checkpoint topic holds the checkpoint of another source under this slot's key (fix the
    /// config and rerun; exit 2).
    #[error("{0}")]
    ForeignCheckpoint(String),
}

impl SinkError {
    /// Worth a new session (reconnect, replay from the checkpoint).
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unreachable { .. } | SinkError::Transaction(_) | SinkError::Retriable(_))
    }
}

struct SinkContext {
    progress: Arc<Progress>,
    /// Set when librdkafka reports that a newer instance with the same transactional.id fenced this producer (a
    /// fatal error). The messages it then purges fail with `PurgeQueue`, which alone would look transient: a new
    /// session would re-initialise the transactional id and fence the newer instance in turn.
    fenced: std::sync::atomic::AtomicBool,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            Notice | Info => tracing::info!(target: "librdkafka", fac, "{log_message}"),
            Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker transport errors are retried by librdkafka forever (message.timeout.ms=0); log them so an
        // operator sees why the pipeline stalls.
        tracing::warn!(target: "librdkafka", %error, "{reason}");
        if is_fenced(&error) {
            self.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn is_fenced(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch | RDKafkaErrorCode::Fenced)
    )
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let tx = TxSeq(seq as u64);
        match result {
            Ok(_) => self.progress.ack(tx),
            Err((err, msg)) => {
                let header = |name: &str| -> String {
                    msg.headers()
                        .and_then(|h| {
                            h.iter()
                                .find(|x| x.key == name)
                                .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                        })
                        .unwrap_or_else(|| "?".into())
                };
                let reason = format!(
                    "Kafka did not accept a message for topic {} (table {}, LSN {}, {} bytes): {err}{}",
                    msg.topic(),
                    header("source-table"),
                    header("source-lsn"),
                    msg.payload_len(),
                    hint(err),
                );
                // One ERROR line for the first failure; the ones after it (e.g. every message purged when the
                // producer is dropped at shutdown) at DEBUG, so thousands of lines do not bury the cause.
                if self.progress.failure().is_none() {
                    tracing::error!("{reason}");
                } else {
                    tracing::debug!("{reason}");
                }
                if self.fenced.load(std::sync::atomic::Ordering::SeqCst) || is_fenced(err) {
                    self.progress.fail(
                        tx,
                        format!("fenced: another ficus instance with the same slot (transactional.id) took over; this one stops: {reason}"),
                    );
                } else if permanent(err) {
                    self.progress.fail(tx, reason);
                } else {
                    self.progress.fail_transient(tx, reason);
                }
            }
        }
    }
}

/// Errors no retry of the same message can get past (too large, not authorized, invalid, fenced). Anything else that
/// librdkafka gives up on (it retries transport errors forever) means the producer lost its state — an idempotence
/// sequence out of order after a broker restart, a transaction the coordinator aborted — and a new session replays
/// from the flushed position.
fn permanent(err: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        err.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | MessageBatchTooLarge
                | InvalidMessage
                | InvalidRecord
                | InvalidTopic
                | PolicyViolation
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | TransactionalIdAuthorizationFailed
                | ProducerFenced
                | Fenced
                | InvalidMessageSize
        )
    )
}

fn txn_error(what: &str, e: KafkaError) -> SinkError {
    if is_fenced(&e) {
        SinkError::Delivery(format!(
            "{what}: fenced: another ficus instance with the same slot (transactional.id) took over; this one stops: {e}"
        ))
    } else {
        SinkError::Transaction(format!("{what}: {e}"))
    }
}

fn hint(err: &KafkaError) -> &'static str {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            "; raise the topic's max.message.bytes and kafka.properties.message.max.bytes, or exclude the column"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => "; grant this client WRITE on the topic",
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            "; the broker was unreachable longer than kafka.properties.message.timeout.ms (0 = retry forever)"
        }
        _ => "",
    }
}

/// The producer. Cheap to share by reference; sends in call order.
#[derive(Clone)]
pub struct KafkaSink {
    /// The producer; its delivery reports run mostly on the producing task (`polling`).
    polled: polling::Polled<SinkContext>,
    progress: Arc<Progress>,
    brokers: String,
    /// [`queue_bytes`].
    queue_bytes: usize,
}

impl KafkaSink {
    fn producer(&self) -> &Arc<BaseProducer<SinkContext>> {
        self.polled.producer()
    }

    /// exactly_once: a transactional producer. A later producer with the same `transactional_id` fences this one
    /// (a zombie instance can then commit nothing).
    pub fn with_transactional_id(
        cfg: &KafkaConfig,
        progress: Arc<Progress>,
        transactional_id: Option<&str>,
    ) -> Result<KafkaSink, SinkError> {
        let mut cc = client_config(cfg);
        if let Some(id) = transactional_id {
            cc.set("transactional.id", id);
            // How long the broker keeps a dead instance's open transaction (blocking read_committed consumers)
            // before aborting it, unless a new instance with the same id aborts it first. Overridable.
            if !cfg.properties.contains_key("transaction.timeout.ms") {
                cc.set("transaction.timeout.ms", "60000");
            }
        }
        let producer: BaseProducer<SinkContext> = cc
            .create_with_context(SinkContext { progress: progress.clone(), fenced: false.into() })
            .map_err(|e| SinkError::Config(describe_error(&e)))?;
        let polled = polling::Polled::new(producer)
            .map_err(|e| SinkError::Config(format!("could not start the delivery report thread: {e}")))?;
        Ok(KafkaSink { polled, progress, brokers: cfg.brokers.clone(), queue_bytes: queue_bytes(cfg) })
    }

    /// exactly_once: registers the transactional id with the broker (fencing older producers with it).
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer().clone();
        tokio::task::spawn_blocking(move || producer.init_transactions(timeout))
            .await
            .map_err(|e| SinkError::Delivery(e.to_string()))?
            .map_err(|e| txn_error("initialising Kafka transactions", e))
    }

    /// exactly_once: starts a Kafka transaction.
    pub fn begin_transaction(&self) -> Result<(), SinkError> {
        self.producer().begin_transaction().map_err(|e| txn_error("beginning a Kafka transaction", e))
    }

    /// exactly_once: commits the open Kafka transaction (flushes it first); blocks up to `timeout`.
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer().clone();
        tokio::task::spawn_blocking(move || producer.commit_transaction(timeout))
            .await
            .map_err(|e| SinkError::Delivery(e.to_string()))?
            .map_err(|e| txn_error("committing a Kafka transaction", e))
    }

    /// exactly_once: aborts the open Kafka transaction (best effort: the broker aborts it on timeout anyway).
    pub async fn abort_transaction(&self, timeout: Duration) {
        let producer = self.producer().clone();
        let _ = tokio::task::spawn_blocking(move || producer.abort_transaction(timeout)).await;
    }

    /// Fetches cluster metadata once; `Unreachable` if the broker does not answer within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<usize, SinkError> {
        let producer = self.producer().clone();
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
                .map_err(|e| SinkError::Unreachable { brokers, reason: e.to_string() })
        })
        .await
        .map_err(|e| SinkError::Unreachable { brokers: self.brokers.clone(), reason: e.to_string() })?
    }

    /// Hands one record of transaction `tx` to librdkafka, waiting while its queue is full.
    pub async fn send(&self, tx: TxSeq, record: &Record) -> Result<(), SinkError> {
        self.send_all(tx, std::slice::from_ref(record)).await
    }

    /// Hands the records of transaction `tx` to librdkafka in order, waiting while its queue is full. They are
    /// counted in the ack tracker all at once, before the first is produced (an acknowledgement can arrive before
    /// `produce` returns): one lock of the tracker per change rather than per record. After an error the tracker
    /// has failed, so the counts of the records not produced do not matter: nothing from `tx` on is confirmed.
    pub async fn send_all(&self, tx: TxSeq, records: &[Record]) -> Result<(), SinkError> {
        self.progress.add_messages(tx, records.len() as u64);
        for record in records {
            self.produce(tx, record).await?;
        }
        // The reports of earlier records, here: their messages are freed on the thread that allocated them.
        self.polled.poll_here(false);
        Ok(())
    }

    async fn produce(&self, tx: TxSeq, record: &Record) -> Result<(), SinkError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_str().as_bytes()) });
        }
        let mut rec = BaseRecord::with_opaque_to(&record.topic, tx.0 as usize).headers(headers);
        // A tombstone has no payload at all: librdkafka then sends a null value (an empty payload would be a value).
        if !record.tombstone {
            rec = rec.payload(&record.payload[..]);
        }
        if let Some(key) = &record.key {
            rec = rec.key(&key[..]);
        }
        loop {
            let sent = self.producer().send(rec);
            // Test builds: `kafka-queue-full=return` lets the queue drain after a refusal for a full queue, before it
            // is looked at (the acknowledgements arriving in between: a timing a test cannot arrange otherwise).
            #[cfg(feature = "failpoints")]
            if matches!(sent, Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)))
                && fail::eval("kafka-queue-full", |_| ()).is_some()
            {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while self.producer().in_flight_count() > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            match sent {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if record.payload.len() > self.queue_bytes =>
                {
                    // Larger than the whole queue (queue.buffering.max.kbytes): no acknowledgement will ever make
                    // room, waiting would hang. Decided by size, not by looking at the queue: librdkafka can refuse
                    // for a full queue and report it empty a moment later (every queued record acknowledged in
                    // between; the snapshot benchmark met that), and then the record fits.
                    let reason = format!(
                        "the record for topic {} (table {}, LSN {}) is {} bytes, more than librdkafka's whole queue \
                         (kafka.properties.queue.buffering.max.kbytes) holds; raise queue.buffering.max.kbytes above \
                         the largest record, or make the data smaller",
                        record.topic,
                        record.header("source-table").unwrap_or("?"),
                        record.header("source-lsn").unwrap_or("?"),
                        record.payload.len(),
                    );
                    self.progress.fail(tx, reason.clone());
                    return Err(SinkError::Delivery(reason));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    // Reports already in make room at once; later ones come through the background poller.
                    self.polled.poll_here(true);
                    if let Some(f) = self.progress.failure() {
                        self.progress.remove_message(tx);
                        return Err(SinkError::Delivery(f));
                    }
                    // Backpressure: wait for acknowledgements to free queue space. The timeout covers an ack
                    // that raced with registering the waiter.
                    let _ = tokio::time::timeout(Duration::from_millis(10), self.progress.wait_for_ack()).await;
                    if let Some(f) = self.progress.failure() {
                        self.progress.remove_message(tx);
                        return Err(SinkError::Delivery(f));
                    }
                }
                Err((err, _)) => {
                    let reason = format!(
                        "Kafka refused a message for topic {} (table {}, LSN {}, {} bytes): {err}{}",
                        record.topic,
                        record.header("source-table").unwrap_or("?"),
                        record.header("source-lsn").unwrap_or("?"),
                        record.payload.len(),
                        hint(&err),
                    );
                    // A fatal error after fencing (librdkafka refuses every produce then) says so.
                    let fatal_fenced = matches!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal))
                        && self.producer().client().fatal_error().is_some_and(|(code, _)| {
                            matches!(
                                code,
                                RDKafkaErrorCode::ProducerFenced
                                    | RDKafkaErrorCode::InvalidProducerEpoch
                                    | RDKafkaErrorCode::Fenced
                            )
                        });
                    let reason = if fatal_fenced
                        || self.producer().context().fenced.load(std::sync::atomic::Ordering::SeqCst)
                        || is_fenced(&err)
                    {
                        format!("fenced: another ficus instance with the same slot (transactional.id) took over; this one stops: {reason}")
                    } else {
                        reason
                    };
                    // Freeze the flushed position before returning, so nothing after this record is confirmed.
                    self.progress.fail(tx, reason.clone());
                    return Err(SinkError::Delivery(reason));
                }
            }
        }
    }

    /// Waits until every queued message was acknowledged or failed, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer().clone();
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| SinkError::Unreachable { brokers: brokers.clone(), reason: e.to_string() })?
            .map_err(|e| SinkError::Unreachable { brokers, reason: format!("flush: {e}") })
    }

    /// Messages librdkafka still holds.
    pub fn in_flight(&self) -> i32 {
        self.producer().in_flight_count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::kafka::check_user_properties;
    use crate::config::Scalar;

    /// `kafka:` with brokers `b:9092` and these properties.
    fn config(properties: BTreeMap<String, Scalar>) -> KafkaConfig {
        KafkaConfig {
            brokers: "b:9092".into(),
            delivery: Default::default(),
            checkpoint_topic: None,
            dlq_topic: None,
            properties,
        }
    }

    fn props(pairs: &[(&str, Scalar)]) -> BTreeMap<String, Scalar> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn other_properties_are_accepted_and_override_the_defaults() {
        let user = props(&[
            ("linger.ms", Scalar::Int(50)),
            ("compression.type", Scalar::String("zstd".into())),
            ("security.protocol", Scalar::String("SASL_SSL".into())),
        ]);
        check_user_properties(&user).unwrap();
        let cc = client_config(&config(user));
        assert_eq!(cc.get("linger.ms"), Some("50"));
        assert_eq!(cc.get("compression.type"), Some("zstd"));
        assert_eq!(cc.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(cc.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(cc.get("message.timeout.ms"), Some("0"), "default kept: retry forever");
    }

    /// Even a configuration that bypassed validation cannot weaken the producer: the forced values are set last.
    #[test]
    fn forced_settings_win_over_any_properties() {
        let user = props(&[
            ("enable.idempotence", Scalar::Bool(false)),
            ("acks", Scalar::Int(1)),
            ("bootstrap.servers", Scalar::String("evil:1".into())),
        ]);
        let cc = client_config(&config(user));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn the_queue_default_is_the_one_the_record_size_check_assumes() {
        let cc = client_config(&config(props(&[])));
        assert_eq!(cc.get("queue.buffering.max.kbytes"), Some(DEFAULT_QUEUE_KBYTES.to_string().as_str()));
        let user = props(&[("queue.buffering.max.kbytes", Scalar::Int(8192))]);
        assert_eq!(client_config(&config(user)).get("queue.buffering.max.kbytes"), Some("8192"), "user-overridable");
    }
}
