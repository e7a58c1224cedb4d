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
//! - [`config`]: the YAML configuration, `${ENV}` interpolation, validation with key paths.
//! - [`lsn`]: WAL positions.
//! - [`change`]: ficus's own change types, the only thing the source hands downstream.
//! - [`postgres`]: connection strings and TLS, the replication protocol client, the pgoutput decoder,
//!   value mapping, and the control connection (preflight, slot and publication management, catalog).
//! - [`source`]: the replication stream task: decode, skip what is already checkpointed, report progress.
//! - [`encode`]: the raw change event JSON (docs/events.md "Raw change events"), and its Debezium-compatible form.
//! - [`snapshot`]: snapshots and backfills of existing rows (DBLog watermark chunks), resumable from the checkpoint.
//! - [`router`]: turns a change into Kafka records: raw change events, then the events of the rules.
//! - [`rules`]: business-event rules: CEL compiled once, the canonical envelope, CloudEvents, the DLQ.
//! - [`kafka`]: the idempotent producer with backpressure and delivery tracking.
//! - [`progress`]: the ordered ack tracker that computes the flushed LSN.
//! - [`checkpoint`]: where the flushed LSN is persisted (a file in `state.dir`), behind a trait.
//! - [`pipeline`]: wires the stages with bounded channels and one shutdown token; `run(config, shutdown)`.
//! - [`check`]: `ficus check`, the preflight report.
//! - [`catalog`]: `ficus catalog`, the event catalog with JSON Schemas.
//! - [`health`]: the HTTP endpoints (`/healthz`, `/readyz`, `/metrics`, `/status`) and the state behind them.
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`healthcheck`]: `ficus healthcheck`, the container liveness probe.

pub mod backfill;
pub mod catalog;
pub mod change;
pub mod check;
pub(crate) mod checkpoint;
pub mod config;
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
