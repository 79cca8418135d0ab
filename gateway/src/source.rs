//! Source stage: reads Kafka. Input: the configured topics; output: decoded `Arc<Record>`s
//! handed to the topic's [`TopicHub`]: published to every subscription by the live consumer (one
//! per topic, shared by every client), or delivered to one subscription by a replay reader (for
//! a subscription that starts in the past).
//!
//! The WebSocket path never commits offsets: consumers are assigned partitions explicitly, with
//! no consumer group, and a live consumer starts at each partition's high watermark at the time
//! it is assigned, so "latest" has a definite meaning. Partitions a topic gains later are read
//! from their first record, found within `kafka.partition_refresh_ms`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::decode::Decoder;
use crate::hub::TopicHub;
use crate::kafka::{KafkaClients, KafkaContext};
use crate::log_limit::LogLimiter;
use crate::metrics::{Metrics, TopicLabels};
use crate::record::{RawRecord, Record};

mod replay;
pub use replay::{Followers, ReplayReader, open_replay, run_replay};

/// A Kafka operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The client could not be created (a bad librdkafka property, usually).
    #[error("cannot create Kafka client: {0}")]
    Client(#[source] KafkaError),
    /// A metadata, watermark or offset request failed.
    #[error("Kafka request for topic {topic} failed: {source}")]
    Request {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The topic does not exist (or has no partitions) on the cluster.
    #[error("topic {0} does not exist on the Kafka cluster")]
    NoSuchTopic(String),
    /// A blocking Kafka call's worker thread went away.
    #[error("Kafka request worker failed: {0}")]
    Worker(String),
}

/// The gateway's handle on the Kafka cluster: makes consumers and answers metadata questions.
#[derive(Clone)]
pub struct Kafka {
    clients: KafkaClients,
    admin: Arc<BaseConsumer<KafkaContext>>,
    metrics: Metrics,
    timeout: Duration,
    /// What the last background check ([`Kafka::check_reachable`]) found.
    reachable: Arc<AtomicBool>,
    /// How often a live consumer looks for partitions added to its topic.
    partition_refresh: Duration,
}

impl Kafka {
    /// Connects lazily: nothing is sent until the first request.
    pub fn new(config: &KafkaConfig, metrics: Metrics) -> Result<Self, SourceError> {
        let clients = KafkaClients::new(config, &metrics);
        let admin = clients
            .assigned_consumer("admin")
            .create_with_context(clients.context("admin"))
            .map_err(SourceError::Client)?;
        // A replay reader's settings are its own (its fetch sizes): one is made here, dry, so
        // that a configuration under which replays cannot start is refused at start-up and by
        // `lakewire check`, not at each subscribe that reads the past.
        let replay: BaseConsumer<KafkaContext> = clients
            .replay_consumer("check")
            .create_with_context(clients.context("check-replay"))
            .map_err(SourceError::Client)?;
        drop(replay);
        Ok(Self {
            clients,
            admin: Arc::new(admin),
            metrics,
            timeout: Duration::from_millis(config.request_timeout_ms),
            reachable: Arc::new(AtomicBool::new(false)),
            partition_refresh: Duration::from_millis(config.partition_refresh_ms),
        })
    }

    /// A replay reader's consumer for `topic` (not yet assigned), with a small prefetch.
    pub fn replay_consumer(
        &self,
        topic: &str,
    ) -> Result<StreamConsumer<KafkaContext>, SourceError> {
        let purpose = format!("{topic}-replay");
        self.clients
            .replay_consumer(&purpose)
            .create_with_context(self.clients.context(&purpose))
            .map_err(SourceError::Client)
    }

    /// A consumer for `topic` (not yet assigned).
    pub fn consumer(&self, topic: &str) -> Result<StreamConsumer<KafkaContext>, SourceError> {
        self.clients
            .assigned_consumer(topic)
            .create_with_context(self.clients.context(topic))
            .map_err(SourceError::Client)
    }

    /// Runs a blocking librdkafka call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BaseConsumer<KafkaContext>, Duration) -> T + Send + 'static,
    ) -> Result<T, SourceError> {
        let admin = self.admin.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || f(&admin, timeout))
            .await
            .map_err(|e| SourceError::Worker(e.to_string()))
    }

    /// The partitions of `topic`, sorted.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, SourceError> {
        let name = topic.to_string();
        let md = self
            .blocking(move |c, t| c.fetch_metadata(Some(&name), t))
            .await?
            .map_err(|source| SourceError::Request {
                topic: topic.to_string(),
                source,
            })?;
        let mut parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if parts.is_empty() {
            return Err(SourceError::NoSuchTopic(topic.to_string()));
        }
        parts.sort_unstable();
        Ok(parts)
    }

    /// `(low, high)` watermarks of each partition: the first offset Kafka still holds, and the
    /// offset the next record will get.
    pub async fn watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, (i64, i64)>, SourceError> {
        let name = topic.to_string();
        let parts = partitions.to_vec();
        self.blocking(move |c, t| {
            parts
                .iter()
                .map(|&p| c.fetch_watermarks(&name, p, t).map(|w| (p, w)))
                .collect::<Result<BTreeMap<_, _>, _>>()
        })
        .await?
        .map_err(|source| SourceError::Request {
            topic: topic.to_string(),
            source,
        })
    }

    /// Per partition, the first offset whose timestamp is at or after `ms`; the high watermark
    /// where there is none.
    pub async fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[i32],
        ms: i64,
    ) -> Result<BTreeMap<i32, i64>, SourceError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                .map_err(|source| SourceError::Request {
                    topic: topic.to_string(),
                    source,
                })?;
        }
        let found = self
            .blocking(move |c, t| c.offsets_for_times(tpl, t))
            .await?
            .map_err(|source| SourceError::Request {
                topic: topic.to_string(),
                source,
            })?;
        let marks = self.watermarks(topic, partitions).await?;
        let mut out = BTreeMap::new();
        for e in found.elements_for_topic(topic) {
            let high = marks.get(&e.partition()).map_or(0, |w| w.1);
            let offset = match e.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => high,
            };
            out.insert(e.partition(), offset);
        }
        Ok(out)
    }

    /// True when the cluster answers a metadata request.
    async fn answers(&self) -> bool {
        matches!(
            self.blocking(|c, t| c.fetch_metadata(None, t.min(Duration::from_secs(2))))
                .await,
            Ok(Ok(_))
        )
    }

    /// Whether the cluster answered the last background check (false before the first).
    /// `/readyz` reads this: a probe costs no request to Kafka, however often it comes.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Asks the cluster every `every` whether it answers, until `cancel`; see
    /// [`Kafka::reachable`].
    pub async fn check_reachable(self, every: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let up = tokio::select! {
                _ = cancel.cancelled() => return,
                up = self.answers() => up,
            };
            if up != self.reachable.swap(up, Ordering::Relaxed) {
                tracing::info!(reachable = up, "Kafka cluster reachability changed");
            }
            self.metrics.kafka_reachable.set(i64::from(up));
        }
    }
}

