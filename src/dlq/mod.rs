//! `ficus dlq list|show|replay`: the dead-letter topic (`kafka.dlq_topic`, default `<changes.topic_prefix>.dlq`)
//! for operators (docs/operations.md, "Dead-letter records").
//!
//! - `list` prints one line per DLQ record (offset, time, rule, table, LSN, error), filtered by rule, error text
//!   and time;
//! - `show` prints one record whole: headers and the pretty-printed payload;
//! - `replay` runs the config's rules *as they are now* on the DLQ'd changes and publishes the events — only those of
//!   the rule that failed (named by the record's `dlq-rule` header), with the ids the live path would have given them
//!   (the DLQ payload carries system, database, commit LSN and position), so replaying twice publishes the same ids
//!   and consumers deduplicate. A record whose rule still fails is reported and left where it is (never sent to the
//!   DLQ again); `--dry-run` prints the events instead of publishing them.
//!
//! The DLQ is read with `read_committed` and no consumer group: reading moves no offsets, replaying deletes nothing.

pub mod cli;
pub(crate) mod restore;
pub(crate) mod text;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::conninfo::ConnInfo;
use crate::config::Config;
use crate::ident::TableName;
use crate::kafka::read::{read_topic, ReadError, ReadRecord};
use crate::kafka::KafkaSink;
use crate::lsn::Lsn;
use crate::postgres::control;
use crate::postgres::value::format_unix_micros;
use crate::progress::Progress;
use crate::record::Record;
use crate::rules::{RuleSet, Rules};
use restore::{Restored, TableColumns};

/// Why a `ficus dlq` command failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("{0}")]
    Usage(String),
    #[error("{0} (nothing was sent to the DLQ yet, or kafka.dlq_topic names another topic)")]
    NoTopic(ReadError),
    #[error(transparent)]
    Read(ReadError),
    #[error("reading column types from the database: {0}")]
    Database(String),
    #[error("publishing the replayed events: {0}; nothing is lost: replaying again publishes the same event ids")]
    Publish(String),
}

impl DlqError {
    /// 2 for what the command line or config must fix, 1 for a runtime failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            DlqError::Usage(_) | DlqError::NoTopic(_) => 2,
            _ => 1,
        }
    }
}

impl From<ReadError> for DlqError {
    fn from(e: ReadError) -> DlqError {
        match e {
            ReadError::NoTopic(_) | ReadError::NoPartition { .. } => DlqError::NoTopic(e),
            e => DlqError::Read(e),
        }
    }
}

/// Which DLQ records a command takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `Name` (every version) or `Name vN`, as the `dlq-rule` header names the rule.
    pub rule: Option<String>,
    /// A substring of the `dlq-error` header (case-insensitive).
    pub error: Option<String>,
    /// Record time (when the change was sent to the DLQ), milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<i64>,
    /// Exclusive.
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        let rule_ok = self
            .rule
            .as_deref()
            .is_none_or(|want| e.rule == want || e.rule.strip_prefix(want).is_some_and(|rest| rest.starts_with(" v")));
        let error_ok = self.error.as_deref().is_none_or(|want| e.error.to_lowercase().contains(&want.to_lowercase()));
        let since_ok = self.since_ms.is_none_or(|s| e.time_ms.is_some_and(|t| t >= s));
        let until_ok = self.until_ms.is_none_or(|u| e.time_ms.is_some_and(|t| t < u));
        rule_ok && error_ok && since_ok && until_ok
    }
}

/// A point in time for `--since`/`--until`: RFC 3339 (`2026-11-29T13:00:00Z`, `…+01:00`) or a duration before
/// `now_ms` (`90s`, `15m`, `2h`, `7d`). Milliseconds since the Unix epoch.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(last) = s.chars().last().filter(|c| unit(*c).is_some()) {
        if let Ok(n) = s[..s.len() - 1].parse::<i64>() {
            if n >= 0 {
                return Ok(now_ms.saturating_sub(n.saturating_mul(unit(last).unwrap_or(0))));
            }
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("{s:?} is neither RFC 3339 (2026-11-29T13:00:00Z) nor a duration ago (90s, 15m, 2h, 7d)"))
}

/// What `list` shows of a DLQ record (its headers; the payload is not parsed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    #[serde(skip)]
    pub time_ms: Option<i64>,
    /// RFC 3339, UTC.
    pub time: Option<String>,
    pub rule: String,
    pub table: String,
    pub op: String,
    pub lsn: String,
    pub error: String,
}

