//! Kafka clients: the one place that turns `[kafka]` into librdkafka settings, for every client
//! Lakewire makes (the WebSocket path's assigned consumers and its metadata client, the sink's
//! group consumer, the dead-letter producer, the demo's producer and admin client), and the client context they
//! share. Input: [`KafkaConfig`]; output: a [`ClientConfig`] to create a client from, and a
//! [`ClientLog`] for its context.
//!
//! Every client's librdkafka logs and errors go through [`ClientLog`]: counted in
//! `lakewire_kafka_errors_total{topic=<label>}` and logged through `tracing` at a limited rate,
//! since librdkafka repeats the same warning for every retry while a broker is away.

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;

/// Makes the settings of every Kafka client from `[kafka]`. The `properties` of `[kafka]` are
/// applied last, so they win over Lakewire's defaults.
#[derive(Debug, Clone)]
pub struct KafkaClients {
    config: KafkaConfig,
    metrics: Metrics,
}

impl KafkaClients {
    /// The factory for the cluster `config` names.
    pub fn new(config: &KafkaConfig, metrics: &Metrics) -> Self {
        Self {
            config: config.clone(),
            metrics: metrics.clone(),
        }
    }

    /// The `[kafka]` section.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The metrics the clients' contexts count into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The log and error sink of a client named `label` (the `topic` label of its errors).
    pub fn log(&self, label: &str) -> ClientLog {
        ClientLog::new(label, &self.metrics)
    }

    /// The context of a client that needs nothing else of its context than logging.
    pub fn context(&self, label: &str) -> KafkaContext {
        KafkaContext(self.log(label))
    }

    /// A consumer that Lakewire assigns partitions to itself and that never commits (the
    /// WebSocket path: live and replay readers, metadata requests), named after `purpose`.
    pub fn assigned_consumer(&self, purpose: &str) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.config.brokers)
            // Partitions are assigned explicitly; the group id only names the client in broker
            // logs.
            .set("group.id", format!("lakewire-ws-{purpose}"))
            .set("client.id", format!("lakewire-{purpose}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("socket.keepalive.enable", "true");
        self.with_properties(cc)
    }

    /// A replay reader: an assigned consumer with a small prefetch (librdkafka's default queues
    /// up to 64 MiB and 100,000 records per consumer), set after `[kafka]`'s properties so one
    /// connection's replays stay small whatever the live consumers use. A fetch is never below
    /// `message.max.bytes` nor above `receive.message.max.bytes` less 512 (librdkafka refuses
    /// such a consumer): a cluster of large records gets replay fetches of its largest record.
    pub fn replay_consumer(&self, purpose: &str) -> ClientConfig {
        const SMALL_FETCH: u64 = 2 * 1024 * 1024;
        let mut cc = self.assigned_consumer(purpose);
        let number = |key: &str| cc.get(key).and_then(|v| v.trim().parse::<u64>().ok());
        let mut fetch = SMALL_FETCH.max(number("message.max.bytes").unwrap_or(0));
        if let Some(cap) = number("receive.message.max.bytes") {
            // librdkafka wants room for a response's framing above a fetch.
            fetch = fetch.min(cap.saturating_sub(512));
        }
        cc.set("queued.max.messages.kbytes", (fetch / 1024).to_string())
            .set("queued.min.messages", "1000")
            .set("fetch.max.bytes", fetch.to_string());
        cc
    }

    /// A member of the consumer group `group_id` that commits its offsets itself (the sink).
    pub fn group_consumer(&self, group_id: &str, client_id: &str) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.config.brokers)
            .set("group.id", group_id)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("socket.keepalive.enable", "true")
            // librdkafka (2.2+) waits this long before fetching a partition again once its
            // local queue is over `queued.min.messages`; at the default 1,000 ms a sink catching
            // up on a backlog idled most of the time (130 k records/s at 23% of a core,
            // `wsload sink`), at 10 ms it is CPU-bound (510 k/s).
            .set("fetch.queue.backoff.ms", "10");
        self.with_properties(cc)
    }

    /// A producer named `client_id` that batches for `linger_ms`.
    pub fn producer(&self, client_id: &str, linger_ms: u32) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.config.brokers)
            .set("client.id", client_id)
            .set("linger.ms", linger_ms.to_string());
        self.with_properties(cc)
    }

    /// An admin client (creating topics) named `client_id`.
    pub fn admin(&self, client_id: &str) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.config.brokers)
            .set("client.id", client_id);
        self.with_properties(cc)
    }

    fn with_properties(&self, mut cc: ClientConfig) -> ClientConfig {
        for (k, v) in &self.config.properties {
            cc.set(k, v);
        }
        cc
    }
}

