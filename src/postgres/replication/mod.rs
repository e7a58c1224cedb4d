//! Our client for PostgreSQL's streaming replication protocol (tokio-postgres has none), built on
//! postgres-protocol: connect with `replication=database`, run replication commands (`IDENTIFY_SYSTEM`,
//! `CREATE_REPLICATION_SLOT`), and stream a logical slot in CopyBoth mode.
//!
//! Layout: `framing` (socket, read buffer, frames), `connect` (TCP/Unix, SSLRequest), `auth` (startup and
//! authentication), `stream` (XLogData, keepalives, status updates), `error` (transient vs definite).
//!
//! **Guarantees.**
//! - [`ReplicationStream::next`] is cancel-safe and never panics on malformed bytes (they are
//!   [`ReplicationError::Protocol`]); XLogData payloads are zero-copy slices of a ≥128 KiB read buffer.
//! - The whole connect (TCP, TLS, authentication, ReadyForQuery) is bounded by `connect_timeout`.
//! - The password is used only in the authentication exchange and never logged.
//! - Identifiers are double-quoted by [`quote_ident`] and option values single-quoted by [`quote_literal`], so a
//!   slot or publication name cannot change the command.
//! - The session runs with `DateStyle=ISO, MDY`, `TimeZone=UTC`, `IntervalStyle=iso_8601`,
//!   `extra_float_digits=3`, `bytea_output=hex`, `client_encoding=UTF8` ([`SESSION_SETTINGS`]).

mod auth;
mod connect;
mod error;
mod framing;
mod stream;

use std::collections::HashMap;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

pub use auth::SESSION_SETTINGS;
pub use error::ReplicationError;
pub use stream::{ReplicationMessage, ReplicationStream};

use crate::config::conninfo::ConnInfo;
use crate::lsn::Lsn;
use auth::unexpected;
use error::notice_text;
use framing::Conn;

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier (a decimal u64, kept as text).
    pub systemid: String,
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The connected database (always set for `replication=database` connections).
    pub dbname: Option<String>,
}

/// `CREATE_REPLICATION_SLOT`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Streaming from the slot yields every transaction committing after this position.
    pub consistent_point: Lsn,
    /// Exported snapshot; always `None` with `NOEXPORT_SNAPSHOT`.
    pub snapshot_name: Option<String>,
}

/// A replication connection in command mode.
pub struct ReplicationConnection {
    conn: Conn,
    parameters: HashMap<String, String>,
}