impl Entry {
    pub fn of(r: &ReadRecord) -> Entry {
        let h = |name: &str| r.header(name).unwrap_or_default();
        Entry {
            partition: r.partition,
            offset: r.offset,
            time_ms: r.timestamp_ms,
            time: r.timestamp_ms.map(|ms| format_unix_micros(ms.saturating_mul(1000))),
            rule: h("dlq-rule"),
            table: h("source-table"),
            op: h("op"),
            lsn: h("source-lsn"),
            error: h("dlq-error"),
        }
    }

    /// One line: `partition/offset  time  rule  table  op  lsn  error` (line breaks in the error become spaces).
    pub fn line(&self) -> String {
        format!(
            "{}/{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.partition,
            self.offset,
            self.time.as_deref().unwrap_or("-"),
            self.rule,
            self.table,
            self.op,
            self.lsn,
            self.error.replace(['\n', '\r'], " ")
        )
    }
}

fn dlq_topic(rules: &Rules) -> String {
    rules.dlq_topic().to_string()
}

/// Reads the DLQ topic in a blocking task; `step` maps each record: `Some(Some(x))` keeps `x`, `Some(None)` skips
/// the record, `None` stops reading.
async fn read<T: Send + 'static>(
    config: &Config,
    topic: &str,
    partition: Option<i32>,
    from: Option<i64>,
    step: impl FnMut(ReadRecord) -> Option<Option<T>> + Send + 'static,
) -> Result<Vec<T>, DlqError> {
    let (kafka, topic) = (config.kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut step = step;
        let mut out = Vec::new();
        read_topic(&kafka, &topic, partition, from, &mut |r| match step(r) {
            Some(Some(x)) => {
                out.push(x);
                true
            }
            Some(None) => true,
            None => false,
        })
        .map(|()| out)
    })
    .await
    .map_err(|e| DlqError::Read(ReadError::Kafka { topic: String::new(), reason: e.to_string() }))?
    .map_err(DlqError::from)
}

/// `ficus dlq list`: the matching records' entries, and how many records the topic holds.
pub async fn list(config: &Config, rules: &Rules, filter: &Filter) -> Result<(Vec<Entry>, usize), DlqError> {
    let filter = filter.clone();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    // Only the entries are kept: the payloads (whole rows) are dropped as they are read.
    let entries = read(config, &dlq_topic(rules), None, None, move |r| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let e = Entry::of(&r);
        Some(filter.matches(&e).then_some(e))
    })
    .await?;
    Ok((entries, seen.load(std::sync::atomic::Ordering::Relaxed)))
}

/// `ficus dlq show`: the record at `offset` of `partition`, as text (headers, key, pretty payload).
pub async fn show(config: &Config, rules: &Rules, partition: i32, offset: i64) -> Result<String, DlqError> {
    let topic = dlq_topic(rules);
    let found = read(config, &topic, Some(partition), Some(offset), move |r| match r.offset.cmp(&offset) {
        std::cmp::Ordering::Equal => Some(Some(r)),
        std::cmp::Ordering::Greater => None,
        std::cmp::Ordering::Less => Some(None),
    })
    .await?;
    let Some(r) = found.into_iter().find(|r| r.offset == offset) else {
        return Err(DlqError::Usage(format!(
            "topic {topic} has no committed record at offset {offset} of partition {partition} (see `ficus dlq list`)"
        )));
    };
    let mut out = format!("topic: {topic}\npartition: {}\noffset: {}\n", r.partition, r.offset);
    if let Some(ms) = r.timestamp_ms {
        out += &format!("time: {}\n", format_unix_micros(ms.saturating_mul(1000)));
    }
    out += &format!("key: {}\nheaders:\n", r.key.as_deref().map(String::from_utf8_lossy).unwrap_or("(null)".into()));
    for (k, v) in &r.headers {
        out += &format!("  {k}: {}\n", String::from_utf8_lossy(v));
    }
    out += "payload:\n";
    let payload = r.payload.unwrap_or_default();
    match serde_json::from_slice::<serde_json::Value>(&payload) {
        Ok(v) => out += &serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => out += &String::from_utf8_lossy(&payload),
    }
    out.push('\n');
    Ok(out)
}

