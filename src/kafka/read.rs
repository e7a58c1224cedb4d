//! Reading a topic from the beginning to its end with `read_committed` (records of aborted or still open Kafka
//! transactions are not shown): what `ficus dlq` reads the dead-letter topic with. Blocking; librdkafka types stay
//! in this module.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;

/// One record as read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (milliseconds since the Unix epoch), when it has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Headers in record order (a header without a value has an empty one).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    /// The first header `name` as text (lossy UTF-8).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Why a topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("topic {0} does not exist on the broker")]
    NoTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    NoPartition { topic: String, partition: i32 },
    #[error("reading topic {topic}: {reason}")]
    Kafka { topic: String, reason: String },
}

/// Reads `topic` (every partition, or only `partition`) from `from` (offset; the beginning when `None`) to the end
/// as it was when reading started, calling `each` for every record in partition then offset order; `each`
/// returning `false` stops reading. A consumer with no group offsets (`enable.auto.commit=false`, manual
/// assignment): reading moves nothing for anyone else.
pub fn read_topic(
    cfg: &KafkaConfig,
    topic: &str,
    partition: Option<i32>,
    from: Option<i64>,
    each: &mut dyn FnMut(ReadRecord) -> bool,
) -> Result<(), ReadError> {
    let fail = |reason: String| ReadError::Kafka { topic: topic.to_string(), reason };
    // Only the connection and security properties: producer settings would make librdkafka warn.
    let mut cc = rdkafka::config::ClientConfig::new();
    cc.set("bootstrap.servers", cfg.brokers.as_str());
    for (k, v) in &cfg.properties {
        if ["security.", "sasl.", "ssl.", "client."].iter().any(|p| k.starts_with(p)) {
            cc.set(k.as_str(), v.to_string());
        }
    }
    cc.set("group.id", "ficus-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cc.create().map_err(|e| fail(super::describe_error(&e)))?;
    let timeout = Duration::from_secs(10);
    let meta = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| fail(e.to_string()))?;
    let Some(t) = meta.topics().iter().find(|t| t.name() == topic) else {
        return Err(ReadError::NoTopic(topic.to_string()));
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(ReadError::NoTopic(topic.to_string()));
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    if let Some(p) = partition {
        if !partitions.contains(&p) {
            return Err(ReadError::NoPartition { topic: topic.to_string(), partition: p });
        }
        partitions = vec![p];
    }
    for p in partitions {
        // read_committed: the end is the last stable offset; nothing past it is shown.
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(|e| fail(e.to_string()))?;
        let start = from.map_or(low, |f| f.max(low));
        if start >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start)).map_err(|e| fail(e.to_string()))?;
        consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
        // A stalled broker must not hang the command: no progress for 30 s ends it with an error.
        let mut last_progress = Instant::now();
        loop {
            if last_progress.elapsed() > Duration::from_secs(30) {
                return Err(fail(format!("no record from partition {p} for 30 s before its end (offset {high})")));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => break,
                Some(Err(e)) => return Err(fail(e.to_string())),
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let record = ReadRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers: m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec).unwrap_or_default()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    };
                    let offset = record.offset;
                    if !each(record) {
                        return Ok(());
                    }
                    if offset + 1 >= high {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}
