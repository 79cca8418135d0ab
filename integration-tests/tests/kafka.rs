//! The gateway against a real Apache Kafka broker (started by `integration-tests/bin/kafka up`),
//! read over real WebSocket connections. Each test uses its own fresh topic.
#![cfg(feature = "real-kafka")]

use std::collections::BTreeMap;
use std::time::Duration;

use lakewire::config::Config;
use lakewire_integration_tests::{
    WsClient, brokers, config_toml, http_get, metric, unique_topic, wait_ready,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

async fn create_topic(name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn producer() -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()?)
}

/// Produces `payloads` to `topic` (partition `i % partitions`, key `k<i>`), in order, and waits
/// for each acknowledgement. Returns the (partition, offset) of each.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    partitions: i32,
    payloads: &[String],
) -> anyhow::Result<Vec<(i32, i64)>> {
    let mut at = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let key = format!("k{i}");
        let partition = i as i32 % partitions;
        let delivered = p
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        at.push((delivered.partition, delivered.offset));
    }
    Ok(at)
}

async fn gateway(topics: &[&str], extra: &str) -> anyhow::Result<lakewire::app::Running> {
    let config = Config::from_toml_and_env(&config_toml(&brokers(), topics, extra), &[], "test")?;
    let running = lakewire::app::start(config).await?;
    wait_ready(running.addr, T).await?;
    Ok(running)
}

fn payloads(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            json!({"n": i, "region": if i % 2 == 0 {"eu"} else {"us"}, "amount": i as f64 * 1.5})
                .to_string()
        })
        .collect()
}

fn ns(records: &[Value]) -> Vec<i64> {
    records
        .iter()
        .filter_map(|r| r["value"]["n"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_subscription_receives_what_is_produced_after_it() -> anyhow::Result<()> {
    let topic = unique_topic("latest");
    create_topic(&topic, 3).await?;
    let p = producer()?;
    // Records from before the subscription must not arrive.
    produce(&p, &topic, 3, &payloads(1000..1006)).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    let sub = ws
        .subscribe(json!({"op":"subscribe","id":"s1","topic":topic,"from":"latest"}))
        .await?;
    assert_eq!(sub["partitions"], json!([0, 1, 2]));
    let sent = produce(&p, &topic, 3, &payloads(0..30)).await?;
    let (records, others) = ws.records("s1", 30, T).await?;
    assert!(others.is_empty(), "{others:?}");
    let mut got = ns(&records);
    got.sort_unstable();
    assert_eq!(got, (0..30).collect::<Vec<_>>());
    // Envelope: the record's own partition, offset and key, and the value as produced.
    for r in &records {
        let n = r["value"]["n"].as_u64().unwrap_or(u64::MAX) as usize;
        assert_eq!(
            (r["partition"].as_i64(), r["offset"].as_i64()),
            (Some(sent[n].0 as i64), Some(sent[n].1)),
            "{r}"
        );
        assert_eq!(r["key"], format!("k{n}"));
        assert_eq!(r["value"]["amount"], json!(n as f64 * 1.5));
        assert!(
            r["timestamp"].as_i64().unwrap_or(0) > 1_600_000_000_000,
            "{r}"
        );
    }
    // Within a partition, offsets only go up.
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in &records {
        let (part, off) = (
            r["partition"].as_i64().unwrap_or(-1),
            r["offset"].as_i64().unwrap_or(-1),
        );
        assert!(
            last.insert(part, off).is_none_or(|prev| prev < off),
            "out of order: {records:?}"
        );
    }
    ws.close().await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_replays_history_then_continues_live() -> anyhow::Result<()> {
    let topic = unique_topic("earliest");
    create_topic(&topic, 2).await?;
    let p = producer()?;
    produce(&p, &topic, 2, &payloads(0..20)).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"e","topic":topic,"from":"earliest"}))
        .await?;
    let (history, _) = ws.records("e", 20, T).await?;
    let mut got = ns(&history);
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    produce(&p, &topic, 2, &payloads(20..25)).await?;
    let (live, _) = ws.records("e", 5, T).await?;
    let mut got = ns(&live);
    got.sort_unstable();
    assert_eq!(got, (20..25).collect::<Vec<_>>(), "no gap, no repeat");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_offsets_starts_exactly_there() -> anyhow::Result<()> {
    let topic = unique_topic("resume");
    create_topic(&topic, 1).await?;
    let p = producer()?;
    produce(&p, &topic, 1, &payloads(0..10)).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"r","topic":topic,"from":{"offsets":{"0":7}}}))
        .await?;
    let (records, _) = ws.records("r", 3, T).await?;
    assert_eq!(
        records
            .iter()
            .map(|r| r["offset"].as_i64().unwrap_or(-1))
            .collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    // Nothing else is pending: a ping is answered before any further record.
    ws.send(json!({"op":"ping"})).await?;
    assert_eq!(ws.next_json(T).await?, json!({"type":"pong"}));
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_record_is_counted_and_skipped() -> anyhow::Result<()> {
    let topic = unique_topic("badjson");
    create_topic(&topic, 1).await?;
    let p = producer()?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"b","topic":topic}))
        .await?;
    let mut batch = payloads(0..3);
    batch.insert(1, "{this is not json".to_string());
    produce(&p, &topic, 1, &batch).await?;
    let (records, others) = ws.records("b", 3, T).await?;
    assert_eq!(
        ns(&records),
        vec![0, 1, 2],
        "the records after the bad one still arrive"
    );
    assert_eq!(
        records[2]["offset"], 3,
        "the bad record kept its offset: {records:?}"
    );
    assert!(others.is_empty(), "{others:?}");
    let (_, body) = http_get(gw.addr, "/metrics").await?;
    let series = format!("lakewire_decode_errors_total{{topic=\"{topic}\",reason=\"bad_json\"}}");
    assert_eq!(metric(&body, &series), Some(1.0), "{body}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_one_live_consumer() -> anyhow::Result<()> {
    let topic = unique_topic("fanout");
    create_topic(&topic, 2).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut ws = WsClient::connect(gw.addr).await?;
        ws.subscribe(json!({"op":"subscribe","id":format!("c{i}"),"topic":topic}))
            .await?;
        clients.push(ws);
    }
    let p = producer()?;
    produce(&p, &topic, 2, &payloads(0..50)).await?;
    for (i, ws) in clients.iter_mut().enumerate() {
        let (records, _) = ws.records(&format!("c{i}"), 50, T).await?;
        let mut got = ns(&records);
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "client {i}");
    }
    let (_, body) = http_get(gw.addr, "/metrics").await?;
    // Read from Kafka once (50 records), written 20 times.
    let read = metric(
        &body,
        &format!("lakewire_kafka_records_total{{topic=\"{topic}\"}}"),
    );
    assert_eq!(read, Some(50.0), "{body}");
    assert_eq!(
        metric(&body, "lakewire_ws_records_sent_total"),
        Some(1000.0),
        "{body}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_created_after_start_becomes_ready() -> anyhow::Result<()> {
    let topic = unique_topic("late");
    let config = Config::from_toml_and_env(&config_toml(&brokers(), &[&topic], ""), &[], "test")?;
    let gw = lakewire::app::start(config).await?;
    let (status, body) = http_get(gw.addr, "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&topic), "{body}");
    create_topic(&topic, 1).await?;
    wait_ready(gw.addr, T).await?;
    gw.stop().await;
    Ok(())
}