impl ReplicationConnection {
    /// Connects, negotiates TLS, authenticates, and waits for ReadyForQuery, all within `info.connect_timeout`. A
    /// multi-host URL tries its hosts in order and keeps the first that matches `target_session_attrs`.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection, ReplicationError> {
        if !info.is_multi_host() {
            return ReplicationConnection::connect_one(info).await;
        }
        let attrs = info.target_session_attrs;
        let mut failures = Vec::new();
        // Transient unless a host refused for a reason retrying cannot fix (authentication, TLS set-up).
        let mut transient = true;
        for candidate in info.candidates() {
            let mut conn = match ReplicationConnection::connect_one(&candidate).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::info!("skipping host {}: {e}", candidate.target());
                    transient &= e.is_transient();
                    failures.push(format!("{}: {e}", candidate.target()));
                    continue;
                }
            };
            let Some(probe) = attrs.probe() else { return Ok(conn) };
            let refusal = match conn.simple_query(probe).await {
                Ok(rows) => match rows.first().and_then(|r| r.first()).cloned().flatten() {
                    Some(answer) => attrs.refusal(&answer),
                    None => Some(format!("answered nothing to {probe}")),
                },
                Err(e) => Some(format!("{probe}: {e}")),
            };
            match refusal {
                None => {
                    tracing::debug!(target = %candidate.target(), attrs = attrs.as_str(), "replication connection: host chosen");
                    return Ok(conn);
                }
                Some(reason) => {
                    conn.close().await;
                    tracing::info!("skipping host {}: it {reason}", candidate.target());
                    failures.push(format!("{} {reason}", candidate.target()));
                }
            }
        }
        Err(ReplicationError::NoHost { attrs: attrs.as_str(), detail: failures.join("; "), transient })
    }

    async fn connect_one(info: &ConnInfo) -> Result<ReplicationConnection, ReplicationError> {
        let attempt = async {
            let mut conn = connect::open(info).await?;
            let parameters = auth::startup(&mut conn, info).await?;
            tracing::debug!(
                target = %info.target(),
                tls = conn.tls,
                server_version = parameters.get("server_version").map(String::as_str).unwrap_or("?"),
                "replication connection ready"
            );
            Ok(ReplicationConnection { conn, parameters })
        };
        if info.connect_timeout.is_zero() {
            return attempt.await;
        }
        tokio::time::timeout(info.connect_timeout, attempt).await.unwrap_or_else(|_| {
            Err(ReplicationError::Timeout(format!(
                "connecting to {} after {}s (connect_timeout in source.url)",
                info.target(),
                info.connect_timeout.as_secs()
            )))
        })
    }

    /// A run-time parameter the server reported (`server_version`, `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.tls
    }

    /// Runs one simple-protocol query and returns all rows as text (`None` = SQL NULL). Not cancel-safe (a
    /// cancelled query leaves its answer unread): drop the connection if you abandon it.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        tracing::debug!(sql, "replication command");
        frontend::query(sql, &mut self.conn.write).map_err(|e| ReplicationError::Protocol(e.to_string()))?;
        self.conn.send().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.conn.read_frame().await?;
            match frame.message()? {
                Message::RowDescription(_) | Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::DataRow(row) => {
                    if error.is_none() {
                        rows.push(data_row(&row)?);
                    }
                }
                Message::ErrorResponse(e) => error = Some(ReplicationError::from_fields(e.fields())),
                Message::NoticeResponse(n) => tracing::debug!(notice = %notice_text(n.fields()), "server notice"),
                Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => return error.map_or(Ok(rows), Err),
                _ => return Err(unexpected(frame.tag, "in a simple query's result")),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, 4, "IDENTIFY_SYSTEM")?;
        let timeline = text(row, 1, "IDENTIFY_SYSTEM timeline")?;
        Ok(SystemIdentity {
            systemid: text(row, 0, "IDENTIFY_SYSTEM systemid")?.to_string(),
            timeline: timeline.parse().map_err(|_| {
                ReplicationError::Protocol(format!("IDENTIFY_SYSTEM timeline {timeline:?} is not a number"))
            })?,
            xlogpos: lsn(text(row, 2, "IDENTIFY_SYSTEM xlogpos")?)?,
            dbname: row.get(3).cloned().flatten(),
        })
    }

    /// `CREATE_REPLICATION_SLOT "slot" [TEMPORARY] LOGICAL pgoutput NOEXPORT_SNAPSHOT` (accepted by PostgreSQL 10
    /// through 17). A temporary slot disappears with this connection.
    pub async fn create_logical_slot(&mut self, slot: &str, temporary: bool) -> Result<CreatedSlot, ReplicationError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(slot),
            if temporary { " TEMPORARY" } else { "" }
        );
        let rows = self.simple_query(&sql).await?;
        let row = single_row(&rows, 4, "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot {
            consistent_point: lsn(text(row, 1, "CREATE_REPLICATION_SLOT consistent_point")?)?,
            snapshot_name: row.get(2).cloned().flatten(),
        })
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL X/Y ("name" 'value', ...)`. Option names are quoted as identifiers
    /// and values as string literals, so pass them unquoted: `("publication_names", "\"ficus\"")`.
    /// A server refusal (slot in use: 55006, missing: 42704) is [`ReplicationError::Server`] with its SQLSTATE.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream, ReplicationError> {
        let sql = start_replication_sql(slot, start, options);
        tracing::debug!(sql = %sql, "starting replication");
        frontend::query(&sql, &mut self.conn.write).map_err(|e| ReplicationError::Protocol(e.to_string()))?;
        self.conn.send().await?;
        let mut error = None;
        loop {
            let frame = self.conn.read_frame().await?;
            // CopyBothResponse ('W') is not in postgres-protocol's parser; its column formats do not matter here.
            if frame.tag == b'W' && error.is_none() {
                return Ok(ReplicationStream::new(self.conn));
            }
            match frame.message()? {
                Message::ErrorResponse(e) => error = Some(ReplicationError::from_fields(e.fields())),
                Message::NoticeResponse(n) => tracing::debug!(notice = %notice_text(n.fields()), "server notice"),
                Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => {
                    let error = error.unwrap_or_else(|| {
                        ReplicationError::Protocol("START_REPLICATION ended without streaming".into())
                    });
                    self.close().await;
                    return Err(error);
                }
                _ => return Err(unexpected(frame.tag, "in answer to START_REPLICATION")),
            }
        }
    }

    /// Sends Terminate and closes the connection (best effort, at most a second).
    pub async fn close(mut self) {
        frontend::terminate(&mut self.conn.write);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let _ = self.conn.send().await;
            self.conn.shutdown().await;
        })
        .await;
    }
}

fn start_replication_sql(slot: &str, start: Lsn, options: &[(&str, &str)]) -> String {
    let mut sql = format!("START_REPLICATION SLOT {} LOGICAL {start}", quote_ident(slot));
    if !options.is_empty() {
        let list: Vec<String> =
            options.iter().map(|(name, value)| format!("{} {}", quote_ident(name), quote_literal(value))).collect();
        sql.push_str(&format!(" ({})", list.join(", ")));
    }
    sql
}

/// `"ident"` with embedded double quotes doubled (the replication grammar's quoted identifier).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'value'` with embedded single quotes doubled (a standard-conforming string literal; backslashes are literal).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn data_row(row: &postgres_protocol::message::backend::DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let buf = row.buffer();
    let mut values = Vec::new();
    let mut ranges = row.ranges();
    while let Some(range) = ranges.next().map_err(|e| ReplicationError::Protocol(format!("malformed DataRow: {e}")))? {
        let value = match range {
            None => None,
            Some(r) => {
                let bytes =
                    buf.get(r).ok_or_else(|| ReplicationError::Protocol("DataRow value out of bounds".into()))?;
                Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| ReplicationError::Protocol("DataRow value is not UTF-8".into()))?,
                )
            }
        };
        values.push(value);
    }
    Ok(values)
}

