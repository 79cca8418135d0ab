//! The per-client queue, the gateway's backpressure: every record on its way to a connection
//! waits in that connection's bounded [`ClientQueue`] (records and bytes both capped). The live
//! hub never waits on it: a full queue applies the [`SlowClientPolicy`] (drop the oldest and
//! count them for a `lagged` frame, or mark the client for a 4008 close). A replay reader, the
//! client's own, waits for room instead. Input: [`Delivery`]s from the hub; output: batches the
//! session takes with [`ClientQueue::next`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::SlowClientPolicy;
use crate::deflate::Chunk;
use crate::filter::Shape;
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
    /// What it sends of each record.
    pub shape: Arc<Shape>,
    active: AtomicBool,
    /// True once every partition is fed by the live consumer with no threshold left to check.
    pub(super) all_live: AtomicBool,
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

    pub(super) fn live_from(&self) -> MutexGuard<'_, HashMap<i32, i64>> {
        self.live_from.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the live consumer delivers `offset` of `partition` to this subscription.
    pub(super) fn takes_live(&self, partition: i32, offset: i64) -> bool {
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
    /// The hub batch's records of this shape it is one of, when a subscription of the shape is
    /// on a connection that compresses ([`ClientQueue::compress`]): their compressed form is
    /// made once for all such subscriptions.
    pub chunk: Option<ChunkAt>,
    /// The Kafka timestamp (ms) of the first record of the live batch it came in (for
    /// `lakewire_ws_send_delay_seconds`); `None` for replayed records.
    pub timestamp: Option<i64>,
}

/// Where a delivery is in its [`Chunk`].
#[derive(Debug, Clone)]
pub struct ChunkAt {
    pub chunk: Arc<Chunk>,
    pub index: u32,
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
    /// Its connection agreed permessage-deflate: deliveries come with their chunk.
    compress: AtomicBool,
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
            compress: AtomicBool::new(false),
        })
    }

    /// Marks the queue's connection as compressing (permessage-deflate agreed): the hub then
    /// shares each batch's records per shape as a [`Chunk`], compressed once.
    pub fn compress(&self) {
        self.compress.store(true, Ordering::Relaxed);
    }

    /// Whether its connection compresses.
    pub fn compresses(&self) -> bool {
        self.compress.load(Ordering::Relaxed)
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

    /// Resolves once the queue has overflowed under the `disconnect` policy (what
    /// [`ClientQueue::next`] reports as [`Next::Overflowed`]), without taking anything.
    pub async fn overflowed(&self) {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            // Registered before checking, so an overflow between the check and the wait wakes it.
            ready.as_mut().enable();
            if self.lock().overflowed {
                return;
            }
            ready.await;
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
