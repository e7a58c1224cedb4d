//! exactly_once checkpoints in Kafka: a compacted topic with one record per slot (key = slot name, value = JSON with
//! the LSN), written in the same Kafka transaction as the events it covers.
//!
//! **Guarantee:** a read_committed reader sees a checkpoint only together with every event before it; after a
//! crash ficus resumes after the last committed checkpoint, so no event is published twice (aborted transactions are
//! invisible to read_committed consumers).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::Checkpoint;
use crate::config::KafkaConfig;
use crate::record::{HeaderValue, Record};

/// Creates the checkpoint topic (one partition, compacted) if it is missing; an existing topic is left as it is.
pub async fn ensure(cfg: &KafkaConfig, topic: &str) -> Result<(), String> {
    let admin: AdminClient<_> = super::client_config(cfg).create().map_err(|e| super::describe_error(&e))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await.map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the checkpoint topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("creating checkpoint topic {t}: {code}")),
        }
    }
    Ok(())
}

/// The last committed checkpoint of `slot` (read_committed), `None` when there is none yet. Blocking.
pub fn read(cfg: &KafkaConfig, topic: &str, slot: &str) -> Result<Option<Checkpoint>, String> {
    // A consumer: the broker address and the connection/security properties only (no producer settings).
    let mut cc = rdkafka::config::ClientConfig::new();
    cc.set("bootstrap.servers", cfg.brokers.as_str());
    for (k, v) in &cfg.properties {
        if ["security.", "sasl.", "ssl.", "client."].iter().any(|p| k.starts_with(p)) {
            cc.set(k.as_str(), v.to_string());
        }
    }
    cc.set("group.id", format!("ficus-checkpoint-{slot}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cc.create().map_err(|e| super::describe_error(&e))?;
    let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = meta.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut last = None;
    tracing::debug!(topic, partitions = ?partitions, "reading the checkpoint topic");
    for p in partitions {
        // read_committed: the high watermark to reach is the last stable offset.
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        tracing::debug!(topic, partition = p, low, high, "checkpoint topic watermarks");
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let position = consumer
                .position()
                .ok()
                .and_then(|tpl| tpl.find_partition(topic, p).and_then(|e| e.offset().to_raw()))
                .unwrap_or(-1);
            if position >= high {
                break;
            }
            if std::time::Instant::now() > deadline {
                // Past the last stable offset there may be an open transaction: what we read is committed.
                break;
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.key() == Some(slot.as_bytes()) => {
                    tracing::debug!(offset = m.offset(), "checkpoint record");
                    // A record that is not a checkpoint is an error, not skipped: skipping it would resume from an
                    // older checkpoint and publish its events twice. (A tombstone, a null value, is skipped.)
                    if let Some(payload) = m.payload() {
                        let cp: Checkpoint = serde_json::from_slice(payload).map_err(|e| {
                            format!("the record at offset {} is not a ficus checkpoint: {e}", m.offset())
                        })?;
                        cp.lsn().map_err(|e| format!("the record at offset {}: {e}", m.offset()))?;
                        last = Some(cp);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => {}
            }
        }
    }
    tracing::debug!(lsn = last.as_ref().map(|l: &Checkpoint| l.lsn.clone()), "checkpoint topic read");
    Ok(last)
}

/// The record of `checkpoint` (key = its slot, value = the same JSON as the checkpoint file).
pub fn record(topic: &str, checkpoint: &Checkpoint) -> Record {
    Record {
        topic: topic.into(),
        key: Some(checkpoint.slot.as_bytes().to_vec()),
        // Serializing a struct of strings and numbers cannot fail.
        payload: serde_json::to_vec(checkpoint).unwrap_or_default(),
        headers: vec![("content-type", HeaderValue::Static("application/json"))],
        tombstone: false,
    }
}
