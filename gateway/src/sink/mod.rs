//! The Hive sink: records of the `[[sink.tables]]` topics become Parquet files in Hive
//! partitions, exactly once per offset. Input: Kafka records (a consumer group, `sink.group_id`,
//! shared by every sink worker); output: files `<root>/<table>/<k=v>/.../
//! <topic>+<partition>+<start>+<end>.parquet` ([`storage`]) and, when `sink.metastore_uri` is
//! set, the table and its partitions in a Hive Metastore ([`register`]).
//!
//! One worker thread (not an async worker: decoding and Parquet encoding are CPU work) owns the
//! consumer and, per assigned partition, at most one open file: its rows in Arrow builders
//! ([`avro_to_arrow`]). A file is closed when it reaches `roll_rows` rows or `roll_bytes` Avro bytes,
//! when the next record belongs to another Hive partition or has another writer schema, or
//! after `roll_interval_ms`. Closing encodes the batches to Parquet, puts the file in place
//! whole (hidden temporary name, then rename; or one completed upload), and only then commits
//! the offset after the file's end to Kafka.
//!
//! Exactly once: the name carries the offsets; on assignment each partition resumes after the
//! highest end offset found in storage (storage is the source of truth, not the committed
//! offset), records below it are skipped, and buffers of revoked partitions are dropped. Every
//! roll condition except the wall clock depends only on the records from the file's start, so a
//! replay (after a crash between landing a file and committing) writes the same file again
//! under the same name. With `roll_interval_ms`, boundaries depend on timing: a crash after a
//! landed file but before the storage listing of a new owner can then duplicate rows
//! (at-least-once; documented).

pub mod avro_to_arrow;
pub mod metastore;
pub mod register;
pub mod storage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::avro_to_arrow::{BatchBuilder, Meta};
use self::register::{Pending, Registrar, TableInfo};
use self::storage::{FileName, HIVE_DEFAULT_PARTITION, Storage, escape_value};
use crate::config::{Config, SinkCompression, SinkConfig};
use crate::decode::{DecodeError, Decoder, RawRecord};
use crate::metrics::{DecodeErrorLabels, Metrics, PartitionLabels, TableLabels};

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
}

/// How long landing a file is retried before the partition is rewound to the file's start
/// (staying well inside the consumer's `max.poll.interval.ms`).
const LAND_RETRY_FOR: Duration = Duration::from_secs(30);

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
        let labels = TableLabels {
            table: name.clone(),
        };
        tables.push(TableRt {
            topic: Arc::from(t.topic.as_str()),
            partition_by: t.partition_by.clone(),
            fields: t
                .partition_by
                .iter()
                .filter(|k| *k != "dt" && *k != "hr")
                .cloned()
                .collect(),
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
    let ctx = SinkContext {
        metrics: metrics.clone(),
        events: Mutex::new(Vec::new()),
        storage: storage.clone(),
        tables: tables
            .iter()
            .map(|t| (t.topic.to_string(), t.name.clone()))
            .collect(),
        rt: rt.clone(),
    };
    let consumer: BaseConsumer<SinkContext> =
        consumer_config(config, &sink).create_with_context(ctx)?;
    let topics: Vec<&str> = tables.iter().map(|t| &*t.topic).collect();
    consumer.subscribe(&topics)?;
    let alive = Arc::new(AtomicBool::new(true));
    let worker = Worker {
        index: tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.topic.to_string(), i))
            .collect(),
        tables,
        parts: HashMap::new(),
        env: Env {
            storage,
            rt,
            metrics,
            registrar: registrar.clone(),
            compression: sink.compression,
            roll_rows: sink.roll_rows,
            roll_bytes: sink.roll_bytes,
            roll_interval: (sink.roll_interval_ms > 0)
                .then(|| Duration::from_millis(sink.roll_interval_ms)),
            cancel: cancel.clone(),
        },
    };
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

fn consumer_config(config: &Config, sink: &SinkConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &sink.group_id)
        .set("client.id", "lakewire-sink")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("socket.keepalive.enable", "true")
        // librdkafka (2.2+) waits this long before fetching a partition again once its local
        // queue is over `queued.min.messages`; at the default 1,000 ms a sink catching up on a
        // backlog idled most of the time (130 k records/s at 23% of a core, `wsload sink`),
        // at 10 ms it is CPU-bound (510 k/s).
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &config.kafka.properties {
        cc.set(k, v);
    }
    // The rebalance handler assigns and revokes whole assignments (eager protocol).
    cc.set("partition.assignment.strategy", "range,roundrobin");
    cc
}

