//! `changes.masking:` — personal data in raw change events: per table and column, leave a value out (`exclude`),
//! replace it by a keyed HMAC-SHA256 (`hash`), by `***` (`redact`), or keep its first N characters
//! (`truncate: N`). Applied wherever a raw change event is written: streamed changes, snapshot rows, DLQ records and
//! `ficus run --dry-run` output (all go through the router). Rules see the real values.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::ConfigError;
use crate::ident::TableName;

/// `changes.masking`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The HMAC key of `hash` (write `${NAME}` or `${file:/run/secrets/…}`; required when a column uses `hash`).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// `schema.table` → column name → action.
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, MaskAction>>,
}

/// A secret string: never printed (`Debug` shows `***`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What happens to one column's values in raw change events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskAction {
    /// Left out of `before`, `after` and the key's neighbours: the column does not exist for consumers.
    Exclude,
    /// The lowercase hex HMAC-SHA256 (key: `secret`) of the value's text: equal values give equal hashes, so
    /// consumers can still join and count, but not read.
    Hash,
    /// The string `***` (null stays null).
    Redact,
    /// The first N characters of the value's text.
    Truncate(usize),
}

impl MaskingConfig {
    /// Checks the masking config against the captured tables; errors name the key.
    pub fn validate(&self, captured: &[TableName]) -> Result<(), ConfigError> {
        let mut uses_hash = false;
        for (table, columns) in &self.tables {
            let key = format!("changes.masking.tables.{table}");
            let name = TableName::parse(table).map_err(|m| ConfigError::invalid(&key, m))?;
            if !captured.contains(&name) {
                return Err(ConfigError::invalid(key, format!("{name} is not in source.tables")));
            }
            if columns.is_empty() {
                return Err(ConfigError::invalid(key, "list the columns to mask, e.g. {email: hash}"));
            }
            for (column, action) in columns {
                match action {
                    MaskAction::Truncate(0) => {
                        return Err(ConfigError::invalid(
                            format!("{key}.{column}.truncate"),
                            "keep at least 1 character (use redact or exclude to publish nothing of the value)",
                        ))
                    }
                    MaskAction::Hash => uses_hash = true,
                    _ => {}
                }
            }
        }
        match &self.secret {
            Some(Secret(s)) if s.is_empty() => Err(ConfigError::invalid(
                "changes.masking.secret",
                "is empty; set it from a secret, e.g. ${file:/run/secrets/ficus-masking-key}",
            )),
            None if uses_hash => Err(ConfigError::invalid(
                "changes.masking.secret",
                "`hash` needs a secret key for its HMAC: set changes.masking.secret, e.g. ${MASKING_KEY} or \
                 ${file:/run/secrets/ficus-masking-key}",
            )),
            _ => Ok(()),
        }
    }

    /// The action for `column` of `table`, if any.
    pub fn action(&self, table: &TableName, column: &str) -> Option<MaskAction> {
        self.tables
            .iter()
            .find(|(t, _)| TableName::parse(t).as_ref() == Ok(table))
            .and_then(|(_, cols)| cols.get(column).copied())
    }

    /// Whether any column of `table` is masked.
    pub fn covers(&self, table: &TableName) -> bool {
        self.tables.keys().any(|t| TableName::parse(t).as_ref() == Ok(table))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(masking: &str) -> Result<Config, String> {
        let yaml = format!(
            "source: {{url: 'postgres://x@h/db', tables: [public.customers]}}\nkafka: {{brokers: 'k:9092'}}\n\
             changes:\n  tables: ['*']\n  masking: {masking}\n"
        );
        Config::from_yaml(&yaml, &|name| (name == "KEY").then(|| "s3cret".to_string())).map_err(|e| e.to_string())
    }

    #[test]
    fn masking_errors_name_the_key() {
        let ok =
            load("{secret: '${KEY}', tables: {public.customers: {email: hash, name: redact, notes: {truncate: 3}}}}")
                .unwrap();
        assert!(!format!("{:?}", ok.changes.masking).contains("s3cret"), "the secret is never printed");
        let err = load("{tables: {public.customers: {email: hash}}}").unwrap_err();
        assert!(err.contains("changes.masking.secret"), "{err}");
        let err = load("{secret: k, tables: {public.other: {email: redact}}}").unwrap_err();
        assert!(err.contains("changes.masking.tables.public.other") && err.contains("source.tables"), "{err}");
        let err = load("{tables: {public.customers: {email: blur}}}").unwrap_err();
        assert!(err.contains("changes.masking.tables.public.customers.email"), "{err}");
        let err = load("{tables: {public.customers: {notes: {truncate: 0}}}}").unwrap_err();
        assert!(err.contains("changes.masking.tables.public.customers.notes.truncate"), "{err}");
        let err = load("{secret: '', tables: {public.customers: {email: hash}}}").unwrap_err();
        assert!(err.contains("changes.masking.secret") && err.contains("empty"), "{err}");
    }
}
