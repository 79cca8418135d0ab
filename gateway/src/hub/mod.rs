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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use cel::Env;
use tokio::sync::watch;

use crate::filter::{FilterIndex, Shape};
use crate::metrics::Metrics;
use crate::record::Record;

pub use self::queue::{ClientQueue, Delivery, Next, Subscription};

/// The subscriptions of one shape.
#[derive(Debug)]
struct Group {
    shape: Arc<Shape>,
    subs: Vec<Arc<Subscription>>,
    /// The most evaluation steps its filter takes per record (see [`crate::filter`]).
    steps: u64,
}

/// A batch whose candidate filters may take more steps than this in all is rendered on the
/// blocking pool, off the runtime threads: a costly filter slows its own topic, not `/healthz`
/// or other sessions. (A step is well under a microsecond: this is about a millisecond.)
const INLINE_STEPS: u64 = 20_000;

/// A batch rendered: per group (by id), the records it sends (bytes, partition, offset), in
/// order.
type Rendered = Vec<(u64, Vec<(Bytes, i32, i64)>)>;

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

/// What a batch is rendered for: the groups the index found as candidates for its records,
/// and per record which of them (the others do not match it).
struct Plan {
    groups: Vec<(u64, Arc<Shape>)>,
    /// Per record, indices into `groups`.
    per_record: Vec<Vec<u32>>,
    /// The most evaluation steps rendering takes in all.
    steps: u64,
    /// Groups with an id from this one were not on the topic when the plan was made.
    covers_below: u64,
}

impl Plan {
    /// Every group of `groups` for every one of `records` records (groups subscribed after a
    /// plan was made: their filters decide alone).
    fn all(groups: Vec<(u64, Arc<Shape>, u64)>, records: usize, covers_below: u64) -> Self {
        let steps = groups
            .iter()
            .fold(0u64, |acc, g| acc.saturating_add(g.2))
            .saturating_mul(records as u64);
        let every: Vec<u32> = (0..groups.len() as u32).collect();
        Plan {
            groups: groups
                .into_iter()
                .map(|(id, shape, _)| (id, shape))
                .collect(),
            per_record: vec![every; records],
            steps,
            covers_below,
        }
    }
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

/// Renders a record for each shape, once, sharing the CEL context and the whole-record JSON.
pub struct Renderer<'r> {
    record: &'r Record,
    env: &'r Arc<Env>,
    ctx: Option<cel::Context<'r, 'r>>,
    whole: Option<Bytes>,
}

impl<'r> Renderer<'r> {
    /// A renderer for `record`.
    pub fn new(record: &'r Record, env: &'r Arc<Env>) -> Self {
        Self {
            record,
            env,
            ctx: None,
            whole: None,
        }
    }

