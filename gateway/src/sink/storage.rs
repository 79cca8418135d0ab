//! Where the sink's files go: a local folder or an S3-compatible bucket, through
//! `object_store`. Input: the `[sink]` root; output: files landed whole (temporary hidden name,
//! then rename, on a filesystem; a single completed upload on an object store) and the listing
//! that start-up and partition assignment resume from.
//!
//! File names: `<table>/<k=v>/.../<topic>+<partition>+<startOffset>+<endOffset>.parquet`, the
//! offsets in decimal without padding, the end offset inclusive ([`super::hive_paths`] makes
//! and parses them).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use super::hive_paths::FileName;
use crate::config::SinkConfig;

/// Prefix of files being written; readers (Hive, Spark, DuckDB, pyarrow) skip names starting
/// with `_`.
pub const TEMP_PREFIX: &str = "_tmp.";

/// The storage could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("sink.root: {0}")]
pub struct StorageSetupError(String);

/// One landed file found by a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Path relative to the root.
    pub path: Path,
    /// The partition directory below the table (`dt=2026-11-27/hr=10`), may be empty.
    pub dir: String,
    pub name: FileName,
}

/// The sink's storage.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Whether the store is a filesystem (temporary name, then rename).
    local: bool,
    /// The root as the metastore and Spark see it (`file:/abs/path`, `s3a://bucket/prefix`),
    /// without a trailing slash.
    location_base: String,
}

