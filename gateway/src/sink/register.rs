//! Registration of the sink's tables and partitions in a Hive Metastore, in a task of its own.
//! Input: partitions whose first file is in place (from the writer) and, at start-up, every
//! partition directory found in storage; output: `ensure_table` and `add_partition` calls
//! (both idempotent), retried with backoff. A metastore outage only delays registration: the
//! writer never waits for it, and the pending partitions are kept (gauge
//! `lakewire_sink_pending_partitions`) until the metastore takes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_schema::SchemaRef;
use object_store::path::Path;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metastore::Metastore;
use super::storage::{Storage, dir_values, partition_dirs};
use crate::metrics::Metrics;

/// One partition to register.
#[derive(Debug, Clone)]
pub struct Pending {
    pub table: String,
    /// The directory below the table (`dt=2026-11-27/hr=10`).
    pub dir: String,
    /// The table's Arrow schema, when the writer knows it; else read from `sample`.
    pub schema: Option<SchemaRef>,
    /// A file of the partition.
    pub sample: Option<Path>,
}

/// The partitions waiting for the metastore; shared by the writer and the task.
#[derive(Debug)]
pub struct Registrar {
    pending: Mutex<BTreeMap<(String, String), Pending>>,
    /// Partitions registered (or queued) in this process: not queued again.
    known: Mutex<HashSet<(String, String)>>,
    wake: Notify,
    metrics: Metrics,
}

impl Registrar {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(BTreeMap::new()),
            known: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Queues `p` unless it was queued before in this process. Never blocks on the metastore.
    pub fn add(&self, p: Pending) {
        let key = (p.table.clone(), p.dir.clone());
        let new = self
            .known
            .lock()
            .map(|mut k| k.insert(key.clone()))
            .unwrap_or(false);
        if !new {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(key).or_insert(p);
            self.metrics
                .sink_pending_partitions
                .set(pending.len() as i64);
        }
        self.wake.notify_one();
    }

    /// Partitions waiting.
    pub fn pending(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    fn snapshot(&self) -> Vec<Pending> {
        self.pending
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn done(&self, p: &Pending) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&(p.table.clone(), p.dir.clone()));
            self.metrics
                .sink_pending_partitions
                .set(pending.len() as i64);
        }
    }
}

/// What the task needs to know of each table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub partition_by: Vec<String>,
}

/// Queues every partition directory of `tables` found in storage (start-up: a metastore that
/// missed partitions, e.g. during an outage before a restart, gets them again).
pub async fn rescan(registrar: &Registrar, storage: &Storage, tables: &[String]) {
    for table in tables {
        match storage.list(table).await {
            Ok((files, _)) => {
                for (dir, sample) in partition_dirs(&files) {
                    registrar.add(Pending {
                        table: table.clone(),
                        dir,
                        schema: None,
                        sample: Some(sample),
                    });
                }
            }
            Err(e) => {
                registrar.metrics.sink_storage_errors.inc();
                tracing::warn!(table, error = %e, "sink: cannot list the table for registration");
            }
        }
    }
}

/// Registers pending partitions until `cancel`, retrying with backoff (1 s doubling to 60 s).
pub async fn run(
    registrar: Arc<Registrar>,
    uri: String,
    database: String,
    tables: HashMap<String, TableInfo>,
    storage: Storage,
    cancel: CancellationToken,
) {
    let mut metastore: Option<Metastore> = None;
    let mut ensured: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_secs(1);
    loop {
        let ok = round(
            &registrar,
            &uri,
            &database,
            &tables,
            &storage,
            &mut metastore,
            &mut ensured,
        )
        .await;
        let wait = if ok {
            backoff = Duration::from_secs(1);
            // Nothing pending left: sleep until woken.
            Duration::from_secs(3600)
        } else {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(60));
            w
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = registrar.wake.notified(), if ok => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass over the pending partitions; `false` when something failed (retry later).
async fn round(
    registrar: &Registrar,
    uri: &str,
    database: &str,
    tables: &HashMap<String, TableInfo>,
    storage: &Storage,
    metastore: &mut Option<Metastore>,
    ensured: &mut HashSet<String>,
) -> bool {
    let todo = registrar.snapshot();
    if todo.is_empty() {
        return true;
    }
    let ms = match metastore {
        Some(m) => m.clone(),
        None => match Metastore::connect(uri).await {
            Ok(m) => {
                *metastore = Some(m.clone());
                m
            }
            Err(e) => {
                registrar.metrics.sink_metastore_errors.inc();
                tracing::warn!(uri, error = %e, pending = todo.len(), "sink: metastore unavailable; partitions stay pending");
                return false;
            }
        },
    };
    let mut all_ok = true;
    for p in todo {
        let Some(info) = tables.get(&p.table) else {
            registrar.done(&p);
            continue;
        };
        if !ensured.contains(&p.table) {
            let schema = match (&p.schema, &p.sample) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => match storage.parquet_schema(path).await {
                    Ok(s) => s,
                    Err(e) => {
                        registrar.metrics.sink_storage_errors.inc();
                        tracing::warn!(table = p.table, error = %e, "sink: cannot read a file's schema");
                        all_ok = false;
                        continue;
                    }
                },
                (None, None) => continue,
            };
            if let Err(e) = ms
                .ensure_table(
                    database,
                    &p.table,
                    &storage.location(&p.table),
                    &schema,
                    &info.partition_by,
                )
                .await
            {
                registrar.metrics.sink_metastore_errors.inc();
                tracing::warn!(table = p.table, error = %e, "sink: cannot create the table in the metastore");
                *metastore = None;
                return false;
            }
            ensured.insert(p.table.clone());
        }
        let location = storage.location(&format!("{}/{}", p.table, p.dir));
        match ms
            .add_partition(database, &p.table, &dir_values(&p.dir), &location)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    table = p.table,
                    partition = p.dir,
                    "sink: partition registered"
                );
                registrar.done(&p);
            }
            Err(e) => {
                registrar.metrics.sink_metastore_errors.inc();
                tracing::warn!(table = p.table, partition = p.dir, error = %e, "sink: cannot add the partition; retrying later");
                *metastore = None;
                return false;
            }
        }
    }
    all_ok
}