    /// The record as `shape` sends it; `Err` when its filter failed on this record.
    pub fn render(&mut self, shape: &Shape) -> Result<Option<Bytes>, String> {
        shape.render(self.record, self.env, &mut self.ctx, &mut self.whole)
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

    /// Like [`TopicHub::publish_batch`], but a batch whose candidate filters may be costly is
    /// rendered on the blocking pool. Either way the topic's lock is held only to find the
    /// candidates and to hand the rendered records to the queues, not while filters run.
    pub async fn deliver_live(self: &Arc<Self>, records: Vec<Arc<Record>>) {
        let plan = self.plan(&records);
        if plan.steps <= INLINE_STEPS {
            let rendered = self.render(&plan, &records);
            self.commit(plan.covers_below, &records, rendered);
            return;
        }
        let records = Arc::new(records);
        let mut covers_below = plan.covers_below;
        let Some(mut rendered) = self.render_off_runtime(plan, records.clone()).await else {
            return;
        };
        // Shapes subscribed while the batch rendered are rendered the same way before the
        // hand-over (a few rounds at most: subscribing is rare next to publishing), so the
        // hand-over renders nothing costly under the lock on a runtime thread.
        for _ in 0..4 {
            let late = self.late_groups(covers_below, records.len());
            if late.groups.is_empty() {
                break;
            }
            covers_below = late.covers_below;
            let Some(more) = self.render_off_runtime(late, records.clone()).await else {
                return;
            };
            rendered.extend(more);
        }
        self.commit(covers_below, &records, rendered);
    }

    /// Renders `records` as `plan` says on the blocking pool; `None` if that failed (only a
    /// panic in a filter: its records are counted as filter errors).
    async fn render_off_runtime(
        self: &Arc<Self>,
        plan: Plan,
        records: Arc<Vec<Arc<Record>>>,
    ) -> Option<Rendered> {
        let hub = self.clone();
        match tokio::task::spawn_blocking(move || hub.render(&plan, &records)).await {
            Ok(rendered) => Some(rendered),
            Err(e) => {
                self.filter_errors.inc();
                tracing::error!(topic = %self.name, error = %e, "rendering a batch failed");
                None
            }
        }
    }

    /// The groups on the topic now with an id from `from`: a plan of every one of them for
    /// each of `records` records.
    fn late_groups(&self, from: u64, records: usize) -> Plan {
        let st = self.read();
        let late = st
            .groups
            .range(from..)
            .map(|(id, g)| (*id, g.shape.clone(), g.steps))
            .collect();
        Plan::all(late, records, st.next_id)
    }

    /// Finds, under the read lock, the groups each record may match.
    fn plan(&self, records: &[Arc<Record>]) -> Plan {
        let st = self.read();
        let mut plan = Plan {
            groups: Vec::new(),
            per_record: Vec::with_capacity(records.len()),
            steps: 0,
            covers_below: st.next_id,
        };
        if st.groups.is_empty() {
            return plan;
        }
        let mut slots: HashMap<u64, u32> = HashMap::new();
        let mut ids = Vec::new();
        for record in records {
            ids.clear();
            st.index.candidates(record, &mut ids);
            let mut mine = Vec::with_capacity(ids.len());
            for id in &ids {
                let Some(group) = st.groups.get(id) else {
                    continue;
                };
                plan.steps = plan.steps.saturating_add(group.steps);
                let slot = *slots.entry(*id).or_insert_with(|| {
                    plan.groups.push((*id, group.shape.clone()));
                    (plan.groups.len() - 1) as u32
                });
                mine.push(slot);
            }
            plan.per_record.push(mine);
        }
        plan
    }

    /// Renders `records` as `plan` says, sharing each record's CEL context and whole JSON
    /// between shapes. Takes no lock.
    fn render(&self, plan: &Plan, records: &[Arc<Record>]) -> Rendered {
        let mut out: Rendered = plan
            .groups
            .iter()
            .map(|(id, _)| (*id, Vec::new()))
            .collect();
        for (record, slots) in records.iter().zip(&plan.per_record) {
            if slots.is_empty() {
                continue;
            }
            let mut renderer = Renderer::new(record, &self.env);
            for &slot in slots {
                let (_, shape) = &plan.groups[slot as usize];
                match renderer.render(shape) {
                    Ok(Some(b)) => out[slot as usize]
                        .1
                        .push((b, record.partition, record.offset)),
                    Ok(None) => {}
                    Err(e) => self.filter_failed(&shape.key, &e),
                }
            }
        }
        out.retain(|(_, r)| !r.is_empty());
        out
    }

    fn render_shape(
        &self,
        shape: &Shape,
        records: &[Arc<Record>],
        renderers: &mut [Renderer<'_>],
    ) -> Vec<(Bytes, i32, i64)> {
        let mut out = Vec::new();
        for (record, renderer) in records.iter().zip(renderers) {
            match renderer.render(shape) {
                Ok(Some(b)) => out.push((b, record.partition, record.offset)),
                Ok(None) => {}
                Err(e) => self.filter_failed(&shape.key, &e),
            }
        }
        out
    }

    /// Hands a rendered batch to the subscriptions, under the write lock: subscribing and the
    /// replay hand-over wait for this, which is what makes the hand-over exact (one publisher
    /// per topic). Groups from id `covers_below` on were added after the batch was planned and
    /// are rendered here; groups gone since are skipped.
    fn commit(&self, covers_below: u64, records: &[Arc<Record>], mut rendered: Rendered) {
        let mut st = self.write();
        let mut late_renderers: Option<Vec<Renderer<'_>>> = None;
        let mut late: Rendered = Vec::new();
        for (id, group) in st.groups.range(covers_below..) {
            let renderers = late_renderers.get_or_insert_with(|| {
                records
                    .iter()
                    .map(|r| Renderer::new(r, &self.env))
                    .collect()
            });
            late.push((*id, self.render_shape(&group.shape, records, renderers)));
        }
        rendered.extend(late);
        // In subscription order, as the groups are.
        rendered.sort_by_key(|(id, _)| *id);
        for (id, for_group) in &rendered {
            let Some(group) = st.groups.get(id) else {
                continue;
            };
            if for_group.is_empty() {
                continue;
            }
            for sub in &group.subs {
                sub.queue.push_many(
                    for_group
                        .iter()
                        .filter(|(_, p, o)| sub.takes_live(*p, *o))
                        .map(|(bytes, partition, offset)| Delivery {
                            sub: sub.clone(),
                            bytes: bytes.clone(),
                            partition: *partition,
                            offset: *offset,
                        }),
                );
            }
        }
        for record in records {
            st.published_next
                .insert(record.partition, record.offset + 1);
        }
    }

    /// Hands `record`, read by `sub`'s own replay reader, to `sub` as its shape sends it,
    /// waiting for room in its queue (a replay goes at the client's pace instead of dropping).
    /// False once the queue is closed: the reader should stop.
    pub async fn deliver_replayed(&self, sub: &Arc<Subscription>, record: &Record) -> bool {
        // Rendered before waiting: the renderer's CEL context stays on this thread.
        let rendered = Renderer::new(record, &self.env).render(&sub.shape);
        match rendered {
            Ok(Some(bytes)) => {
                sub.queue
                    .push_waiting(Delivery {
                        sub: sub.clone(),
                        bytes,
                        partition: record.partition,
                        offset: record.offset,
                    })
                    .await
            }
            Ok(None) => true,
            Err(e) => {
                self.filter_failed(&sub.shape.key, &e);
                true
            }
        }
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
                        steps: sub.shape.steps(),
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
