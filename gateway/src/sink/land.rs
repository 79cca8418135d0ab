//! Closing an open file of the sink worker: its Arrow batches encoded to Parquet with the
//! partition's resume mark in the footer ([`encode`]), then put in place, one bounded attempt
//! at a time ([`put`]): the worker tries again later from its poll loop, so a storage outage
//! never stops it polling ([`Worker::land_file`], [`Worker::retry_storage`]), and the offset
//! below which everything is in place committed. Input: an [`OpenFile`] and its table; output:
//! the [`Landed`] file, or why not.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::SinkContext;
use super::encode_with;
use super::hive_paths::{FileName, hive_dir};
use super::partition::{AssignedPartition, FileKey, OpenFile, Waiting};
use super::register::Pending;
use super::resume::{Holds, Landed, Marks};
use super::worker::{ConfiguredTable, Worker, WorkerContext};

/// The longest one attempt to put a file in place may take (the store's own retries included);
/// well inside the consumer's default `max.poll.interval.ms` (300 s).
const ATTEMPT_FOR: Duration = Duration::from_secs(60);

/// A file encoded and ready to be put in place: what [`put`] needs, kept while storage fails.
pub(super) struct Encoded {
    /// Its folder below the root (`table/k=v`) and file name.
    dir: String,
    name: String,
    /// Its Hive folder below the table.
    part_dir: String,
    pub(super) bytes: Bytes,
    rows: usize,
    schema: arrow_schema::SchemaRef,
    fingerprint: u64,
    partition: i32,
    pub(super) start: i64,
    end: i64,
    /// Its resume mark.
    mark: i64,
    /// When its first record was read (`lakewire_sink_visibility_seconds`).
    opened: Instant,
}

/// Encodes `open` with `mark` as its resume mark (`None`: no rows, nothing to write).
pub(super) fn encode(
    ctx: &WorkerContext,
    t: &ConfiguredTable,
    p: i32,
    open: &mut OpenFile,
    mark: i64,
) -> Result<Option<Encoded>, String> {
    let batches = open.batch.finish().map_err(|e| e.to_string())?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        // Only refused records: nothing to write.
        return Ok(None);
    }
    let schema = open.batch.schema().clone();
    let key_values = Marks::key_values(mark, open.fingerprint);
    let bytes = Bytes::from(
        encode_with(&batches, &schema, ctx.compression, key_values).map_err(|e| e.to_string())?,
    );
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
    Ok(Some(Encoded {
        dir,
        name,
        part_dir,
        bytes,
        rows,
        schema,
        fingerprint: open.fingerprint,
        partition: p,
        start: open.start,
        end: open.end,
        mark,
        opened: open.opened,
    }))
}

/// One attempt (at most [`ATTEMPT_FOR`]) to put `file` in place; when it is, it is counted and
/// queued for the metastore.
pub(super) fn put(
    ctx: &WorkerContext,
    t: &ConfiguredTable,
    file: &Encoded,
) -> Result<Landed, String> {
    // The timer is made inside the runtime (this is the sink's own thread).
    let attempt = async {
        tokio::time::timeout(
            ATTEMPT_FOR,
            ctx.storage.land(&file.dir, &file.name, file.bytes.clone()),
        )
        .await
    };
    match ctx.rt.block_on(attempt) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer in {ATTEMPT_FOR:?}")),
    }
    t.records.inc_by(file.rows as u64);
    t.files.inc();
    t.bytes.inc_by(file.bytes.len() as u64);
    ctx.metrics.sink_file_bytes.observe(file.bytes.len() as f64);
    ctx.metrics
        .sink_visibility_seconds
        .observe(file.opened.elapsed().as_secs_f64());
    tracing::debug!(topic = %t.topic, partition = file.partition, start = file.start, end = file.end, bytes = file.bytes.len(), dir = %file.part_dir, mark = file.mark, "sink: file in place");
    if let Some(r) = &ctx.registrar {
        r.add(Pending {
            table: t.name.clone(),
            dir: file.part_dir.clone(),
            schema: Some(file.schema.clone()),
            sample: None,
        });
    }
    Ok(Landed {
        dir: file.part_dir.clone(),
        holds: Holds::Schema(file.fingerprint),
        start: file.start,
        end: file.end,
    })
}

impl Encoded {
    /// The file's path below the root, for the log.
    pub(super) fn path(&self) -> String {
        format!("{}/{}", self.dir, self.name)
    }
}

