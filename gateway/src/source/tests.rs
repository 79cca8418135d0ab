use super::*;
use crate::config::SlowClientPolicy;
use crate::filter::{Limits, Shape};
use crate::hub::{ClientQueue, ShapeLimits, Subscription};

fn record(partition: i32, offset: i64) -> Arc<Record> {
    Arc::new(Record::new(
        Arc::from("t"),
        partition,
        offset,
        None,
        None,
        bytes::Bytes::from_static(b"{}"),
    ))
}

#[test]
fn a_partition_added_later_reaches_a_replay_that_is_not_all_live() {
    let metrics = Metrics::default();
    let hub = TopicHub::new(
        "t",
        crate::filter::env(),
        metrics.clone(),
        ShapeLimits::topic(10),
    );
    hub.set_assigned(Some(BTreeMap::from([(0, 0)])));
    let limits = Limits {
        max_filter_bytes: 100,
        max_filter_nodes: 100,
        max_fields: 4,
    };
    let shape = Shape::new(None, None, hub.env(), &limits).unwrap_or_else(|e| panic!("{e}"));
    let queue = ClientQueue::new(16, 1 << 20, SlowClientPolicy::Drop, metrics);
    let sub = Subscription::new(1, "s".into(), queue.clone(), Arc::new(shape), false);
    hub.add(sub.clone()).unwrap_or_else(|e| panic!("{e}"));
    let followers = Followers::default();
    assert_eq!(followers.follow(&hub, &sub), BTreeMap::from([(0, 0)]));
    // Its reader was ahead of the live consumer when it handed partition 0 over: the hub
    // goes on checking each record against the hand-over offsets, and knows of no other.
    assert!(hub.try_go_live(&sub, 0, 3));
    followers.add_partitions(&hub, &BTreeMap::from([(1, 0)]));
    assert_eq!(hub.assigned(), Some(vec![0, 1]));
    hub.publish_batch(&[record(0, 2), record(0, 3), record(1, 0)]);
    // (0, 2) was the reader's; (0, 3) and the new partition's first record are live.
    assert_eq!(queue.len(), 2);
}

#[test]
fn kafka_tls_and_sasl_properties_are_supported() {
    // librdkafka refuses these at client creation when built without OpenSSL.
    let config = KafkaConfig {
        request_timeout_ms: 1000,
        properties: [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..KafkaConfig::new("127.0.0.1:1")
    };
    if let Err(e) = Kafka::new(&config, Metrics::default()) {
        panic!("{e}");
    }
}
