//! Hive Metastore registration for the sink: creates the EXTERNAL Parquet table of a topic and
//! adds its partitions, over the metastore's Thrift API (the `hive_metastore` crate on the volo
//! Thrift runtime: binary protocol, buffered transport — the metastore's default, no SASL).
//!
//! Every call has a bounded time ([`Timeouts`]); an unreachable or slow metastore is a
//! *retryable* [`MetastoreError`] (`is_retryable()`), whatever the metastore answers is a
//! permanent one. A broken connection (the metastore restarted) is dropped and the call is sent
//! once more on a new connection within the same time bound, so a restarted metastore is used
//! again without a new [`Metastore`]. Both operations are idempotent: a table or partition that
//! already exists is success, so a caller retries freely.
//!
//! Tables: `EXTERNAL_TABLE` with `EXTERNAL=TRUE`, `ParquetHiveSerDe` and the `MapredParquet`
//! input/output formats, `LOCATION` as given; columns from the Arrow schema mapped by
//! [`hive_type`]; the partition keys as `string` partition columns (a schema field named like a
//! partition key is left out of the columns: Hive forbids both).
//! An existing table gains the top-level columns of `schema` that it lacks (appended, for
//! schema evolution: a new optional field); other differences are left alone.
//!
//! The parts: `client` holds the Thrift connection and runs each call within its time bound,
//! `tables` creates and evolves tables and adds partitions (and says what they look like to
//! Hive), and `hive_types` maps Arrow types to Hive column types.

mod client;
mod hive_types;
mod tables;

use std::time::Duration;

pub use self::client::Metastore;
pub use self::hive_types::hive_type;
pub use self::tables::{PARQUET_INPUT_FORMAT, PARQUET_OUTPUT_FORMAT, PARQUET_SERDE};

/// The metastore's description of a table, as [`Metastore::get_table`] returns it.
pub use hive_metastore::Table as HiveTable;

/// Why a metastore call failed. [`MetastoreError::is_retryable`] tells an outage (try again
/// later: nothing is wrong with the request) from a refusal (the same call fails again).
#[derive(Debug, thiserror::Error)]
pub enum MetastoreError {
    /// The URI is not `thrift://host:port`. Permanent.
    #[error("invalid metastore URI {uri:?}: {reason} (expected thrift://host:port)")]
    InvalidUri { uri: String, reason: String },
    /// No answer: connection refused or reset, DNS failure, a broken connection. Retryable.
    #[error("Hive Metastore {addr} unavailable ({op}): {detail}")]
    Unavailable {
        addr: String,
        op: &'static str,
        detail: String,
    },
    /// No answer within the call's time bound. Retryable.
    #[error("Hive Metastore {addr}: {op} timed out after {timeout:?}")]
    Timeout {
        addr: String,
        op: &'static str,
        timeout: Duration,
    },
    /// The metastore answered with an error (MetaException, InvalidObjectException, an
    /// application or protocol error). Permanent.
    #[error("Hive Metastore {addr} refused {op}: {detail}")]
    Refused {
        addr: String,
        op: &'static str,
        detail: String,
    },
    /// `add_partition` for a table that does not exist. Permanent (call `ensure_table` first).
    #[error("table {database}.{table} does not exist in the Hive Metastore")]
    NoSuchTable { database: String, table: String },
    /// `add_partition` with a number of values other than the table's partition columns.
    /// Permanent.
    #[error("table {database}.{table} has {expected} partition column(s), got {got} value(s)")]
    PartitionValues {
        database: String,
        table: String,
        expected: usize,
        got: usize,
    },
    /// A column whose Arrow type has no Hive equivalent. Permanent.
    #[error("column {column:?}: Arrow type {data_type} has no Hive equivalent")]
    UnsupportedType { column: String, data_type: String },
}

impl MetastoreError {
    /// Whether the same call may succeed later (the metastore was unreachable or too slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

/// Time bounds of the metastore calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a TCP connection.
    pub connect: Duration,
    /// One operation (`ensure_table`: up to four Thrift calls; `add_partition`: one or two),
    /// connection and the retry on a broken connection included.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // The first DDL against a fresh Derby-backed metastore takes a few seconds (its schema
        // is created on first use).
        Self {
            connect: Duration::from_secs(5),
            call: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests;