fn raw<'a>(m: &'a BorrowedMessage<'a>) -> RawRecord<'a> {
    RawRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key(),
        payload: m.payload(),
        headers: m.headers(),
    }
}

/// Assigns `consumer` to `topic`'s partitions, each at the given next offset.
fn assign_at(
    consumer: &StreamConsumer<KafkaContext>,
    topic: &str,
    offsets: impl Iterator<Item = (i32, i64)>,
) -> Result<(), SourceError> {
    let failed = |source| SourceError::Request {
        topic: topic.to_string(),
        source,
    };
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(failed)?;
    }
    consumer.assign(&tpl).map_err(failed)
}

/// Turns what a consumer returns into decoded records, counting (and logging at a limited rate)
/// what it read, what failed to decode and the consumer's errors.
struct RecordIntake {
    topic: String,
    /// Copy undecodable records to the topic's dead-letter topic (the live consumer does; a
    /// replay, which reads them again, does not).
    dead_letters: bool,
    decoder: Arc<Decoder>,
    metrics: Metrics,
    read: Counter,
    errors: Counter,
    limiter: LogLimiter,
}

impl RecordIntake {
    fn new(decoder: Arc<Decoder>, metrics: &Metrics, read: &Family<TopicLabels, Counter>) -> Self {
        let topic = decoder.topic().to_string();
        Self {
            read: Metrics::topic_counter(read, &topic),
            errors: Metrics::topic_counter(&metrics.kafka_errors, &topic),
            topic,
            dead_letters: true,
            decoder,
            metrics: metrics.clone(),
            limiter: LogLimiter::default(),
        }
    }

