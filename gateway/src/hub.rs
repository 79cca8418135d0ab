//! Hub (fan-out) stage: hands each decoded record of a topic to every subscription on it, through
//! each client's bounded queue. Input: `Arc<Record>` from a topic's source; output: deliveries in
//! [`ClientQueue`]s, drained by the sessions.
//!
//! A full queue never blocks the source: the configured [`SlowClientPolicy`] applies instead
//! (drop the oldest and count them for a `lagged` frame, or mark the client for disconnection).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::{Notify, watch};

use crate::config::SlowClientPolicy;
use crate::decode::Record;
use crate::metrics::{DropReason, Metrics};

/// One subscription of one connection.
#[derive(Debug)]
pub struct Subscription {
    /// The connection it belongs to.
    pub conn: u64,
    /// The id the client chose.
    pub id: Arc<str>,
    /// Where its records go.
    pub queue: Arc<ClientQueue>,
    active: AtomicBool,
}

impl Subscription {
    /// A new, active subscription.
    pub fn new(conn: u64, id: Arc<str>, queue: Arc<ClientQueue>) -> Arc<Self> {
        Arc::new(Self {
            conn,
            id,
            queue,
            active: AtomicBool::new(true),
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
}

/// A record on its way to one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sub: Arc<Subscription>,
    pub record: Arc<Record>,
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

/// A client's bounded queue. Many producers (the live hub and replay readers), one consumer
/// (the session).
#[derive(Debug)]
pub struct ClientQueue {
    state: Mutex<QueueState>,
    /// Wakes the session when there is something to take.
    ready: Notify,
    /// Wakes replay readers waiting for room.
    room: Notify,
    capacity: usize,
    policy: SlowClientPolicy,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    lagged: HashMap<Arc<str>, u64>,
    overflowed: bool,
    closed: bool,
}

impl ClientQueue {
    /// A queue of at most `capacity` records.
    pub fn new(capacity: usize, policy: SlowClientPolicy, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            policy,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few VecDeque operations), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a live record; never waits. A full queue applies the slow-client policy.
    pub fn push(&self, delivery: Delivery) {
        let mut st = self.lock();
        if st.closed || st.overflowed {
            return;
        }
        if st.items.len() >= self.capacity {
            match self.policy {
                SlowClientPolicy::Drop => {
                    if let Some(old) = st.items.pop_front() {
                        *st.lagged.entry(old.sub.id.clone()).or_insert(0) += 1;
                        self.metrics.ws_queued_records.dec();
                        self.metrics.dropped(DropReason::SlowClient, 1);
                    }
                }
                SlowClientPolicy::Disconnect => {
                    let n = st.items.len() as u64 + 1;
                    st.items.clear();
                    st.overflowed = true;
                    self.metrics.ws_queued_records.dec_by(n as i64 - 1);
                    self.metrics.dropped(DropReason::Disconnected, n);
                    drop(st);
                    self.ready.notify_one();
                    return;
                }
            }
        }
        st.items.push_back(delivery);
        self.metrics.ws_queued_records.inc();
        drop(st);
        self.ready.notify_one();
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
                if st.items.len() < self.capacity {
                    st.items.push_back(delivery);
                    self.metrics.ws_queued_records.inc();
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
}

/// The live fan-out of one topic.
#[derive(Debug)]
pub struct TopicHub {
    name: Arc<str>,
    subs: RwLock<Vec<Arc<Subscription>>>,
    /// The partitions the live consumer is assigned to; `None` until it is.
    assigned: watch::Sender<Option<Vec<i32>>>,
}

impl TopicHub {
    /// A hub for `name` with no subscriptions, not yet assigned.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            subs: RwLock::new(Vec::new()),
            assigned: watch::Sender::new(None),
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Hands `record` to every subscription of the topic.
    pub fn publish(&self, record: Arc<Record>) {
        let subs = self.subs.read().unwrap_or_else(|p| p.into_inner());
        for sub in subs.iter() {
            sub.queue.push(Delivery {
                sub: sub.clone(),
                record: record.clone(),
            });
        }
    }

    /// Adds a live subscription: it receives every record the live consumer reads from now on.
    pub fn add(&self, sub: Arc<Subscription>) {
        self.subs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(sub);
    }

    /// Removes a subscription (no-op when it is not there).
    pub fn remove(&self, sub: &Arc<Subscription>) {
        self.subs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !Arc::ptr_eq(s, sub));
    }

    /// Live subscriptions on the topic.
    pub fn subscriber_count(&self) -> usize {
        self.subs.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Called by the source once it is assigned to `partitions`.
    pub fn set_assigned(&self, partitions: Option<Vec<i32>>) {
        self.assigned.send_replace(partitions);
    }

    /// The assigned partitions, once the source is assigned.
    pub fn assigned(&self) -> Option<Vec<i32>> {
        self.assigned.borrow().clone()
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
}

/// Every configured topic's hub, by name.
#[derive(Debug, Default)]
pub struct Hub {
    topics: HashMap<Arc<str>, Arc<TopicHub>>,
}

impl Hub {
    /// A hub for each of `topics`.
    pub fn new<'a>(topics: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            topics: topics
                .into_iter()
                .map(|t| {
                    let hub = TopicHub::new(t);
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

    fn record(offset: i64) -> Arc<Record> {
        Arc::new(Record::new(
            Arc::from("t"),
            0,
            offset,
            None,
            None,
            bytes::Bytes::from_static(b"null"),
        ))
    }

    fn offsets(next: Next) -> (Vec<(Arc<str>, u64)>, Vec<i64>) {
        match next {
            Next::Batch { lagged, deliveries } => {
                (lagged, deliveries.iter().map(|d| d.record.offset).collect())
            }
            Next::Overflowed => panic!("unexpected overflow"),
        }
    }

    #[tokio::test]
    async fn fan_out_reaches_every_subscription_in_order() {
        let m = Metrics::default();
        let hub = TopicHub::new("t");
        let qa = ClientQueue::new(8, SlowClientPolicy::Drop, m.clone());
        let qb = ClientQueue::new(8, SlowClientPolicy::Drop, m.clone());
        hub.add(Subscription::new(1, "a".into(), qa.clone()));
        hub.add(Subscription::new(2, "b".into(), qb.clone()));
        for o in 0..3 {
            hub.publish(record(o));
        }
        assert_eq!(offsets(qa.next(10).await).1, vec![0, 1, 2]);
        assert_eq!(offsets(qb.next(2).await).1, vec![0, 1]);
        assert_eq!(offsets(qb.next(2).await).1, vec![2]);
        assert_eq!(m.ws_queued_records.get(), 0);
    }

    #[tokio::test]
    async fn drop_policy_drops_oldest_and_counts_lag() {
        let m = Metrics::default();
        let q = ClientQueue::new(3, SlowClientPolicy::Drop, m.clone());
        let sub = Subscription::new(1, "s".into(), q.clone());
        for o in 0..10 {
            q.push(Delivery {
                sub: sub.clone(),
                record: record(o),
            });
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
    async fn disconnect_policy_reports_overflow() {
        let q = ClientQueue::new(2, SlowClientPolicy::Disconnect, Metrics::default());
        let sub = Subscription::new(1, "s".into(), q.clone());
        for o in 0..3 {
            q.push(Delivery {
                sub: sub.clone(),
                record: record(o),
            });
        }
        assert!(matches!(q.next(10).await, Next::Overflowed));
    }

    #[tokio::test]
    async fn replay_push_waits_for_room_and_loses_nothing() {
        let q = ClientQueue::new(2, SlowClientPolicy::Drop, Metrics::default());
        let sub = Subscription::new(1, "s".into(), q.clone());
        let writer = {
            let q = q.clone();
            tokio::spawn(async move {
                for o in 0..50 {
                    if !q
                        .push_waiting(Delivery {
                            sub: sub.clone(),
                            record: record(o),
                        })
                        .await
                    {
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
        let q = ClientQueue::new(1, SlowClientPolicy::Drop, Metrics::default());
        let sub = Subscription::new(1, "s".into(), q.clone());
        q.push(Delivery {
            sub: sub.clone(),
            record: record(0),
        });
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                q.push_waiting(Delivery {
                    sub,
                    record: record(1),
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        q.close();
        assert!(matches!(waiter.await, Ok(false)));
        assert!(q.is_empty());
    }
}
