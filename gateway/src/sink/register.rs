//! Registration of the sink's tables and partitions in a Hive Metastore, in a task of its own.
//! Input: partitions whose first file is in place (from the writer) and, at start-up, every
//! partition directory found in storage; output: `ensure_table` and `add_partition` calls
//! (both idempotent), retried with backoff. A metastore outage only delays registration: the
//! writer never waits for it, and the pending partitions are kept (gauge
//! `lakewire_sink_pending_partitions`) until the metastore takes them.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use object_store::path::Path;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::hive_paths::dir_values;
use super::metastore::{Metastore, MetastoreError};
use super::storage::{Storage, partition_dirs};
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
    /// Partitions registered (or queued) in this process: not queued again, unless their
    /// files bring columns the table lacks.
    known: Mutex<HashSet<(String, String)>>,
    /// Per table: the columns of the schemas queued so far. A file with another column queues
    /// its partition again, so that the task calls `ensure_table` (which appends the column).
    columns: Mutex<HashMap<String, HashSet<String>>>,
    wake: Notify,
    metrics: Metrics,
}

impl Registrar {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(BTreeMap::new()),
            known: Mutex::new(HashSet::new()),
            columns: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Queues `p` unless it was queued before in this process and brings no new column.
    /// Never blocks on the metastore.
    pub fn add(&self, p: Pending) {
        let key = (p.table.clone(), p.dir.clone());
        let new = self
            .known
            .lock()
            .map(|mut k| k.insert(key.clone()))
            .unwrap_or(false);
        let new_columns = p.schema.as_ref().is_some_and(|schema| {
            self.columns.lock().is_ok_and(|mut all| {
                let have = all.entry(p.table.clone()).or_default();
                let mut added = false;
                for f in schema.fields() {
                    if !have.contains(f.name().as_str()) {
                        have.insert(f.name().clone());
                        added = true;
                    }
                }
                added
            })
        });
        if !new && !new_columns {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            match pending.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(p);
                }
                // Still waiting: it now needs the wider schema.
                Entry::Occupied(mut o) => {
                    let merged = merge(o.get().schema.as_ref(), p.schema.as_ref());
                    o.get_mut().schema = merged;
                }
            }
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

/// The fields of `a`, then those of `b` that `a` lacks.
fn merge(a: Option<&SchemaRef>, b: Option<&SchemaRef>) -> Option<SchemaRef> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let mut fields: Vec<arrow_schema::FieldRef> = a.fields().iter().cloned().collect();
            for f in b.fields() {
                if a.field_with_name(f.name()).is_err() {
                    fields.push(f.clone());
                }
            }
            Some(Arc::new(arrow_schema::Schema::new(fields)))
        }
        (a, b) => a.or(b).cloned(),
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

/// How long a partition whose registration the metastore refused (a permanent error: an Arrow
/// type without a Hive equivalent, a table of another layout, ...) waits before it is tried
/// again. Outages (retryable errors) are retried with backoff instead.
pub const REFUSED_RETRY: Duration = Duration::from_secs(3600);

