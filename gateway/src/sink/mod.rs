//! The Hive sink: records of the `[[sink.tables]]` topics become Parquet files in Hive
//! partitions, exactly once per offset. Input: Kafka records (a consumer group, `sink.group_id`,
//! shared by every sink worker); output: files `<root>/<table>/<k=v>/.../
//! <topic>+<partition>+<start>+<end>.parquet` ([`storage`]) and, when `sink.metastore_uri` is
//! set, the table and its partitions in a Hive Metastore ([`register`]).
//!
//! One worker thread (not an async worker: decoding and Parquet encoding are CPU work) owns the
//! consumer and, per assigned partition, one open file per Hive folder and writer schema: its
//! rows in Arrow builders ([`avro_to_arrow`]), so records whose partition values interleave fill
//! a file per folder rather than a file per record. A file is closed when it reaches `roll_rows`
//! rows or `roll_bytes` Avro bytes, after `roll_interval_ms`, when a new folder finds
//! `max_open_files` open in its partition (the oldest is closed), or when all open files
//! together reach `max_open_bytes` (the largest is closed). Closing encodes the batches to
//! Parquet, with the partition's resume mark in the footer, puts the file in place whole (hidden
//! temporary name, then rename; or one completed upload), and only then commits the smallest
//! start offset among the partition's files still open.
//!
//! Exactly once: on assignment each partition resumes at the highest resume mark in storage
//! ([`resume`]: storage is the source of truth, not the committed offset); records below it are
//! skipped, and so are records after it that a file in place already holds (by offset range,
//! folder and writer schema). Buffers of revoked partitions are dropped. This holds whatever
//! closed a file, the wall clock included; it does not when storage cannot be listed at
//! assignment (the committed offsets are used) or for a worker that stalls past
//! `max.poll.interval.ms` while its partitions move (at-least-once; documented).
//!
//! The parts: `worker` (the consumer loop and commits), `partition` (an assigned partition: its
//! open files, resume point and files in place), `land` (a file encoded and put in place),
//! `consumer` (the consumer's
//! settings and its rebalance handler that resumes from storage), on [`avro_to_arrow`] (records
//! into Arrow batches), [`hive_paths`] (partition values, folders and file names), [`storage`]
//! (landing and listing files), [`resume`] (where a partition resumes), [`register`] and
//! [`metastore`] (the tables and partitions in a Hive Metastore).

pub mod avro_to_arrow;
mod consumer;
pub mod hive_paths;
mod land;
pub mod metastore;
mod partition;
pub mod register;
pub mod resume;
mod row;
pub mod storage;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::consumer::{SinkContext, consumer_config};
use self::register::{Registrar, TableInfo};
use self::storage::Storage;
use self::worker::{ConfiguredTable, Worker, WorkerContext};
use crate::config::{Config, SinkCompression};
use crate::decode::Decoder;
use crate::kafka::KafkaClients;
use crate::metrics::{Metrics, TableLabels};

/// The sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Storage(#[from] storage::StorageSetupError),
    #[error("sink: Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("sink: topic {0} has no decoder")]
    NoDecoder(String),
    #[error("sink: cannot start the worker thread: {0}")]
    Thread(std::io::Error),
    /// The registry's latest value schema of a table's topic is not Avro: the sink writes Avro
    /// only.
    #[error(
        "sink.tables: table {table} (topic {topic}): the schema registry's latest schema of \
         subject {topic}-value is a {schema_type} schema; the sink writes Avro values only"
    )]
    NotAvro {
        table: String,
        topic: String,
        schema_type: String,
    },
}

/// Refuses to start the sink when a table's topic is Confluent-framed and the registry's latest
/// schema of its subject `{topic}-value` is not Avro (Protobuf, JSON Schema): the sink would wait
/// on its first record for good. A registry that does not answer is logged and not waited for
/// (the records then wait, `not_avro`, should they not be Avro).
pub async fn check_schema_types(
    config: &Config,
    decoders: &HashMap<String, Arc<Decoder>>,
) -> Result<(), SinkError> {
    let Some(sink) = &config.sink else {
        return Ok(());
    };
    for t in &sink.tables {
        let Some(registry) = decoders.get(&t.topic).and_then(|d| d.value_registry()) else {
            continue;
        };
        let subject = format!("{}-value", t.topic);
        match registry.latest_type(&subject).await {
            Ok(Some(schema_type)) if schema_type != "AVRO" => {
                return Err(SinkError::NotAvro {
                    table: t.table_name(),
                    topic: t.topic.clone(),
                    schema_type,
                });
            }
            Ok(_) => {}
            Err(why) => tracing::warn!(
                table = %t.table_name(),
                topic = %t.topic,
                "cannot ask the schema registry for the type of subject {subject} (the sink \
                 writes Avro only); starting anyway: {why}"
            ),
        }
    }
    Ok(())
}

/// A running sink.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    /// True while the worker thread runs.
    pub alive: Arc<AtomicBool>,
    /// The registration queue, when a metastore is configured.
    pub registrar: Option<Arc<Registrar>>,
}