/// Receives one client's librdkafka logs and errors: errors counted, warnings and errors logged
/// at a limited rate through `tracing`. Contexts with more to do (the sink's rebalance handler,
/// the dead-letter delivery counter) hold one and pass their logs to it.
#[derive(Debug)]
pub struct ClientLog {
    label: String,
    metrics: Metrics,
    limiter: LogLimiter,
}

impl ClientLog {
    /// The log of a client named `label`, counting its errors into `metrics`.
    pub fn new(label: &str, metrics: &Metrics) -> Self {
        Self {
            label: label.to_string(),
            metrics: metrics.clone(),
            limiter: LogLimiter::default(),
        }
    }

    /// What [`ClientContext::log`] receives.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                if let Some(held) = self.limiter.allow() {
                    tracing::warn!(client = %self.label, facility = fac, held_back = held, "librdkafka: {message}");
                }
            }
            _ => tracing::debug!(client = %self.label, facility = fac, "librdkafka: {message}"),
        }
    }

    /// What [`ClientContext::error`] receives.
    pub fn error(&self, error: KafkaError, reason: &str) {
        Metrics::topic_counter(&self.metrics.kafka_errors, &self.label).inc();
        if let Some(held) = self.limiter.allow() {
            tracing::warn!(client = %self.label, held_back = held, %error, "Kafka client error: {reason}");
        }
    }
}

/// The context of a client that only logs: a [`ClientLog`].
#[derive(Debug)]
pub struct KafkaContext(ClientLog);

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ConsumerContext for KafkaContext {}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;

    use super::*;
    use crate::config::Config;

    /// Issue 26 item 9: a replay reader of a cluster whose records may be large (`message.max.bytes`
    /// raised in `[kafka] properties`) or whose responses are capped lower
    /// (`receive.message.max.bytes`) can be created (before: librdkafka refused its 2 MiB
    /// `fetch.max.bytes`, so every replay failed while the live consumers worked).
    #[test]
    fn a_replay_reader_fetches_at_least_the_largest_message() -> anyhow::Result<()> {
        let config = Config::from_toml_and_env(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n\n[kafka.properties]\n\"message.max.bytes\" = \"10485760\"\n",
            &[],
            "test",
        )?;
        let clients = KafkaClients::new(&config.kafka, &Metrics::default());
        let cc = clients.replay_consumer("t-replay");
        assert_eq!(cc.get("fetch.max.bytes"), Some("10485760"));
        cc.create::<BaseConsumer>()?;
        // A cap on what one response may hold: the replay fetch stays under it.
        let config = Config::from_toml_and_env(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n\n[kafka.properties]\n\"receive.message.max.bytes\" = \"1100000\"\n\"fetch.max.bytes\" = \"1050000\"\n",
            &[],
            "test",
        )?;
        KafkaClients::new(&config.kafka, &Metrics::default())
            .assigned_consumer("t")
            .create::<BaseConsumer>()
            .map_err(|e| anyhow::anyhow!("live: {e}"))?;
        KafkaClients::new(&config.kafka, &Metrics::default())
            .replay_consumer("t-replay")
            .create::<BaseConsumer>()?;
        // Small records: the small prefetch stays.
        let config =
            Config::from_toml_and_env("[kafka]\nbrokers = \"127.0.0.1:1\"\n", &[], "test")?;
        let cc = KafkaClients::new(&config.kafka, &Metrics::default()).replay_consumer("t-replay");
        assert_eq!(cc.get("fetch.max.bytes"), Some("2097152"));
        cc.create::<BaseConsumer>()?;
        Ok(())
    }
}
