//! Dead letters: undecodable records copied, as they are, to a per-topic dead-letter topic.
//! Input: a raw record and its [`DecodeError`]; output: a Kafka record with the original key,
//! value and timestamp, and the error in headers (`lakewire.error`, `lakewire.error.reason`,
//! `lakewire.source.topic`, `lakewire.source.partition`, `lakewire.source.offset`).
//!
//! Sending never blocks the source: a record that cannot be queued (the producer's queue is
//! full) or that Kafka refuses for good is counted in `lakewire_dead_letter_errors_total` and
//! dropped. Until Kafka confirms a copy it is held ([`DeadLetters::unconfirmed_from`]): the sink
//! commits no offset past it. The producer retries a copy until Kafka takes it
//! (`message.timeout.ms = 0` unless `[kafka] properties` says otherwise).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientContext;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};

use super::DecodeError;
use crate::config::KafkaConfig;
use crate::kafka::{ClientLog, KafkaClients};
use crate::metrics::Metrics;
use crate::record::RawRecord;

/// The dead-letter producer could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the dead-letter producer: {0}")]
pub struct DeadLetterError(#[source] rdkafka::error::KafkaError);

/// Where a copy comes from.
pub struct Source {
    topic: String,
    partition: i32,
    offset: i64,
}

/// The copies Kafka has not confirmed yet: per source topic partition, offset → copies.
#[derive(Default)]
struct Held(Mutex<HashMap<(String, i32), BTreeMap<i64, u32>>>);

impl Held {
    fn hold(&self, s: &Source) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *held
            .entry((s.topic.clone(), s.partition))
            .or_default()
            .entry(s.offset)
            .or_default() += 1;
    }

    fn release(&self, s: &Source) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (s.topic.clone(), s.partition);
        if let Some(offsets) = held.get_mut(&key) {
            if let Some(n) = offsets.get_mut(&s.offset) {
                *n -= 1;
                if *n == 0 {
                    offsets.remove(&s.offset);
                }
            }
            if offsets.is_empty() {
                held.remove(&key);
            }
        }
    }

    fn lowest(&self, topic: &str, partition: i32) -> Option<i64> {
        let held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.get(&(topic.to_string(), partition))?
            .keys()
            .next()
            .copied()
    }
}

/// Counts deliveries per dead-letter topic and releases the copies Kafka answered for; logs
/// through the shared [`ClientLog`].
pub struct DeliveryCounter {
    metrics: Metrics,
    log: ClientLog,
    held: Arc<Held>,
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext for DeliveryCounter {
    /// The source record, for the metric label and the hold.
    type DeliveryOpaque = Box<Source>;

    fn delivery(&self, result: &DeliveryResult<'_>, source: Self::DeliveryOpaque) {
        self.held.release(&source);
        match result {
            Ok(_) => {
                Metrics::topic_counter(&self.metrics.dead_letter_records, &source.topic).inc();
            }
            Err((e, _)) => {
                self.failed(&source.topic).inc();
                tracing::error!(topic = source.topic.as_str(), partition = source.partition, offset = source.offset, error = %e, "dead-letter record not delivered: Kafka refused it for good");
            }
        }
    }
}

impl DeliveryCounter {
    fn failed(&self, topic: &str) -> Counter {
        Metrics::topic_counter(&self.metrics.dead_letter_errors, topic)
    }
}

/// The producer of dead-letter records, shared by every topic's decoder.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryCounter>,
    held: Arc<Held>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetters")
    }
}

impl DeadLetters {
    /// A producer on the configured cluster (it connects lazily).
    pub fn new(config: &KafkaConfig, metrics: Metrics) -> Result<Self, DeadLetterError> {
        let clients = KafkaClients::new(config, &metrics);
        let held = Arc::new(Held::default());
        let mut cc = clients.producer("lakewire-dead-letters", 20);
        if cc.get("message.timeout.ms").is_none() {
            // Retried until Kafka takes it: a copy the sink waits for is never given up on.
            cc.set("message.timeout.ms", "0");
        }
        let producer = cc
            .create_with_context(DeliveryCounter {
                log: clients.log("dead-letters"),
                metrics,
                held: held.clone(),
            })
            .map_err(DeadLetterError)?;
        Ok(Self { producer, held })
    }

    /// The lowest offset of `topic`'s `partition` whose copy Kafka has not confirmed yet.
    pub fn unconfirmed_from(&self, topic: &str, partition: i32) -> Option<i64> {
        self.held.lowest(topic, partition)
    }

    /// Queues a copy of `raw` (read from `source`) to `to`, with `error` in its headers.
    pub fn send(&self, to: &str, source: &str, raw: &RawRecord<'_>, error: &DecodeError) {
        let message = error.to_string();
        let partition = raw.partition.to_string();
        let offset = raw.offset.to_string();
        let mut headers = OwnedHeaders::new();
        for (key, value) in [
            ("lakewire.error", message.as_str()),
            ("lakewire.error.reason", error.reason()),
            ("lakewire.source.topic", source),
            ("lakewire.source.partition", partition.as_str()),
            ("lakewire.source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let from = Source {
            topic: source.to_string(),
            partition: raw.partition,
            offset: raw.offset,
        };
        self.held.hold(&from);
        let mut record: BaseRecord<'_, [u8], [u8], Box<Source>> =
            BaseRecord::with_opaque_to(to, Box::new(from)).headers(headers);
        if let Some(k) = raw.key {
            record = record.key(k);
        }
        if let Some(p) = raw.payload {
            record = record.payload(p);
        }
        if let Some(t) = raw.timestamp {
            record = record.timestamp(t);
        }
        if let Err((e, record)) = self.producer.send(record) {
            self.held.release(&record.delivery_opaque);
            self.producer.context().failed(source).inc();
            tracing::warn!(topic = source, to, error = %e, "cannot queue a dead-letter record");
        }
    }
}
