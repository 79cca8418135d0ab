//! Hub (fan-out) stage: hands each decoded record of a topic to every subscription on it, through
//! each client's bounded queue ([`queue`]). Input: `Arc<Record>` from a topic's source; output:
//! rendered records ([`Delivery`]) in [`ClientQueue`]s, drained by the sessions.
//!
//! Subscriptions are grouped by [`Shape`] (filter + projection): a record is filtered and
//! serialized once per distinct shape, and the resulting bytes are shared by every client of that
//! shape. A full queue never blocks the source: the queue's slow-client policy applies instead.
//!
//! A subscription that starts in the past is fed by its own replay reader, whose records also
//! go through the hub ([`TopicHub::deliver_replayed`]), until, partition by partition, the
//! reader catches up with what the live consumer has published; from then on the live consumer
//! feeds it ([`TopicHub::try_go_live`]). The switch happens under the hub's write lock at an
//! exact offset, so there is no gap and no duplicate.

pub mod queue;
mod render;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use cel::Env;
use tokio::sync::watch;

use crate::deflate::Chunk;
use crate::filter::{FilterIndex, Shape};
use crate::metrics::Metrics;
use crate::record::Record;

pub use self::queue::{ChunkAt, ClientQueue, Delivery, Next, Subscription};
#[cfg(test)]
use self::render::INLINE_STEPS;
pub use self::render::Renderer;

/// Records of a group per shared [`Chunk`] at most: a `records` frame of
/// `websocket.max_records_per_frame` (256 by default) is a few whole chunks.
const CHUNK_RECORDS: usize = 64;
use self::render::{Plan, Rendered};

/// The subscriptions of one shape.
#[derive(Debug)]
struct Group {
    shape: Arc<Shape>,
    subs: Vec<Arc<Subscription>>,
}

/// How many times a hand-over that finds shapes subscribed since its batch was planned renders
/// them off the topic's lock and tries again. Past that (subscribes arriving faster than
/// batches render) the newest are rendered under the lock, so a hand-over always ends.
const LATE_ROUNDS: usize = 8;

#[derive(Debug, Default)]
struct HubState {
    /// The groups by id; ids grow with each new shape, so this is subscription order.
    groups: BTreeMap<u64, Group>,
    by_key: HashMap<String, u64>,
    /// Per connection, the groups its subscriptions are in, with how many of them each.
    by_conn: HashMap<u64, HashMap<u64, u32>>,
    /// The groups' filters, indexed: which groups a record may match.
    index: FilterIndex<u64>,
    next_id: u64,
    /// Per partition, the offset after the last record the live consumer published (starting
    /// at the offset it was assigned at).
    published_next: BTreeMap<i32, i64>,
}

/// The live fan-out of one topic.
pub struct TopicHub {
    name: Arc<str>,
    state: RwLock<HubState>,
    env: Arc<Env>,
    metrics: Metrics,
    filter_errors: prometheus_client::metrics::counter::Counter,
    /// The partitions the live consumer is assigned to; `None` until it is.
    assigned: watch::Sender<Option<Vec<i32>>>,
    /// The most distinct shapes the topic takes, and one connection holds on it.
    limits: ShapeLimits,
    /// Shapes rendered under the write lock: late to a hand-over more than [`LATE_ROUNDS`]
    /// times running.
    rendered_under_lock: std::sync::atomic::AtomicU64,
}

/// How many distinct shapes (filter + projection) a topic takes: each is evaluated for every
/// record it may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// On the topic in all (`websocket.max_filters_per_topic`).
    pub per_topic: usize,
    /// Held by one connection's subscriptions on the topic
    /// (`websocket.max_filters_per_connection`), so no one connection fills the topic's.
    pub per_connection: usize,
}

impl ShapeLimits {
    /// `n` on the topic, and no limit of its own for one connection.
    pub const fn topic(n: usize) -> Self {
        Self {
            per_topic: n,
            per_connection: usize::MAX,
        }
    }
}

/// A subscription with a new shape on a topic, or for a connection, that has as many as it may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooManyShapes {
    #[error(
        "topic {topic:?} already has {max} distinct filters and projections, the limit (websocket.max_filters_per_topic): use one that is in use, or try again later"
    )]
    Topic { topic: Arc<str>, max: usize },
    #[error(
        "this connection already has {max} distinct filters and projections on topic {topic:?}, the limit (websocket.max_filters_per_connection): reuse one, or unsubscribe one first"
    )]
    Connection { topic: Arc<str>, max: usize },
}

