//! An assigned topic partition of the sink worker. Input: where it resumes ([`Resume`]) and the
//! records the worker reads of it; output: its open files, one per Hive folder and writer schema
//! ([`FileKey`]), and the offsets that follow from them: what to commit and rewind to
//! ([`AssignedPartition::done_below`]), the mark a landing file carries
//! ([`AssignedPartition::mark`]), whether a record is already in a file in place, and what it
//! is paused on (a record to decode, a file to put in place).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use super::avro_to_arrow::BatchBuilder;
use super::land::Encoded;
use super::resume::{Landed, Resume};
use super::worker::ConfiguredTable;

/// How a record's Hive partition is told apart from others'. Tables partitioned by time only
/// compare a number per record instead of the partition values' text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PartitionKey {
    /// Some partition columns are value fields: the partition values' text tells them apart.
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
    pub(super) fn of(t: &ConfiguredTable, timestamp: Option<i64>) -> Self {
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

/// Which open file of its partition a record goes to: its Hive folder and writer schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FileKey {
    pub(super) partition: PartitionKey,
    /// The partition values, with [`PartitionKey::Values`] only.
    pub(super) values: Option<Vec<String>>,
    pub(super) fingerprint: u64,
}

/// An open file: rows of one topic partition, one Hive partition and one writer schema.
pub(super) struct OpenFile {
    pub(super) batch: BatchBuilder,
    pub(super) fingerprint: u64,
    /// The Hive partition's values.
    pub(super) values: Vec<String>,
    pub(super) start: i64,
    pub(super) end: i64,
    /// The Avro bytes of its records.
    pub(super) bytes: u64,
    pub(super) opened: Instant,
    /// Its first record's Kafka timestamp (`sink.roll_record_ms`).
    pub(super) first_timestamp: Option<i64>,
}

/// A partition paused on a record that could not be decoded yet (its schema not in the
/// registry yet, the registry unreachable, an unknown single-object fingerprint).
pub(super) struct Waiting {
    /// The record's offset: the partition is read again from it.
    pub(super) offset: i64,
    pub(super) retry_at: Instant,
    pub(super) reason: &'static str,
}

/// A partition paused on a file that storage did not take: the file is kept, encoded, and put
/// in place again from the poll loop after a backoff.
pub(super) struct StorageWait {
    pub(super) file: Encoded,
    pub(super) retry_at: Instant,
    pub(super) backoff: Duration,
}

/// An assigned topic partition.
pub(super) struct AssignedPartition {
    /// Every record below this was in a file in place at assignment (records below are
    /// skipped); `None` when storage did not say.
    pub(super) resume: Option<i64>,
    /// The offset after the last record handled (written, skipped or refused).
    pub(super) read_next: Option<i64>,
    pub(super) open: HashMap<FileKey, OpenFile>,
    /// Files in place that may hold records at or after [`Self::done_below`]: from storage at
    /// assignment, and those landed since (a rewind reads their records again).
    landed: Vec<Landed>,
    /// The highest end offset in `landed`: records after it are in no file yet.
    landed_end: Option<i64>,
    pub(super) lag: Gauge,
    /// Paused on a record to decode again later.
    pub(super) waiting: Option<Waiting>,
    /// Paused on a file to put in place again later.
    pub(super) storage: Option<StorageWait>,
    /// The offset of the last record waited for and the wait before its next try (doubled for
    /// each try on the same record).
    retry: Option<(i64, Duration)>,
}

/// The first wait on a record that cannot be decoded yet, and the longest.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

impl AssignedPartition {
    pub(super) fn new(resume: Resume, lag: Gauge) -> Self {
        let mut p = Self {
            resume: resume.next,
            read_next: None,
            open: HashMap::new(),
            landed: Vec::new(),
            landed_end: None,
            lag,
            waiting: None,
            storage: None,
            retry: None,
        };
        for l in resume.landed {
            p.add_landed(l);
        }
        p
    }

