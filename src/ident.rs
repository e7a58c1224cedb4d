//! SQL identifiers: [`TableName`] (schema and name, unquoted, parsed the way PostgreSQL reads them) and
//! [`quote_ident`]. The bottom floor: imports nothing from the crate.
//!
//! **Guarantee:** every identifier ficus splices into SQL goes through [`quote_ident`] or [`TableName::quoted`]
//! (or a bind parameter), so names with capitals, spaces or quotes work and cannot inject SQL.

use std::fmt;

use serde::Deserialize;

/// A table name split into schema and name, both unquoted (exactly as in `pg_class`/`pg_namespace`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parses `table`, `schema.table`, `"Mixed Case"."Table ""x"""`. Unquoted parts fold to lower case, like SQL.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let parts = split_identifiers(text)?;
        match parts.as_slice() {
            [name] => Ok(TableName { schema: "public".into(), name: name.clone() }),
            [schema, name] => Ok(TableName { schema: schema.clone(), name: name.clone() }),
            _ => Err(format!("{text:?} is not `table` or `schema.table`")),
        }
    }

    /// `"schema"."name"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Double-quotes an SQL identifier, doubling embedded quotes. Every identifier ficus puts into SQL goes
/// through this (or a bind parameter), so names with capitals, spaces or quotes work and cannot inject SQL.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn split_identifiers(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("unterminated quoted identifier in {text:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return Err(format!(
                        "{text:?}: quote identifiers that contain spaces or quotes, e.g. legacy.\"Order Lines\""
                    ));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("empty identifier in {text:?}"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("unexpected {c:?} after identifier in {text:?}")),
        }
    }
}

/// A table name in the config (`source.tables`, `snapshot.tables`, rules' `table`) is parsed once, while the
/// config is read: a malformed name is reported with its key path.
impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TableName::parse(&text).map_err(serde::de::Error::custom)
    }
}