impl std::fmt::Debug for TopicHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicHub")
            .field("name", &self.name)
            .field("subscriptions", &self.subscriber_count())
            .finish_non_exhaustive()
    }
}

impl TopicHub {
    /// A hub for `name` with no subscriptions, not yet assigned.
    pub fn new(name: &str, env: Arc<Env>, metrics: Metrics, limits: ShapeLimits) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            state: RwLock::new(HubState::default()),
            filter_errors: Metrics::topic_counter(&metrics.filter_errors, name),
            env,
            metrics,
            assigned: watch::Sender::new(None),
            limits,
            rendered_under_lock: Default::default(),
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The CEL environment filters on this topic run in.
    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HubState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HubState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a filter that failed on a record (it counts as no match).
    pub fn filter_failed(&self, sub_or_shape: &str, error: &str) {
        self.filter_errors.inc();
        tracing::debug!(topic = %self.name, shape = sub_or_shape, error, "filter failed on a record");
    }

    /// Renders `record` once per shape and hands it to every live subscription of that shape.
    pub fn publish(&self, record: Arc<Record>) {
        self.publish_batch(std::slice::from_ref(&record));
    }

    /// Publishes records (in order) read together from Kafka: each is rendered once per shape
    /// it may match (the filter index's candidates), and each subscription gets its share in
    /// one [`ClientQueue::push_many`]. Renders on the calling thread (see
    /// [`TopicHub::deliver_live`]).
    pub fn publish_batch(&self, records: &[Arc<Record>]) {
        let plan = self.plan(records);
        let rendered = self.render(&plan, records);
        self.commit(plan.covers_below, records, rendered);
    }

    /// Hands a rendered batch over ([`TopicHub::try_commit`]), rendering on this thread, off
    /// the lock, the shapes subscribed since it was planned.
    fn commit(&self, mut covers_below: u64, records: &[Arc<Record>], mut rendered: Rendered) {
        for round in 0..=LATE_ROUNDS {
            let force = round == LATE_ROUNDS;
            let Some(late) = self.try_commit(covers_below, records, &mut rendered, force) else {
                return;
            };
            covers_below = late.covers_below;
            rendered.extend(self.render(&late, records));
        }
    }

    /// Like [`TopicHub::publish_batch`], but a batch whose candidate filters may be costly is
    /// rendered on the blocking pool. Either way the topic's lock is held only to find the
    /// candidates and to hand the rendered records to the queues, not while filters run.
    pub async fn deliver_live(self: &Arc<Self>, records: Vec<Arc<Record>>) {
        let plan = self.plan(&records);
        let mut covers_below = plan.covers_below;
        let records = Arc::new(records);
        let Some(mut rendered) = self.render_budgeted(plan, &records).await else {
            return;
        };
        // Shapes subscribed while the batch rendered are rendered the same way, off the lock,
        // before the hand-over (a round or two at most: subscribing is rare next to
        // publishing).
        for round in 0..=LATE_ROUNDS {
            let force = round == LATE_ROUNDS;
            let Some(late) = self.try_commit(covers_below, &records, &mut rendered, force) else {
                return;
            };
            covers_below = late.covers_below;
            let Some(more) = self.render_budgeted(late, &records).await else {
                return;
            };
            rendered.extend(more);
        }
    }