    /// Every record below this is in a file in place or was not to be written: the offset to
    /// commit, to rewind to, and to count lag from. The smallest start among the open files,
    /// else the offset after the last record handled. A file waiting for storage counts as open.
    pub(super) fn done_below(&self) -> Option<i64> {
        self.open
            .values()
            .map(|o| o.start)
            .chain(self.storage.as_ref().map(|w| w.file.start))
            .min()
            .or(self.read_next)
            .or(self.resume)
    }

    /// The resume mark of a file that lands now, taken out of `open` already and ending at
    /// `end`: every record below it is then in place ([`super::resume`]).
    pub(super) fn mark(&self, end: i64) -> i64 {
        self.done_below().unwrap_or(end + 1)
    }

    /// Notes a record handled at `offset`.
    pub(super) fn read(&mut self, offset: i64) {
        self.read_next = Some(offset + 1);
    }

    /// Whether a file in place may hold the record at `offset` (cheap: compare before working
    /// out its folder for [`Self::already_written`]).
    pub(super) fn may_hold(&self, offset: i64) -> bool {
        self.landed_end.is_some_and(|e| offset <= e)
    }

    /// Whether the record at `offset` of folder `dir` and writer schema `fingerprint` is in a
    /// file in place.
    pub(super) fn already_written(&self, dir: &str, fingerprint: u64, offset: i64) -> bool {
        self.landed
            .iter()
            .any(|l| l.covers(dir, fingerprint, offset))
    }

    /// Adds a file now in place, and forgets those that end below [`Self::done_below`]: no
    /// rewind reads their records again.
    pub(super) fn add_landed(&mut self, l: Landed) {
        self.landed_end = Some(self.landed_end.map_or(l.end, |e| e.max(l.end)));
        self.landed.push(l);
        if let Some(d) = self.done_below() {
            self.landed.retain(|l| l.end >= d);
        }
        if self.landed.is_empty() {
            self.landed_end = None;
        }
    }

    /// Pauses on the record at `offset` until a later try; the wait before it.
    pub(super) fn wait_on(&mut self, offset: i64, reason: &'static str) -> Duration {
        let backoff = match self.retry {
            Some((o, b)) if o == offset => (b * 2).min(LONGEST_RETRY),
            _ => FIRST_RETRY,
        };
        self.retry = Some((offset, backoff));
        self.waiting = Some(Waiting {
            offset,
            retry_at: Instant::now() + backoff,
            reason,
        });
        backoff
    }

    /// The open file that started first (closed first when a new folder needs room).
    pub(super) fn oldest(&self) -> Option<FileKey> {
        self.open
            .iter()
            .min_by_key(|(_, o)| o.start)
            .map(|(k, _)| k.clone())
    }

