//! Lakewire: a Kafka-to-WebSocket streaming gateway for real-time data lakes.
//!
//! A record's path through the modules:
//!
//! - [`source`]: one Kafka consumer per topic (and a short-lived reader per replaying
//!   subscription) reads raw records;
//! - [`decode`]: turns each into a [`decode::Record`] once, however many clients read it (JSON,
//!   or Avro in the Confluent, single-object or raw framing); what it cannot decode is counted,
//!   skipped and, if configured, copied by [`dead_letter`] to a dead-letter topic;
//! - [`hub`]: renders it once per distinct subscription shape ([`filter`]: CEL filter and field
//!   projection) and hands the bytes to every subscription of that shape through each client's
//!   bounded queue, applying the slow-client policy when a queue is full;
//! - [`session`]: one per WebSocket connection, speaks [`protocol`] v1 and writes `records`
//!   frames;
//! - [`sse`]: the same stream as server-sent events at `/sse`;
//! - [`http`]: the listener's routes (served over TLS by [`tls`] when configured) (`/ws`, `/sse`, `/metrics`, `/healthz`, `/readyz`,
//!   `/api/topics`).
//!
//! Around them: [`auth`] (JWT and origin checks before any WebSocket), [`config`] (TOML + `LAKEWIRE_*` environment), [`metrics`] (every metric, declared
//! once), [`app`] (wires the stages, owns shutdown) and [`demo`] (an in-process broker and a
//! synthetic producer for `lakewire demo`). [`tail`] is the other side: `lakewire tail`, a
//! terminal client of the protocol. [`sink`] is the other way out: the same topics as Parquet
//! files in Hive partitions (a consumer group of its own; `lakewire run --role sink`).

pub mod app;
pub mod auth;
pub mod config;
pub mod decode;
pub mod demo;
pub mod filter;
pub mod http;
pub mod hub;
pub mod kafka;
pub mod log_limit;
pub mod metrics;
pub mod protocol;
pub mod record;
pub mod services;
pub mod session;
pub mod sink;
pub mod source;
pub mod sse;
pub mod subscribe;
pub mod tail;
pub mod tls;
