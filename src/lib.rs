//! # ficus — PostgreSQL logical replication to canonical business events on Kafka
//!
//! ```text
//!  Postgres ──(replication protocol, pgoutput)──▶ source ──Change──▶ router ──Record──▶ sink (Kafka) ──acks──▶ progress
//!      ▲                                                                                                  │
//!      └──────── standby status update + checkpoint: flush LSN = last commit whose every message is acked ◀─┘
//! ```
//!
//! **Invariant:** nothing is confirmed to PostgreSQL, and no checkpoint is written, before Kafka acknowledged
//! every message of that transaction and of all transactions before it. A crash at any instant loses nothing;
//! at-least-once delivery may repeat the transactions after the last checkpoint.
//!
//! ## Layout
//! The modules stand on floors (docs/architecture.md, "Floors"; `tests/layering.rs` enforces them): each imports only
//! its own floor or below.
//! 1. [`lsn`], [`ident`], [`json`], [`record`], [`metrics`] — vocabulary.
//! 2. [`change`], [`checkpoint`], [`config`], [`progress`], [`health`] — shapes shared by the stages.
//! 3. [`postgres`] — the PostgreSQL client: replication protocol, pgoutput decoder, values, catalog reads, writes.
//! 4. [`source`], [`encode`], [`rules`], [`snapshot`], [`kafka`] — the stages.
//! 5. [`router`] — one change in, its Kafka records out.
//! 6. [`check`], [`catalog`], [`backfill`], [`healthcheck`], [`dlq`] — the commands built from the stages.
//! 7. [`pipeline`] — wiring: `run(config, rules, options, shutdown)`.

pub mod backfill;
pub mod catalog;
pub mod change;
pub mod check;
pub(crate) mod checkpoint;
pub mod config;
pub mod dlq;
pub(crate) mod encode;
pub(crate) mod health;
pub mod healthcheck;
pub(crate) mod ident;
pub(crate) mod json;
pub(crate) mod kafka;
pub(crate) mod lsn;
pub(crate) mod metrics;
pub mod pipeline;
pub mod postgres;
pub(crate) mod progress;
pub(crate) mod record;
pub(crate) mod router;
pub mod rules;
pub mod snapshot;
pub(crate) mod source;
#[cfg(test)]
pub(crate) mod testing;
