//! Hub (fan-out) stage: hands each decoded record of a topic to every subscription on it, through
//! each client's bounded queue. Input: `Arc<Record>` from a topic's source; output: rendered
//! records ([`Delivery`]) in [`ClientQueue`]s, drained by the sessions.
//!
//! Subscriptions are grouped by [`Shape`] (filter + projection): a record is filtered and
//! serialized once per distinct shape, and the resulting bytes are shared by every client of that
//! shape. A full queue never blocks the source: the configured [`SlowClientPolicy`] applies
//! instead (drop the oldest and count them for a `lagged` frame, or mark the client for
//! disconnection).
//!
//! A subscription that starts in the past is fed by its own replay reader until, partition by
//! partition, the reader catches up with what the live consumer has published; from then on the
//! live consumer feeds it ([`TopicHub::try_go_live`]). The switch happens under the hub's write
//! lock at an exact offset, so there is no gap and no duplicate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use cel::Env;
use tokio::sync::{Notify, watch};

use crate::config::SlowClientPolicy;
use crate::filter::Shape;
use crate::metrics::{DropReason, Metrics};
use crate::record::Record;

/// One subscription of one connection.
#[derive(Debug)]
pub struct Subscription {
    /// The connection it belongs to.
    pub conn: u64,
    /// The id the client chose.
    pub id: Arc<str>,
    /// Where its records go.
    pub queue: Arc<ClientQueue>,
    /// What it sends of each record.
    pub shape: Arc<Shape>,
    active: AtomicBool,
    /// True once every partition is fed by the live consumer with no threshold left to check.
    all_live: AtomicBool,
    /// Per partition, the first offset the live consumer may deliver (set when the replay
    /// reader hands over). A partition not in the map is not live yet.
    live_from: Mutex<HashMap<i32, i64>>,
}

impl Subscription {
    /// A new, active subscription. `live` is true for one that starts at the live end (`latest`).
    pub fn new(
        conn: u64,
        id: Arc<str>,
        queue: Arc<ClientQueue>,
        shape: Arc<Shape>,
        live: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            conn,
            id,
            queue,
            shape,
            active: AtomicBool::new(true),
            all_live: AtomicBool::new(live),
            live_from: Mutex::new(HashMap::new()),
        })
    }

    /// False once unsubscribed: deliveries still queued for it are discarded.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Marks it unsubscribed.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }

    fn live_from(&self) -> MutexGuard<'_, HashMap<i32, i64>> {
        self.live_from.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the live consumer delivers `offset` of `partition` to this subscription.
    fn takes_live(&self, partition: i32, offset: i64) -> bool {
        self.all_live.load(Ordering::Acquire)
            || self
                .live_from()
                .get(&partition)
                .is_some_and(|from| offset >= *from)
    }
}

/// A rendered record on its way to one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sub: Arc<Subscription>,
    /// The record as the subscription's shape sends it (JSON), shared with every subscription
    /// of the same shape.
    pub bytes: Bytes,
    pub partition: i32,
    pub offset: i64,
}

/// What a session takes from its queue.
#[derive(Debug)]
pub enum Next {
    /// Records (in queue order), and per subscription how many were dropped since the last take.
    Batch {
        lagged: Vec<(Arc<str>, u64)>,
        deliveries: Vec<Delivery>,
    },
    /// The queue overflowed under the `disconnect` policy: close with 4008.
    Overflowed,
}

/// A client's bounded queue: at most `capacity` records and `max_bytes` bytes (one record is
/// always admitted, however large). Many producers (the live hub and replay readers), one
/// consumer (the session).
#[derive(Debug)]
pub struct ClientQueue {
    state: Mutex<QueueState>,
    /// Wakes the session when there is something to take.
    ready: Notify,
    /// Wakes replay readers waiting for room.
    room: Notify,
    capacity: usize,
    max_bytes: usize,
    policy: SlowClientPolicy,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    bytes: usize,
    lagged: HashMap<Arc<str>, u64>,
    overflowed: bool,
    closed: bool,
}

impl QueueState {
    fn full_for(&self, extra: usize, capacity: usize, max_bytes: usize) -> bool {
        !self.items.is_empty() && (self.items.len() >= capacity || self.bytes + extra > max_bytes)
    }
}

