//! `kafka:` — the broker and producer settings, and the librdkafka property checks done while the config loads
//! (a property ficus must own is refused; an unknown one gets the closest name; values are never printed).

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use serde::Deserialize;

use super::ConfigError;

/// `kafka:` — the broker and producer settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// `at_least_once` (default) or `exactly_once` (Kafka transactions with the checkpoint inside them).
    #[serde(default)]
    pub delivery: Delivery,
    /// exactly_once: the compacted topic holding one checkpoint per slot, written in the same Kafka transaction as
    /// the events. Default `<changes.topic_prefix>.checkpoints`.
    #[serde(default)]
    pub checkpoint_topic: Option<String>,
    /// Dead-letter topic for changes that cannot become events (used by business-event rules).
    #[serde(default)]
    pub dlq_topic: Option<String>,
    /// Any librdkafka property (`compression.type: lz4`, `security.protocol: SASL_SSL`, ...). ficus sets
    /// `enable.idempotence=true` and `acks=all` and refuses properties that would break its delivery guarantee.
    #[serde(default)]
    pub properties: BTreeMap<String, Scalar>,
}

/// By hand: any `kafka.properties` value may be a secret (`sasl.password`, `ssl.key.password`, or a misspelling of
/// them), so only the keys print.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let KafkaConfig { brokers, delivery, checkpoint_topic, dlq_topic, properties } = self;
        f.debug_struct("KafkaConfig")
            .field("brokers", brokers)
            .field("delivery", delivery)
            .field("checkpoint_topic", checkpoint_topic)
            .field("dlq_topic", dlq_topic)
            .field("properties", &properties.keys().map(|k| (k, "***")).collect::<BTreeMap<_, _>>())
            .finish()
    }
}

/// A YAML scalar given as a librdkafka property value (`linger.ms: 5` and `linger.ms: "5"` are the same).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a string, number or boolean (a librdkafka property value)")]
pub enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::String(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// `kafka.delivery`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Every change reaches Kafka at least once; after a crash the transactions after the last checkpoint repeat.
    #[default]
    AtLeastOnce,
    /// Kafka transactions holding whole source transactions and the checkpoint (a compacted topic); PostgreSQL is
    /// confirmed after the commit. Consumers read with `isolation.level=read_committed`.
    ExactlyOnce,
}

/// Producer settings ficus owns; users may not override them because the delivery guarantee depends on them.
pub(crate) const FORCED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// Properties that are configured elsewhere or would break guarantees.
const REFUSED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("metadata.broker.list", "set kafka.brokers instead"),
    ("enable.idempotence", "ficus always enables idempotence (no duplicates on producer retries)"),
    ("acks", "ficus always uses acks=all (an acknowledged change is on every in-sync replica)"),
    ("request.required.acks", "ficus always uses acks=all"),
    ("transactional.id", "set by ficus itself in exactly_once mode"),
];

/// Rejects `kafka.properties` entries that ficus must own, and those librdkafka does not know or refuses. Called by
/// [`crate::config::Config::validate`], so `check`, `run` and every other command stop at load time with the key
/// named. **Never prints a value** (a misspelled `sasl.pasword` still holds a password): an unknown key gets the
/// closest librdkafka property name as a suggestion, a refused value librdkafka's reason with the value cut out.
pub fn check_user_properties(props: &BTreeMap<String, Scalar>) -> Result<(), ConfigError> {
    for (key, value) in props {
        let invalid = |message: String| ConfigError::Invalid { key: format!("kafka.properties.{key}"), message };
        if let Some((_, why)) = REFUSED.iter().find(|(k, _)| k == key) {
            return Err(invalid(format!("cannot be set: {why}")));
        }
        let value = value.to_string();
        // One property per native configuration: librdkafka checks the name and the value's syntax when it is set.
        let mut one = ClientConfig::new();
        one.set(key.as_str(), value.as_str());
        match one.create_native_config() {
            Ok(_) => {}
            Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
                let hint = match closest_property(key) {
                    Some(name) => format!("did you mean {name}?"),
                    None => "see librdkafka's CONFIGURATION.md for the property names".to_string(),
                };
                return Err(invalid(format!("librdkafka has no such property; {hint} (the value is not shown)")));
            }
            Err(e) => {
                return Err(invalid(format!("librdkafka refuses the value (not shown): {}", describe_error(&e))));
            }
        }
    }
    Ok(())
}

/// A librdkafka error as text without any property value: rdkafka's own `Display` of a configuration error is
/// "{reason} {key} {value}", which would print a password set under a wrong or misspelled key.
pub fn describe_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, reason, key, value) => {
            let mut reason = reason.replace(&format!("\"{value}\""), "\"***\"");
            // Bare occurrences too, unless the value is so short that cutting it would garble the words around it.
            if value.len() >= 4 {
                reason = reason.replace(value.as_str(), "***");
            }
            format!("librdkafka configuration error for property {key}: {reason}")
        }
        other => other.to_string(),
    }
}

