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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::{DataType, Field, Schema};
use hive_metastore::{
    Database, FieldSchema, Partition, SerDeInfo, StorageDescriptor, Table,
    ThriftHiveMetastoreAddPartitionException, ThriftHiveMetastoreClient,
    ThriftHiveMetastoreClientBuilder, ThriftHiveMetastoreCreateDatabaseException,
    ThriftHiveMetastoreCreateTableException, ThriftHiveMetastoreGetDatabaseException,
    ThriftHiveMetastoreGetTableException,
};
use pilota::{AHashMap, FastStr};
use volo_thrift::{ClientError, MaybeException};

/// The metastore's description of a table, as [`Metastore::get_table`] returns it.
pub use hive_metastore::Table as HiveTable;

/// The serde and formats of the tables this module creates.
pub const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
pub const PARQUET_INPUT_FORMAT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
pub const PARQUET_OUTPUT_FORMAT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";

/// Owner recorded on the tables and databases created here.
const OWNER: &str = "lakewire";

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

/// (database, table) → (storage descriptor, number of partition columns) of the tables seen.
type TableCache = HashMap<(String, String), (StorageDescriptor, usize)>;

/// A Hive Metastore client. Cheap to clone; clones share the connection pool and the table cache.
#[derive(Clone)]
pub struct Metastore {
    client: ThriftHiveMetastoreClient,
    addr: String,
    timeouts: Timeouts,
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

    /// Creates the database if absent and the EXTERNAL table (Parquet SerDe/input/output
    /// formats, LOCATION `location`, columns from `schema` mapped to Hive types,
    /// `partition_keys` as string partition columns) if absent; an existing table gains the
    /// columns of `schema` it lacks. Idempotent.
    pub async fn ensure_table(
        &self,
        database: &str,
        table: &str,
        location: &str,
        schema: &Schema,
        partition_keys: &[String],
    ) -> Result<(), MetastoreError> {
        let cols = hive_columns(schema, partition_keys)?;
        let deadline = Instant::now() + self.timeouts.call;
        if let Some(found) = self.fetch_table(deadline, database, table).await? {
            return self.evolve(deadline, found, cols).await;
        }
        let (db, tbl) = (fs(database), fs(table));

        let db_found = self
            .call(deadline, "get_database", |c| {
                let db = db.clone();
                async move { c.get_database(db).await }
            })
            .await?;
        match db_found {
            MaybeException::Ok(_) => {}
            MaybeException::Exception(ThriftHiveMetastoreGetDatabaseException::O1(_)) => {
                let new_db = Database {
                    name: Some(db.clone()),
                    description: Some(fs("created by Lakewire's sink")),
                    owner_name: Some(fs(OWNER)),
                    owner_type: Some(hive_metastore::PrincipalType::USER),
                    ..Default::default()
                };
                let created = self
                    .call(deadline, "create_database", |c| {
                        let new_db = new_db.clone();
                        async move { c.create_database(new_db).await }
                    })
                    .await?;
                match created {
                    MaybeException::Ok(())
                    | MaybeException::Exception(ThriftHiveMetastoreCreateDatabaseException::O1(
                        _,
                    )) => {}
                    MaybeException::Exception(e) => {
                        return Err(self.refused("create_database", e));
                    }
                }
            }
            MaybeException::Exception(e) => return Err(self.refused("get_database", e)),
        }

        let sd = storage_descriptor(cols, location);
        let new_table = Table {
            table_name: Some(tbl.clone()),
            db_name: Some(db.clone()),
            owner: Some(fs(OWNER)),
            create_time: Some(now_secs()),
            last_access_time: Some(0),
            retention: Some(0),
            sd: Some(sd.clone()),
            partition_keys: Some(
                partition_keys
                    .iter()
                    .map(|k| field_schema(k, "string"))
                    .collect(),
            ),
            parameters: Some(params(&[("EXTERNAL", "TRUE")])),
            table_type: Some(fs("EXTERNAL_TABLE")),
            ..Default::default()
        };
        let created = self
            .call(deadline, "create_table", |c| {
                let new_table = new_table.clone();
                async move { c.create_table(new_table).await }
            })
            .await?;
        match created {
            MaybeException::Ok(()) => {
                self.remember(database, table, sd, partition_keys.len());
                Ok(())
            }
            // Created meanwhile (another sink worker): use what is there.
            MaybeException::Exception(ThriftHiveMetastoreCreateTableException::O1(_)) => {
                self.tables_forget(database, table);
                Ok(())
            }
            MaybeException::Exception(e) => Err(self.refused("create_table", e)),
        }
    }