    /// The open files whose first record is `roll_ms` or more older than `timestamp` (record
    /// time: the same records close the same files whenever they are read).
    pub(super) fn due_by_record_time(&self, timestamp: i64, roll_ms: i64) -> Vec<FileKey> {
        self.open
            .iter()
            .filter(|(_, o)| {
                o.first_timestamp
                    .is_some_and(|f| timestamp.saturating_sub(f) >= roll_ms)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether the partition is paused: on a record to decode or a file to put in place.
    pub(super) fn paused(&self) -> bool {
        self.waiting.is_some() || self.storage.is_some()
    }

    /// Waits for storage to take `file` (the first try failed, or the try after `backoff`).
    pub(super) fn wait_for_storage(
        &mut self,
        file: Encoded,
        backoff: Option<Duration>,
    ) -> Duration {
        let backoff = backoff.map_or(FIRST_RETRY, |b| (b * 2).min(LONGEST_RETRY));
        self.storage = Some(StorageWait {
            file,
            retry_at: Instant::now() + backoff,
            backoff,
        });
        backoff
    }

    /// Drops the open files and a file waiting for storage (revoke, or a file that could not
    /// be encoded); the bytes they held.
    pub(super) fn drop_open(&mut self) -> u64 {
        let bytes = self.open.values().map(|o| o.bytes).sum::<u64>()
            + self.storage.take().map_or(0, |w| w.file.bytes.len() as u64);
        self.open.clear();
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::resume::Holds;

    fn open_file(start: i64, end: i64) -> anyhow::Result<OpenFile> {
        let schema =
            serde_json::json!({"type":"record","name":"R","fields":[{"name":"n","type":"long"}]});
        Ok(OpenFile {
            batch: BatchBuilder::new(std::sync::Arc::new(schema), "t".into(), 0, &[])?,
            fingerprint: 1,
            values: vec![],
            start,
            end,
            bytes: 10,
            opened: Instant::now(),
            first_timestamp: None,
        })
    }

    fn key(v: &str) -> FileKey {
        FileKey {
            partition: PartitionKey::Values,
            values: Some(vec![v.to_string()]),
            fingerprint: 1,
        }
    }

    #[test]
    fn record_time_rolls_only_files_old_enough_and_odd_timestamps_do_not_overflow()
    -> anyhow::Result<()> {
        let mut p = AssignedPartition::new(Resume::default(), Gauge::default());
        let mut a = open_file(0, 0)?;
        a.first_timestamp = Some(1_000);
        let mut b = open_file(1, 1)?;
        b.first_timestamp = Some(50_000);
        p.open.insert(key("a"), a);
        p.open.insert(key("b"), b);
        assert!(p.due_by_record_time(60_999, 60_000).is_empty());
        assert_eq!(p.due_by_record_time(61_000, 60_000), vec![key("a")]);
        assert!(p.due_by_record_time(i64::MIN, 60_000).is_empty());
        assert_eq!(p.due_by_record_time(i64::MAX, i64::MAX).len(), 0);
        Ok(())
    }

    #[test]
    fn waits_on_the_same_record_back_off_and_a_new_record_starts_over() {
        let mut p = AssignedPartition::new(Resume::default(), Gauge::default());
        assert_eq!(p.wait_on(7, "unknown_schema_id"), FIRST_RETRY);
        assert_eq!(p.wait_on(7, "unknown_schema_id"), FIRST_RETRY * 2);
        assert_eq!(p.wait_on(7, "unknown_schema_id"), FIRST_RETRY * 4);
        for _ in 0..10 {
            p.wait_on(7, "unknown_schema_id");
        }
        assert_eq!(p.wait_on(7, "unknown_schema_id"), LONGEST_RETRY);
        assert_eq!(p.wait_on(8, "unknown_schema_id"), FIRST_RETRY);
        assert_eq!(p.waiting.as_ref().map(|w| w.offset), Some(8));
    }

    #[test]
    fn the_commit_point_is_the_oldest_open_files_start() -> anyhow::Result<()> {
        let mut p = AssignedPartition::new(
            Resume {
                next: Some(5),
                landed: vec![],
            },
            Gauge::default(),
        );
        assert_eq!(p.done_below(), Some(5));
        p.open.insert(key("a"), open_file(5, 9)?);
        p.open.insert(key("b"), open_file(6, 10)?);
        p.read(10);
        assert_eq!(p.done_below(), Some(5));
        assert_eq!(p.oldest(), Some(key("a")));
        // `a` lands: its mark is `b`'s start, and so is the commit point.
        p.open.remove(&key("a"));
        assert_eq!(p.mark(9), 6);
        p.add_landed(Landed {
            dir: "k=a".into(),
            holds: Holds::Schema(1),
            start: 5,
            end: 9,
        });
        assert!(p.may_hold(9) && !p.may_hold(10));
        assert!(p.already_written("k=a", 1, 7));
        assert!(!p.already_written("k=b", 1, 7));
        // `b` lands: nothing is open, every record up to 10 is in place, `a`'s file is forgotten.
        p.open.remove(&key("b"));
        assert_eq!(p.mark(10), 11);
        p.add_landed(Landed {
            dir: "k=b".into(),
            holds: Holds::Schema(1),
            start: 6,
            end: 10,
        });
        assert_eq!(p.done_below(), Some(11));
        assert!(!p.may_hold(10));
        Ok(())
    }
}
