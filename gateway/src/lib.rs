//! Lakewire: a Kafka-to-WebSocket streaming gateway for real-time data lakes.
//!
//! A record's path through the modules, in order:
//!
//! 1. [`source`]: one Kafka consumer per topic (and a short-lived reader per replaying
//!    subscription) reads a [`record::RawRecord`] (clients from [`kafka`]);
//! 2. [`decode`]: turns it into a [`record::Record`] once, however many clients read it (JSON,
//!    or Avro in the Confluent, single-object or raw framing); what it cannot decode is counted,
//!    skipped and, if configured, copied to a dead-letter topic ([`decode::dead_letter`]);
//! 3. [`hub`]: renders it once per distinct subscription shape it may match ([`filter`]: CEL
//!    filter and field projection, [`filter::index`] finds the candidates; the envelope written
//!    by [`protocol`]) and hands the bytes to every
//!    subscription of that shape through each client's bounded queue ([`hub::queue`]: the
//!    slow-client policy applies when it is full); replayed records go through it too;
//! 4. [`session`] (WebSocket, speaking [`protocol`] v1) or [`sse`] (server-sent events) takes
//!    them from the queue and writes `records` frames; both start and stop subscriptions
//!    through [`subscribe`].
//!
//! The other way out: [`sink`] writes the same topics as Parquet files in Hive partitions (a
//! consumer group of its own; `lakewire run --role sink`).
//!
//! Around them: [`config`] (plain data: TOML + `LAKEWIRE_*` environment, the checks that need
//! nothing but the data), [`app`] (builds and wires the stages, owns shutdown; `lakewire check`
//! builds them dry), [`services`] (the state connections share, connection limits), [`http`]
//! (the listener's routes: `/ws`, `/sse`, `/metrics`, `/healthz`, `/readyz`, `/api/topics`;
//! served by [`listener`] under the HTTP limits, over TLS by [`tls`] when configured), [`auth`] (JWT and origin checks before any
//! connection), [`metrics`] (every metric, declared once), [`log_limit`] (rate-limited logs),
//! [`demo`] (an in-process broker and a synthetic producer for `lakewire demo`) and [`tail`]
//! (`lakewire tail`, a terminal client of the protocol).

pub mod app;
pub mod auth;
pub mod config;
pub mod decode;
pub mod deflate;
pub mod demo;
pub mod filter;
pub mod http;
pub mod hub;
pub mod kafka;
pub mod listener;
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