impl Worker {
    /// Tries again to put in place the file partition `key` waits on; `true` when it is (the
    /// partition is then resumed, unless it also waits on a record).
    pub(super) fn retry_storage(
        &mut self,
        consumer: &BaseConsumer<SinkContext>,
        key: (usize, i32),
    ) -> bool {
        let t = &self.tables[key.0];
        let Some(part) = self.parts.get_mut(&key) else {
            return true;
        };
        let Some(w) = part.storage.take() else {
            return true;
        };
        match put(&self.ctx, t, &w.file) {
            Ok(landed) => {
                self.open_bytes = self.open_bytes.saturating_sub(w.file.bytes.len() as u64);
                tracing::info!(topic = %t.topic, partition = key.1, file = %w.file.path(), "sink: storage took the file; the partition goes on");
                part.add_landed(landed);
                commit_done(consumer, t, key.1, part);
                if part.waiting.is_none() {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&t.topic, key.1);
                    if let Err(e) = consumer.resume(&tpl) {
                        // Resumed by the next tick's try instead.
                        tracing::warn!(topic = %t.topic, partition = key.1, error = %e, "sink: cannot resume the partition; trying again");
                        part.waiting = Some(Waiting {
                            offset: part.read_next.unwrap_or(w.file.start),
                            retry_at: Instant::now(),
                            reason: "storage",
                        });
                    } else {
                        self.ctx.metrics.sink_waiting_partitions.dec();
                    }
                }
                true
            }
            Err(why) => {
                self.ctx.metrics.sink_storage_errors.inc();
                let path = w.file.path();
                let backoff = part.wait_for_storage(w.file, Some(w.backoff));
                tracing::warn!(topic = %t.topic, partition = key.1, file = %path, error = %why, retry_in = ?backoff, "sink: storage still does not take the file; the partition waits");
                false
            }
        }
    }

    /// Lands every open file of partition `key` (shutdown), after the one it waits on.
    pub(super) fn land_all(&mut self, consumer: &BaseConsumer<SinkContext>, key: (usize, i32)) {
        if !self.retry_storage(consumer, key) {
            return;
        }
        let files: Vec<FileKey> = self
            .parts
            .get(&key)
            .map(|part| part.open.keys().cloned().collect())
            .unwrap_or_default();
        for f in files {
            if !self.land_file(consumer, key, &f) {
                return;
            }
        }
    }

    /// Closes partition `key`'s open file `file`: Parquet, in place, then the offset below which
    /// everything is in place committed. `false` when the file is not in place: storage did not
    /// take it (the partition is paused on it and tried again, see [`Self::retry_storage`]; its
    /// other files wait with it), or it could not be encoded (all the partition's open files are
    /// dropped and it is rewound to the oldest one's start).
    pub(super) fn land_file(
        &mut self,
        consumer: &BaseConsumer<SinkContext>,
        key: (usize, i32),
        file: &FileKey,
    ) -> bool {
        let t = &self.tables[key.0];
        let Some(part) = self.parts.get_mut(&key) else {
            return true;
        };
        if part.storage.is_some() {
            return false;
        }
        let Some(mut open) = part.open.remove(file) else {
            return true;
        };
        self.open_bytes = self.open_bytes.saturating_sub(open.bytes);
        self.ctx.metrics.sink_open_files.dec();
        let p = key.1;
        let mark = t.confirmed_below(p, part.mark(open.end));
        let encoded = match encode(&self.ctx, t, p, &mut open, mark) {
            Ok(Some(encoded)) => encoded,
            Ok(None) => {
                commit_done(consumer, t, p, part);
                return true;
            }
            Err(why) => {
                let back = part.done_below().map_or(open.start, |d| d.min(open.start));
                tracing::error!(topic = %t.topic, partition = p, start = open.start, rewind_to = back, error = %why, "sink: file not encoded; reading the partition's open files' records again");
                let n = part.open.len() as i64;
                let dropped = part.drop_open();
                part.read_next = Some(back);
                self.open_bytes = self.open_bytes.saturating_sub(dropped);
                self.ctx.metrics.sink_open_files.dec_by(n);
                if let Err(e) =
                    consumer.seek(&t.topic, p, Offset::Offset(back), Duration::from_secs(5))
                {
                    tracing::error!(topic = %t.topic, partition = p, error = %e, "sink: cannot rewind; dropping the partition's state");
                    self.parts.remove(&key);
                }
                return false;
            }
        };
        match put(&self.ctx, t, &encoded) {
            Ok(landed) => {
                part.add_landed(landed);
                commit_done(consumer, t, p, part);
                true
            }
            Err(why) => {
                // Paused on the file, which is kept: the poll loop goes on (the worker stays in
                // its group, the lag is reported) and tries it again after a backoff.
                self.ctx.metrics.sink_storage_errors.inc();
                let path = encoded.path();
                let next = part.read_next.unwrap_or(encoded.start);
                let was_paused = part.paused();
                self.open_bytes += encoded.bytes.len() as u64;
                let backoff = part.wait_for_storage(encoded, None);
                if !was_paused {
                    self.ctx.metrics.sink_waiting_partitions.inc();
                }
                tracing::warn!(topic = %t.topic, partition = p, file = %path, error = %why, retry_in = ?backoff, "sink: storage does not take the file; the partition waits on it and nothing after it is committed");
                self.pause_at(consumer, key, next, "file");
                false
            }
        }
    }
}

/// Commits partition `p`'s offset below which everything is in place (and every dead-letter
/// copy confirmed). A failed commit is logged: storage, not the commit, decides where to resume.
fn commit_done(
    consumer: &BaseConsumer<SinkContext>,
    t: &ConfiguredTable,
    p: i32,
    part: &AssignedPartition,
) {
    let Some(done) = part.done_below() else {
        return;
    };
    let done = t.confirmed_below(p, done);
    let topic = &*t.topic;
    let mut tpl = TopicPartitionList::new();
    let committed = tpl
        .add_partition_offset(topic, p, Offset::Offset(done))
        .and_then(|()| consumer.commit(&tpl, CommitMode::Sync));
    if let Err(e) = committed {
        tracing::warn!(topic = %topic, partition = p, error = %e, "sink: offset commit failed");
    }
}