/// A configured table at run time.
struct TableRt {
    topic: Arc<str>,
    name: String,
    partition_by: Vec<String>,
    /// The partition columns that are value fields (not `dt`/`hr`): left out of the files.
    fields: Vec<String>,
    /// The time span of one Hive partition: an hour with `hr`, a day with `dt` only.
    bucket_ms: Option<i64>,
    decoder: Arc<Decoder>,
    records: Counter,
    bytes: Counter,
    files: Counter,
}

/// An open file: rows of one topic partition, one Hive partition and one writer schema.
struct Open {
    batch: BatchBuilder,
    fingerprint: u64,
    /// The Hive partition's values, and for tables partitioned by `dt`/`hr` only, the UTC
    /// hour or day they were made from: compared per record instead of the text.
    values: Vec<String>,
    hour: Option<Option<i64>>,
    start: i64,
    end: i64,
    bytes: u64,
    opened: Instant,
}

/// An assigned topic partition.
struct Part {
    /// The first offset not yet in a file in place, when known (records below are skipped).
    next: Option<i64>,
    open: Option<Open>,
    lag: Gauge,
}

/// What the rebalance callback tells the worker loop.
enum Event {
    Assigned(Vec<(String, i32, Option<i64>)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: logs, and the rebalance handler that resumes from storage.
struct SinkContext {
    metrics: Metrics,
    events: Mutex<Vec<Event>>,
    storage: Storage,
    /// Topic → table.
    tables: HashMap<String, String>,
    rt: tokio::runtime::Handle,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                tracing::warn!(client = "sink", facility = fac, "librdkafka: {message}");
            }
            _ => tracing::debug!(client = "sink", facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        Metrics::topic_counter(&self.metrics.kafka_errors, "_sink").inc();
        tracing::warn!(client = "sink", %error, "Kafka client error: {reason}");
    }
}

impl SinkContext {
    /// Per topic partition of `tpl`, the offset after the highest file end in storage.
    fn resume(&self, tpl: &TopicPartitionList) -> HashMap<(String, i32), i64> {
        let mut out = HashMap::new();
        let mut tables: Vec<&String> = tpl
            .elements()
            .iter()
            .filter_map(|e| self.tables.get(e.topic()))
            .collect();
        tables.sort();
        tables.dedup();
        for table in tables {
            let listed = self.rt.block_on(self.storage.list(table));
            match listed {
                Ok((files, temps)) => {
                    for ((topic, p), end) in storage::resume_points(&files) {
                        out.insert((topic, p), end + 1);
                    }
                    // Temporary files left by a crash are hidden from readers; old ones go.
                    for (path, age) in temps {
                        if age > 600 {
                            let _ = self.rt.block_on(self.storage.delete(&path));
                        }
                    }
                }
                Err(e) => {
                    self.metrics.sink_storage_errors.inc();
                    tracing::error!(table, error = %e, "sink: cannot list storage; resuming from the committed offsets");
                }
            }
        }
        out
    }

