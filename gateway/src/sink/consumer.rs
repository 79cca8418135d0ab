//! The sink's Kafka consumer: its configuration and its context. Input: the `[kafka]` and
//! `[sink]` settings, and the group's assignments and revocations; output: a consumer that
//! commits only what the worker tells it to, starts each assigned partition at its resume point
//! in storage ([`super::resume`]: storage is the source of truth, not the committed offset), and
//! hands the worker an [`Event`] per rebalance, with the files that may hold records after it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::resume::{self, Against, Marks, Resume};
use super::storage::Storage;
use crate::config::SinkConfig;
use crate::kafka::{ClientLog, KafkaClients};
use crate::metrics::{Metrics, ResumeGapLabels};

/// The assignment strategy of the sink's group unless `[kafka] properties` names one: a
/// rebalance moves only the partitions that change owner, so the others keep their open files
/// (under the eager strategies every rebalance drops every open file of every worker).
const DEFAULT_ASSIGNMENT_STRATEGY: &str = "cooperative-sticky";

/// The sink's group consumer settings, from the shared client factory.
pub(super) fn consumer_config(clients: &KafkaClients, sink: &SinkConfig) -> ClientConfig {
    let mut cc = clients.group_consumer(&sink.group_id, "lakewire-sink");
    if cc.get("partition.assignment.strategy").is_none() {
        cc.set("partition.assignment.strategy", DEFAULT_ASSIGNMENT_STRATEGY);
    }
    cc
}

