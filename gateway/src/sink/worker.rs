//! The sink worker: the consumer loop of the sink thread. Input: records of the assigned
//! partitions and the rebalance events of [`super::consumer`]; output: per topic partition at
//! most one open file, closed into a Parquet file in place (retried, else the partition is
//! rewound to the file's start), then the offset after it committed; records that are not
//! written are counted and dead-lettered; the partitions' lag is reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::avro_to_arrow::{BatchBuilder, Meta};
use super::consumer::{Event, SinkContext};
use super::encode;
use super::hive_paths::{FileName, hive_dir, partition_values};
use super::register::{Pending, Registrar};
use super::storage::Storage;
use crate::config::SinkCompression;
use crate::decode::{DecodeError, Decoder};
use crate::metrics::{DecodeErrorLabels, Metrics, PartitionLabels};
use crate::record::RawRecord;

/// How long landing a file is retried before the partition is rewound to the file's start
/// (staying well inside the consumer's `max.poll.interval.ms`).
const LAND_RETRY_FOR: Duration = Duration::from_secs(30);

/// A `[[sink.tables]]` entry as the worker uses it: the topic's decoder, the partition layout
/// and the table's counters.
pub(super) struct ConfiguredTable {
    pub(super) topic: Arc<str>,
    pub(super) name: String,
    pub(super) partition_by: Vec<String>,
    /// The partition columns that are value fields (not `dt`/`hr`): left out of the files.
    pub(super) fields: Vec<String>,
    /// The time span of one Hive partition: an hour with `hr`, a day with `dt` only.
    pub(super) bucket_ms: Option<i64>,
    pub(super) decoder: Arc<Decoder>,
    pub(super) records: Counter,
    pub(super) bytes: Counter,
    pub(super) files: Counter,
}

/// How a record's Hive partition is compared with the open file's. Tables partitioned by time
/// only compare a number per record instead of the partition values' text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionKey {
    /// Some partition columns are value fields: the partition values' text is compared.
    Values,
    /// Partitioned by `dt`/`hr` only: the record's UTC hour (with `hr`) or day (`dt` only),
    /// counted from the epoch.
    TimeBucket(i64),
    /// Partitioned by `dt`/`hr` only, and the record has no timestamp: Hive's default partition.
    NoTimestamp,
    /// No partition columns: every record is in the table's one folder.
    Unpartitioned,
}

impl PartitionKey {
    fn of(t: &ConfiguredTable, timestamp: Option<i64>) -> Self {
        if !t.fields.is_empty() {
            return Self::Values;
        }
        match (t.bucket_ms, timestamp) {
            (None, _) => Self::Unpartitioned,
            (Some(ms), Some(ts)) => Self::TimeBucket(ts.div_euclid(ms)),
            (Some(_), None) => Self::NoTimestamp,
        }
    }
}

/// An open file: rows of one topic partition, one Hive partition and one writer schema.
struct OpenFile {
    batch: BatchBuilder,
    fingerprint: u64,
    /// The Hive partition's values.
    values: Vec<String>,
    /// What a record's partition is compared with (see [`PartitionKey`]).
    partition_key: PartitionKey,
    start: i64,
    end: i64,
    bytes: u64,
    opened: Instant,
}

/// An assigned topic partition.
struct AssignedPartition {
    /// The first offset not yet in a file in place, when known (records below are skipped).
    next: Option<i64>,
    open: Option<OpenFile>,
    lag: Gauge,
}

/// What the worker needs besides its tables and partitions: where files go, the metrics, the
/// metastore queue, the roll limits, and the shutdown signal.
pub(super) struct WorkerContext {
    pub(super) storage: Storage,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) metrics: Metrics,
    pub(super) registrar: Option<Arc<Registrar>>,
    pub(super) compression: SinkCompression,
    pub(super) roll_rows: u64,
    pub(super) roll_bytes: u64,
    pub(super) roll_interval: Option<Duration>,
    pub(super) cancel: CancellationToken,
}

/// The consumer loop's state: the tables, the assigned partitions and their open files.
pub(super) struct Worker {
    tables: Vec<ConfiguredTable>,
    /// Topic → index in `tables`.
    index: HashMap<String, usize>,
    parts: HashMap<(usize, i32), AssignedPartition>,
    ctx: WorkerContext,
}