    /// Adds the partition (values in `partition_keys` order, LOCATION `location`); an existing
    /// partition is success. Idempotent.
    pub async fn add_partition(
        &self,
        database: &str,
        table: &str,
        values: &[String],
        location: &str,
    ) -> Result<(), MetastoreError> {
        let deadline = Instant::now() + self.timeouts.call;
        let (mut sd, keys) = self.table_layout(deadline, database, table).await?;
        if values.len() != keys {
            return Err(MetastoreError::PartitionValues {
                database: database.into(),
                table: table.into(),
                expected: keys,
                got: values.len(),
            });
        }
        sd.location = Some(fs(location));
        let part = Partition {
            values: Some(values.iter().map(|v| fs(v)).collect()),
            db_name: Some(fs(database)),
            table_name: Some(fs(table)),
            create_time: Some(now_secs()),
            last_access_time: Some(0),
            sd: Some(sd),
            parameters: Some(AHashMap::default()),
            ..Default::default()
        };
        let added = self
            .call(deadline, "add_partition", |c| {
                let part = part.clone();
                async move { c.add_partition(part).await }
            })
            .await?;
        match added {
            MaybeException::Ok(_)
            | MaybeException::Exception(ThriftHiveMetastoreAddPartitionException::O2(_)) => Ok(()),
            MaybeException::Exception(e) => {
                // The table may have been dropped and made again: look it up afresh next time.
                self.tables_forget(database, table);
                Err(self.refused("add_partition", e))
            }
        }
    }

    /// The partitions of a table as (values, location), in the metastore's order (at most
    /// `i16::MAX`). For checks and tests.
    pub async fn get_partitions(
        &self,
        database: &str,
        table: &str,
    ) -> Result<Vec<(Vec<String>, String)>, MetastoreError> {
        let deadline = Instant::now() + self.timeouts.call;
        let (db, tbl) = (fs(database), fs(table));
        let got = self
            .call(deadline, "get_partitions", |c| {
                let (db, tbl) = (db.clone(), tbl.clone());
                async move { c.get_partitions(db, tbl, -1).await }
            })
            .await?;
        match got {
            MaybeException::Ok(parts) => Ok(parts
                .into_iter()
                .map(|p| {
                    let values = p
                        .values
                        .unwrap_or_default()
                        .into_iter()
                        .map(|v| v.to_string())
                        .collect();
                    let location =
                        p.sd.and_then(|sd| sd.location)
                            .map(|l| l.to_string())
                            .unwrap_or_default();
                    (values, location)
                })
                .collect()),
            MaybeException::Exception(
                hive_metastore::ThriftHiveMetastoreGetPartitionsException::O1(_),
            ) => Err(MetastoreError::NoSuchTable {
                database: database.into(),
                table: table.into(),
            }),
            MaybeException::Exception(e) => Err(self.refused("get_partitions", e)),
        }
    }

    /// The table as the metastore has it, or `None` when it does not exist. For checks and
    /// tests.
    pub async fn get_table(
        &self,
        database: &str,
        table: &str,
    ) -> Result<Option<HiveTable>, MetastoreError> {
        let deadline = Instant::now() + self.timeouts.call;
        self.fetch_table(deadline, database, table).await
    }

    /// The table, or `None` when it does not exist.
    async fn fetch_table(
        &self,
        deadline: Instant,
        database: &str,
        table: &str,
    ) -> Result<Option<Table>, MetastoreError> {
        let (db, tbl) = (fs(database), fs(table));
        let got = self
            .call(deadline, "get_table", |c| {
                let (db, tbl) = (db.clone(), tbl.clone());
                async move { c.get_table(db, tbl).await }
            })
            .await?;
        match got {
            MaybeException::Ok(t) => Ok(Some(t)),
            MaybeException::Exception(ThriftHiveMetastoreGetTableException::O2(_)) => Ok(None),
            MaybeException::Exception(e) => Err(self.refused("get_table", e)),
        }
    }