impl ClientQueue {
    /// A queue of at most `capacity` records and `max_bytes` bytes.
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        policy: SlowClientPolicy,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            policy,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few VecDeque operations), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, st: &mut QueueState, delivery: Delivery) {
        st.bytes += delivery.bytes.len();
        st.items.push_back(delivery);
        self.metrics.ws_queued_records.inc();
    }

    /// Queues a live record; never waits. A full queue applies the slow-client policy.
    pub fn push(&self, delivery: Delivery) {
        self.push_many(std::iter::once(delivery));
    }

    /// Queues live records in order under one lock, and wakes the session once: a Kafka fetch's
    /// records reach the client as one batch (one frame, one socket write) rather than one
    /// wake-up each. Never waits; a full queue applies the slow-client policy per record.
    pub fn push_many(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        let mut st = self.lock();
        let mut pushed = false;
        for delivery in deliveries {
            if st.closed || st.overflowed {
                break;
            }
            if !self.make_room(&mut st, delivery.bytes.len()) {
                break;
            }
            self.append(&mut st, delivery);
            pushed = true;
        }
        let wake = pushed || st.overflowed;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Applies the slow-client policy when `size` more bytes do not fit; false when the queue
    /// overflowed (`disconnect`) and takes nothing more.
    fn make_room(&self, st: &mut QueueState, size: usize) -> bool {
        if !st.full_for(size, self.capacity, self.max_bytes) {
            return true;
        }
        match self.policy {
            SlowClientPolicy::Drop => {
                let mut dropped = 0;
                while st.full_for(size, self.capacity, self.max_bytes) {
                    let Some(old) = st.items.pop_front() else {
                        break;
                    };
                    st.bytes -= old.bytes.len();
                    *st.lagged.entry(old.sub.id.clone()).or_insert(0) += 1;
                    dropped += 1;
                }
                self.metrics.ws_queued_records.dec_by(dropped as i64);
                self.metrics.dropped(DropReason::SlowClient, dropped);
                true
            }
            SlowClientPolicy::Disconnect => {
                let n = st.items.len() as u64;
                st.items.clear();
                st.bytes = 0;
                st.overflowed = true;
                self.metrics.ws_queued_records.dec_by(n as i64);
                self.metrics.dropped(DropReason::Disconnected, n + 1);
                false
            }
        }
    }

    /// Queues a replayed record, waiting for room instead of dropping: a replay reader is the
    /// client's own and may go at the client's pace. Returns false once the queue is closed.
    pub async fn push_waiting(&self, delivery: Delivery) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Register before checking, so a take between the check and the wait is not missed.
            room.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed || st.overflowed {
                    return false;
                }
                if !st.full_for(delivery.bytes.len(), self.capacity, self.max_bytes) {
                    self.append(&mut st, delivery);
                    drop(st);
                    self.ready.notify_one();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Waits for records (or an overflow) and takes up to `max` of them.
    pub async fn next(&self, max: usize) -> Next {
        loop {
            {
                let mut st = self.lock();
                if st.overflowed {
                    return Next::Overflowed;
                }
                if !st.items.is_empty() || !st.lagged.is_empty() {
                    let n = st.items.len().min(max.max(1));
                    let deliveries: Vec<Delivery> = st.items.drain(..n).collect();
                    st.bytes -= deliveries.iter().map(|d| d.bytes.len()).sum::<usize>();
                    let lagged = st.lagged.drain().collect();
                    drop(st);
                    self.metrics.ws_queued_records.dec_by(n as i64);
                    self.room.notify_waiters();
                    return Next::Batch { lagged, deliveries };
                }
            }
            self.ready.notified().await;
        }
    }

    /// Empties and closes the queue; later pushes are ignored and waiting replays give up.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        let n = st.items.len();
        st.items.clear();
        st.bytes = 0;
        drop(st);
        self.metrics.ws_queued_records.dec_by(n as i64);
        self.room.notify_waiters();
    }

    /// Records waiting in the queue.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// True when no record waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting in the queue.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// The subscriptions of one shape.
#[derive(Debug)]
struct Group {
    shape: Arc<Shape>,
    subs: Vec<Arc<Subscription>>,
}

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
    pub fn new(name: &str, env: Arc<Env>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            state: RwLock::new(HubState::default()),
            filter_errors: Metrics::topic_counter(&metrics.filter_errors, name),
            env,
            metrics,
            assigned: watch::Sender::new(None),
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
    /// and each subscription gets its share in one [`ClientQueue::push_many`].
    pub fn publish_batch(&self, records: &[Arc<Record>]) {
        // Under the write lock: subscribing and the replay hand-over wait for a publish to
        // finish, which is what makes the hand-over exact. (There is one publisher per topic.)
        let mut st = self.write();
        // One renderer per record, shared by every shape (it keeps the record's CEL context
        // and whole JSON between shapes).
        let mut renderers: Vec<Renderer<'_>> = records
            .iter()
            .map(|r| Renderer::new(r, &self.env))
            .collect();
        let mut rendered: Vec<(Bytes, i32, i64)> = Vec::with_capacity(records.len());
        for group in &st.groups {
            rendered.clear();
            for (record, renderer) in records.iter().zip(&mut renderers) {
                match renderer.render(&group.shape) {
                    Ok(Some(b)) => rendered.push((b, record.partition, record.offset)),
                    Ok(None) => {}
                    Err(e) => self.filter_failed(&group.shape.key, &e),
                }
            }
            if rendered.is_empty() {
                continue;
            }
            for sub in &group.subs {
                sub.queue.push_many(
                    rendered
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

    /// Adds a subscription. A live one (`latest`) receives every record published from now on;
    /// one that is not yet live receives records of a partition once its replay reader hands
    /// that partition over.
    pub fn add(&self, sub: Arc<Subscription>) {
        let mut st = self.write();
        match st.groups.iter_mut().find(|g| g.shape.key == sub.shape.key) {
            Some(g) => g.subs.push(sub),
            None => st.groups.push(Group {
                shape: sub.shape.clone(),
                subs: vec![sub],
            }),
        }
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
    pub fn new<'a>(topics: impl IntoIterator<Item = &'a str>, metrics: &Metrics) -> Self {
        let env = crate::filter::env();
        Self {
            topics: topics
                .into_iter()
                .map(|t| {
                    let hub = TopicHub::new(t, env.clone(), metrics.clone());
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
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, value: &str) -> Arc<Record> {
        Arc::new(Record::new(
            Arc::from("t"),
            partition,
            offset,
            None,
            None,
            Bytes::copy_from_slice(value.as_bytes()),
        ))
    }

    fn shape(filter: Option<&str>) -> Arc<Shape> {
        let limits = crate::filter::Limits {
            max_filter_bytes: 1000,
            max_filter_nodes: 1000,
            max_fields: 10,
        };
        match Shape::new(filter, None, &crate::filter::env(), &limits) {
            Ok(s) => Arc::new(s),
            Err(e) => panic!("{e}"),
        }
    }

    fn queue(capacity: usize, policy: SlowClientPolicy, m: &Metrics) -> Arc<ClientQueue> {
        ClientQueue::new(capacity, 1 << 20, policy, m.clone())
    }

    fn sub(id: &str, q: &Arc<ClientQueue>, live: bool) -> Arc<Subscription> {
        Subscription::new(1, id.into(), q.clone(), shape(None), live)
    }

    fn delivery(s: &Arc<Subscription>, offset: i64) -> Delivery {
        Delivery {
            sub: s.clone(),
            bytes: Bytes::from(format!("{{\"o\":{offset}}}")),
            partition: 0,
            offset,
        }
    }

    fn offsets(next: Next) -> (Vec<(Arc<str>, u64)>, Vec<i64>) {
        match next {
            Next::Batch { lagged, deliveries } => {
                (lagged, deliveries.iter().map(|d| d.offset).collect())
            }
            Next::Overflowed => panic!("unexpected overflow"),
        }
    }

    fn hub(m: &Metrics) -> Arc<TopicHub> {
        let h = TopicHub::new("t", crate::filter::env(), m.clone());
        h.set_assigned(Some(BTreeMap::from([(0, 0), (1, 0)])));
        h
    }

    #[tokio::test]
    async fn fan_out_reaches_every_subscription_in_order() {
        let m = Metrics::default();
        let hub = hub(&m);
        let qa = queue(8, SlowClientPolicy::Drop, &m);
        let qb = queue(8, SlowClientPolicy::Drop, &m);
        hub.add(sub("a", &qa, true));
        hub.add(sub("b", &qb, true));
        assert_eq!(hub.shape_count(), 1, "same shape, one group");
        for o in 0..3 {
            hub.publish(record(0, o, "{}"));
        }
        assert_eq!(offsets(qa.next(10).await).1, vec![0, 1, 2]);
        assert_eq!(offsets(qb.next(2).await).1, vec![0, 1]);
        assert_eq!(offsets(qb.next(2).await).1, vec![2]);
        assert_eq!(m.ws_queued_records.get(), 0);
    }

    #[tokio::test]
    async fn one_rendering_per_shape_is_shared_by_its_subscribers() {
        let m = Metrics::default();
        let hub = hub(&m);
        let qa = queue(8, SlowClientPolicy::Drop, &m);
        let qb = queue(8, SlowClientPolicy::Drop, &m);
        let qc = queue(8, SlowClientPolicy::Drop, &m);
        let big = shape(Some("value.n > 1"));
        hub.add(Subscription::new(
            1,
            "a".into(),
            qa.clone(),
            big.clone(),
            true,
        ));
        hub.add(Subscription::new(
            2,
            "b".into(),
            qb.clone(),
            shape(Some("value.n > 1")),
            true,
        ));
        hub.add(Subscription::new(
            3,
            "c".into(),
            qc.clone(),
            shape(Some("value.n <= 1")),
            true,
        ));
        assert_eq!(hub.shape_count(), 2);
        for n in 0..4 {
            hub.publish(record(0, n, &format!("{{\"n\":{n}}}")));
        }
        let (Next::Batch { deliveries: da, .. }, Next::Batch { deliveries: db, .. }) =
            (qa.next(10).await, qb.next(10).await)
        else {
            panic!("overflow")
        };
        assert_eq!(da.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![2, 3]);
        // The same bytes, not copies.
        assert_eq!(da[0].bytes.as_ptr(), db[0].bytes.as_ptr());
        assert_eq!(offsets(qc.next(10).await).1, vec![0, 1]);
    }

    #[tokio::test]
    async fn drop_policy_drops_oldest_and_counts_lag() {
        let m = Metrics::default();
        let q = queue(3, SlowClientPolicy::Drop, &m);
        let s = sub("s", &q, true);
        for o in 0..10 {
            q.push(delivery(&s, o));
        }
        let (lagged, got) = offsets(q.next(100).await);
        assert_eq!(got, vec![7, 8, 9], "newest kept");
        assert_eq!(lagged, vec![(Arc::from("s"), 7)]);
        assert_eq!(
            m.ws_dropped_records
                .get_or_create(&crate::metrics::DropLabels {
                    reason: "slow_client"
                })
                .get(),
            7
        );
    }

    #[tokio::test]
    async fn byte_bound_applies_before_the_record_bound() {
        let m = Metrics::default();
        let q = ClientQueue::new(1000, 2048, SlowClientPolicy::Drop, m.clone());
        let s = sub("s", &q, true);
        for o in 0..100 {
            q.push(Delivery {
                sub: s.clone(),
                bytes: Bytes::from(vec![b' '; 500]),
                partition: 0,
                offset: o,
            });
            assert!(q.bytes() <= 2048, "{} bytes queued", q.bytes());
        }
        let (lagged, got) = offsets(q.next(1000).await);
        assert_eq!(got, vec![96, 97, 98, 99]);
        assert_eq!(lagged[0].1, 96);
    }

    #[tokio::test]
    async fn disconnect_policy_reports_overflow() {
        let m = Metrics::default();
        let q = queue(2, SlowClientPolicy::Disconnect, &m);
        let s = sub("s", &q, true);
        for o in 0..3 {
            q.push(delivery(&s, o));
        }
        assert!(matches!(q.next(10).await, Next::Overflowed));
        assert_eq!(m.ws_queued_records.get(), 0);
    }

    #[tokio::test]
    async fn a_published_batch_reaches_each_subscription_in_order_by_shape() {
        let m = Metrics::default();
        let hub = hub(&m);
        let qa = queue(8, SlowClientPolicy::Drop, &m);
        let qb = queue(8, SlowClientPolicy::Drop, &m);
        hub.add(sub("a", &qa, true));
        hub.add(Subscription::new(
            2,
            "b".into(),
            qb.clone(),
            shape(Some("value.n % 2 == 1")),
            true,
        ));
        let batch: Vec<_> = (0..6)
            .map(|n| record(n as i32 % 2, n, &format!("{{\"n\":{n}}}")))
            .collect();
        hub.publish_batch(&batch);
        assert_eq!(offsets(qa.next(100).await).1, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(offsets(qb.next(100).await).1, vec![1, 3, 5]);
        assert_eq!(hub.published_next(), BTreeMap::from([(0, 5), (1, 6)]));
    }

    #[tokio::test]
    async fn a_batch_applies_the_slow_client_policy_record_by_record() {
        let m = Metrics::default();
        let q = queue(3, SlowClientPolicy::Drop, &m);
        let s = sub("s", &q, true);
        q.push_many((0..10).map(|o| delivery(&s, o)));
        let (lagged, got) = offsets(q.next(100).await);
        assert_eq!(got, vec![7, 8, 9], "newest kept");
        assert_eq!(lagged, vec![(Arc::from("s"), 7)]);

        let q = queue(2, SlowClientPolicy::Disconnect, &m);
        let s = sub("s", &q, true);
        q.push_many((0..3).map(|o| delivery(&s, o)));
        assert!(matches!(q.next(10).await, Next::Overflowed));
        q.push_many((3..5).map(|o| delivery(&s, o)));
        assert!(matches!(q.next(10).await, Next::Overflowed));
    }

    #[tokio::test]
    async fn replay_push_waits_for_room_and_loses_nothing() {
        let q = queue(2, SlowClientPolicy::Drop, &Metrics::default());
        let s = sub("s", &q, false);
        let writer = {
            let q = q.clone();
            tokio::spawn(async move {
                for o in 0..50 {
                    if !q.push_waiting(delivery(&s, o)).await {
                        return false;
                    }
                }
                true
            })
        };
        let mut got = Vec::new();
        while got.len() < 50 {
            let (lagged, batch) = offsets(q.next(1).await);
            assert!(lagged.is_empty());
            got.extend(batch);
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert!(matches!(writer.await, Ok(true)));
    }

    #[tokio::test]
    async fn closed_queue_releases_waiting_replay() {
        let q = queue(1, SlowClientPolicy::Drop, &Metrics::default());
        let s = sub("s", &q, false);
        q.push(delivery(&s, 0));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.push_waiting(delivery(&s, 1)).await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert!(matches!(waiter.await, Ok(false)));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn hand_over_from_replay_to_live_has_no_gap_and_no_duplicate() {
        let m = Metrics::default();
        let hub = hub(&m);
        let q = queue(100, SlowClientPolicy::Drop, &m);
        let s = sub("s", &q, false);
        hub.add(s.clone());
        // Live has published offsets 0..5 of partition 0 before the replay catches up.
        for o in 0..5 {
            hub.publish(record(0, o, "{}"));
        }
        assert!(q.is_empty(), "not live yet: nothing from the live consumer");
        // The reader has delivered up to offset 2: still behind.
        assert!(!hub.try_go_live(&s, 0, 3));
        // It reaches the live position: partition 0 goes live at 5.
        assert!(hub.try_go_live(&s, 0, 5));
        hub.publish(record(0, 5, "{}"));
        // Partition 1 is still replaying: live records of it are not delivered...
        hub.publish(record(1, 0, "{}"));
        // ...until its reader, ahead of the live consumer, hands over at 2.
        assert!(hub.try_go_live(&s, 1, 2));
        hub.publish(record(1, 1, "{}"));
        hub.publish(record(1, 2, "{}"));
        let Next::Batch { deliveries, .. } = q.next(100).await else {
            panic!("overflow")
        };
        let got: Vec<(i32, i64)> = deliveries.iter().map(|d| (d.partition, d.offset)).collect();
        assert_eq!(got, vec![(0, 5), (1, 2)]);
    }
}