impl Storage {
    /// Opens `config.root`: `s3://bucket[/prefix]`, `file:///abs/path` or a plain path (created
    /// when missing).
    pub fn new(config: &SinkConfig) -> Result<Self, StorageSetupError> {
        if let Some(rest) = config.root.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            if bucket.is_empty() {
                return Err(StorageSetupError(format!(
                    "{:?} names no bucket",
                    config.root
                )));
            }
            // Few and short retries of the client's own: the worker tries a file again from its
            // poll loop (`sink::land`), so an outage does not hold the poll loop for minutes.
            let retry = object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(10),
            };
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            if let Some(s3) = &config.s3 {
                b = b.with_region(&s3.region).with_allow_http(s3.allow_http);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(k) = &s3.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = &s3.secret_access_key {
                    b = b.with_secret_access_key(k);
                }
            }
            let s3 = b
                .build()
                .map_err(|e| StorageSetupError(format!("S3 client: {e}")))?;
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            };
            let location_base = if prefix.is_empty() {
                format!("s3a://{bucket}")
            } else {
                format!("s3a://{bucket}/{prefix}")
            };
            return Ok(Self {
                store,
                local: false,
                location_base,
            });
        }
        let path = config.root.strip_prefix("file://").unwrap_or(&config.root);
        if path.is_empty() {
            return Err(StorageSetupError("must not be empty".into()));
        }
        std::fs::create_dir_all(path)
            .map_err(|e| StorageSetupError(format!("cannot create {path}: {e}")))?;
        let abs = std::fs::canonicalize(path)
            .map_err(|e| StorageSetupError(format!("cannot resolve {path}: {e}")))?;
        // fsync of each file before its rename, and of the folders after: a power loss cannot
        // leave an empty or partial file behind an offset that was committed.
        let store = object_store::local::LocalFileSystem::new_with_prefix(&abs)
            .map_err(|e| StorageSetupError(format!("{}: {e}", abs.display())))?
            .with_fsync(true);
        Ok(Self {
            store: Arc::new(store),
            local: true,
            location_base: format!("file:{}", abs.display())
                .trim_end_matches('/')
                .to_string(),
        })
    }

    /// `rel` (a table or partition directory) as the metastore sees it.
    pub fn location(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.location_base.clone()
        } else {
            format!("{}/{rel}", self.location_base)
        }
    }

    /// Writes `bytes` to `dir/name` so that readers see the whole file or nothing: on a
    /// filesystem under a hidden temporary name, then renamed (atomic, replacing a file of the
    /// same name from an earlier run); on an object store as one upload, visible only once
    /// complete.
    pub async fn land(&self, dir: &str, name: &str, bytes: Bytes) -> object_store::Result<()> {
        let join = |n: &str| {
            if dir.is_empty() {
                object_path(n)
            } else {
                object_path(&format!("{dir}/{n}"))
            }
        };
        let target = join(name)?;
        let payload = PutPayload::from_bytes(bytes);
        if self.local {
            // Hidden (`_`) for Hive, Spark and pyarrow, and not ending in `.parquet` for globs
            // such as DuckDB's `**/*.parquet`.
            let tmp = join(&format!("{TEMP_PREFIX}{name}.{}.tmp", std::process::id()))?;
            self.store.put(&tmp, payload).await?;
            self.store.rename(&tmp, &target).await
        } else {
            self.store.put(&target, payload).await.map(|_| ())
        }
    }

    /// Every landed file under `table`, and the temporary files left by a crash
    /// (as paths, with their age in seconds).
    pub async fn list(&self, table: &str) -> object_store::Result<(Vec<Listed>, Vec<(Path, i64)>)> {
        let prefix = object_path(table)?;
        let mut stream = self.store.list(Some(&prefix));
        let mut files = Vec::new();
        let mut temps = Vec::new();
        let now = chrono_now();
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                temps.push((meta.location.clone(), now - meta.last_modified.timestamp()));
                continue;
            }
            let Some(parsed) = FileName::parse(name) else {
                continue;
            };
            let full = meta.location.as_ref();
            let below = full
                .strip_prefix(table)
                .unwrap_or(full)
                .trim_start_matches('/');
            let dir = below.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            files.push(Listed {
                path: meta.location.clone(),
                dir,
                name: parsed,
            });
        }
        Ok((files, temps))
    }

    /// Deletes a file (temporary leftovers).
    pub async fn delete(&self, path: &Path) -> object_store::Result<()> {
        self.store.delete(path).await
    }

    /// The Arrow schema stored in a Parquet file's footer.
    pub async fn parquet_schema(&self, path: &Path) -> Result<arrow_schema::SchemaRef, String> {
        let md = self.parquet_footer(path).await?;
        let fm = md.file_metadata();
        parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata())
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }

    /// The key-value metadata of a Parquet file's footer (where the sink keeps its resume marks,
    /// see [`super::resume`]).
    pub async fn parquet_key_values(&self, path: &Path) -> Result<HashMap<String, String>, String> {
        let md = self.parquet_footer(path).await?;
        Ok(md
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
            .collect())
    }

    /// A Parquet file's footer, read with two ranged reads (its length, then the footer).
    async fn parquet_footer(
        &self,
        path: &Path,
    ) -> Result<parquet::file::metadata::ParquetMetaData, String> {
        let size = self.store.head(path).await.map_err(|e| e.to_string())?.size;
        if size < 12 {
            return Err(format!("{path}: too short for Parquet"));
        }
        let tail = self
            .store
            .get_range(path, size - 8..size)
            .await
            .map_err(|e| e.to_string())?;
        let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if len + 8 > size {
            return Err(format!("{path}: bad Parquet footer"));
        }
        let meta = self
            .store
            .get_range(path, size - 8 - len..size - 8)
            .await
            .map_err(|e| e.to_string())?;
        parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&meta)
            .map_err(|e| e.to_string())
    }
}

/// A store path for `rel` (a table, a Hive directory `k=v/...` whose values are already
/// Hive-escaped by [`escape_value`](super::hive_paths::escape_value), and a file name) taken as it is. `Path::from` would
/// percent-encode it a second time (`%` to `%25`, every non-ASCII byte), so the folder would
/// not be the one Hive, Spark and the metastore's location name.
fn object_path(rel: &str) -> object_store::Result<Path> {
    Path::parse(rel).map_err(|source| object_store::Error::InvalidPath { source })
}

/// The partition directories among `files`, with one file of each (for its schema).
pub fn partition_dirs(files: &[Listed]) -> BTreeMap<String, Path> {
    let mut out = BTreeMap::new();
    for f in files {
        out.entry(f.dir.clone()).or_insert_with(|| f.path.clone());
    }
    out
}

/// Seconds since the epoch, now.
fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