/// Starts the sink worker (a thread) and, with a metastore, the registration task; both end
/// when `cancel` is cancelled, after open files are written (the worker) . Call inside the
/// runtime; `tasks` tracks them for shutdown.
pub fn start(
    config: &Config,
    decoders: &HashMap<String, Arc<Decoder>>,
    metrics: Metrics,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Option<SinkHandle>, SinkError> {
    let Some(sink) = config.sink.clone() else {
        return Ok(None);
    };
    let storage = Storage::new(&sink)?;
    let mut tables = Vec::new();
    for t in &sink.tables {
        let decoder = decoders
            .get(&t.topic)
            .cloned()
            .ok_or_else(|| SinkError::NoDecoder(t.topic.clone()))?;
        let name = t.table_name();
        // Exported from the start (0), for the alert on it.
        Metrics::topic_counter(&metrics.sink_expired_records, &t.topic);
        let labels = TableLabels {
            table: name.clone(),
        };
        tables.push(ConfiguredTable {
            topic: Arc::from(t.topic.as_str()),
            partition_by: t.partition_by.clone(),
            fields: t
                .partition_by
                .iter()
                .filter(|k| *k != "dt" && *k != "hr")
                .cloned()
                .collect(),
            key_column: t.key_column,
            headers_column: t.headers_column,
            bucket_ms: if t.partition_by.iter().any(|k| k == "hr") {
                Some(3_600_000)
            } else if t.partition_by.iter().any(|k| k == "dt") {
                Some(86_400_000)
            } else {
                None
            },
            decoder,
            records: metrics.sink_records.get_or_create_owned(&labels),
            bytes: metrics.sink_bytes.get_or_create_owned(&labels),
            files: metrics.sink_files.get_or_create_owned(&labels),
            name,
        });
    }
    let rt = tokio::runtime::Handle::current();
    let registrar = sink.metastore_uri.as_ref().map(|uri| {
        let registrar = Registrar::new(metrics.clone());
        let infos: HashMap<String, TableInfo> = tables
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TableInfo {
                        partition_by: t.partition_by.clone(),
                    },
                )
            })
            .collect();
        let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
        let (r, st, c, uri, db) = (
            registrar.clone(),
            storage.clone(),
            cancel.child_token(),
            uri.clone(),
            sink.database.clone(),
        );
        tasks.spawn(async move {
            register::rescan(&r, &st, &names).await;
            register::run(r, uri, db, infos, st, c).await;
        });
        registrar
    });
    let clients = KafkaClients::new(&config.kafka, &metrics);
    let consumer_context = SinkContext::new(
        clients.log("_sink"),
        metrics.clone(),
        storage.clone(),
        tables
            .iter()
            .map(|t| (t.topic.to_string(), t.name.clone()))
            .collect(),
        rt.clone(),
    );
    let consumer: BaseConsumer<SinkContext> =
        consumer_config(&clients, &sink).create_with_context(consumer_context)?;
    let topics: Vec<&str> = tables.iter().map(|t| &*t.topic).collect();
    consumer.subscribe(&topics)?;
    let alive = Arc::new(AtomicBool::new(true));
    let worker = Worker::new(
        tables,
        WorkerContext {
            storage,
            rt,
            metrics,
            registrar: registrar.clone(),
            compression: sink.compression,
            roll_rows: sink.roll_rows,
            roll_bytes: sink.roll_bytes,
            roll_interval: (sink.roll_interval_ms > 0)
                .then(|| Duration::from_millis(sink.roll_interval_ms)),
            roll_record_ms: (sink.roll_record_ms > 0)
                .then(|| i64::try_from(sink.roll_record_ms).unwrap_or(i64::MAX)),
            max_open_files: sink.max_open_files,
            max_open_bytes: sink.max_open_bytes,
            cancel: cancel.clone(),
        },
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let alive2 = alive.clone();
    std::thread::Builder::new()
        .name("lakewire-sink".into())
        .spawn(move || {
            worker.run(consumer);
            alive2.store(false, Ordering::Relaxed);
            let _ = done_tx.send(());
        })
        .map_err(SinkError::Thread)?;
    tasks.spawn(async move {
        let _ = done_rx.await;
    });
    tracing::info!(root = %sink.root, group = %sink.group_id, "sink started");
    Ok(Some(SinkHandle { alive, registrar }))
}

/// Parquet bytes of `batches`.
pub fn encode(
    batches: &[arrow_array::RecordBatch],
    schema: &arrow_schema::SchemaRef,
    compression: SinkCompression,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    encode_with(batches, schema, compression, Vec::new())
}

/// Parquet bytes of `batches`, with `key_values` in the footer's key-value metadata (the
/// sink's resume marks, see [`resume`]).
pub fn encode_with(
    batches: &[arrow_array::RecordBatch],
    schema: &arrow_schema::SchemaRef,
    compression: SinkCompression,
    key_values: Vec<(String, String)>,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let codec = match compression {
        SinkCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
        SinkCompression::Snappy => Compression::SNAPPY,
    };
    let kv: Vec<parquet::file::metadata::KeyValue> = key_values
        .into_iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v))
        .collect();
    let props = WriterProperties::builder()
        .set_compression(codec)
        .set_key_value_metadata((!kv.is_empty()).then_some(kv))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.into_inner()
}

#[cfg(test)]
mod tests;
