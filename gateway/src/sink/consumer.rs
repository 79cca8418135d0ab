//! The sink's Kafka consumer: its configuration and its context. Input: the `[kafka]` and
//! `[sink]` settings, and the group's assignments and revocations; output: a consumer that
//! commits only what the worker tells it to, starts each assigned partition after the highest
//! file end offset in storage (storage is the source of truth, not the committed offset), and
//! hands the worker an [`Event`] per rebalance.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::storage::{self, Storage};
use crate::config::SinkConfig;
use crate::kafka::{ClientLog, KafkaClients};
use crate::metrics::Metrics;

/// The sink's group consumer settings, from the shared client factory.
pub(super) fn consumer_config(clients: &KafkaClients, sink: &SinkConfig) -> ClientConfig {
    let mut cc = clients.group_consumer(&sink.group_id, "lakewire-sink");
    // The rebalance handler assigns and revokes whole assignments (eager protocol).
    cc.set("partition.assignment.strategy", "range,roundrobin");
    cc
}

/// What the rebalance callback tells the worker loop.
pub(super) enum Event {
    Assigned(Vec<(String, i32, Option<i64>)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: logs, and the rebalance handler that resumes from storage.
pub(super) struct SinkContext {
    metrics: Metrics,
    /// librdkafka's logs and errors (counted as `lakewire_kafka_errors_total{topic="_sink"}`).
    log: ClientLog,
    events: Mutex<Vec<Event>>,
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
            storage,
            tables,
            rt,
        }
    }

    /// The events since the last call, oldest first; `None` if the lock is poisoned.
    pub(super) fn take_events(&self) -> Option<Vec<Event>> {
        self.events.lock().ok().map(|mut e| std::mem::take(&mut *e))
    }

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