    /// Hands a rendered batch to the subscriptions, under the write lock: subscribing and the
    /// replay hand-over wait for this, which is what makes the hand-over exact (one publisher
    /// per topic). Groups from id `covers_below` on were added after the batch was planned:
    /// when there are any, nothing is handed over and their plan is returned, to be rendered
    /// off the lock before the next try; with `force`, they are rendered here instead. Groups
    /// gone since are skipped.
    fn try_commit(
        &self,
        covers_below: u64,
        records: &[Arc<Record>],
        rendered: &mut Rendered,
        force: bool,
    ) -> Option<Plan> {
        let mut st = self.write();
        if st.groups.range(covers_below..).next().is_some() {
            if !force {
                let late = st
                    .groups
                    .range(covers_below..)
                    .map(|(id, g)| (*id, g.shape.clone()))
                    .collect();
                return Some(Plan::all(late, records.len(), st.next_id));
            }
            let renderers: &mut Vec<Renderer<'_>> = &mut records
                .iter()
                .map(|r| Renderer::new(r, &self.env))
                .collect();
            for (id, group) in st.groups.range(covers_below..) {
                self.rendered_under_lock.fetch_add(1, Ordering::Relaxed);
                rendered.push((*id, self.render_shape(&group.shape, records, renderers)));
            }
        }
        // In subscription order, as the groups are.
        rendered.sort_by_key(|(id, _)| *id);
        let timestamp = records.first().and_then(|r| r.timestamp);
        for (id, for_group) in rendered.iter() {
            let Some(group) = st.groups.get(id) else {
                continue;
            };
            if for_group.is_empty() {
                continue;
            }
            // Compressing connections share each run of the group's records, compressed once.
            let chunks: Vec<Arc<Chunk>> = if group.subs.iter().any(|s| s.queue.compresses()) {
                for_group
                    .chunks(CHUNK_RECORDS)
                    .map(|run| Chunk::new(run.iter().map(|(b, _, _)| b.clone()).collect()))
                    .collect()
            } else {
                Vec::new()
            };
            for sub in &group.subs {
                let compresses = sub.queue.compresses();
                sub.queue.push_many(
                    for_group
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, p, o))| sub.takes_live(*p, *o))
                        .map(|(i, (bytes, partition, offset))| Delivery {
                            sub: sub.clone(),
                            bytes: bytes.clone(),
                            partition: *partition,
                            offset: *offset,
                            chunk: chunks
                                .get(i / CHUNK_RECORDS)
                                .filter(|_| compresses)
                                .map(|c| ChunkAt {
                                    chunk: c.clone(),
                                    index: (i % CHUNK_RECORDS) as u32,
                                }),
                            timestamp,
                        }),
                );
            }
        }
        for record in records {
            st.published_next
                .insert(record.partition, record.offset + 1);
        }
        None
    }

    /// Shapes rendered under the topic's write lock so far (see [`LATE_ROUNDS`]).
    pub fn rendered_under_lock(&self) -> u64 {
        self.rendered_under_lock.load(Ordering::Relaxed)
    }

    /// Adds a subscription. A live one (`latest`) receives every record published from now on;
    /// one that is not yet live receives records of a partition once its replay reader hands
    /// that partition over.
    /// A subscription with a shape the topic does not have yet is refused when it has
    /// `limits.per_topic` already; one with a shape its connection does not hold yet, when the
    /// connection holds `limits.per_connection`.
    pub fn add(&self, sub: Arc<Subscription>) -> Result<(), TooManyShapes> {
        let mut st = self.write();
        let st = &mut *st;
        let existing = st
            .by_key
            .get(&sub.shape.key)
            .copied()
            .filter(|id| st.groups.contains_key(id));
        let held = st.by_conn.get(&sub.conn);
        let holds = |id: u64| held.is_some_and(|h| h.contains_key(&id));
        if !existing.is_some_and(holds)
            && held.map_or(0, HashMap::len) >= self.limits.per_connection
        {
            return Err(TooManyShapes::Connection {
                topic: self.name.clone(),
                max: self.limits.per_connection,
            });
        }
        let id = match existing {
            Some(id) => id,
            None => {
                if st.groups.len() >= self.limits.per_topic {
                    return Err(TooManyShapes::Topic {
                        topic: self.name.clone(),
                        max: self.limits.per_topic,
                    });
                }
                let id = st.next_id;
                st.next_id += 1;
                st.index.insert(id, sub.shape.filter.as_ref());
                st.by_key.insert(sub.shape.key.clone(), id);
                st.groups.insert(
                    id,
                    Group {
                        shape: sub.shape.clone(),
                        subs: Vec::new(),
                    },
                );
                id
            }
        };
        *st.by_conn
            .entry(sub.conn)
            .or_default()
            .entry(id)
            .or_insert(0) += 1;
        if let Some(g) = st.groups.get_mut(&id) {
            g.subs.push(sub);
        }
        Ok(())
    }

    /// Removes a subscription (no-op when it is not there).
    pub fn remove(&self, sub: &Arc<Subscription>) {
        let mut st = self.write();
        let Some(id) = st.by_key.get(&sub.shape.key).copied() else {
            return;
        };
        let mut found = false;
        let empty = st.groups.get_mut(&id).is_none_or(|g| {
            let before = g.subs.len();
            g.subs.retain(|s| !Arc::ptr_eq(s, sub));
            found = g.subs.len() < before;
            g.subs.is_empty()
        });
        if found {
            if let Some(held) = st.by_conn.get_mut(&sub.conn) {
                if let Some(n) = held.get_mut(&id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        held.remove(&id);
                    }
                }
                if held.is_empty() {
                    st.by_conn.remove(&sub.conn);
                }
            }
        }
        if empty {
            st.groups.remove(&id);
            st.by_key.remove(&sub.shape.key);
            st.index.remove(id);
        }
    }

    /// Live subscriptions on the topic.
    pub fn subscriber_count(&self) -> usize {
        self.read().groups.values().map(|g| g.subs.len()).sum()
    }

    /// Distinct shapes on the topic.
    pub fn shape_count(&self) -> usize {
        self.read().groups.len()
    }

    /// Distinct shapes on the topic whose filter the index cannot place (they are evaluated
    /// for every record).
    pub fn unindexed_count(&self) -> usize {
        self.read().index.unindexed()
    }

    /// The replay reader of `sub` has delivered everything of `partition` before `next`. If the
    /// live consumer has published no further than `next`, the partition switches to live at
    /// `next` and this returns true; the reader must then stop reading that partition.
    pub fn try_go_live(&self, sub: &Subscription, partition: i32, next: i64) -> bool {
        let st = self.write();
        let Some(&published) = st.published_next.get(&partition) else {
            return false;
        };
        if next < published {
            return false;
        }
        let mut live = sub.live_from();
        live.insert(partition, next);
        let all = st
            .published_next
            .iter()
            .all(|(p, published)| live.get(p).is_some_and(|from| from <= published));
        if all {
            // Every partition is live and no later record can fall below its threshold: the
            // per-record check is no longer needed.
            sub.all_live.store(true, Ordering::Release);
        }
        true
    }

    /// Called by the source once it is assigned to `partitions` at these next offsets.
    pub fn set_assigned(&self, at: Option<BTreeMap<i32, i64>>) {
        let partitions = at.as_ref().map(|m| m.keys().copied().collect());
        self.write().published_next = at.unwrap_or_default();
        self.assigned.send_replace(partitions);
    }

    /// The assigned partitions, once the source is assigned.
    pub fn assigned(&self) -> Option<Vec<i32>> {
        self.assigned.borrow().clone()
    }

    /// Per partition, the offset after the last record published.
    pub fn published_next(&self) -> BTreeMap<i32, i64> {
        self.read().published_next.clone()
    }

    /// Waits until the source is assigned, at most `timeout`; returns the partitions if it is.
    pub async fn wait_assigned(&self, timeout: std::time::Duration) -> Option<Vec<i32>> {
        let mut rx = self.assigned.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|a| a.is_some())).await;
        match waited {
            Ok(Ok(a)) => a.clone(),
            _ => None,
        }
    }

    /// The metrics this hub counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Every configured topic's hub, by name.
#[derive(Debug, Default)]
pub struct Hub {
    topics: HashMap<Arc<str>, Arc<TopicHub>>,
}

impl Hub {
    /// A hub for each of `topics`.
    pub fn new<'a>(
        topics: impl IntoIterator<Item = &'a str>,
        metrics: &Metrics,
        limits: ShapeLimits,
    ) -> Self {
        let env = crate::filter::env();
        Self {
            topics: topics
                .into_iter()
                .map(|t| {
                    let hub = TopicHub::new(t, env.clone(), metrics.clone(), limits);
                    (hub.name().clone(), hub)
                })
                .collect(),
        }
    }

    /// The hub of `topic`, if it is configured.
    pub fn topic(&self, topic: &str) -> Option<&Arc<TopicHub>> {
        self.topics.get(topic)
    }

    /// All topic hubs.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicHub>> {
        self.topics.values()
    }
}

#[cfg(test)]
mod tests;
