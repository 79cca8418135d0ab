use super::*;
use crate::config::SlowClientPolicy;
use bytes::Bytes;

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

/// Adds `s` to `hub`, which must take it.
fn add(hub: &TopicHub, s: Arc<Subscription>) {
    hub.add(s).unwrap_or_else(|e| panic!("{e}"));
}

fn delivery(s: &Arc<Subscription>, offset: i64) -> Delivery {
    Delivery {
        sub: s.clone(),
        bytes: Bytes::from(format!("{{\"o\":{offset}}}")),
        partition: 0,
        offset,
        chunk: None,
        timestamp: None,
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
    let h = TopicHub::new(
        "t",
        crate::filter::env(),
        m.clone(),
        ShapeLimits::topic(100),
    );
    h.set_assigned(Some(BTreeMap::from([(0, 0), (1, 0)])));
    h
}

#[tokio::test]
async fn fan_out_reaches_every_subscription_in_order() {
    let m = Metrics::default();
    let hub = hub(&m);
    let qa = queue(8, SlowClientPolicy::Drop, &m);
    let qb = queue(8, SlowClientPolicy::Drop, &m);
    add(&hub, sub("a", &qa, true));
    add(&hub, sub("b", &qb, true));
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
    add(
        &hub,
        Subscription::new(1, "a".into(), qa.clone(), big.clone(), true),
    );
    hub.add(Subscription::new(
        2,
        "b".into(),
        qb.clone(),
        shape(Some("value.n > 1")),
        true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    hub.add(Subscription::new(
        3,
        "c".into(),
        qc.clone(),
        shape(Some("value.n <= 1")),
        true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
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
            chunk: None,
            timestamp: None,
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
    add(&hub, sub("a", &qa, true));
    hub.add(Subscription::new(
        2,
        "b".into(),
        qb.clone(),
        shape(Some("value.n % 2 == 1")),
        true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
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
    add(&hub, s.clone());
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

#[tokio::test]
async fn a_topic_takes_at_most_max_shapes_distinct_shapes() {
    let m = Metrics::default();
    let hub = TopicHub::new("t", crate::filter::env(), m.clone(), ShapeLimits::topic(2));
    let q = queue(8, SlowClientPolicy::Drop, &m);
    let with = |id: &str, filter: &str| {
        Subscription::new(1, id.into(), q.clone(), shape(Some(filter)), true)
    };
    assert_eq!(hub.add(with("a", "offset > 1")), Ok(()));
    assert_eq!(hub.add(with("b", "offset > 2")), Ok(()));
    // A shape in use is shared, not counted again.
    assert_eq!(hub.add(with("c", "offset > 1")), Ok(()));
    let refused = hub.add(with("d", "offset > 3"));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("max_filters_per_topic")),
        "{refused:?}"
    );
    assert_eq!(hub.shape_count(), 2);
    // Room again once a shape's last subscription goes.
    let b = hub.read().groups.values().nth(1).map(|g| g.subs[0].clone());
    let b = b.unwrap_or_else(|| panic!("no second group"));
    hub.remove(&b);
    assert_eq!(hub.add(with("e", "offset > 3")), Ok(()));
}

#[tokio::test]
async fn one_connection_holds_at_most_its_share_of_a_topics_shapes() {
    let m = Metrics::default();
    let limits = ShapeLimits {
        per_topic: 100,
        per_connection: 2,
    };
    let hub = TopicHub::new("t", crate::filter::env(), m.clone(), limits);
    let q = queue(8, SlowClientPolicy::Drop, &m);
    let on = |conn: u64, id: &str, filter: &str| {
        Subscription::new(conn, id.into(), q.clone(), shape(Some(filter)), true)
    };
    let a = on(1, "a", "offset > 1");
    assert_eq!(hub.add(a.clone()), Ok(()));
    assert_eq!(hub.add(on(1, "b", "offset > 2")), Ok(()));
    // Its own shapes again, however spelt: no new one.
    assert_eq!(hub.add(on(1, "c", "offset>1 // again")), Ok(()));
    let refused = hub.add(on(1, "d", "offset > 3"));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("max_filters_per_connection")),
        "{refused:?}"
    );
    // A shape in use by someone else still counts for this connection...
    assert_eq!(hub.add(on(2, "x", "offset > 9")), Ok(()));
    assert!(hub.add(on(1, "e", "offset > 9")).is_err());
    // ...and other connections are not held back by this one.
    assert_eq!(hub.add(on(2, "y", "offset > 3")), Ok(()));
    assert_eq!(hub.shape_count(), 4);
    // A shape is the connection's until its last subscription on it goes.
    hub.remove(&a);
    assert!(hub.add(on(1, "f", "offset > 3")).is_err());
    let c = hub
        .read()
        .groups
        .values()
        .flat_map(|g| g.subs.iter())
        .find(|s| &*s.id == "c")
        .cloned();
    hub.remove(&c.unwrap_or_else(|| panic!("no subscription c")));
    assert_eq!(hub.add(on(1, "f", "offset > 3")), Ok(()));
}

#[tokio::test]
async fn a_shape_added_while_a_batch_renders_still_gets_the_batch() {
    // Filters run outside the topic's lock: a subscription that arrives between the snapshot
    // and the hand-over must not miss the batch (its `subscribed` start names it).
    let m = Metrics::default();
    let hub = hub(&m);
    let qa = queue(8, SlowClientPolicy::Drop, &m);
    let qb = queue(8, SlowClientPolicy::Drop, &m);
    add(&hub, sub("a", &qa, true));
    let records = vec![record(0, 0, r#"{"n":1}"#), record(0, 1, r#"{"n":2}"#)];
    let plan = hub.plan(&records);
    let rendered = hub.render(&plan, &records);
    hub.add(Subscription::new(
        2,
        "b".into(),
        qb.clone(),
        shape(Some("value.n > 1")),
        true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    hub.commit(plan.covers_below, &records, rendered);
    assert_eq!(offsets(qa.next(10).await).1, vec![0, 1]);
    assert_eq!(offsets(qb.next(10).await).1, vec![1]);
    // ...and its filter ran off the topic's lock, which subscribes and hand-overs wait for.
    assert_eq!(hub.rendered_under_lock(), 0);
}

#[test]
fn a_compiled_comprehension_is_budgeted_at_its_compiled_cost() {
    // 20 dashboards, each `exists` over the record's items with its own threshold: compiled,
    // a batch of 4 records is a few thousand interpreter steps' worth and renders inline; by
    // the interpreter's estimate of the same tree (~800 steps a filter) it went to the
    // blocking pool, a thread hop per batch for nothing.
    let m = Metrics::default();
    let hub = hub(&m);
    let q = queue(100, SlowClientPolicy::Drop, &m);
    for n in 0..20 {
        let s = shape(Some(&format!("value.items.exists(i, i.qty > {n})")));
        assert!(
            s.filter.as_ref().is_some_and(|f| f.compiled().is_some()),
            "compiles"
        );
        add(
            &hub,
            Subscription::new(1, format!("s{n}").into(), q.clone(), s, true),
        );
    }
    let records: Vec<_> = (0..4)
        .map(|o| record(0, o, r#"{"items":[{"qty":3},{"qty":30}]}"#))
        .collect();
    let plan = hub.plan(&records);
    assert_eq!(plan.per_record[0].len(), 20, "every filter is a candidate");
    assert!(plan.steps <= INLINE_STEPS, "{} steps", plan.steps);
    // The interpreter's filters keep their estimate: the same test through `map` is costly.
    let interpreted = shape(Some("value.items.map(i, i.qty).exists(q, q > 3)"));
    assert!(
        interpreted.steps() * 20 * 4 > INLINE_STEPS,
        "{}",
        interpreted.steps()
    );
}

/// A filter that matches `value.n` when it is a product of two numbers up to 80, taking
/// 80 × 80 interpreter steps and more: over [`INLINE_STEPS`].
fn costly_filter() -> String {
    let list: Vec<String> = (1..=80).map(|i| i.to_string()).collect();
    format!(
        "[{l}].exists(key, [{l}].exists(offset, key * offset == value.n))",
        l = list.join(",")
    )
}

#[tokio::test]
async fn a_costly_replayed_record_is_rendered_off_the_runtime() {
    // On this single-threaded runtime another task runs only while the replay waits: a filter
    // rendered inline would hold the thread (every session's) for its whole evaluation.
    let m = Metrics::default();
    let hub = hub(&m);
    let q = queue(10, SlowClientPolicy::Drop, &m);
    let costly = costly_filter();
    let s = Subscription::new(1, "r".into(), q.clone(), shape(Some(&costly)), false);
    assert!(s.shape.steps() > INLINE_STEPS, "{}", s.shape.steps());
    let other_ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = other_ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    assert!(
        hub.deliver_replayed(&s, &record(0, 0, r#"{"n":6400}"#))
            .await
    );
    assert!(
        other_ran.load(Ordering::SeqCst),
        "the runtime's thread was free while the filter ran"
    );
    assert_eq!(offsets(q.next(10).await).1, vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_batches_render_off_the_runtime_and_arrive_in_order() {
    let m = Metrics::default();
    let hub = hub(&m);
    let q = queue(1000, SlowClientPolicy::Drop, &m);
    let costly = costly_filter();
    let s = Subscription::new(1, "c".into(), q.clone(), shape(Some(&costly)), true);
    assert!(s.shape.steps() > INLINE_STEPS, "{}", s.shape.steps());
    add(&hub, s);
    for batch in 0..3 {
        let records = (0..4)
            .map(|i| {
                let o = batch * 4 + i;
                // Only products of two numbers up to 80 match (6401 = 37 × 173).
                let n = if o % 2 == 0 { 6_400 } else { 6_401 };
                record(0, o, &format!(r#"{{"n":{n}}}"#))
            })
            .collect();
        hub.deliver_live(records).await;
    }
    assert_eq!(offsets(q.next(100).await).1, vec![0, 2, 4, 6, 8, 10]);
    assert_eq!(hub.published_next().get(&0), Some(&12));
}

#[tokio::test]
async fn the_index_renders_a_record_only_for_the_shapes_it_may_match() {
    // 1,000 clients, each its own equality filter: a record is evaluated for its one candidate
    // (the filter-error counter shows evaluations that fail: none here), and subscribing and
    // unsubscribing keep the index in step with the groups.
    let m = Metrics::default();
    let hub = TopicHub::new(
        "t",
        crate::filter::env(),
        m.clone(),
        ShapeLimits::topic(10_000),
    );
    hub.set_assigned(Some(BTreeMap::from([(0, 0)])));
    let queues: Vec<Arc<ClientQueue>> = (0..1000)
        .map(|_| queue(8, SlowClientPolicy::Drop, &m))
        .collect();
    let subs: Vec<Arc<Subscription>> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let f = format!("value.device == 'd{i}'");
            Subscription::new(i as u64, "s".into(), q.clone(), shape(Some(&f)), true)
        })
        .collect();
    for s in &subs {
        add(&hub, s.clone());
    }
    assert_eq!(hub.unindexed_count(), 0);
    let records: Vec<Arc<Record>> = [7, 500, 7]
        .iter()
        .enumerate()
        .map(|(o, d)| record(0, o as i64, &format!(r#"{{"device":"d{d}"}}"#)))
        .collect();
    let plan = hub.plan(&records);
    assert_eq!(
        plan.groups.len(),
        2,
        "candidates: only the two matching groups"
    );
    assert_eq!(plan.per_record.iter().map(Vec::len).sum::<usize>(), 3);
    hub.publish_batch(&records);
    assert_eq!(offsets(queues[7].next(10).await).1, vec![0, 2]);
    assert_eq!(offsets(queues[500].next(10).await).1, vec![1]);
    assert_eq!(queues[8].len(), 0);
    // Unsubscribed: no longer a candidate; subscribed again: found again.
    hub.remove(&subs[7]);
    hub.publish(record(0, 3, r#"{"device":"d7"}"#));
    assert_eq!(queues[7].len(), 0);
    assert!(
        hub.plan(&[record(0, 4, r#"{"device":"d7"}"#)])
            .groups
            .is_empty()
    );
    let again = Subscription::new(
        7,
        "s".into(),
        queues[7].clone(),
        shape(Some("value.device == 'd7'")),
        true,
    );
    add(&hub, again);
    hub.publish(record(0, 4, r#"{"device":"d7"}"#));
    assert_eq!(offsets(queues[7].next(10).await).1, vec![4]);
    // A record without the field (a tombstone, another kind of record): no filter on the path
    // can match it, so none is evaluated (issue 26 item 5; before, all 1,000 were, and failed).
    assert!(
        hub.plan(&[record(0, 5, r#"{"other":1}"#)])
            .groups
            .is_empty()
    );
    hub.publish(record(0, 5, r#"{"other":1}"#));
    assert_eq!(hub.filter_errors.get(), 0);
}

#[tokio::test]
async fn ranges_and_unfiltered_shapes_share_a_topic() {
    let m = Metrics::default();
    let hub = TopicHub::new(
        "t",
        crate::filter::env(),
        m.clone(),
        ShapeLimits::topic(1000),
    );
    hub.set_assigned(Some(BTreeMap::from([(0, 0)])));
    let qr = queue(64, SlowClientPolicy::Drop, &m);
    let qall = queue(64, SlowClientPolicy::Drop, &m);
    let qor = queue(64, SlowClientPolicy::Drop, &m);
    for i in 0..100 {
        let f = format!("value.b >= {} && value.b < {}", i * 10, i * 10 + 10);
        let q = if i == 42 {
            qr.clone()
        } else {
            queue(64, SlowClientPolicy::Drop, &m)
        };
        add(
            &hub,
            Subscription::new(i, "r".into(), q, shape(Some(&f)), true),
        );
    }
    add(&hub, sub("all", &qall, true));
    add(
        &hub,
        Subscription::new(
            200,
            "or".into(),
            qor.clone(),
            shape(Some("value.b == 1 || value.b == 425")),
            true,
        ),
    );
    let records: Vec<Arc<Record>> = [419, 420, 425, 429, 430, 1]
        .iter()
        .enumerate()
        .map(|(o, b)| record(0, o as i64, &format!(r#"{{"b":{b}}}"#)))
        .collect();
    let plan = hub.plan(&records);
    // Per record: its range (two at a bucket's edge, closed bounds), the unfiltered shape and
    // the unindexed `||`.
    assert!(
        plan.per_record.iter().all(|c| (3..=4).contains(&c.len())),
        "{:?}",
        plan.per_record
    );
    hub.publish_batch(&records);
    assert_eq!(offsets(qr.next(10).await).1, vec![1, 2, 3]);
    assert_eq!(offsets(qall.next(10).await).1, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(offsets(qor.next(10).await).1, vec![2, 5]);
}
