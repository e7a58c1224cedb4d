//! Startup and authentication: the StartupMessage with `replication=database` and the session settings the
//! value mapping relies on, then trust, cleartext, MD5 or SCRAM-SHA-256 (with `tls-server-end-point` channel
//! binding when TLS is in use and the server offers `SCRAM-SHA-256-PLUS`), then ParameterStatus and BackendKeyData
//! until ReadyForQuery.
//!
//! **Guarantees:** the password is only ever written into the authentication message; it is never logged or put
//! into an error. The server's SCRAM signature is verified, so a server that does not know the password cannot
//! complete the login. Unsupported methods (GSSAPI, SSPI, Kerberos) fail with a message that says what to change.

use std::collections::HashMap;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::error::notice_text;
use super::framing::{tag_name, Conn};
use super::ReplicationError;
use crate::config::conninfo::ConnInfo;

/// Session settings sent in the StartupMessage; `value.rs` parses text values in exactly these formats.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    // money's text form follows lc_monetary; one fixed locale keeps it the same on every connection.
    ("lc_monetary", "C"),
];

/// Runs startup and authentication; returns the server's ParameterStatus values once it is ready for queries.
pub async fn startup(conn: &mut Conn, info: &ConnInfo) -> Result<HashMap<String, String>, ReplicationError> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &info.user),
        ("database", &info.dbname),
        ("replication", "database"),
        ("application_name", &info.application_name),
    ];
    params.extend_from_slice(SESSION_SETTINGS);
    frontend::startup_message(params, &mut conn.write).map_err(protocol)?;
    conn.send().await?;
    authenticate(conn, info).await?;

    let mut parameters = HashMap::new();
    loop {
        let frame = conn.read_frame().await?;
        match frame.message()? {
            Message::ParameterStatus(p) => {
                let name = p.name().map_err(protocol)?.to_string();
                parameters.insert(name, p.value().map_err(protocol)?.to_string());
            }
            Message::BackendKeyData(_) => {}
            Message::NoticeResponse(n) => {
                tracing::debug!(notice = %notice_text(n.fields()), "server notice at startup")
            }
            Message::ReadyForQuery(_) => return Ok(parameters),
            Message::ErrorResponse(e) => return Err(ReplicationError::from_fields(e.fields())),
            _ => return Err(unexpected(frame.tag, "waiting for ReadyForQuery")),
        }
    }
}

async fn authenticate(conn: &mut Conn, info: &ConnInfo) -> Result<(), ReplicationError> {
    loop {
        let frame = conn.read_frame().await?;
        match frame.message()? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                let password = password(info, "a cleartext password")?;
                frontend::password_message(password.as_bytes(), &mut conn.write).map_err(protocol)?;
                conn.send().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password(info, "an MD5 password")?;
                let hash = md5_hash(info.user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut conn.write).map_err(protocol)?;
                conn.send().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = Vec::new();
                let mut it = body.mechanisms();
                while let Some(m) = it.next().map_err(protocol)? {
                    mechanisms.push(m.to_string());
                }
                scram(conn, info, &mechanisms).await?;
            }
            Message::ErrorResponse(e) => return Err(ReplicationError::from_fields(e.fields())),
            Message::NoticeResponse(n) => tracing::debug!(notice = %notice_text(n.fields()), "server notice at login"),
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationSspi
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGssContinue(_) => {
                return Err(ReplicationError::Auth {
                    message: format!(
                        "the server asked for GSSAPI/SSPI/Kerberos authentication, which ficus does not support; \
                         use scram-sha-256 (or md5/trust) for user {:?} in pg_hba.conf's replication entries",
                        info.user
                    ),
                })
            }
            _ => return Err(unexpected(frame.tag, "during authentication")),
        }
    }
}

async fn scram(conn: &mut Conn, info: &ConnInfo, mechanisms: &[String]) -> Result<(), ReplicationError> {
    let password = password(info, "a SCRAM-SHA-256 password")?;
    let offers = |m: &str| mechanisms.iter().any(|x| x == m);
    let (mechanism, binding) = match conn.channel_binding.clone() {
        Some(data) if offers(sasl::SCRAM_SHA_256_PLUS) => {
            (sasl::SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(data))
        }
        // "n": we do not bind. Over TLS the server would reject "y" (it offers binding), and it means nothing without.
        _ if offers(sasl::SCRAM_SHA_256) => (sasl::SCRAM_SHA_256, ChannelBinding::unsupported()),
        _ => {
            return Err(ReplicationError::Auth {
                message: format!("the server offered SASL mechanisms {mechanisms:?}; ficus supports SCRAM-SHA-256"),
            })
        }
    };
    tracing::debug!(mechanism, "SASL authentication");
    let mut scram = ScramSha256::new(password.as_bytes(), binding);
    frontend::sasl_initial_response(mechanism, scram.message(), &mut conn.write).map_err(protocol)?;
    conn.send().await?;

    let frame = conn.read_frame().await?;
    match frame.message()? {
        Message::AuthenticationSaslContinue(body) => scram
            .update(body.data())
            .map_err(|e| ReplicationError::Auth { message: format!("invalid SCRAM server-first message: {e}") })?,
        Message::ErrorResponse(e) => return Err(ReplicationError::from_fields(e.fields())),
        _ => return Err(unexpected(frame.tag, "waiting for SASL continue")),
    }
    frontend::sasl_response(scram.message(), &mut conn.write).map_err(protocol)?;
    conn.send().await?;

    let frame = conn.read_frame().await?;
    match frame.message()? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(|e| ReplicationError::Auth {
            message: format!("the server's SCRAM signature did not verify ({e}); it may not be the server you meant"),
        }),
        Message::ErrorResponse(e) => Err(ReplicationError::from_fields(e.fields())),
        _ => Err(unexpected(frame.tag, "waiting for SASL final")),
    }
}

fn password<'a>(info: &'a ConnInfo, kind: &str) -> Result<&'a str, ReplicationError> {
    info.password.as_ref().map(|p| p.expose()).ok_or_else(|| ReplicationError::Auth {
        message: format!(
            "the server asked for {kind} for user {:?} but the connection URL has none; \
             write it as postgres://{}:PASSWORD@host/db (e.g. ${{PGPASSWORD}} in the config)",
            info.user, info.user
        ),
    })
}

fn protocol(e: std::io::Error) -> ReplicationError {
    ReplicationError::Protocol(e.to_string())
}

pub(super) fn unexpected(tag: u8, when: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("unexpected message of type {} {when}", tag_name(tag)))
}
