//! The sink worker: the consumer loop of the sink thread. Input: records of the assigned
//! partitions and the rebalance events of [`super::consumer`]; output: per topic partition one
//! open file per Hive folder and writer schema ([`super::partition`]), each closed into a Parquet
//! file in place (when storage does not take it, the partition is paused on it and it is tried
//! again from the poll loop), then the offset below which everything is in place committed;
//! records that are not written are counted and dead-lettered; the partitions' lag and the open
//! files are reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::avro_to_arrow::{BatchBuilder, Meta};
use super::consumer::{Event, SinkContext};
use super::hive_paths::{hive_dir, partition_values};
use super::partition::{AssignedPartition, FileKey, OpenFile, PartitionKey};
use super::register::Registrar;
use super::row::{Row, Unwritten, row};
use super::storage::Storage;
use crate::config::SinkCompression;
use crate::decode::{DecodeError, Decoder};
use crate::metrics::{CloseLabels, DecodeErrorLabels, Metrics, PartitionLabels};
use crate::record::RawRecord;

/// A `[[sink.tables]]` entry as the worker uses it: the topic's decoder, the partition layout
/// and the table's counters.
pub(super) struct ConfiguredTable {
    pub(super) topic: Arc<str>,
    pub(super) name: String,
    pub(super) partition_by: Vec<String>,
    /// The partition columns that are value fields (not `dt`/`hr`): left out of the files.
    pub(super) fields: Vec<String>,
    /// Write the key as `_key`, the headers as `_headers`.
    pub(super) key_column: bool,
    pub(super) headers_column: bool,
    /// The time span of one Hive partition: an hour with `hr`, a day with `dt` only.
    pub(super) bucket_ms: Option<i64>,
    pub(super) decoder: Arc<Decoder>,
    pub(super) records: Counter,
    pub(super) bytes: Counter,
    pub(super) files: Counter,
}

impl ConfiguredTable {
    /// `offset`, or lower: the lowest offset of partition `p` whose dead-letter copy Kafka has
    /// not confirmed yet. A resume mark or commit never passes a record whose copy may be lost.
    pub(super) fn confirmed_below(&self, p: i32, offset: i64) -> i64 {
        self.decoder
            .dead_letters_unconfirmed(p)
            .map_or(offset, |held| held.min(offset))
    }
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
    /// A file closes at a record this much newer (Kafka timestamps) than its first.
    pub(super) roll_record_ms: Option<i64>,
    /// Open files per partition at most.
    pub(super) max_open_files: usize,
    /// The Avro bytes of all open files at most.
    pub(super) max_open_bytes: u64,
    pub(super) cancel: CancellationToken,
}

