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

use crate::filter::Shape;
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

/// A batch whose filters may take more steps than this in all is rendered on the blocking
/// pool, off the runtime threads: a costly filter slows its own topic, not `/healthz` or
/// other sessions. (A step is well under a microsecond: this is about a millisecond.)
const INLINE_STEPS: u64 = 20_000;

/// A batch rendered for the shapes of a snapshot: per shape, in the snapshot's order, the
/// records it sends (bytes, partition, offset).
type Rendered = Vec<Vec<(Bytes, i32, i64)>>;

#[derive(Debug, Default)]
struct HubState {
    groups: Vec<Group>,
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
    /// The most distinct shapes (filter + projection) the topic takes
    /// (`websocket.max_filters_per_topic`): each is evaluated for every record.
    max_shapes: usize,
}

/// A subscription with a new shape on a topic that has as many as it may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "topic {topic:?} already has {max} distinct filters and projections, the limit (websocket.max_filters_per_topic): use one that is in use, or try again later"
)]
pub struct TooManyShapes {
    pub topic: Arc<str>,
    pub max: usize,
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
    pub fn new(name: &str, env: Arc<Env>, metrics: Metrics, max_shapes: usize) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            state: RwLock::new(HubState::default()),
            filter_errors: Metrics::topic_counter(&metrics.filter_errors, name),
            env,
            metrics,
            assigned: watch::Sender::new(None),
            max_shapes,
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

    /// Publishes records (in order) read together from Kafka: each is rendered once per shape,
    /// and each subscription gets its share in one [`ClientQueue::push_many`]. Renders on the
    /// calling thread (see [`TopicHub::deliver_live`]).
    pub fn publish_batch(&self, records: &[Arc<Record>]) {
        let (shapes, _) = self.snapshot();
        let rendered = self.render(&shapes, records);
        self.commit(&shapes, records, rendered);
    }

    /// Like [`TopicHub::publish_batch`], but a batch whose filters may be costly is rendered
    /// on the blocking pool. Either way the topic's lock is held only to hand the rendered
    /// records to the queues, not while filters run.
    pub async fn deliver_live(self: &Arc<Self>, records: Vec<Arc<Record>>) {
        let (shapes, steps) = self.snapshot();
        if steps.saturating_mul(records.len() as u64) <= INLINE_STEPS {
            let rendered = self.render(&shapes, &records);
            self.commit(&shapes, &records, rendered);
            return;
        }
        let records = Arc::new(records);
        let Some(mut rendered) = self
            .render_off_runtime(shapes.clone(), records.clone())
            .await
        else {
            return;
        };
        let mut shapes = shapes;
        // Shapes subscribed while the batch rendered are rendered the same way before the
        // hand-over (a few rounds at most: subscribing is rare next to publishing), so the
        // hand-over renders nothing costly under the lock on a runtime thread.
        for _ in 0..4 {
            let late = self.late_shapes(&shapes);
            if late.is_empty() {
                break;
            }
            let Some(more) = self.render_off_runtime(late.clone(), records.clone()).await else {
                return;
            };
            shapes.extend(late);
            rendered.extend(more);
        }
        self.commit(&shapes, &records, rendered);
    }

    /// Renders `records` for `shapes` on the blocking pool; `None` if that failed (only a panic
    /// in a filter: its records are counted as filter errors).
    async fn render_off_runtime(
        self: &Arc<Self>,
        shapes: Vec<Arc<Shape>>,
        records: Arc<Vec<Arc<Record>>>,
    ) -> Option<Rendered> {
        let hub = self.clone();
        match tokio::task::spawn_blocking(move || hub.render(&shapes, &records)).await {
            Ok(rendered) => Some(rendered),
            Err(e) => {
                self.filter_errors.inc();
                tracing::error!(topic = %self.name, error = %e, "rendering a batch failed");
                None
            }
        }
    }

    /// The shapes on the topic now that are not among `known`.
    fn late_shapes(&self, known: &[Arc<Shape>]) -> Vec<Arc<Shape>> {
        let known: std::collections::HashSet<*const Shape> =
            known.iter().map(Arc::as_ptr).collect();
        self.read()
            .groups
            .iter()
            .filter(|g| !known.contains(&Arc::as_ptr(&g.shape)))
            .map(|g| g.shape.clone())
            .collect()
    }

    /// The shapes on the topic now, and the most steps their filters take per record in all.
    fn snapshot(&self) -> (Vec<Arc<Shape>>, u64) {
        let st = self.read();
        let steps = st
            .groups
            .iter()
            .fold(0u64, |acc, g| acc.saturating_add(g.steps));
        (st.groups.iter().map(|g| g.shape.clone()).collect(), steps)
    }

    /// Renders `records` for each of `shapes`, sharing each record's CEL context and whole
    /// JSON between shapes. Takes no lock.
    fn render(&self, shapes: &[Arc<Shape>], records: &[Arc<Record>]) -> Rendered {
        let mut renderers: Vec<Renderer<'_>> = records
            .iter()
            .map(|r| Renderer::new(r, &self.env))
            .collect();
        shapes
            .iter()
            .map(|shape| self.render_shape(shape, records, &mut renderers))
            .collect()
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
    /// per topic). A shape added while the batch was rendered is rendered here.
    fn commit(&self, shapes: &[Arc<Shape>], records: &[Arc<Record>], rendered: Rendered) {
        let index: HashMap<*const Shape, usize> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (Arc::as_ptr(s), i))
            .collect();
        let mut st = self.write();
        let mut late_renderers: Option<Vec<Renderer<'_>>> = None;
        let mut late;
        for group in &st.groups {
            let for_group: &[(Bytes, i32, i64)] = match index.get(&Arc::as_ptr(&group.shape)) {
                Some(&i) => &rendered[i],
                None => {
                    let renderers = late_renderers.get_or_insert_with(|| {
                        records
                            .iter()
                            .map(|r| Renderer::new(r, &self.env))
                            .collect()
                    });
                    late = self.render_shape(&group.shape, records, renderers);
                    &late
                }
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
    /// `max_shapes` already.
    pub fn add(&self, sub: Arc<Subscription>) -> Result<(), TooManyShapes> {
        let mut st = self.write();
        let shapes = st.groups.len();
        match st.groups.iter_mut().find(|g| g.shape.key == sub.shape.key) {
            Some(g) => g.subs.push(sub),
            None if shapes >= self.max_shapes => {
                return Err(TooManyShapes {
                    topic: self.name.clone(),
                    max: self.max_shapes,
                });
            }
            None => st.groups.push(Group {
                steps: sub.shape.steps(),
                shape: sub.shape.clone(),
                subs: vec![sub],
            }),
        }
        Ok(())
    }

    /// Removes a subscription (no-op when it is not there).
    pub fn remove(&self, sub: &Arc<Subscription>) {
        let mut st = self.write();
        for g in &mut st.groups {
            g.subs.retain(|s| !Arc::ptr_eq(s, sub));
        }
        st.groups.retain(|g| !g.subs.is_empty());
    }

    /// Live subscriptions on the topic.
    pub fn subscriber_count(&self) -> usize {
        self.read().groups.iter().map(|g| g.subs.len()).sum()
    }

    /// Distinct shapes on the topic.
    pub fn shape_count(&self) -> usize {
        self.read().groups.len()
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
        max_shapes: usize,
    ) -> Self {
        let env = crate::filter::env();
        Self {
            topics: topics
                .into_iter()
                .map(|t| {
                    let hub = TopicHub::new(t, env.clone(), metrics.clone(), max_shapes);
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