/// What became of one DLQ record in a replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The rule now yields its event(s): published (or, with `--dry-run`, printed).
    Published,
    DryRun,
    /// The rule's `on`/`when` no longer takes the change: no event.
    NoEvent,
    /// The rule still fails (the record stays in the DLQ; nothing was sent there again).
    StillFailing,
    /// The rule failed and its `on_error` is now `skip`.
    Skipped,
    /// The record cannot be replayed (rule or table gone, payload not a change, …).
    NotReplayable,
}

/// One DLQ record's replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    #[serde(flatten)]
    pub entry: Entry,
    pub outcome: Outcome,
    /// Why it still fails, or cannot be replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The events, as `ficus run --dry-run` prints records: `{topic, key, headers, value}`.
    pub events: Vec<serde_json::Value>,
}

impl Replayed {
    pub fn line(&self) -> String {
        let what = match self.outcome {
            Outcome::Published | Outcome::DryRun => {
                let verb = if self.outcome == Outcome::Published { "published" } else { "would publish" };
                let ids: Vec<String> = self
                    .events
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {} → {}",
                            e["headers"]["event-type"].as_str().unwrap_or("?"),
                            e["headers"]["event-id"].as_str().unwrap_or("?"),
                            e["topic"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                format!("{verb} {}", ids.join(", "))
            }
            Outcome::NoEvent => "no event: the rule no longer takes this change (on/when)".into(),
            Outcome::StillFailing => {
                format!("still fails, left in the DLQ (not sent there again): {}", self.reason.as_deref().unwrap_or(""))
            }
            Outcome::Skipped => {
                format!("still fails and the rule's on_error is skip: {}", self.reason.as_deref().unwrap_or(""))
            }
            Outcome::NotReplayable => format!("not replayable: {}", self.reason.as_deref().unwrap_or("")),
        };
        format!(
            "{}/{}\t{}\t{}\t{}\t{what}",
            self.entry.partition, self.entry.offset, self.entry.rule, self.entry.table, self.entry.lsn
        )
    }

    /// Whether the record is settled (its events exist now, or the rule no longer wants one).
    pub fn settled(&self) -> bool {
        matches!(self.outcome, Outcome::Published | Outcome::DryRun | Outcome::NoEvent)
    }
}

/// The runner of one rule of the current config, alone (so only its events come out).
struct OneRule {
    index: usize,
    set: RuleSet,
}

/// `ficus dlq replay`: the replay of every matching record, in topic order. Publishes (unless `dry_run`) the events
/// of the records whose rule now succeeds; an `Err` only when the DLQ cannot be read or publishing fails.
pub async fn replay(config: &Config, rules: &Rules, filter: &Filter, dry_run: bool) -> Result<Vec<Replayed>, DlqError> {
    let f = filter.clone();
    let records =
        read(config, &dlq_topic(rules), None, None, move |r| Some(f.matches(&Entry::of(&r)).then_some(r))).await?;
    let mut runners: HashMap<String, Result<OneRule, String>> = HashMap::new();
    let mut tables: HashMap<TableName, Result<TableColumns, String>> = HashMap::new();
    let mut db: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    let mut report = Vec::with_capacity(records.len());
    let mut to_publish: Vec<Record> = Vec::new();
    for r in &records {
        let entry = Entry::of(r);
        let done = |outcome, reason: Option<String>, events: Vec<serde_json::Value>| Replayed {
            entry: entry.clone(),
            outcome,
            reason,
            events,
        };
        let runner = runners.entry(entry.rule.clone()).or_insert_with(|| one_rule(config, &entry.rule));
        let runner = match runner {
            Ok(r) => r,
            Err(reason) => {
                report.push(done(Outcome::NotReplayable, Some(reason.clone()), Vec::new()));
                continue;
            }
        };
        if r.header("dlq-masked").as_deref() == Some("true") {
            let reason =
                "the change's values in this record are masked (changes.masking): events built from them would \
                          carry hashes and *** instead of data; re-read the rows with `ficus backfill --where` instead";
            report.push(done(Outcome::NotReplayable, Some(reason.into()), Vec::new()));
            continue;
        }
        let payload = r.payload.as_deref().unwrap_or_default();
        let restored = match restore::table_of(payload) {
            Err(e) => Err(e),
            Ok(None) => restore::message(payload),
            Ok(Some((schema, name))) => {
                let table = TableName { schema, name };
                if !tables.contains_key(&table) {
                    let found = table_columns(config, &mut db, &table).await?;
                    tables.insert(table.clone(), found);
                }
                match &tables[&table] {
                    Ok(cols) => restore::change(payload, cols),
                    Err(e) => Err(e.clone()),
                }
            }
        };
        let restored = match restored {
            Ok(x) => x,
            Err(reason) => {
                report.push(done(Outcome::NotReplayable, Some(reason), Vec::new()));
                continue;
            }
        };
        let mut out = Vec::new();
        let skipped_before = runner.set.stats(0).skipped;
        let result = match &restored {
            Restored::Change(c, source) => runner.set.apply(c, source, &mut out),
            Restored::Message(m, source) => runner.set.apply_message(m, source, &mut out),
        };
        let renumber = |s: &str| s.replace("events[0]", &format!("events[{}]", runner.index));
        let dlq = rules.dlq_topic();
        let replayed = match result {
            Err(failure) => done(Outcome::StillFailing, Some(renumber(&failure.reason)), Vec::new()),
            Ok(_) if out.iter().any(|rec| &*rec.topic == dlq) => {
                let reason = out.iter().find(|rec| &*rec.topic == dlq).and_then(|rec| rec.header("dlq-error"));
                done(Outcome::StillFailing, reason.map(renumber), Vec::new())
            }
            Ok(_) if runner.set.stats(0).skipped > skipped_before => {
                done(Outcome::Skipped, Some("see the warning logged above".into()), Vec::new())
            }
            Ok(_) if out.is_empty() => done(Outcome::NoEvent, None, Vec::new()),
            Ok(_) => {
                let events = out.iter().map(record_json).collect();
                to_publish.extend(out);
                done(if dry_run { Outcome::DryRun } else { Outcome::Published }, None, events)
            }
        };
        report.push(replayed);
    }
    if let Some((client, connection)) = db.take() {
        drop(client);
        connection.abort();
    }
    if !dry_run && !to_publish.is_empty() {
        publish(config, &to_publish).await?;
    }
    Ok(report)
}

/// The runner of the rule named `Name vN` by a `dlq-rule` header, compiled alone from the current config.
fn one_rule(config: &Config, named: &str) -> Result<OneRule, String> {
    let (name, version) = named
        .rsplit_once(" v")
        .and_then(|(n, v)| Some((n, v.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("the dlq-rule header {named:?} does not name a rule as `Name vN`"))?;
    let index = config.events.iter().position(|s| s.name == name && s.version == version).ok_or_else(|| {
        let versions: Vec<String> =
            config.events.iter().filter(|s| s.name == name).map(|s| format!("v{}", s.version)).collect();
        if versions.is_empty() {
            format!("rule {named} is not in the config any more")
        } else {
            format!(
                "rule {named} is not in the config any more (it has {} of {name}); a fixed rule keeps the name and \
                 version of the one that failed",
                versions.join(", ")
            )
        }
    })?;
    let mut alone = config.clone();
    alone.events = vec![config.events[index].clone()];
    let compiled =
        Rules::compile(&alone).map_err(|e| e.to_string().replace("events[0]", &format!("events[{index}]")))?;
    Ok(OneRule { index, set: RuleSet::new(Arc::new(compiled)) })
}

/// The columns of `table` as the stream types them now (domains as their base type), from the catalog; the
/// connection is opened on first use. `Ok(Err(..))`: the table is gone (its records are not replayable).
async fn table_columns(
    config: &Config,
    db: &mut Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>,
    table: &TableName,
) -> Result<Result<TableColumns, String>, DlqError> {
    if db.is_none() {
        let info = ConnInfo::parse(&config.source.url).map_err(|e| DlqError::Usage(format!("source.url: {e}")))?;
        let (client, connection) = info.connect_control().await.map_err(|e| DlqError::Database(e.to_string()))?;
        *db = Some((client, connection));
    }
    let Some((client, _)) = db.as_ref() else { return Err(DlqError::Database("no connection".into())) };
    let database = |e: control::ControlError| DlqError::Database(e.to_string());
    let Some(info) = control::table_info(client, table).await.map_err(database)? else {
        return Ok(Err(format!("table {table} does not exist any more")));
    };
    let oids: Vec<u32> = info.columns.iter().map(|c| c.type_oid).collect();
    let mapped = control::value_types(client, &oids).await.map_err(database)?;
    Ok(Ok(TableColumns {
        oid: info.oid,
        replica_identity: info.replica_identity,
        columns: info
            .columns
            .iter()
            .map(|c| (c.name.clone(), mapped.get(&c.type_oid).copied().unwrap_or(c.type_oid)))
            .collect(),
    }))
}

/// Sends `records` with the pipeline's producer (idempotent, acks=all) and waits for every acknowledgement.
async fn publish(config: &Config, records: &[Record]) -> Result<(), DlqError> {
    let progress = Arc::new(Progress::new(Lsn::INVALID));
    let sink = KafkaSink::with_transactional_id(&config.kafka, progress.clone(), None)
        .map_err(|e| DlqError::Publish(e.to_string()))?;
    let tx = progress.begin();
    for r in records {
        sink.send(tx, r).await.map_err(|e| DlqError::Publish(e.to_string()))?;
    }
    // message.timeout.ms is 0 (retry forever) by default: the flush bounds the wait.
    sink.flush(Duration::from_secs(60)).await.map_err(|e| DlqError::Publish(e.to_string()))?;
    if let Some(f) = progress.failure() {
        return Err(DlqError::Publish(f));
    }
    if sink.in_flight() > 0 {
        return Err(DlqError::Publish(format!("{} events unacknowledged after 60 s", sink.in_flight())));
    }
    Ok(())
}

/// A record as `ficus run --dry-run` prints it: `{topic, key, headers, value}` (value embedded when JSON).
pub fn record_json(record: &Record) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in &record.headers {
        headers.insert(k.to_string(), serde_json::Value::String(v.as_str().to_string()));
    }
    let value = serde_json::from_slice(&record.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&record.payload).into_owned()));
    serde_json::json!({
        "topic": &*record.topic,
        "key": record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "value": value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rule: &str, error: &str, time_ms: Option<i64>) -> Entry {
        Entry {
            partition: 0,
            offset: 0,
            time_ms,
            time: None,
            rule: rule.into(),
            table: "public.t".into(),
            op: "insert".into(),
            lsn: "0/1".into(),
            error: error.into(),
        }
    }

    #[test]
    fn filters_by_rule_error_and_time() {
        let e = entry("OrderFlagged v1", "events[2].key: the key is null", Some(1_000));
        assert!(Filter::default().matches(&e));
        for rule in ["OrderFlagged", "OrderFlagged v1"] {
            assert!(Filter { rule: Some(rule.into()), ..Filter::default() }.matches(&e), "{rule}");
        }
        for rule in ["Order", "OrderFlagged v2", "OrderFlagged v", "orderflagged"] {
            assert!(!Filter { rule: Some(rule.into()), ..Filter::default() }.matches(&e), "{rule}");
        }
        assert!(Filter { error: Some("KEY IS NULL".into()), ..Filter::default() }.matches(&e));
        assert!(!Filter { error: Some("timeout".into()), ..Filter::default() }.matches(&e));
        assert!(Filter { since_ms: Some(1_000), until_ms: Some(1_001), ..Filter::default() }.matches(&e));
        assert!(!Filter { since_ms: Some(1_001), ..Filter::default() }.matches(&e));
        assert!(!Filter { until_ms: Some(1_000), ..Filter::default() }.matches(&e));
        assert!(!Filter { since_ms: Some(0), ..Filter::default() }.matches(&entry("R v1", "", None)));
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("90s", now), Ok(now - 90_000));
        assert_eq!(parse_time("15m", now), Ok(now - 900_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_time("2026-11-29T13:00:00Z", now), Ok(1_795_957_200_000));
        assert_eq!(parse_time("2026-11-29T14:00:00+01:00", now), Ok(1_795_957_200_000));
        for bad in ["", "h", "-2h", "2w", "yesterday", "2026-11-29", "99999999999999999999d"] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_replay_names_a_rule_that_is_gone_or_renumbered() {
        let yaml = "source: {url: 'postgres://x@h/db', tables: [public.t]}\nkafka: {brokers: 'k:9092'}\nevents:\n\
                    \x20 - {name: A, table: public.t, key: string(new.id), topic: t}\n\
                    \x20 - {name: B, version: 2, table: public.t, key: string(new.id), topic: t}\n";
        let config = Config::from_yaml(yaml, &|_| None).unwrap();
        assert_eq!(one_rule(&config, "B v2").unwrap().index, 1);
        let e = one_rule(&config, "B v1").err().unwrap();
        assert!(e.contains("B v1 is not in the config") && e.contains("v2"), "{e}");
        assert!(one_rule(&config, "C v1").err().unwrap().contains("not in the config"));
        assert!(one_rule(&config, "garbage").err().unwrap().contains("Name vN"));
    }
}
