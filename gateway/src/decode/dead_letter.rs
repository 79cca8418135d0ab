//! Dead letters: undecodable records copied, as they are, to a per-topic dead-letter topic.
//! Input: a raw record and its [`DecodeError`]; output: a Kafka record with the original key,
//! value and timestamp, and the error in headers (`lakewire.error`, `lakewire.error.reason`,
//! `lakewire.source.topic`, `lakewire.source.partition`, `lakewire.source.offset`).
//!
//! Sending never blocks the source: a record that cannot be queued (the producer's queue is
//! full) or that Kafka refuses is counted in `lakewire_dead_letter_errors_total` and dropped.

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

/// Counts deliveries per dead-letter topic; logs through the shared [`ClientLog`].
pub struct DeliveryCounter {
    metrics: Metrics,
    log: ClientLog,
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
    /// The source topic, for the metric label.
    type DeliveryOpaque = Box<String>;

    fn delivery(&self, result: &DeliveryResult<'_>, topic: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                Metrics::topic_counter(&self.metrics.dead_letter_records, &topic).inc();
            }
            Err((e, _)) => {
                self.failed(&topic).inc();
                tracing::warn!(topic = topic.as_str(), error = %e, "dead-letter record not delivered");
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
        let producer = clients
            .producer("lakewire-dead-letters", 20)
            .create_with_context(DeliveryCounter {
                log: clients.log("dead-letters"),
                metrics,
            })
            .map_err(DeadLetterError)?;
        Ok(Self { producer })
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
        let mut record: BaseRecord<'_, [u8], [u8], Box<String>> =
            BaseRecord::with_opaque_to(to, Box::new(source.to_string())).headers(headers);
        if let Some(k) = raw.key {
            record = record.key(k);
        }
        if let Some(p) = raw.payload {
            record = record.payload(p);
        }
        if let Some(t) = raw.timestamp {
            record = record.timestamp(t);
        }
        if let Err((e, _)) = self.producer.send(record) {
            self.producer.context().failed(source).inc();
            tracing::warn!(topic = source, to, error = %e, "cannot queue a dead-letter record");
        }
    }
}