impl Worker {
    pub(super) fn new(tables: Vec<ConfiguredTable>, ctx: WorkerContext) -> Self {
        Self {
            index: tables
                .iter()
                .enumerate()
                .map(|(i, t)| (t.topic.to_string(), i))
                .collect(),
            tables,
            parts: HashMap::new(),
            ctx,
        }
    }

    pub(super) fn run(mut self, consumer: BaseConsumer<SinkContext>) {
        let mut last_tick = Instant::now();
        let mut last_lag = Instant::now();
        while !self.ctx.cancel.is_cancelled() {
            let msg = consumer.poll(Duration::from_millis(100));
            self.apply_events(&consumer);
            match msg {
                Some(Ok(m)) => self.record(&consumer, &m),
                Some(Err(e)) => {
                    Metrics::topic_counter(&self.ctx.metrics.kafka_errors, "_sink").inc();
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
        let Some(events) = consumer.context().take_events() else {
            return;
        };
        for e in events {
            match e {
                Event::Assigned(list) => {
                    for (topic, p, next) in list {
                        let Some(&ti) = self.index.get(&topic) else {
                            continue;
                        };
                        let lag = self
                            .ctx
                            .metrics
                            .sink_lag
                            .get_or_create_owned(&PartitionLabels {
                                topic: topic.clone(),
                                partition: p,
                            });
                        self.parts.insert(
                            (ti, p),
                            AssignedPartition {
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
                        self.ctx.metrics.sink_lag.remove(&PartitionLabels {
                            topic: topic.clone(),
                            partition: p,
                        });
                    }
                }
            }
        }
    }

    fn skip(&self, topic: &str, reason: &str) {
        self.ctx
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
            headers: None,
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
                self.ctx.rt.block_on(t.decoder.prepare(&raw));
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
        let partition_key = PartitionKey::of(t, raw.timestamp);
        let values = match partition_key {
            PartitionKey::Values => Some(partition_values(&t.partition_by, &t.decoder, &raw)),
            _ => None,
        };
        let roll = self
            .parts
            .get(&(ti, p))
            .and_then(|part| part.open.as_ref())
            .is_some_and(|o| {
                o.fingerprint != schema.fingerprint
                    || o.partition_key != partition_key
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
                    part.open = Some(OpenFile {
                        batch,
                        fingerprint: schema.fingerprint,
                        values: values
                            .unwrap_or_else(|| partition_values(&t.partition_by, &t.decoder, &raw)),
                        partition_key,
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
        if open.batch.rows() as u64 >= self.ctx.roll_rows || open.bytes >= self.ctx.roll_bytes {
            self.flush(consumer, (ti, p));
        }
    }

    /// A record that is not written: counted, dead-lettered if configured, and covered by the
    /// open file's offsets.
    fn bad_record(&mut self, ti: usize, raw: &RawRecord<'_>, e: &DecodeError) {
        let t = &self.tables[ti];
        self.ctx.metrics.decode_error(&t.topic, e.reason());
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
        let Some(age) = self.ctx.roll_interval else {
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
        let landed = land(&self.ctx, t, p, &mut open);
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
fn land(
    ctx: &WorkerContext,
    t: &ConfiguredTable,
    p: i32,
    open: &mut OpenFile,
) -> Result<usize, String> {
    let batches = open.batch.finish().map_err(|e| e.to_string())?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        // Only skipped records: nothing to write, but their offsets are done.
        return Ok(0);
    }
    let schema = open.batch.schema().clone();
    let bytes = Bytes::from(encode(&batches, &schema, ctx.compression).map_err(|e| e.to_string())?);
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
        match ctx
            .rt
            .block_on(ctx.storage.land(&dir, &name, bytes.clone()))
        {
            Ok(()) => break,
            Err(e) => {
                ctx.metrics.sink_storage_errors.inc();
                tracing::warn!(file = %format!("{dir}/{name}"), error = %e, "sink: cannot write the file; retrying");
                if ctx.cancel.is_cancelled() || began.elapsed() >= LAND_RETRY_FOR {
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
    ctx.metrics.sink_file_bytes.observe(bytes.len() as f64);
    ctx.metrics
        .sink_visibility_seconds
        .observe(open.opened.elapsed().as_secs_f64());
    if let Some(r) = &ctx.registrar {
        r.add(Pending {
            table: t.name.clone(),
            dir: part_dir,
            schema: Some(schema),
            sample: None,
        });
    }
    Ok(bytes.len())
}
