//! Everything that speaks to PostgreSQL.
//!
//! - [`conninfo`]: `postgres://` URLs and `sslmode`, with the password kept out of `Debug`/`Display`.
//! - [`tls`]: rustls client configurations for each `sslmode`.
//! - [`replication`]: our replication-protocol client (startup, auth, `IDENTIFY_SYSTEM`, slots, CopyBoth stream).
//! - [`pgoutput`]: decoder for pgoutput protocol version 1 messages.
//! - [`value`]: PostgreSQL text values → JSON, as docs/events.md maps them.
//! - [`value_binary`]: the same mapping from binary (`send`) values, for pgoutput's `binary` option.
//! - [`control`]: the regular SQL connection: preflight, publication and slot management, catalog reads.
//! - [`generated`]: generated columns in a replica identity against a publication (PostgreSQL 18).

pub mod admin;
pub mod connect;
pub mod control;
pub mod generated;
pub mod pgoutput;
pub mod replication;
pub mod sqlstate;
pub mod tls;
pub mod value;

/// A tiny deterministic generator for the randomized tests of the decoder and the value mapping (seeded, so a failure
/// reproduces).
#[cfg(test)]
pub(crate) mod test_rng {
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }
}
