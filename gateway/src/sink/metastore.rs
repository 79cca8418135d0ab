//! PLACEHOLDER for the Hive Metastore client (the contract's API, no client behind it): every
//! call fails as unavailable, so the sink's registration path runs as during a metastore
//! outage (partitions stay pending and are retried). The metastore engineer's module replaces
//! this file at merge; the sink core only uses `connect`, `ensure_table`, `add_partition`,
//! `Clone` and the error's `Display`.

/// A Hive Metastore connection.
#[derive(Debug, Clone)]
pub struct Metastore {
    uri: String,
}

/// A metastore call failed.
#[derive(Debug, thiserror::Error)]
pub enum MetastoreError {
    /// The metastore cannot be reached (retryable).
    #[error("Hive Metastore {0} is unavailable (no client in this build)")]
    Unavailable(String),
}

impl Metastore {
    /// Connects to `thrift://host:port`.
    pub async fn connect(uri: &str) -> Result<Self, MetastoreError> {
        Err(MetastoreError::Unavailable(uri.to_string()))
    }

    /// Creates the database and the external table if absent. Idempotent.
    pub async fn ensure_table(
        &self,
        _database: &str,
        _table: &str,
        _location: &str,
        _schema: &arrow_schema::Schema,
        _partition_keys: &[String],
    ) -> Result<(), MetastoreError> {
        Err(MetastoreError::Unavailable(self.uri.clone()))
    }

    /// Adds the partition; an existing one is success. Idempotent.
    pub async fn add_partition(
        &self,
        _database: &str,
        _table: &str,
        _values: &[String],
        _location: &str,
    ) -> Result<(), MetastoreError> {
        Err(MetastoreError::Unavailable(self.uri.clone()))
    }
}
