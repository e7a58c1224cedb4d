//! Everything that speaks to PostgreSQL.
//!
//! - [`conninfo`]: `postgres://` URLs and `sslmode`, with the password kept out of `Debug`/`Display`.
//! - [`tls`]: rustls client configurations for each `sslmode`.
//! - [`replication`]: our replication-protocol client (startup, auth, `IDENTIFY_SYSTEM`, slots, CopyBoth stream).
//! - [`pgoutput`]: decoder for pgoutput protocol version 1 messages.
//! - [`value`]: PostgreSQL text values → JSON, as docs/events.md maps them.
//! - [`value_binary`]: the same mapping from binary (`send`) values, for pgoutput's `binary` option.
//! - [`control`]: the regular SQL connection: preflight, publication and slot management, catalog reads.

pub mod admin;
pub mod connect;
pub mod control;
pub mod pgoutput;
pub mod replication;
pub mod sqlstate;
pub mod tls;
pub mod value;