/// Registers pending partitions until `cancel`. Outages (retryable errors) are retried with
/// backoff (1 s doubling to 60 s); a partition the metastore refuses (permanent error) is
/// counted, logged and tried again only after [`REFUSED_RETRY`], without holding up the others.
pub async fn run(
    registrar: Arc<Registrar>,
    uri: String,
    database: String,
    tables: HashMap<String, TableInfo>,
    storage: Storage,
    cancel: CancellationToken,
) {
    let mut task = Task {
        registrar,
        database,
        tables,
        storage,
        metastore: None,
        ensured: HashMap::new(),
        parked: HashMap::new(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let (wait, done) = match task.round(&uri).await {
            Round::Done { next } => {
                backoff = Duration::from_secs(1);
                // Sleep until woken, or until a refused partition is due again.
                let wait = next.map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                });
                (wait, true)
            }
            Round::Outage => {
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                (w, false)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            // During an outage new partitions wait for the backoff too.
            _ = task.registrar.wake.notified(), if done => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The outcome of one pass over the pending partitions.
enum Round {
    /// Everything that could be done is done; `next`: when the earliest refused partition is
    /// due again.
    Done { next: Option<Instant> },
    /// The metastore (or the storage) was unavailable: try again after a backoff.
    Outage,
}

/// The registration task's state.
struct Task {
    registrar: Arc<Registrar>,
    database: String,
    tables: HashMap<String, TableInfo>,
    storage: Storage,
    metastore: Option<Metastore>,
    /// Per table: the columns `ensure_table` has put in the metastore (in this process).
    ensured: HashMap<String, HashSet<String>>,
    /// Partitions the metastore refused, and when to try them again.
    parked: HashMap<(String, String), Instant>,
}

impl Task {
    async fn round(&mut self, uri: &str) -> Round {
        let todo = self.registrar.snapshot();
        if todo.is_empty() {
            return Round::Done { next: None };
        }
        let ms = match &self.metastore {
            Some(m) => m.clone(),
            None => match Metastore::connect(uri).await {
                Ok(m) => {
                    self.metastore = Some(m.clone());
                    m
                }
                Err(e) => {
                    let pending = todo.len();
                    self.failed(&e, || {
                        tracing::warn!(uri, error = %e, pending, "sink: metastore unavailable; partitions stay pending");
                    });
                    if e.is_retryable() {
                        return Round::Outage;
                    }
                    // A URI that can never work: try again rarely.
                    return Round::Done {
                        next: Some(Instant::now() + REFUSED_RETRY),
                    };
                }
            },
        };
        let now = Instant::now();
        self.parked.retain(|_, at| *at > now);
        let mut outage = false;
        for p in todo {
            let key = (p.table.clone(), p.dir.clone());
            if self.parked.contains_key(&key) {
                continue;
            }
            let Some(partition_by) = self.tables.get(&p.table).map(|i| i.partition_by.clone())
            else {
                self.registrar.done(&p);
                continue;
            };
            match self.register(&ms, &p, &partition_by).await {
                Ok(()) => {
                    tracing::info!(
                        table = p.table,
                        partition = p.dir,
                        "sink: partition registered"
                    );
                    self.registrar.done(&p);
                }
                Err(Failure::Storage(e)) => {
                    self.registrar.metrics.sink_storage_errors.inc();
                    tracing::warn!(table = p.table, partition = p.dir, error = %e, "sink: cannot read a file's schema; retrying later");
                    outage = true;
                }
                Err(Failure::Metastore(e)) if e.is_retryable() => {
                    self.failed(&e, || {
                        tracing::warn!(table = p.table, partition = p.dir, error = %e, "sink: metastore unavailable; the partition stays pending");
                    });
                    // The metastore is down: the other partitions would only wait for the
                    // same time bound.
                    return Round::Outage;
                }
                Err(Failure::Metastore(e)) => {
                    self.failed(&e, || {
                        tracing::error!(table = p.table, partition = p.dir, error = %e, retry_in_s = REFUSED_RETRY.as_secs(), "sink: the metastore refused the partition's registration");
                    });
                    self.parked.insert(key, Instant::now() + REFUSED_RETRY);
                }
                Err(Failure::NoSchema) => {
                    self.registrar.metrics.sink_metastore_refused.inc();
                    tracing::error!(
                        table = p.table,
                        partition = p.dir,
                        "sink: no schema to create the table from"
                    );
                    self.parked.insert(key, Instant::now() + REFUSED_RETRY);
                }
            }
        }
        if outage {
            return Round::Outage;
        }
        Round::Done {
            next: self.parked.values().min().copied(),
        }
    }

    /// Makes sure the table has the columns of the partition's files, then adds the partition.
    async fn register(
        &mut self,
        ms: &Metastore,
        p: &Pending,
        partition_by: &[String],
    ) -> Result<(), Failure> {
        let ensured = self.ensured.get(&p.table);
        let schema = match (&p.schema, &p.sample) {
            (Some(s), _) => Some(s.clone()),
            // Queued at start-up: the files' schema may have gained columns while the
            // metastore was away, so each partition's sample is read.
            (None, Some(path)) => Some(
                self.storage
                    .parquet_schema(path)
                    .await
                    .map_err(Failure::Storage)?,
            ),
            (None, None) if ensured.is_some() => None,
            (None, None) => return Err(Failure::NoSchema),
        };
        if let Some(schema) = schema {
            let have = self.ensured.get(&p.table);
            let new_columns = have.is_none_or(|have| {
                schema
                    .fields()
                    .iter()
                    .any(|f| !have.contains(f.name().as_str()))
            });
            if new_columns {
                // Creates the table, or appends the columns it lacks (schema evolution).
                ms.ensure_table(
                    &self.database,
                    &p.table,
                    &self.storage.location(&p.table),
                    &schema,
                    partition_by,
                )
                .await
                .map_err(Failure::Metastore)?;
                self.ensured
                    .entry(p.table.clone())
                    .or_default()
                    .extend(schema.fields().iter().map(|f| f.name().clone()));
            }
        }
        let location = self.storage.location(&format!("{}/{}", p.table, p.dir));
        ms.add_partition(&self.database, &p.table, &dir_values(&p.dir), &location)
            .await
            .map_err(Failure::Metastore)
    }

    /// Counts a failed metastore call (and a refusal apart) and logs it with `log`.
    fn failed(&self, e: &MetastoreError, log: impl FnOnce()) {
        self.registrar.metrics.sink_metastore_errors.inc();
        if !e.is_retryable() {
            self.registrar.metrics.sink_metastore_refused.inc();
        }
        log();
    }
}

/// Why a partition was not registered.
enum Failure {
    Metastore(MetastoreError),
    Storage(String),
    NoSchema,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field, Schema};

    fn schema(names: &[&str]) -> SchemaRef {
        Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ))
    }

    fn pending(dir: &str, cols: &[&str]) -> Pending {
        Pending {
            table: "t".into(),
            dir: dir.into(),
            schema: Some(schema(cols)),
            sample: None,
        }
    }

    #[test]
    fn a_partition_is_queued_again_only_for_a_new_column() {
        let metrics = Metrics::default();
        let r = Registrar::new(metrics.clone());
        r.add(pending("dt=1", &["a", "b"]));
        r.add(pending("dt=1", &["a", "b"]));
        assert_eq!(r.pending(), 1);
        assert_eq!(metrics.sink_pending_partitions.get(), 1);
        // Registered: a file of the same schema does not queue it again.
        let p = r.snapshot().remove(0);
        r.done(&p);
        r.add(pending("dt=1", &["a", "b"]));
        r.add(pending("dt=1", &["b"]));
        assert_eq!(r.pending(), 0);
        // A new column does, with the schema that has it.
        r.add(pending("dt=1", &["a", "b", "c"]));
        let got = r.snapshot();
        assert_eq!(got.len(), 1);
        let names: Vec<&str> = got[0]
            .schema
            .as_ref()
            .map(|s| s.fields().iter().map(|f| f.name().as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["a", "b", "c"]);
        // Still waiting when another column arrives: the two schemas merged.
        r.add(pending("dt=1", &["a", "d"]));
        let got = r.snapshot();
        let names: Vec<&str> = got[0]
            .schema
            .as_ref()
            .map(|s| s.fields().iter().map(|f| f.name().as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(metrics.sink_pending_partitions.get(), 1);
    }
}