/// The consumer loop's state: the tables, the assigned partitions and their open files.
pub(super) struct Worker {
    pub(super) tables: Vec<ConfiguredTable>,
    /// Topic → index in `tables`.
    index: HashMap<String, usize>,
    pub(super) parts: HashMap<(usize, i32), AssignedPartition>,
    /// The Avro bytes of all open files (and of the files waiting for storage).
    pub(super) open_bytes: u64,
    pub(super) ctx: WorkerContext,
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
            open_bytes: 0,
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
                self.retry_waiting(&consumer);
            }
            self.ctx.metrics.sink_open_bytes.set(self.open_bytes as i64);
            if last_lag.elapsed() >= Duration::from_secs(10) {
                last_lag = Instant::now();
                self.report_lag(&consumer);
            }
        }
        // Shutting down: write what is open (one attempt each), then leave the group.
        let keys: Vec<(usize, i32)> = self.parts.keys().copied().collect();
        for k in keys {
            self.land_all(&consumer, k);
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
                    for (topic, p, resume) in list {
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
                        let old = self
                            .parts
                            .insert((ti, p), AssignedPartition::new(resume, lag));
                        if let Some(mut old) = old {
                            self.forget_open(&mut old);
                        }
                    }
                }
                Event::Revoked(list) => {
                    for (topic, p) in list {
                        if let Some(&ti) = self.index.get(&topic) {
                            // The open files' rows are dropped: the next owner reads them again.
                            if let Some(mut part) = self.parts.remove(&(ti, p)) {
                                self.forget_open(&mut part);
                            }
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
        let key = (ti, p);
        let Some(part) = self.parts.get(&key) else {
            self.skip(m.topic(), "unassigned");
            return;
        };
        if part.paused() {
            // Fetched before the pause: read again from where the partition waits.
            return;
        }
        if part.resume.is_some_and(|n| off < n) {
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
        if let (Some(roll), Some(ts)) = (self.ctx.roll_record_ms, raw.timestamp) {
            let due = part.due_by_record_time(ts, roll);
            for f in due {
                if !self.land_file(consumer, key, &f) {
                    return;
                }
            }
        }
        let t = &self.tables[ti];
        let Some(payload) = raw.payload else {
            self.skip(m.topic(), "tombstone");
            self.read(key, off);
            return;
        };
        let headers = if t.headers_column { m.headers() } else { None };
        let Row {
            schema,
            datum,
            key: key_text,
            headers,
        } = match row(&self.ctx.rt, t, &raw, payload, headers) {
            Ok(row) => row,
            // Errors that can pass: the partition waits on the record, nothing after it is
            // committed, and the others go on.
            Err(Unwritten::Wait(reason)) => {
                self.wait_on(consumer, key, off, reason);
                return;
            }
            Err(Unwritten::Bad(e)) => {
                self.bad_record(ti, &raw, &e);
                return;
            }
        };
        // Tables partitioned by time only tell folders apart by the record's hour (or day);
        // field values need their text.
        let partition = PartitionKey::of(t, raw.timestamp);
        let fkey = FileKey {
            partition,
            values: match partition {
                PartitionKey::Values => Some(partition_values(&t.partition_by, &t.decoder, &raw)),
                _ => None,
            },
            fingerprint: schema.fingerprint,
        };
        let values = || {
            fkey.values
                .clone()
                .unwrap_or_else(|| partition_values(&t.partition_by, &t.decoder, &raw))
        };
        // After a rewind, or a resume point below files in place: the record may be in one.
        let Some(part) = self.parts.get(&key) else {
            return;
        };
        if part.may_hold(off)
            && part.already_written(
                &hive_dir(&t.partition_by, &values()),
                schema.fingerprint,
                off,
            )
        {
            self.skip(m.topic(), "already_written");
            self.read(key, off);
            return;
        }
        if !part.open.contains_key(&fkey) {
            if part.open.len() >= self.ctx.max_open_files {
                if let Some(oldest) = part.oldest() {
                    self.early_roll("max_open_files");
                    if !self.land_file(consumer, key, &oldest) {
                        return;
                    }
                }
            }
            let t = &self.tables[ti];
            let mut batch =
                BatchBuilder::new(Arc::new(schema.json.clone()), t.topic.clone(), p, &t.fields);
            if t.key_column {
                batch = batch.and_then(BatchBuilder::with_key);
            }
            if t.headers_column {
                batch = batch.and_then(BatchBuilder::with_headers);
            }
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    let e = DecodeError::BadSchema {
                        id: 0,
                        why: format!("no Arrow form: {e}"),
                    };
                    self.bad_record(ti, &raw, &e);
                    return;
                }
            };
            let file = OpenFile {
                batch,
                fingerprint: schema.fingerprint,
                values: fkey
                    .values
                    .clone()
                    .unwrap_or_else(|| partition_values(&t.partition_by, &t.decoder, &raw)),
                start: off,
                end: off,
                bytes: 0,
                opened: Instant::now(),
                first_timestamp: raw.timestamp,
            };
            let Some(part) = self.parts.get_mut(&key) else {
                return;
            };
            part.open.insert(fkey.clone(), file);
            self.ctx.metrics.sink_open_files.inc();
        }
        let Some(open) = self
            .parts
            .get_mut(&key)
            .and_then(|part| part.open.get_mut(&fkey))
        else {
            return;
        };
        let meta = Meta {
            offset: off,
            timestamp: raw.timestamp,
            key: key_text.as_deref(),
            headers: &headers,
        };
        if let Err(e) = open.batch.append(datum, meta) {
            let e = DecodeError::from(e);
            self.bad_record(ti, &raw, &e);
            return;
        }
        open.end = off;
        open.bytes += payload.len() as u64;
        let full =
            open.batch.rows() as u64 >= self.ctx.roll_rows || open.bytes >= self.ctx.roll_bytes;
        self.open_bytes += payload.len() as u64;
        self.read(key, off);
        if full {
            self.land_file(consumer, key, &fkey);
        } else if self.open_bytes >= self.ctx.max_open_bytes {
            if let Some((k, f)) = self.largest_open() {
                self.early_roll("max_open_bytes");
                self.land_file(consumer, k, &f);
            }
        }
    }

    /// A record that is not written: counted, dead-lettered if configured, and passed.
    fn bad_record(&mut self, ti: usize, raw: &RawRecord<'_>, e: &DecodeError) {
        let t = &self.tables[ti];
        self.ctx.metrics.decode_error(&t.topic, e.reason());
        tracing::debug!(topic = %t.topic, partition = raw.partition, offset = raw.offset, error = %e, "sink: record skipped");
        t.decoder.dead_letter(raw, e);
        self.read((ti, raw.partition), raw.offset);
    }

    fn read(&mut self, key: (usize, i32), off: i64) {
        if let Some(part) = self.parts.get_mut(&key) {
            part.read(off);
        }
    }

    fn early_roll(&self, reason: &'static str) {
        self.ctx
            .metrics
            .sink_early_rolls
            .get_or_create(&CloseLabels { reason })
            .inc();
    }

    /// The open file with the most Avro bytes, of any partition not waiting for storage (whose
    /// files cannot land before the one storage did not take).
    fn largest_open(&self) -> Option<((usize, i32), FileKey)> {
        self.parts
            .iter()
            .filter(|(_, part)| part.storage.is_none())
            .flat_map(|(k, part)| part.open.iter().map(move |(f, o)| (o.bytes, *k, f)))
            .max_by_key(|(bytes, _, _)| *bytes)
            .map(|(_, k, f)| (k, f.clone()))
    }

    /// Drops `part`'s open files from the worker's totals (revoked or replaced).
    pub(super) fn forget_open(&mut self, part: &mut AssignedPartition) {
        let n = part.open.len() as i64;
        let was_paused = part.paused();
        self.open_bytes = self.open_bytes.saturating_sub(part.drop_open());
        self.ctx.metrics.sink_open_files.dec_by(n);
        part.waiting = None;
        if was_paused {
            self.ctx.metrics.sink_waiting_partitions.dec();
        }
    }

    /// Pauses partition `key` on the record at `offset`, which could not be decoded for a
    /// reason that can pass: it is read again from there after a backoff.
    fn wait_on(
        &mut self,
        consumer: &BaseConsumer<SinkContext>,
        key: (usize, i32),
        offset: i64,
        reason: &'static str,
    ) {
        let t = &self.tables[key.0];
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        let was_paused = part.paused();
        let backoff = part.wait_on(offset, reason);
        if !was_paused {
            self.ctx.metrics.sink_waiting_partitions.inc();
        }
        self.ctx
            .metrics
            .sink_decode_waits
            .get_or_create(&DecodeErrorLabels {
                topic: t.topic.to_string(),
                reason: reason.to_string(),
            })
            .inc();
        tracing::warn!(topic = %t.topic, partition = key.1, offset, reason, retry_in = ?backoff, "sink: a record cannot be decoded yet; its partition waits and nothing after it is committed");
        self.pause_at(consumer, key, offset, "record");
    }

    /// Rewinds `key`'s partition to `offset` and pauses it there, on the `what` (a record, a
    /// file) it waits on. If Kafka refuses either, the partition's state is dropped (its open
    /// files with it), so it is read again from its last commit.
    pub(super) fn pause_at(
        &mut self,
        consumer: &BaseConsumer<SinkContext>,
        key: (usize, i32),
        offset: i64,
        what: &'static str,
    ) {
        let topic = self.tables[key.0].topic.clone();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, key.1);
        let paused = consumer
            .seek(
                &topic,
                key.1,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
            .and_then(|()| consumer.pause(&tpl));
        if let Err(e) = paused {
            tracing::error!(topic = %topic, partition = key.1, on = what, error = %e, "sink: cannot pause the partition on what it waits on; dropping the partition's state");
            if let Some(mut part) = self.parts.remove(&key) {
                self.forget_open(&mut part);
            }
        }
    }

    /// Tries again the files storage did not take and resumes the partitions whose wait is over:
    /// the record waited on is read again.
    fn retry_waiting(&mut self, consumer: &BaseConsumer<SinkContext>) {
        let now = Instant::now();
        let due: Vec<(usize, i32)> = self
            .parts
            .iter()
            .filter(|(_, part)| part.storage.as_ref().is_some_and(|w| w.retry_at <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.retry_storage(consumer, key);
        }
        for (&(ti, p), part) in self.parts.iter_mut() {
            let Some(w) = part.waiting.as_ref().filter(|w| w.retry_at <= now) else {
                continue;
            };
            if part.storage.is_some() {
                // Still paused on a file: resumed once storage takes it.
                part.waiting = None;
                continue;
            }
            let t = &self.tables[ti];
            tracing::debug!(topic = %t.topic, partition = p, offset = w.offset, reason = w.reason, "sink: trying the record again");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&t.topic, p);
            match consumer.resume(&tpl) {
                Ok(()) => {
                    part.waiting = None;
                    self.ctx.metrics.sink_waiting_partitions.dec();
                }
                Err(e) => {
                    tracing::warn!(topic = %t.topic, partition = p, error = %e, "sink: cannot resume the partition; trying again");
                }
            }
        }
    }

    fn roll_old(&mut self, consumer: &BaseConsumer<SinkContext>) {
        let Some(age) = self.ctx.roll_interval else {
            return;
        };
        let old: Vec<((usize, i32), FileKey)> = self
            .parts
            .iter()
            .flat_map(|(k, part)| {
                part.open
                    .iter()
                    .filter(|(_, o)| o.opened.elapsed() >= age)
                    .map(move |(f, _)| (*k, f.clone()))
            })
            .collect();
        for (k, f) in old {
            self.land_file(consumer, k, &f);
        }
    }

    fn report_lag(&self, consumer: &BaseConsumer<SinkContext>) {
        for ((ti, p), part) in &self.parts {
            let t = &self.tables[*ti];
            let next = part.done_below();
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&t.topic, *p, Duration::from_millis(500))
            {
                if let Some(n) = next {
                    part.lag.set((high - n).max(0));
                }
            }
        }
    }
}