/// The librdkafka property name closest to `key` (Levenshtein distance at most a third of its length, and at most 4),
/// from the table `rd_kafka_conf_properties_show` prints.
fn closest_property(key: &str) -> Option<&'static str> {
    let max = (key.len() / 3).clamp(1, 4);
    librdkafka_property_names()
        .iter()
        .map(|name| (edit_distance(key, name), *name))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, name)| name)
}

/// Every property name librdkafka knows (global and topic level), read once from the table it prints.
fn librdkafka_property_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let table = properties_table().unwrap_or_default();
        let mut names: Vec<&'static str> = Vec::new();
        for line in table.lines() {
            let Some((first, _)) = line.split_once('|') else { continue };
            let name = first.trim();
            if !name.is_empty()
                && name != "Property"
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            {
                names.push(Box::leak(name.to_string().into_boxed_str()));
            }
        }
        names
    })
}

/// The output of `rd_kafka_conf_properties_show` (it only writes to a `FILE*`, so through a temporary file).
fn properties_table() -> Option<String> {
    use std::io::Read;
    // SAFETY: tmpfile returns a FILE* we own (or null); librdkafka writes static text to it; we read it back through
    // a duplicated descriptor and close the FILE exactly once.
    unsafe {
        let file = libc::tmpfile();
        if file.is_null() {
            return None;
        }
        rdkafka::bindings::rd_kafka_conf_properties_show(file);
        libc::fflush(file);
        let fd = libc::dup(libc::fileno(file));
        libc::fclose(file);
        if fd < 0 {
            return None;
        }
        let mut f = <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd);
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).ok()?;
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        Some(text)
    }
}

/// Levenshtein distance (bytes; property names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, Scalar)]) -> BTreeMap<String, Scalar> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// Every property the delivery guarantee depends on is refused with the key named; the list is spelled out here
    /// so that dropping one from `REFUSED` fails this test.
    #[test]
    fn properties_that_break_the_guarantee_are_refused() {
        for (key, value) in [
            ("enable.idempotence", Scalar::Bool(false)),
            ("acks", Scalar::Int(1)),
            ("acks", Scalar::String("all".into())),
            ("request.required.acks", Scalar::Int(0)),
            ("transactional.id", Scalar::String("mine".into())),
            ("bootstrap.servers", Scalar::String("x:9092".into())),
            ("metadata.broker.list", Scalar::String("x:9092".into())),
        ] {
            let err = check_user_properties(&props(&[("linger.ms", Scalar::Int(5)), (key, value)]))
                .expect_err(&format!("{key} must be refused"));
            match err {
                ConfigError::Invalid { key: k, message } => {
                    assert_eq!(k, format!("kafka.properties.{key}"));
                    assert!(message.starts_with("cannot be set: "), "{message}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    /// The refusal is wired into config validation: a config file with `acks: 1` does not load.
    #[test]
    fn a_config_file_with_a_refused_property_does_not_load() {
        let yaml = "source:\n  url: postgres://u@h/db\n  slot: s\n  publication: p\n  tables: [public.t]\n\
                    kafka:\n  brokers: b:9092\n  properties: {acks: 1}\n\
                    changes:\n  tables: ['*']\n  topic_prefix: x\n";
        let err = crate::config::Config::from_yaml(yaml, &|_| None).expect_err("acks: 1 must be refused");
        assert!(err.to_string().contains("kafka.properties.acks"), "{err}");
        let ok = crate::config::Config::from_yaml(&yaml.replace("acks: 1", "linger.ms: 1"), &|_| None);
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    fn s(v: &str) -> Scalar {
        Scalar::String(v.into())
    }

    #[test]
    fn a_misspelled_or_refused_property_is_named_with_a_suggestion_and_never_its_value() {
        let e = check_user_properties(&props(&[("sasl.pasword", s("kSECRET1"))])).unwrap_err().to_string();
        assert!(e.starts_with("kafka.properties.sasl.pasword:") && e.contains("did you mean sasl.password?"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = check_user_properties(&props(&[("ssl.key.pasword", s("kSECRET2"))])).unwrap_err().to_string();
        assert!(e.contains("did you mean ssl.key.password?") && !e.contains("SECRET"), "{e}");
        let e = check_user_properties(&props(&[("linger.ms", s("kSECRET3"))])).unwrap_err().to_string();
        assert!(e.starts_with("kafka.properties.linger.ms:") && !e.contains("SECRET"), "{e}");
        let e = check_user_properties(&props(&[("compression.type", s("zipSECRET4"))])).unwrap_err().to_string();
        assert!(e.starts_with("kafka.properties.compression.type:") && !e.contains("SECRET"), "{e}");
        let e = check_user_properties(&props(&[("completely.unrelated.thing", s("v"))])).unwrap_err().to_string();
        assert!(e.contains("no such property") && !e.contains("did you mean"), "{e}");
        // Valid properties, global and topic level, pass.
        check_user_properties(&props(&[
            ("sasl.password", s("x")),
            ("compression.type", s("zstd")),
            ("message.timeout.ms", Scalar::Int(0)),
        ]))
        .unwrap();
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("sasl.pasword", "sasl.password"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert!(librdkafka_property_names().len() > 100, "{:?}", librdkafka_property_names());
    }
}