    /// Appends to an existing table the columns of `cols` it lacks, then caches its layout.
    async fn evolve(
        &self,
        deadline: Instant,
        mut found: Table,
        cols: Vec<FieldSchema>,
    ) -> Result<(), MetastoreError> {
        let database = found.db_name.clone().unwrap_or_default();
        let table = found.table_name.clone().unwrap_or_default();
        let keys = found.partition_keys.as_ref().map_or(0, Vec::len);
        let mut sd = found.sd.clone().unwrap_or_default();
        let have: Vec<String> = sd
            .cols
            .iter()
            .flatten()
            .chain(found.partition_keys.iter().flatten())
            .filter_map(|c| c.name.as_ref().map(|n| n.to_ascii_lowercase()))
            .collect();
        let missing: Vec<FieldSchema> = cols
            .into_iter()
            .filter(|c| {
                c.name
                    .as_ref()
                    .is_some_and(|n| !have.contains(&n.to_ascii_lowercase()))
            })
            .collect();
        if !missing.is_empty() {
            sd.cols.get_or_insert_with(Vec::new).extend(missing);
            found.sd = Some(sd.clone());
            let (db, tbl) = (database.clone(), table.clone());
            let altered = self
                .call(deadline, "alter_table", |c| {
                    let (db, tbl, t) = (db.clone(), tbl.clone(), found.clone());
                    async move { c.alter_table(db, tbl, t).await }
                })
                .await?;
            if let MaybeException::Exception(e) = altered {
                return Err(self.refused("alter_table", e));
            }
        }
        self.remember(&database, &table, sd, keys);
        Ok(())
    }

    /// The storage descriptor and partition-column count of a table, from the cache or the
    /// metastore.
    async fn table_layout(
        &self,
        deadline: Instant,
        database: &str,
        table: &str,
    ) -> Result<(StorageDescriptor, usize), MetastoreError> {
        let key = (database.to_owned(), table.to_owned());
        if let Some(hit) = self.lock_tables().get(&key) {
            return Ok(hit.clone());
        }
        let t = self
            .fetch_table(deadline, database, table)
            .await?
            .ok_or_else(|| MetastoreError::NoSuchTable {
                database: database.into(),
                table: table.into(),
            })?;
        let layout = (
            t.sd.unwrap_or_default(),
            t.partition_keys.as_ref().map_or(0, Vec::len),
        );
        self.lock_tables().insert(key, layout.clone());
        Ok(layout)
    }