    fn push(&self, e: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(e);
        }
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let resume = self.resume(tpl);
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let mut assigned = Vec::with_capacity(parts.len());
                for (topic, p) in parts {
                    let next = resume.get(&(topic.clone(), p)).copied();
                    if let Some(n) = next {
                        if let Err(e) = tpl.set_partition_offset(&topic, p, Offset::Offset(n)) {
                            tracing::warn!(topic, partition = p, error = %e, "sink: cannot set the resume offset");
                        }
                    }
                    tracing::info!(topic, partition = p, resume = ?next, "sink: partition assigned");
                    assigned.push((topic, p, next));
                }
                self.push(Event::Assigned(assigned));
                if let Err(e) = base_consumer.assign(tpl) {
                    tracing::error!(error = %e, "sink: assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect::<Vec<_>>();
                tracing::info!(
                    partitions = revoked.len(),
                    "sink: partitions revoked; open files dropped"
                );
                self.push(Event::Revoked(revoked));
                if let Err(e) = base_consumer.unassign() {
                    tracing::error!(error = %e, "sink: unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "sink: rebalance error");
                self.push(Event::Revoked(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect(),
                ));
                let _ = base_consumer.unassign();
            }
        }
    }
}

/// What closing a file needs.
struct Env {
    storage: Storage,
    rt: tokio::runtime::Handle,
    metrics: Metrics,
    registrar: Option<Arc<Registrar>>,
    compression: SinkCompression,
    roll_rows: u64,
    roll_bytes: u64,
    roll_interval: Option<Duration>,
    cancel: CancellationToken,
}

struct Worker {
    tables: Vec<TableRt>,
    /// Topic → index in `tables`.
    index: HashMap<String, usize>,
    parts: HashMap<(usize, i32), Part>,
    env: Env,
}

impl Worker {
    fn run(mut self, consumer: BaseConsumer<SinkContext>) {
        let mut last_tick = Instant::now();
        let mut last_lag = Instant::now();
        while !self.env.cancel.is_cancelled() {
            let msg = consumer.poll(Duration::from_millis(100));
            self.apply_events(&consumer);
            match msg {
                Some(Ok(m)) => self.record(&consumer, &m),
                Some(Err(e)) => {
                    Metrics::topic_counter(&self.env.metrics.kafka_errors, "_sink").inc();
                    tracing::warn!(error = %e, "sink: consumer error");
                }
                None => {}
            }
            if last_tick.elapsed() >= Duration::from_millis(200) {
                last_tick = Instant::now();
                self.roll_old(&consumer);
            }
            if last_lag.elapsed() >= Duration::from_secs(10) {
                last_lag = Instant::now();
                self.report_lag(&consumer);
            }
        }
        // Shutting down: write what is open (one attempt each), then leave the group.
        let keys: Vec<(usize, i32)> = self.parts.keys().copied().collect();
        for k in keys {
            self.flush(&consumer, k);
        }
        consumer.unsubscribe();
        tracing::info!("sink stopped");
    }

    fn apply_events(&mut self, consumer: &BaseConsumer<SinkContext>) {
        let events = match consumer.context().events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => return,
        };
        for e in events {
            match e {
                Event::Assigned(list) => {
                    for (topic, p, next) in list {
                        let Some(&ti) = self.index.get(&topic) else {
                            continue;
                        };
                        let lag = self
                            .env
                            .metrics
                            .sink_lag
                            .get_or_create_owned(&PartitionLabels {
                                topic: topic.clone(),
                                partition: p,
                            });
                        self.parts.insert(
                            (ti, p),
                            Part {
                                next,
                                open: None,
                                lag,
                            },
                        );
                    }
                }
                Event::Revoked(list) => {
                    for (topic, p) in list {
                        if let Some(&ti) = self.index.get(&topic) {
                            // The open file's rows are dropped: the next owner reads them again.
                            self.parts.remove(&(ti, p));
                        }
                        // The new owner reports the partition's lag; a stale series here would
                        // be counted twice by `sum by (topic)` in dashboards and alerts.
                        self.env.metrics.sink_lag.remove(&PartitionLabels {
                            topic: topic.clone(),
                            partition: p,
                        });
                    }
                }
            }
        }
    }

