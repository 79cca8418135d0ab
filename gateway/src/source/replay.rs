//! Replay readers: a subscription that starts in the past is fed by a reader of its own until it
//! catches up, then handed over to the topic's live consumer partition by partition. Input: the
//! subscription and its start offsets; output: its records, in order, then its hand-over.
//! [`Followers`] keeps, per topic, the subscriptions still replaying, so that a partition the
//! topic gains later is handed over to each of them too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use tokio_util::sync::CancellationToken;

use super::{Kafka, KafkaContext, OffRuntimeDrop, RecordIntake, SourceError, assign_at};
use crate::decode::Decoder;
use crate::hub::{Subscription, TopicHub};

/// Per topic, the subscriptions that did not start live (`from` in the past): the hub delivers
/// a partition's records to such a subscription only from the offset its replay reader handed
/// the partition over at, so a partition the topic gains later must be handed over to each of
/// them, at the offset the live consumer starts it at, before any of its records is published.
/// (A `latest` subscription takes every partition from the start.) One lock orders adding
/// partitions against registering a subscription, so each one learns of a new partition from
/// exactly one side: the live consumer, or its replay plan.
#[derive(Debug, Clone, Default)]
pub struct Followers(Arc<std::sync::Mutex<HashMap<Arc<str>, TopicFollowers>>>);

#[derive(Debug, Default)]
struct TopicFollowers {
    subs: Vec<Weak<Subscription>>,
    /// How many were left at the last clean-up: the next one comes when the list has doubled.
    kept: usize,
}

impl TopicFollowers {
    fn clean_up(&mut self) {
        self.subs
            .retain(|s| s.upgrade().is_some_and(|s| s.is_active()));
        self.kept = self.subs.len();
    }
}

impl Followers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TopicFollowers>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `sub`, which `hub` holds and which is not live from the start; returns, per
    /// partition the live consumer reads now, where it is (empty before it is assigned). A
    /// partition not among these is handed to `sub` by the live consumer once it reads it.
    pub fn follow(&self, hub: &TopicHub, sub: &Arc<Subscription>) -> BTreeMap<i32, i64> {
        let mut all = self.lock();
        let topic = all.entry(hub.name().clone()).or_default();
        if topic.subs.len() >= 2 * topic.kept.max(32) {
            topic.clean_up();
        }
        topic.subs.push(Arc::downgrade(sub));
        hub.published_next()
    }

    /// The live consumer now reads `at` (partition: first offset) too.
    pub(super) fn add_partitions(&self, hub: &TopicHub, at: &BTreeMap<i32, i64>) {
        let mut all = self.lock();
        let mut next = hub.published_next();
        next.extend(at);
        hub.set_assigned(Some(next));
        if let Some(topic) = all.get_mut(hub.name()) {
            topic.clean_up();
            for sub in topic.subs.iter().filter_map(Weak::upgrade) {
                for (&p, &o) in at {
                    // Nothing of `p` is published yet, so this hands it over at `o`.
                    hub.try_go_live(&sub, p, o);
                }
            }
        }
    }
}

/// A replay's own consumer, made before the subscription is confirmed (so a client whose replay
/// cannot start gets an `error` frame, not `subscribed` and then nothing); dropped on the blocking
/// pool (closing a librdkafka consumer waits for its threads).
pub struct ReplayReader(OffRuntimeDrop<StreamConsumer<KafkaContext>>);

/// Creates the consumer of a replay of `topic`.
pub fn open_replay(kafka: &Kafka, topic: &str) -> Result<ReplayReader, SourceError> {
    Ok(ReplayReader(OffRuntimeDrop(Some(
        kafka.replay_consumer(topic)?,
    ))))
}

/// Feeds one subscription from `start` (next offset per partition) with its own reader, at the
/// client's pace (waiting for room in its queue rather than dropping), and hands each partition
/// over to the live consumer as soon as the reader has caught up with it; ends when every
/// partition is live, on `cancel`, or when the client's queue closes.
pub async fn run_replay(
    kafka: Kafka,
    reader: ReplayReader,
    decoder: Arc<Decoder>,
    hub: Arc<TopicHub>,
    sub: Arc<Subscription>,
    start: BTreeMap<i32, i64>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let topic = decoder.topic().to_string();
    // Per partition still replaying: the next offset to deliver.
    let mut next: BTreeMap<i32, i64> = start
        .into_iter()
        .filter(|&(p, o)| !hub.try_go_live(&sub, p, o))
        .collect();
    if next.is_empty() {
        return Ok(());
    }
    let owned = reader.0;
    let Some(consumer) = owned.0.as_ref() else {
        return Ok(());
    };
    assign_at(consumer, &topic, next.iter().map(|(&p, &o)| (p, o)))?;
    // What a replay meets was met by the live consumer first, and dead-lettered then.
    let reader = RecordIntake::new(decoder, &kafka.metrics, &kafka.metrics.kafka_replay_records)
        .without_dead_letters();
    // While the reader sits at the end of the log, the hand-over is retried on this tick.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !next.is_empty() {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {
                next.retain(|&p, &mut o| !hub.try_go_live(&sub, p, o));
                continue;
            }
            m = consumer.recv() => m,
        };
        // Decoding may wait for the schema registry: only cancellation may interrupt it, so a
        // tick never drops a record half-read.
        let record = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = reader.take(msg) => r,
        };
        let Some(record) = record else {
            continue;
        };
        let record = Arc::new(record);
        let p = record.partition;
        // Records of a partition already handed over (read before the hand-over took effect).
        let Some(&expected) = next.get(&p) else {
            continue;
        };
        if record.offset < expected {
            continue;
        }
        let delivered = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ok = hub.deliver_replayed(&sub, &record) => ok,
        };
        if !delivered {
            return Ok(());
        }
        let after = record.offset + 1;
        if hub.try_go_live(&sub, p, after) {
            next.remove(&p);
        } else {
            next.insert(p, after);
        }
    }
    Ok(())
}