/// What the rebalance callback tells the worker loop.
pub(super) enum Event {
    Assigned(Vec<(String, i32, Resume)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: logs, and the rebalance handler that resumes from storage.
pub(super) struct SinkContext {
    metrics: Metrics,
    /// librdkafka's logs and errors (counted as `lakewire_kafka_errors_total{topic="_sink"}`).
    log: ClientLog,
    events: Mutex<Vec<Event>>,
    /// The assigned partitions paused because their resume point is above the high watermark.
    paused: Mutex<HashSet<(String, i32)>>,
    storage: Storage,
    /// Topic → table.
    tables: HashMap<String, String>,
    rt: tokio::runtime::Handle,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl SinkContext {
    /// A context for the tables `tables` (topic → table), resuming from `storage`.
    pub(super) fn new(
        log: ClientLog,
        metrics: Metrics,
        storage: Storage,
        tables: HashMap<String, String>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        Self {
            log,
            metrics,
            events: Mutex::new(Vec::new()),
            paused: Mutex::new(HashSet::new()),
            storage,
            tables,
            rt,
        }
    }

    /// The events since the last call, oldest first; `None` if the lock is poisoned.
    pub(super) fn take_events(&self) -> Option<Vec<Event>> {
        self.events.lock().ok().map(|mut e| std::mem::take(&mut *e))
    }

    /// Per topic partition of `tpl` with files in storage, where it resumes.
    fn resume(&self, tpl: &TopicPartitionList) -> HashMap<(String, i32), Resume> {
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
                    let marks = |f: &super::storage::Listed| match self
                        .rt
                        .block_on(self.storage.parquet_key_values(&f.path))
                    {
                        Ok(kv) => Marks::from_footer(Some(&kv), f.name.end),
                        Err(e) => {
                            self.metrics.sink_storage_errors.inc();
                            tracing::warn!(file = %f.path, error = %e, "sink: cannot read a file's footer; its records may be written again");
                            Marks::from_footer(None, f.name.end)
                        }
                    };
                    out.extend(resume::resume_points(&files, marks));
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

    /// Compares partition `p`'s resume point `next` with its watermarks: logged and counted
    /// when outside them. Inside when they cannot be fetched (logged).
    fn against_watermarks(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        p: i32,
        next: i64,
    ) -> Against {
        let (low, high) = match consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(topic, partition = p, error = %e, "sink: cannot fetch the partition's watermarks to check the resume point");
                return Against::Inside;
            }
        };
        let against = Against::watermarks(next, low, high);
        let gap = |kind| {
            self.metrics
                .sink_resume_gaps
                .get_or_create(&ResumeGapLabels {
                    topic: topic.to_string(),
                    kind,
                })
                .inc();
        };
        match against {
            Against::Inside => {}
            Against::Expired { lost } => {
                gap("expired");
                Metrics::topic_counter(&self.metrics.sink_expired_records, topic)
                    .inc_by(lost as u64);
                tracing::error!(
                    topic,
                    partition = p,
                    resume = next,
                    low,
                    lost,
                    "sink: records expired from Kafka before they landed; reading from the oldest one left"
                );
            }
            Against::Ahead { by } => {
                gap("ahead");
                tracing::error!(
                    topic,
                    partition = p,
                    resume = next,
                    high,
                    by,
                    "sink: the files in storage go past the partition's end (topic recreated, or records lost by the broker); the partition is paused: move its files away and restart the worker (docs/configuration.md)"
                );
            }
        }
        against
    }

    /// Records which assigned partitions are paused (`lakewire_sink_paused_partitions`):
    /// `gone` leave the set, then `now` join it.
    fn set_paused(&self, gone: &[(String, i32)], now: Vec<(String, i32)>) {
        if let Ok(mut paused) = self.paused.lock() {
            for k in gone {
                paused.remove(k);
            }
            paused.extend(now);
            self.metrics.sink_paused_partitions.set(paused.len() as i64);
        }
    }

    /// Takes `tpl`'s partitions from the worker and from the assignment. It does not wait for
    /// storage: their open files are dropped, and the next owner reads those records again
    /// from the resume point in storage.
    fn revoke(
        &self,
        base_consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        cooperative: bool,
    ) {
        let revoked = listed(tpl);
        self.metrics
            .sink_revoked_partitions
            .inc_by(revoked.len() as u64);
        self.set_paused(&revoked, Vec::new());
        self.push(Event::Revoked(revoked));
        let done = if cooperative {
            base_consumer.incremental_unassign(tpl)
        } else {
            base_consumer.unassign()
        };
        if let Err(e) = done {
            tracing::error!(error = %e, "sink: unassign failed");
        }
    }

    fn push(&self, e: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(e);
        }
    }
}

/// `tpl`'s partitions as `(topic, partition)`.
fn listed(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for SinkContext {
    /// Under the cooperative protocol `tpl` holds only the partitions that move (added to or
    /// taken from the assignment incrementally); under the eager one, the whole assignment.
    /// Either way the worker's [`Event`]s name exactly the partitions that changed.
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut resume = self.resume(tpl);
                let parts = listed(tpl);
                let mut assigned = Vec::with_capacity(parts.len());
                let mut paused = Vec::new();
                for (topic, p) in parts.iter().cloned() {
                    let mut r = resume.remove(&(topic.clone(), p)).unwrap_or_default();
                    if let Some(n) = r.next {
                        match self.against_watermarks(base_consumer, &topic, p, n) {
                            Against::Inside => {}
                            Against::Expired { lost } => r.next = Some(n + lost),
                            Against::Ahead { .. } => paused.push((topic.clone(), p)),
                        }
                    }
                    if let Some(n) = r.next {
                        if let Err(e) = tpl.set_partition_offset(&topic, p, Offset::Offset(n)) {
                            tracing::warn!(topic, partition = p, error = %e, "sink: cannot set the resume offset");
                        }
                    }
                    tracing::info!(topic, partition = p, resume = ?r.next, files_after = r.landed.len(), "sink: partition assigned");
                    assigned.push((topic, p, r));
                }
                self.push(Event::Assigned(assigned));
                let done = if cooperative {
                    base_consumer.incremental_assign(tpl)
                } else {
                    base_consumer.assign(tpl)
                };
                if let Err(e) = done {
                    tracing::error!(error = %e, "sink: assign failed");
                }
                if !paused.is_empty() {
                    let mut list = TopicPartitionList::new();
                    for (topic, p) in &paused {
                        list.add_partition(topic, *p);
                    }
                    if let Err(e) = base_consumer.pause(&list) {
                        tracing::error!(error = %e, "sink: cannot pause the partitions whose resume point is past their end");
                    }
                }
                self.set_paused(&parts, paused);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(
                    partitions = tpl.count(),
                    lost = base_consumer.assignment_lost(),
                    cooperative,
                    "sink: partitions revoked; their open files dropped"
                );
                self.revoke(base_consumer, tpl, cooperative);
            }
            other => {
                tracing::error!(error = ?other, "sink: rebalance error");
                self.revoke(base_consumer, tpl, cooperative);
            }
        }
    }
}
