//! The Thrift connection to the metastore. Input: a `thrift://host:port` URI and [`Timeouts`];
//! output: a [`Metastore`] whose calls each finish within their time bound, a broken connection
//! tried once more on a new one, and whose failures are sorted into retryable and permanent
//! [`MetastoreError`]s. Also the cache of the table layouts seen, for adding partitions.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_schema::Schema;
use hive_metastore::{
    StorageDescriptor, ThriftHiveMetastoreClient, ThriftHiveMetastoreClientBuilder,
};
use volo_thrift::{ClientError, MaybeException};

use super::{MetastoreError, Timeouts};

/// (database, table) → (storage descriptor, number of partition columns) of the tables seen.
type TableCache = HashMap<(String, String), (StorageDescriptor, usize)>;

/// A Hive Metastore client. Cheap to clone; clones share the connection pool and the table cache.
#[derive(Clone)]
pub struct Metastore {
    client: ThriftHiveMetastoreClient,
    addr: String,
    pub(super) timeouts: Timeouts,
    /// Layouts of the tables seen, for their partitions.
    tables: Arc<Mutex<TableCache>>,
}

impl std::fmt::Debug for Metastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metastore")
            .field("addr", &self.addr)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Metastore {
    /// A client of the metastore at `uri` (`thrift://host:port`) with the default
    /// [`Timeouts`]. Resolves the host but sends nothing: a metastore that is down shows in the
    /// calls (as a retryable error), not here.
    pub async fn connect(uri: &str) -> Result<Self, MetastoreError> {
        Self::connect_with(uri, Timeouts::default()).await
    }

    /// [`Metastore::connect`] with other time bounds.
    pub async fn connect_with(uri: &str, timeouts: Timeouts) -> Result<Self, MetastoreError> {
        let hostport = parse_uri(uri)?;
        let resolve = tokio::net::lookup_host(hostport.clone());
        let addr: SocketAddr = match tokio::time::timeout(timeouts.connect, resolve).await {
            Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| MetastoreError::Unavailable {
                addr: hostport.clone(),
                op: "resolve",
                detail: "the host name has no address".into(),
            })?,
            Ok(Err(e)) => {
                return Err(MetastoreError::Unavailable {
                    addr: hostport,
                    op: "resolve",
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(MetastoreError::Timeout {
                    addr: hostport,
                    op: "resolve",
                    timeout: timeouts.connect,
                });
            }
        };
        let client = ThriftHiveMetastoreClientBuilder::new("hive-metastore")
            .address(addr)
            .make_codec(volo_thrift::codec::default::DefaultMakeCodec::buffered())
            .connect_timeout(Some(timeouts.connect))
            .read_write_timeout(Some(timeouts.call))
            // The call's time bound is `Metastore::call`'s: volo's own rpc timeout reports
            // itself as an application exception, indistinguishable from a refusal.
            .rpc_timeout(None)
            .build();
        Ok(Self {
            client,
            addr: hostport,
            timeouts,
            tables: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// `host:port` of the metastore.
    pub fn address(&self) -> &str {
        &self.addr
    }

    pub(super) fn lock_tables(&self) -> std::sync::MutexGuard<'_, TableCache> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts).
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn remember(&self, database: &str, table: &str, sd: StorageDescriptor, keys: usize) {
        self.lock_tables()
            .insert((database.to_owned(), table.to_owned()), (sd, keys));
    }

    pub(super) fn tables_forget(&self, database: &str, table: &str) {
        self.lock_tables()
            .remove(&(database.to_owned(), table.to_owned()));
    }

    /// Runs one Thrift call within `deadline`. A transport error (refused, reset, a pooled
    /// connection the metastore closed) is tried once more on a new connection while time is
    /// left; what remains is `Unavailable` or `Timeout`, both retryable.
    pub(super) async fn call<T, E, F, Fut>(
        &self,
        deadline: Instant,
        op: &'static str,
        f: F,
    ) -> Result<MaybeException<T, E>, MetastoreError>
    where
        F: Fn(ThriftHiveMetastoreClient) -> Fut,
        Fut: Future<Output = Result<MaybeException<T, E>, ClientError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let timed_out = || MetastoreError::Timeout {
                addr: self.addr.clone(),
                op,
                timeout: self.timeouts.call,
            };
            if left.is_zero() {
                return Err(timed_out());
            }
            match tokio::time::timeout(left, f(self.client.clone())).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(ClientError::Transport(e))) => {
                    if tries < 2 {
                        continue;
                    }
                    return Err(MetastoreError::Unavailable {
                        addr: self.addr.clone(),
                        op,
                        detail: e.to_string(),
                    });
                }
                Ok(Err(e)) => {
                    return Err(MetastoreError::Refused {
                        addr: self.addr.clone(),
                        op,
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    pub(super) fn refused(&self, op: &'static str, e: impl std::fmt::Debug) -> MetastoreError {
        MetastoreError::Refused {
            addr: self.addr.clone(),
            op,
            detail: format!("{e:?}"),
        }
    }
}

// The sink shares one client between tasks and spawns its calls: keep it so.
const _: () = {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn spawnable<F: Future + Send>(_: F) {}
    #[allow(dead_code)]
    fn check(ms: Metastore, schema: Schema) {
        shareable::<Metastore>();
        spawnable(async move {
            let _ = ms.ensure_table("d", "t", "l", &schema, &[]).await;
            let _ = ms.add_partition("d", "t", &[], "l").await;
            let _ = ms.get_partitions("d", "t").await;
        });
        spawnable(Metastore::connect("thrift://h:1"));
    }
};

/// `host:port` of a `thrift://host:port` URI.
pub(super) fn parse_uri(uri: &str) -> Result<String, MetastoreError> {
    let bad = |reason: &str| MetastoreError::InvalidUri {
        uri: uri.into(),
        reason: reason.into(),
    };
    let rest = uri
        .strip_prefix("thrift://")
        .ok_or_else(|| bad("the scheme must be thrift://"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| bad("the port is missing"))?;
    if host.is_empty() || hostport.contains('/') {
        return Err(bad("expected host:port after thrift://"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
    Ok(hostport.to_owned())
}
