//! [`ReplicationError`]: what can go wrong on a replication connection, split into transient (reconnect and
//! resume) and definite (a person must act) by [`ReplicationError::is_transient`].
//!
//! **Guarantee:** no variant ever carries the password; server messages are kept whole (SQLSTATE, message,
//! detail, hint) because they usually say exactly what to fix.

use std::fmt;

use postgres_protocol::message::backend::ErrorFields;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::postgres::tls::TlsError;

/// A replication-connection failure.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("I/O error on the replication connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("timed out {0}")]
    Timeout(String),
    #[error("authentication failed: {message}")]
    Auth { message: String },
    #[error("{}", ServerDisplay { sqlstate, message, detail: detail.as_deref(), hint: hint.as_deref() })]
    Server { sqlstate: String, message: String, detail: Option<String>, hint: Option<String> },
    #[error("replication protocol error: {0}")]
    Protocol(String),
    #[error("the server closed the replication connection")]
    Closed,
    /// A multi-host URL (or `target_session_attrs`): no host was usable; `detail` says why for each.
    #[error("no host of source.url is usable (target_session_attrs={attrs}): {detail}")]
    NoHost { attrs: &'static str, detail: String, transient: bool },
}

impl ReplicationError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    /// Worth reconnecting for: the network, a server restart, too many connections, or the slot being held by
    /// another process (55006: a previous instance of ficus may still be shutting down). Authentication failures,
    /// a missing slot (42704), an invalidated slot (55000), configuration and protocol errors are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io(_) | ReplicationError::Closed | ReplicationError::Timeout(_) => true,
            ReplicationError::NoHost { transient, .. } => *transient,
            ReplicationError::Tls(TlsError::Handshake { source, .. }) => {
                // rustls reports certificate and protocol problems as InvalidData; everything else is the network.
                source.kind() != std::io::ErrorKind::InvalidData
            }
            ReplicationError::Server { sqlstate, .. } => crate::postgres::sqlstate::is_transient(sqlstate),
            ReplicationError::Tls(_) | ReplicationError::Auth { .. } | ReplicationError::Protocol(_) => false,
        }
    }

    /// Builds a [`ReplicationError::Server`] from ErrorResponse fields; malformed fields become a protocol error.
    pub(super) fn from_fields(mut fields: ErrorFields<'_>) -> ReplicationError {
        let mut sqlstate = None;
        let mut message = None;
        let mut detail = None;
        let mut hint = None;
        loop {
            match fields.next() {
                Ok(Some(field)) => {
                    let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                    match field.type_() {
                        b'C' => sqlstate = Some(value),
                        b'M' => message = Some(value),
                        b'D' => detail = Some(value),
                        b'H' => hint = Some(value),
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => return ReplicationError::Protocol(format!("malformed ErrorResponse: {e}")),
            }
        }
        ReplicationError::Server {
            sqlstate: sqlstate.unwrap_or_else(|| "XX000".to_string()),
            message: message.unwrap_or_else(|| "(the server sent no message)".to_string()),
            detail,
            hint,
        }
    }
}

/// Renders a NoticeResponse as one line for the debug log.
pub(super) fn notice_text(mut fields: ErrorFields<'_>) -> String {
    let mut severity = String::new();
    let mut message = String::new();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'S' => severity = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    format!("{severity}: {message}")
}

struct ServerDisplay<'a> {
    sqlstate: &'a str,
    message: &'a str,
    detail: Option<&'a str>,
    hint: Option<&'a str>,
}

impl fmt::Display for ServerDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server error {}: {}", self.sqlstate, self.message)?;
        if let Some(d) = self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(sqlstate: &str) -> ReplicationError {
        ReplicationError::Server { sqlstate: sqlstate.into(), message: "m".into(), detail: None, hint: None }
    }

    #[test]
    fn classification() {
        for s in ["08006", "57P01", "57P03", "55006", "53300"] {
            assert!(server(s).is_transient(), "{s}");
        }
        for s in ["28P01", "28000", "42704", "55000", "42601", "XX000"] {
            assert!(!server(s).is_transient(), "{s}");
        }
        assert!(ReplicationError::Closed.is_transient());
        assert!(ReplicationError::Timeout("x".into()).is_transient());
        assert!(!ReplicationError::Protocol("x".into()).is_transient());
        assert!(!ReplicationError::Auth { message: "x".into() }.is_transient());
        assert_eq!(server("55006").sqlstate(), Some("55006"));
        assert_eq!(ReplicationError::Closed.sqlstate(), None);
    }

    #[test]
    fn display_has_sqlstate_message_and_hint() {
        let e = ReplicationError::Server {
            sqlstate: "42704".into(),
            message: "replication slot \"x\" does not exist".into(),
            detail: Some("d".into()),
            hint: Some("create it".into()),
        };
        assert_eq!(
            e.to_string(),
            "server error 42704: replication slot \"x\" does not exist; detail: d; hint: create it"
        );
    }
}
