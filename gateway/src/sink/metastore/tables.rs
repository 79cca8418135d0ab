//! Tables and partitions in the metastore. Input: a table's database, name, location, Arrow
//! schema and partition keys, or a partition's values and location; output: the EXTERNAL Parquet
//! table created (or gaining the columns it lacks) and the partition added, idempotently; and
//! the look-ups the checks and tests use.

use std::time::Instant;

use arrow_schema::Schema;
use hive_metastore::{
    Database, FieldSchema, Partition, SerDeInfo, StorageDescriptor, Table,
    ThriftHiveMetastoreAddPartitionException, ThriftHiveMetastoreCreateDatabaseException,
    ThriftHiveMetastoreCreateTableException, ThriftHiveMetastoreGetDatabaseException,
    ThriftHiveMetastoreGetTableException,
};
use pilota::{AHashMap, FastStr};
use volo_thrift::MaybeException;

use super::hive_types::{field_schema, hive_columns};
use super::{HiveTable, Metastore, MetastoreError};

/// The serde and formats of the tables this module creates.
pub const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
pub const PARQUET_INPUT_FORMAT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
pub const PARQUET_OUTPUT_FORMAT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";

/// Owner recorded on the tables and databases created here.
const OWNER: &str = "lakewire";

impl Metastore {
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