    /// An intake whose undecodable records are counted, not dead-lettered (a replay: the live
    /// reader copied them; a live reader beside the sink: the sink copies them).
    fn without_dead_letters(mut self) -> Self {
        self.dead_letters = false;
        self
    }

    /// The decoded record, or `None` when there is none to pass on (counted and logged). Waits
    /// while a schema it needs cannot be fetched.
    async fn take(&self, msg: KafkaResult<BorrowedMessage<'_>>) -> Option<Arc<Record>> {
        let topic = self.topic.as_str();
        match msg {
            Ok(m) => {
                self.read.inc();
                let raw = raw(&m);
                self.decoder.prepare(&raw).await;
                match self.decoder.decode(&raw) {
                    Ok(record) => Some(Arc::new(record)),
                    Err(e) => {
                        self.metrics.decode_error(topic, e.reason());
                        if let Some(held) = self.limiter.allow() {
                            tracing::warn!(
                                topic,
                                partition = m.partition(),
                                offset = m.offset(),
                                reason = e.reason(),
                                held_back = held,
                                "skipping undecodable record: {e}"
                            );
                        }
                        if self.dead_letters {
                            self.decoder.dead_letter(&raw, &e);
                        }
                        None
                    }
                }
            }
            Err(e) => {
                // Errors here are per fetch (the broker went away, a partition moved);
                // librdkafka keeps retrying on its own, so the consumer stays.
                self.errors.inc();
                if let Some(held) = self.limiter.allow() {
                    tracing::warn!(topic, error = %e, held_back = held, "Kafka consume error");
                }
                None
            }
        }
    }
}

/// Holds a consumer and drops it on the blocking pool: librdkafka's close waits for its
/// threads and its broker connections, which would hold a runtime thread.
struct OffRuntimeDrop<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Drop for OffRuntimeDrop<T> {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(c))),
                Err(_) => drop(c),
            }
        }
    }
}

/// At most this many records the live consumer has already received are published together.
const LIVE_BATCH: usize = 256;