fn single_row<'a>(
    rows: &'a [Vec<Option<String>>],
    min_cols: usize,
    what: &str,
) -> Result<&'a [Option<String>], ReplicationError> {
    match rows {
        [row] if row.len() >= min_cols => Ok(row),
        _ => Err(ReplicationError::Protocol(format!(
            "{what} returned {} rows (first with {} columns); expected one row of {min_cols}",
            rows.len(),
            rows.first().map_or(0, Vec::len)
        ))),
    }
}

fn text<'a>(row: &'a [Option<String>], i: usize, what: &str) -> Result<&'a str, ReplicationError> {
    row.get(i).and_then(|v| v.as_deref()).ok_or_else(|| ReplicationError::Protocol(format!("{what} is missing")))
}

fn lsn(s: &str) -> Result<Lsn, ReplicationError> {
    s.parse().map_err(|e| ReplicationError::Protocol(format!("{e}")))
}

/// Entry points for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`). Framing and CopyData parsing
/// live in private modules, and a fuzz target is a separate crate, so it needs them reachable from outside.
/// Hidden and not an API: nothing else should use it.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::framing::{split_frame, Frame, MAX_FRAME};
    pub use super::stream::parse_copy_data;

    /// Parses a non-CopyData frame the way the command-mode and CopyBoth readers do, walking the fields they walk
    /// (ErrorResponse, NoticeResponse, DataRow), and throws the result away.
    pub fn server_message(frame: &Frame) -> Result<(), super::ReplicationError> {
        use postgres_protocol::message::backend::Message;
        match frame.message()? {
            Message::ErrorResponse(e) => drop(super::ReplicationError::from_fields(e.fields())),
            Message::NoticeResponse(n) => drop(super::error::notice_text(n.fields())),
            Message::DataRow(row) => drop(super::data_row(&row)?),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