    fn lock_tables(&self) -> std::sync::MutexGuard<'_, TableCache> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts).
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, database: &str, table: &str, sd: StorageDescriptor, keys: usize) {
        self.lock_tables()
            .insert((database.to_owned(), table.to_owned()), (sd, keys));
    }

    fn tables_forget(&self, database: &str, table: &str) {
        self.lock_tables()
            .remove(&(database.to_owned(), table.to_owned()));
    }

    /// Runs one Thrift call within `deadline`. A transport error (refused, reset, a pooled
    /// connection the metastore closed) is tried once more on a new connection while time is
    /// left; what remains is `Unavailable` or `Timeout`, both retryable.
    async fn call<T, E, F, Fut>(
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

    fn refused(&self, op: &'static str, e: impl std::fmt::Debug) -> MetastoreError {
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
fn parse_uri(uri: &str) -> Result<String, MetastoreError> {
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

/// The Hive columns of `schema`, leaving out fields named like a partition key.
fn hive_columns(
    schema: &Schema,
    partition_keys: &[String],
) -> Result<Vec<FieldSchema>, MetastoreError> {
    schema
        .fields()
        .iter()
        .filter(|f| {
            !partition_keys
                .iter()
                .any(|k| k.eq_ignore_ascii_case(f.name()))
        })
        .map(|f| Ok(field_schema(f.name(), &hive_field_type(f, f.name())?)))
        .collect()
}

fn hive_field_type(field: &Field, column: &str) -> Result<String, MetastoreError> {
    hive_type(field.data_type()).map_err(|data_type| MetastoreError::UnsupportedType {
        column: column.into(),
        data_type,
    })
}

/// The Hive type of an Arrow type, e.g. `decimal(10,3)`, `array<struct<a:int,b:string>>`;
/// `Err` carries the Arrow type that has no Hive equivalent.
///
/// Integers keep their width (`tinyint`, `smallint`, `int`, `bigint`); unsigned ones take the
/// next signed width, `UInt64` is `decimal(20,0)`; `Float16` is `float`. Strings and string
/// views are `string`, binaries `binary`, dictionaries and run-end encoded arrays their value
/// type. Timestamps (any unit, with or without a zone) are `timestamp`, `Date32/64` `date`,
/// `Time32` `int` and `Time64` `bigint` (Hive has no time of day). Decimals up to precision 38
/// with a scale from 0 to the precision are `decimal(p,s)`. Lists of any kind are `array<..>`,
/// maps `map<k,v>`, structs `struct<name:type,..>`. No equivalent: `Null`, `Duration`,
/// `Interval`, `Union`, decimals of precision > 38 or negative scale.
pub fn hive_type(data_type: &DataType) -> Result<String, String> {
    use DataType as D;
    let unsupported = || Err(data_type.to_string());
    Ok(match data_type {
        D::Boolean => "boolean".into(),
        D::Int8 => "tinyint".into(),
        D::Int16 | D::UInt8 => "smallint".into(),
        D::Int32 | D::UInt16 | D::Time32(_) => "int".into(),
        D::Int64 | D::UInt32 | D::Time64(_) => "bigint".into(),
        D::UInt64 => "decimal(20,0)".into(),
        D::Float16 | D::Float32 => "float".into(),
        D::Float64 => "double".into(),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "string".into(),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "binary".into(),
        D::Timestamp(_, _) => "timestamp".into(),
        D::Date32 | D::Date64 => "date".into(),
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
            if *p == 0 || *p > 38 || *s < 0 || i16::from(*s) > i16::from(*p) {
                return unsupported();
            }
            format!("decimal({p},{s})")
        }
        D::List(f)
        | D::LargeList(f)
        | D::ListView(f)
        | D::LargeListView(f)
        | D::FixedSizeList(f, _) => format!("array<{}>", hive_type(f.data_type())?),
        D::Map(entries, _) => match entries.data_type() {
            D::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                hive_type(kv[0].data_type())?,
                hive_type(kv[1].data_type())?
            ),
            _ => return unsupported(),
        },
        D::Struct(fields) => {
            if fields.is_empty() {
                // Hive cannot declare a struct without fields.
                return unsupported();
            }
            let inner = fields
                .iter()
                .map(|f| Ok(format!("{}:{}", f.name(), hive_type(f.data_type())?)))
                .collect::<Result<Vec<_>, String>>()?;
            format!("struct<{}>", inner.join(","))
        }
        D::Dictionary(_, value) => hive_type(value)?,
        D::RunEndEncoded(_, values) => hive_type(values.data_type())?,
        D::Null | D::Duration(_) | D::Interval(_) | D::Union(_, _) => return unsupported(),
    })
}

fn storage_descriptor(cols: Vec<FieldSchema>, location: &str) -> StorageDescriptor {
    StorageDescriptor {
        cols: Some(cols),
        location: Some(fs(location)),
        input_format: Some(fs(PARQUET_INPUT_FORMAT)),
        output_format: Some(fs(PARQUET_OUTPUT_FORMAT)),
        compressed: Some(false),
        num_buckets: Some(-1),
        serde_info: Some(SerDeInfo {
            name: None,
            serialization_lib: Some(fs(PARQUET_SERDE)),
            parameters: Some(params(&[("serialization.format", "1")])),
        }),
        bucket_cols: Some(Vec::new()),
        sort_cols: Some(Vec::new()),
        parameters: Some(AHashMap::default()),
        stored_as_sub_directories: Some(false),
        ..Default::default()
    }
}

fn field_schema(name: &str, hive_type: &str) -> FieldSchema {
    FieldSchema {
        name: Some(fs(name)),
        r#type: Some(fs(hive_type)),
        comment: None,
    }
}

fn params(pairs: &[(&str, &str)]) -> AHashMap<FastStr, FastStr> {
    pairs.iter().map(|(k, v)| (fs(k), fs(v))).collect()
}

fn fs(s: &str) -> FastStr {
    FastStr::new(s)
}

/// Seconds since the epoch as the metastore stores them (i32).
fn now_secs() -> i32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Fields, TimeUnit};
    use std::sync::Arc;

    fn f(name: &str, t: DataType) -> Field {
        Field::new(name, t, true)
    }

    #[test]
    fn arrow_types_map_to_hive_types() {
        let item = Arc::new(f("item", DataType::Int64));
        let entries = Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                f("value", DataType::Decimal128(10, 3)),
            ])),
            false,
        ));
        let cases = [
            (DataType::Boolean, "boolean"),
            (DataType::Int8, "tinyint"),
            (DataType::Int16, "smallint"),
            (DataType::Int32, "int"),
            (DataType::Int64, "bigint"),
            (DataType::UInt32, "bigint"),
            (DataType::UInt64, "decimal(20,0)"),
            (DataType::Float32, "float"),
            (DataType::Float64, "double"),
            (DataType::Utf8, "string"),
            (DataType::Utf8View, "string"),
            (DataType::LargeBinary, "binary"),
            (DataType::FixedSizeBinary(16), "binary"),
            (DataType::Decimal128(38, 10), "decimal(38,10)"),
            (DataType::Decimal64(18, 0), "decimal(18,0)"),
            (
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                "timestamp",
            ),
            (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "timestamp",
            ),
            (DataType::Date32, "date"),
            (DataType::List(item.clone()), "array<bigint>"),
            (DataType::LargeList(item), "array<bigint>"),
            (DataType::Map(entries, false), "map<string,decimal(10,3)>"),
            (
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                "string",
            ),
            (
                DataType::Struct(Fields::from(vec![
                    f("a", DataType::Int32),
                    f(
                        "b",
                        DataType::List(Arc::new(f(
                            "item",
                            DataType::Struct(Fields::from(vec![f("c", DataType::Utf8)])),
                        ))),
                    ),
                ])),
                "struct<a:int,b:array<struct<c:string>>>",
            ),
        ];
        for (arrow, hive) in cases {
            assert_eq!(hive_type(&arrow).as_deref(), Ok(hive), "{arrow}");
        }
    }

    #[test]
    fn types_without_hive_equivalent_are_errors() {
        for t in [
            DataType::Null,
            DataType::Duration(TimeUnit::Second),
            DataType::Decimal256(50, 2),
            DataType::Decimal128(10, -2),
            DataType::Struct(Fields::empty()),
            DataType::List(Arc::new(f("item", DataType::Duration(TimeUnit::Second)))),
        ] {
            assert!(hive_type(&t).is_err(), "{t} should have no Hive type");
        }
        let schema = Schema::new(vec![f("ok", DataType::Int32), f("d", DataType::Null)]);
        match hive_columns(&schema, &[]) {
            Err(err @ MetastoreError::UnsupportedType { .. }) => {
                assert!(!err.is_retryable());
                assert!(err.to_string().contains("\"d\""), "{err}");
            }
            other => panic!("expected UnsupportedType, got {other:?}"),
        }
    }

    #[test]
    fn partition_keys_are_not_columns() -> Result<(), MetastoreError> {
        let schema = Schema::new(vec![
            f("_offset", DataType::Int64),
            f("dt", DataType::Utf8),
            f("venue", DataType::Utf8),
        ]);
        let cols = hive_columns(&schema, &["dt".into(), "hr".into()])?;
        let names: Vec<_> = cols.iter().filter_map(|c| c.name.as_deref()).collect();
        assert_eq!(names, ["_offset", "venue"]);
        Ok(())
    }

    #[test]
    fn uris_are_checked() -> Result<(), MetastoreError> {
        assert_eq!(parse_uri("thrift://hms:9083")?, "hms:9083");
        assert_eq!(parse_uri("thrift://127.0.0.1:9083/")?, "127.0.0.1:9083");
        for bad in [
            "hms:9083",
            "http://hms:9083",
            "thrift://hms",
            "thrift://:9083",
            "thrift://hms:0",
            "thrift://hms:99999",
            "thrift://hms:9083/db",
        ] {
            match parse_uri(bad) {
                Err(err @ MetastoreError::InvalidUri { .. }) => assert!(!err.is_retryable()),
                other => panic!("{bad}: expected InvalidUri, got {other:?}"),
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_metastore_is_a_retryable_error_within_the_timeout()
    -> Result<(), Box<dyn std::error::Error>> {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            call: Duration::from_secs(3),
        };
        let ms = Metastore::connect_with(&format!("thrift://127.0.0.1:{port}"), timeouts).await?;
        let started = Instant::now();
        let res = ms
            .add_partition("db", "t", &["2024-01-01".into()], "file:/tmp/x")
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        match res {
            Err(err) => assert!(err.is_retryable(), "{err}"),
            Ok(()) => panic!("a call to a closed port succeeded"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_metastore_that_never_answers_times_out() -> Result<(), Box<dyn std::error::Error>> {
        // Accepts connections and reads requests, never replies.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let timeouts = Timeouts {
            connect: Duration::from_millis(500),
            call: Duration::from_millis(800),
        };
        let ms = Metastore::connect_with(&format!("thrift://127.0.0.1:{port}"), timeouts).await?;
        let schema = Schema::new(vec![f("a", DataType::Int32)]);
        let started = Instant::now();
        let res = ms
            .ensure_table("db", "t", "file:/tmp/t", &schema, &[])
            .await;
        let took = started.elapsed();
        server.abort();
        match res {
            Err(err) => assert!(err.is_retryable(), "{err}"),
            Ok(()) => panic!("a silent server answered"),
        }
        assert!(
            took >= Duration::from_millis(700),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_millis(2000), "not bounded: {took:?}");
        Ok(())
    }
}