/// Runs a topic's live consumer until `cancel`: waits for the topic to exist, assigns every
/// partition at its high watermark, then decodes and publishes each record to `hub`. Every
/// `kafka.partition_refresh_ms` it looks the topic's partitions up again; a partition added
/// since is read from its first record and handed to the subscriptions (see [`Followers`]).
/// With `dead_letters` false it only counts undecodable records: the sink of the same process
/// reads the topic too (every record, from where it resumes) and copies them.
pub async fn run_live(
    kafka: Kafka,
    decoder: Arc<Decoder>,
    hub: Arc<TopicHub>,
    followers: Followers,
    dead_letters: bool,
    cancel: CancellationToken,
) {
    let topic = hub.name().to_string();
    let metrics = kafka.metrics.clone();
    let ready = Metrics::topic_gauge(&metrics.source_ready, &topic);
    let limiter = LogLimiter::default();
    let mut backoff = Duration::from_millis(250);
    let consumer = loop {
        let attempt = async {
            let consumer = kafka.consumer(&topic)?;
            let partitions = kafka.partitions(&topic).await?;
            let marks = kafka.watermarks(&topic, &partitions).await?;
            let at: BTreeMap<i32, i64> = marks.iter().map(|(&p, &(_, high))| (p, high)).collect();
            assign_at(&consumer, &topic, at.iter().map(|(&p, &o)| (p, o)))?;
            Ok::<_, SourceError>((consumer, at))
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok((consumer, at)) => {
                tracing::info!(topic, ?at, "live consumer assigned");
                hub.set_assigned(Some(at));
                ready.set(1);
                break consumer;
            }
            Err(e) => {
                if limiter.allow().is_some() {
                    tracing::warn!(topic, error = %e, retry_in = ?backoff, "topic not available yet");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    let mut reader = RecordIntake::new(decoder, &metrics, &metrics.kafka_records);
    if !dead_letters {
        reader = reader.without_dead_letters();
    }
    let mut batch: Vec<Arc<Record>> = Vec::with_capacity(LIVE_BATCH);
    // The lookups run in a task of their own: a slow metadata answer never holds up records.
    let (found_tx, mut found) = tokio::sync::watch::channel(Vec::new());
    let lookups = tokio::spawn(look_up_partitions(
        kafka.clone(),
        topic.clone(),
        found_tx,
        cancel.child_token(),
    ));
    let mut watching = true;
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = found.changed(), if watching => {
                match changed {
                    Ok(()) => {
                        let partitions = found.borrow_and_update().clone();
                        add_partitions(&kafka, &consumer, &hub, &followers, &partitions, &limiter)
                            .await;
                    }
                    Err(_) => watching = false,
                }
                continue;
            }
            m = async { reader.take(consumer.recv().await).await } => m,
        };
        batch.extend(first);
        // What the consumer already holds (the rest of a fetch) goes out with it: clients get
        // one wake-up and one frame for the lot instead of one per record. A `recv` that is not
        // ready has taken nothing, so dropping it loses nothing.
        while batch.len() < LIVE_BATCH {
            let Some(m) = consumer.recv().now_or_never() else {
                break;
            };
            batch.extend(reader.take(m).await);
        }
        if !batch.is_empty() {
            if let Some(t) = batch[0].timestamp {
                metrics
                    .live_receive_delay_seconds
                    .observe(crate::metrics::since_timestamp(t));
            }
            let started = std::time::Instant::now();
            hub.deliver_live(std::mem::replace(
                &mut batch,
                Vec::with_capacity(LIVE_BATCH),
            ))
            .await;
            metrics
                .live_publish_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }
    lookups.abort();
    hub.set_assigned(None);
    ready.set(0);
}

/// Every `kafka.partition_refresh_ms`, the partitions of `topic`, sent to the live consumer.
async fn look_up_partitions(
    kafka: Kafka,
    topic: String,
    found: tokio::sync::watch::Sender<Vec<i32>>,
    cancel: CancellationToken,
) {
    let limiter = LogLimiter::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(kafka.partition_refresh) => {}
        }
        match kafka.partitions(&topic).await {
            Ok(partitions) => {
                if found.send(partitions).is_err() {
                    return;
                }
            }
            Err(e) => {
                if limiter.allow().is_some() {
                    tracing::warn!(topic, error = %e, "looking up the topic's partitions failed");
                }
            }
        }
    }
}

/// Assigns the live consumer to those of `partitions` it does not read yet, each from its low
/// watermark (the partition is new: nothing of it may be missed), and hands them to `hub` and
/// its followers. A failure is logged; the next lookup tries again.
async fn add_partitions(
    kafka: &Kafka,
    consumer: &StreamConsumer<KafkaContext>,
    hub: &TopicHub,
    followers: &Followers,
    partitions: &[i32],
    limiter: &LogLimiter,
) {
    let topic = hub.name();
    let known = hub.published_next();
    let added: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|p| !known.contains_key(p))
        .collect();
    if added.is_empty() {
        return;
    }
    let assigned = async {
        let marks = kafka.watermarks(topic, &added).await?;
        let at: BTreeMap<i32, i64> = marks.iter().map(|(&p, &(low, _))| (p, low)).collect();
        let mut tpl = TopicPartitionList::new();
        let failed = |source| SourceError::Request {
            topic: topic.to_string(),
            source,
        };
        for (&p, &o) in &at {
            tpl.add_partition_offset(topic, p, Offset::Offset(o))
                .map_err(failed)?;
        }
        consumer.incremental_assign(&tpl).map_err(failed)?;
        Ok::<_, SourceError>(at)
    };
    match assigned.await {
        Ok(at) => {
            tracing::info!(%topic, ?at, "topic gained partitions; reading them from the start");
            followers.add_partitions(hub, &at);
        }
        Err(e) => {
            if limiter.allow().is_some() {
                tracing::warn!(%topic, error = %e, ?added, "cannot assign the topic's new partitions");
            }
        }
    }
}

/// Every few seconds, sets `lakewire_consumer_lag{topic,partition}`: the high watermark less the
/// live consumer's position.
pub async fn report_lag(kafka: Kafka, hub: Arc<TopicHub>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let position = hub.published_next();
        if position.is_empty() {
            continue;
        }
        let parts: Vec<i32> = position.keys().copied().collect();
        if let Ok(marks) = kafka.watermarks(hub.name(), &parts).await {
            for (p, (_, high)) in marks {
                let lag = high - position.get(&p).copied().unwrap_or(high);
                kafka
                    .metrics
                    .consumer_lag
                    .get_or_create(&crate::metrics::PartitionLabels {
                        topic: hub.name().to_string(),
                        partition: p,
                    })
                    .set(lag.max(0));
            }
        }
    }
}

#[cfg(test)]
mod tests;