    fn skip(&self, topic: &str, reason: &str) {
        self.env
            .metrics
            .sink_skipped_records
            .get_or_create(&DecodeErrorLabels {
                topic: topic.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    fn record(&mut self, consumer: &BaseConsumer<SinkContext>, m: &BorrowedMessage<'_>) {
        let Some(&ti) = self.index.get(m.topic()) else {
            return;
        };
        let (p, off) = (m.partition(), m.offset());
        let Some(part) = self.parts.get(&(ti, p)) else {
            self.skip(m.topic(), "unassigned");
            return;
        };
        if part.next.is_some_and(|n| off < n) {
            self.skip(m.topic(), "already_written");
            return;
        }
        let raw = RawRecord {
            partition: p,
            offset: off,
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
        };
        let t = &self.tables[ti];
        let Some(payload) = raw.payload else {
            self.skip(m.topic(), "tombstone");
            self.extend(ti, p, off);
            return;
        };
        let writer = match t.decoder.value_writer(payload) {
            Err(DecodeError::UnknownSchemaId(_)) => {
                // A registry cache miss: fetch (waiting while the registry is down), retry.
                self.env.rt.block_on(t.decoder.prepare(&raw));
                t.decoder.value_writer(payload)
            }
            other => other,
        };
        let (schema, datum) = match writer {
            Ok(w) => w,
            Err(e) => {
                self.bad_record(ti, &raw, &e);
                return;
            }
        };
        // Tables partitioned by time only compare the record's hour (or day); field values need
        // their text.
        let hour = t.fields.is_empty().then(|| {
            t.bucket_ms
                .and_then(|ms| raw.timestamp.map(|ts| ts.div_euclid(ms)))
        });
        let values = match hour {
            Some(_) => None,
            None => Some(partition_values(t, &raw)),
        };
        let roll = self
            .parts
            .get(&(ti, p))
            .and_then(|part| part.open.as_ref())
            .is_some_and(|o| {
                o.fingerprint != schema.fingerprint
                    || o.hour != hour
                    || values.as_ref().is_some_and(|v| *v != o.values)
            });
        if roll && !self.flush(consumer, (ti, p)) {
            return;
        }
        let t = &self.tables[ti];
        let Some(part) = self.parts.get_mut(&(ti, p)) else {
            return;
        };
        if part.open.is_none() {
            match BatchBuilder::new(Arc::new(schema.json.clone()), t.topic.clone(), p, &t.fields) {
                Ok(batch) => {
                    part.open = Some(Open {
                        batch,
                        fingerprint: schema.fingerprint,
                        values: values.unwrap_or_else(|| partition_values(t, &raw)),
                        hour,
                        start: off,
                        end: off,
                        bytes: 0,
                        opened: Instant::now(),
                    });
                }
                Err(e) => {
                    let e = DecodeError::BadSchema {
                        id: 0,
                        why: format!("no Arrow form: {e}"),
                    };
                    self.bad_record(ti, &raw, &e);
                    return;
                }
            }
        }
        let Some(open) = part.open.as_mut() else {
            return;
        };
        let meta = Meta {
            offset: off,
            timestamp: raw.timestamp,
        };
        open.end = off;
        if let Err(e) = open.batch.append(datum, meta) {
            let e = DecodeError::from(e);
            self.bad_record(ti, &raw, &e);
            return;
        }
        open.bytes += payload.len() as u64;
        if open.batch.rows() as u64 >= self.env.roll_rows || open.bytes >= self.env.roll_bytes {
            self.flush(consumer, (ti, p));
        }
    }

    /// A record that is not written: counted, dead-lettered if configured, and covered by the
    /// open file's offsets.
    fn bad_record(&mut self, ti: usize, raw: &RawRecord<'_>, e: &DecodeError) {
        let t = &self.tables[ti];
        self.env.metrics.decode_error(&t.topic, e.reason());
        tracing::debug!(topic = %t.topic, partition = raw.partition, offset = raw.offset, error = %e, "sink: record skipped");
        t.decoder.dead_letter(raw, e);
        self.extend(ti, raw.partition, raw.offset);
    }

    fn extend(&mut self, ti: usize, p: i32, off: i64) {
        if let Some(o) = self.parts.get_mut(&(ti, p)).and_then(|x| x.open.as_mut()) {
            o.end = off;
        }
    }

    fn roll_old(&mut self, consumer: &BaseConsumer<SinkContext>) {
        let Some(age) = self.env.roll_interval else {
            return;
        };
        let old: Vec<(usize, i32)> = self
            .parts
            .iter()
            .filter(|(_, p)| p.open.as_ref().is_some_and(|o| o.opened.elapsed() >= age))
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.flush(consumer, k);
        }
    }

    fn report_lag(&self, consumer: &BaseConsumer<SinkContext>) {
        for ((ti, p), part) in &self.parts {
            let t = &self.tables[*ti];
            let next = part.open.as_ref().map(|o| o.start).or(part.next);
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&t.topic, *p, Duration::from_millis(500))
            {
                if let Some(n) = next {
                    part.lag.set((high - n).max(0));
                }
            }
        }
    }

    /// Closes `key`'s open file: Parquet, in place, then the offset committed. `false` when the
    /// file could not be put in place (the partition was rewound to the file's start).
    fn flush(&mut self, consumer: &BaseConsumer<SinkContext>, key: (usize, i32)) -> bool {
        let t = &self.tables[key.0];
        let Some(part) = self.parts.get_mut(&key) else {
            return true;
        };
        let Some(mut open) = part.open.take() else {
            return true;
        };
        let p = key.1;
        let landed = land(&self.env, t, p, &mut open);
        match landed {
            Ok(file_bytes) => {
                part.next = Some(open.end + 1);
                let mut tpl = TopicPartitionList::new();
                let committed = tpl
                    .add_partition_offset(&t.topic, p, Offset::Offset(open.end + 1))
                    .and_then(|()| consumer.commit(&tpl, CommitMode::Sync));
                if let Err(e) = committed {
                    // The file is in place; storage, not the commit, decides where to resume.
                    tracing::warn!(topic = %t.topic, partition = p, error = %e, "sink: offset commit failed");
                }
                if file_bytes > 0 {
                    tracing::debug!(topic = %t.topic, partition = p, start = open.start, end = open.end, bytes = file_bytes, "sink: file in place");
                }
                true
            }
            Err(why) => {
                tracing::error!(topic = %t.topic, partition = p, start = open.start, error = %why, "sink: file not written; reading its records again");
                part.next = Some(open.start);
                if let Err(e) = consumer.seek(
                    &t.topic,
                    p,
                    Offset::Offset(open.start),
                    Duration::from_secs(5),
                ) {
                    tracing::error!(topic = %t.topic, partition = p, error = %e, "sink: cannot rewind; dropping the partition's state");
                    self.parts.remove(&key);
                }
                false
            }
        }
    }
}

/// Encodes `open` and puts it in place (retrying for [`LAND_RETRY_FOR`]); the file's size.
fn land(env: &Env, t: &TableRt, p: i32, open: &mut Open) -> Result<usize, String> {
    let batches = open.batch.finish().map_err(|e| e.to_string())?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        // Only skipped records: nothing to write, but their offsets are done.
        return Ok(0);
    }
    let schema = open.batch.schema().clone();
    let bytes = Bytes::from(encode(&batches, &schema, env.compression).map_err(|e| e.to_string())?);
    let name = FileName {
        topic: t.topic.to_string(),
        partition: p,
        start: open.start,
        end: open.end,
    }
    .render();
    let part_dir = hive_dir(&t.partition_by, &open.values);
    let dir = if part_dir.is_empty() {
        t.name.clone()
    } else {
        format!("{}/{part_dir}", t.name)
    };
    let began = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match env
            .rt
            .block_on(env.storage.land(&dir, &name, bytes.clone()))
        {
            Ok(()) => break,
            Err(e) => {
                env.metrics.sink_storage_errors.inc();
                tracing::warn!(file = %format!("{dir}/{name}"), error = %e, "sink: cannot write the file; retrying");
                if env.cancel.is_cancelled() || began.elapsed() >= LAND_RETRY_FOR {
                    return Err(e.to_string());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    t.records.inc_by(rows as u64);
    t.files.inc();
    t.bytes.inc_by(bytes.len() as u64);
    env.metrics.sink_file_bytes.observe(bytes.len() as f64);
    env.metrics
        .sink_visibility_seconds
        .observe(open.opened.elapsed().as_secs_f64());
    if let Some(r) = &env.registrar {
        r.add(Pending {
            table: t.name.clone(),
            dir: part_dir,
            schema: Some(schema),
            sample: None,
        });
    }
    Ok(bytes.len())
}

/// Parquet bytes of `batches`.
pub fn encode(
    batches: &[arrow_array::RecordBatch],
    schema: &arrow_schema::SchemaRef,
    compression: SinkCompression,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let codec = match compression {
        SinkCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
        SinkCompression::Snappy => Compression::SNAPPY,
    };
    let props = WriterProperties::builder().set_compression(codec).build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.into_inner()
}

/// `k1=v1/k2=v2` for the partition columns and their values.
fn hive_dir(keys: &[String], values: &[String]) -> String {
    keys.iter()
        .zip(values)
        .map(|(k, v)| format!("{k}={}", escape_value(v)))
        .collect::<Vec<_>>()
        .join("/")
}

/// The Hive partition values of a record: `dt`/`hr` from its timestamp (UTC), other names
/// from the value's top-level fields (decoded to JSON for it; null or missing: Hive's default
/// partition).
fn partition_values(t: &TableRt, raw: &RawRecord<'_>) -> Vec<String> {
    let mut json: Option<serde_json::Value> = None;
    t.partition_by
        .iter()
        .map(|k| match (k.as_str(), raw.timestamp) {
            ("dt", Some(ts)) => {
                let (y, m, d) = civil_from_days(ts.div_euclid(86_400_000));
                format!("{y:04}-{m:02}-{d:02}")
            }
            ("hr", Some(ts)) => format!("{:02}", ts.rem_euclid(86_400_000) / 3_600_000),
            ("dt" | "hr", None) => HIVE_DEFAULT_PARTITION.to_string(),
            (field, _) => {
                let v = json.get_or_insert_with(|| {
                    t.decoder
                        .decode(raw)
                        .map(|r| r.value().clone())
                        .unwrap_or(serde_json::Value::Null)
                });
                match v.get(field) {
                    None | Some(serde_json::Value::Null) => HIVE_DEFAULT_PARTITION.to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }
            }
        })
        .collect()
}

/// The civil date of a day number (days since 1970-01-01); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests;
