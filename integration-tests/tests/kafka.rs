//! The gateway against a real Apache Kafka broker (started by `integration-tests/bin/kafka up`),
//! read over real WebSocket connections. Each test uses its own fresh topic.
#![cfg(feature = "real-kafka")]

use std::collections::BTreeMap;
use std::time::Duration;

use lakewire::config::Config;
use lakewire_integration_tests::{
    WsClient, brokers, config_toml, create_topic, http_get, metric, unique_topic, wait_ready,
};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

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

fn admin() -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_exactly_the_records_its_filter_and_fields_select() -> anyhow::Result<()> {
    let topic = unique_topic("filters");
    create_topic(&topic, 2).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    type Selects = Box<dyn Fn(usize) -> bool>;
    let cases: Vec<(&str, Value, Selects)> = vec![
        (
            "eu",
            json!("value.region == 'eu'"),
            Box::new(|n| n % 2 == 0),
        ),
        ("third", json!("value.n % 3 == 0"), Box::new(|n| n % 3 == 0)),
        (
            "big",
            json!("value.amount > 60.0 && partition == 1"),
            Box::new(|n| n as f64 * 1.5 > 60.0 && n % 2 == 1),
        ),
        ("k7", json!("key == 'k7'"), Box::new(|n| n == 7)),
        ("none", json!("value.n > 1000"), Box::new(|_| false)),
    ];
    for (id, filter, _) in &cases {
        ws.subscribe(json!({"op":"subscribe","id":id,"topic":topic,"filter":filter}))
            .await?;
    }
    // A second client with the same filter as "eu" (same shape), and one with a projection.
    let mut twin = WsClient::connect(gw.addr).await?;
    twin.subscribe(
        json!({"op":"subscribe","id":"eu","topic":topic,"filter":"value.region == 'eu'"}),
    )
    .await?;
    twin.subscribe(json!({"op":"subscribe","id":"slim","topic":topic,"fields":["value.n"]}))
        .await?;
    let p = producer()?;
    produce(&p, &topic, 2, &payloads(0..60)).await?;
    // Every expected record, per subscription, then nothing more (a ping answers first).
    let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let expected_total: usize = cases
        .iter()
        .map(|(_, _, f)| (0..60).filter(|&n| f(n)).count())
        .sum();
    let mut n = 0;
    while n < expected_total {
        let v = ws
            .next_json(T)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; so far {got:?}"))?;
        assert_eq!(v["type"], "records", "{v}");
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let rs = v["records"].as_array().cloned().unwrap_or_default();
        n += rs.len();
        got.entry(id).or_default().extend(ns(&rs));
    }
    ws.send(json!({"op":"ping"})).await?;
    assert_eq!(
        ws.next_json(T).await?,
        json!({"type":"pong"}),
        "no extra records"
    );
    for (id, _, f) in &cases {
        let mut mine = got.remove(*id).unwrap_or_default();
        mine.sort_unstable();
        let want: Vec<i64> = (0..60).filter(|&n| f(n)).map(|n| n as i64).collect();
        assert_eq!(mine, want, "subscription {id}");
    }
    let mut twin_got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    while twin_got.values().map(Vec::len).sum::<usize>() < 90 {
        let v = twin.next_json(T).await?;
        assert_eq!(v["type"], "records", "{v}");
        let rs = v["records"].as_array().cloned().unwrap_or_default();
        twin_got
            .entry(v["id"].as_str().unwrap_or_default().to_string())
            .or_default()
            .extend(rs);
    }
    let eu = twin_got.remove("eu").unwrap_or_default();
    assert_eq!(
        ns(&eu).len(),
        30,
        "the second client of the same shape gets the same records"
    );
    let slim = twin_got.remove("slim").unwrap_or_default();
    assert_eq!(slim.len(), 60);
    for r in &slim {
        let keys: Vec<&String> = r
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["partition", "offset", "timestamp", "value"], "{r}");
        assert_eq!(r["value"].as_object().map(|o| o.len()), Some(1), "{r}");
    }
    let (_, body) = http_get(gw.addr, "/metrics").await?;
    assert_eq!(
        metric(
            &body,
            &format!("lakewire_kafka_records_total{{topic=\"{topic}\"}}")
        ),
        Some(60.0)
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filter_is_refused_with_the_problem_named() -> anyhow::Result<()> {
    let topic = unique_topic("badfilter");
    create_topic(&topic, 1).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    for (filter, needle) in [
        ("value.amount >", "syntax"),
        ("amount > 1", "unknown name \"amount\""),
        ("value.n + 1", "boolean"),
    ] {
        ws.send(json!({"op":"subscribe","id":"f","topic":topic,"filter":filter}))
            .await?;
        let e = ws.next_json(T).await?;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
            (Some("error"), Some("bad_filter"), Some("f")),
            "{e}"
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains(needle),
            "{e}"
        );
    }
    // The id was not taken by the refused attempts.
    ws.subscribe(json!({"op":"subscribe","id":"f","topic":topic,"filter":"value.n > 1"}))
        .await?;
    gw.stop().await;
    Ok(())
}

/// A gateway whose clients' queues hold 256 records (1 MiB) under the slow-client `policy`, a
/// client that subscribes and never reads, and one that reads everything; a 24 MB burst is
/// produced so the never-reading client's socket buffers fill and its queue overflows, while the
/// fast one has room for scheduling hiccups on a busy machine. Returns once the fast client has
/// received every record, in order.
async fn slow_and_fast(policy: &str) -> anyhow::Result<(lakewire::app::Running, WsClient)> {
    let topic = unique_topic("slow");
    create_topic(&topic, 1).await?;
    let gw = gateway(
        &[&topic],
        &format!("queue_size = 256\nslow_client = \"{policy}\""),
    )
    .await?;
    let mut slow = WsClient::connect(gw.addr).await?;
    slow.subscribe(json!({"op":"subscribe","id":"slow","topic":topic}))
        .await?;
    let mut fast = WsClient::connect(gw.addr).await?;
    fast.subscribe(json!({"op":"subscribe","id":"fast","topic":topic}))
        .await?;
    let pad = "x".repeat(8000);
    let batch: Vec<String> = (0..3000)
        .map(|n| json!({"n": n, "pad": pad}).to_string())
        .collect();
    let p = producer()?;
    let producing = tokio::spawn(async move { produce(&p, &topic, 1, &batch).await });
    let (records, _) = fast.records("fast", 3000, Duration::from_secs(60)).await?;
    assert_eq!(
        ns(&records),
        (0..3000).collect::<Vec<_>>(),
        "the fast client lost nothing"
    );
    producing.await??;
    Ok((gw, slow))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_gets_lagged_while_a_fast_client_gets_everything() -> anyhow::Result<()> {
    let (gw, mut slow) = slow_and_fast("drop").await?;
    // Now the slow one reads: it must be told it lost records.
    let schema = lakewire_integration_tests::ProtocolSchema::load()?;
    let mut lagged = 0;
    let mut received = 0;
    while received + lagged < 3000 {
        let v = slow.next_json(T).await?;
        schema.check_server(&v)?;
        match v["type"].as_str() {
            Some("lagged") => lagged += v["dropped"].as_u64().unwrap_or(0) as usize,
            Some("records") => received += v["records"].as_array().map_or(0, Vec::len),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    assert!(lagged > 0, "the slow client was never told it lagged");
    assert_eq!(
        received + lagged,
        3000,
        "every record is either delivered or counted as dropped"
    );
    let (_, body) = http_get(gw.addr, "/metrics").await?;
    assert_eq!(
        metric(
            &body,
            "lakewire_ws_dropped_records_total{reason=\"slow_client\"}"
        ),
        Some(lagged as f64)
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_disconnected_with_4008_under_the_disconnect_policy() -> anyhow::Result<()> {
    let (gw, mut slow) = slow_and_fast("disconnect").await?;
    let code = loop {
        match slow.next(T).await? {
            lakewire_integration_tests::Frame::Json(_) => continue,
            lakewire_integration_tests::Frame::Closed(c) => break c,
        }
    };
    assert_eq!(code.map(|c| c.0), Some(4008));
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_joins_the_live_stream_without_gap_or_duplicate_while_producing()
-> anyhow::Result<()> {
    let topic = unique_topic("join");
    create_topic(&topic, 3).await?;
    let p = producer()?;
    produce(&p, &topic, 3, &payloads(0..300)).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    // Keep producing while the replay runs and hands over.
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let p = producer()?;
            for chunk in (300..900).collect::<Vec<_>>().chunks(50) {
                produce(&p, &topic, 3, &payloads(chunk[0]..chunk[0] + chunk.len())).await?;
            }
            anyhow::Ok(())
        })
    };
    ws.subscribe(json!({"op":"subscribe","id":"j","topic":topic,"from":"earliest"}))
        .await?;
    let (records, _) = ws.records("j", 900, Duration::from_secs(60)).await?;
    producing.await??;
    let mut got = ns(&records);
    got.sort_unstable();
    assert_eq!(
        got,
        (0..900).collect::<Vec<_>>(),
        "every record exactly once"
    );
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in &records {
        let (part, off) = (
            r["partition"].as_i64().unwrap_or(-1),
            r["offset"].as_i64().unwrap_or(-1),
        );
        assert!(
            last.insert(part, off).is_none_or(|prev| prev + 1 == off),
            "partition {part}: {off} after {:?}",
            last.get(&part)
        );
    }
    ws.send(json!({"op":"ping"})).await?;
    assert_eq!(
        ws.next_json(T).await?,
        json!({"type":"pong"}),
        "no duplicate after the last record"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_timestamp_starts_at_the_first_record_at_or_after_it() -> anyhow::Result<()> {
    let topic = unique_topic("time");
    create_topic(&topic, 1).await?;
    let p = producer()?;
    let base = 1_700_000_000_000_i64;
    for i in 0..10_i64 {
        let payload = json!({"n": i}).to_string();
        p.send(
            FutureRecord::to(&topic)
                .key("k")
                .payload(&payload)
                .timestamp(base + i * 1000),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(
        json!({"op":"subscribe","id":"t","topic":topic,"from":{"timestamp": base + 4500}}),
    )
    .await?;
    let (records, _) = ws.records("t", 5, T).await?;
    assert_eq!(ns(&records), vec![5, 6, 7, 8, 9]);
    assert_eq!(records[0]["timestamp"], base + 5000);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_before_the_log_start_reports_a_gap() -> anyhow::Result<()> {
    let topic = unique_topic("gap");
    create_topic(&topic, 1).await?;
    let p = producer()?;
    produce(&p, &topic, 1, &payloads(0..10)).await?;
    // Retention, on demand: delete everything before offset 6.
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(6))?;
    admin()?.delete_records(&tpl, &AdminOptions::new()).await?;
    let gw = gateway(&[&topic], "").await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"g","topic":topic,"from":{"offsets":{"0":2}}}))
        .await?;
    let gap = ws.next_json(T).await?;
    lakewire_integration_tests::ProtocolSchema::load()?.check_server(&gap)?;
    assert_eq!(
        gap,
        json!({"type":"gap","id":"g","partition":0,"requested":2,"first_available":6})
    );
    let (records, _) = ws.records("g", 4, T).await?;
    assert_eq!(ns(&records), vec![6, 7, 8, 9]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_the_same_records_and_resumes_from_last_event_id() -> anyhow::Result<()> {
    use lakewire_integration_tests::SseClient;
    let topic = unique_topic("sse");
    create_topic(&topic, 2).await?;
    let p = producer()?;
    produce(&p, &topic, 2, &payloads(0..10)).await?;
    let gw = gateway(&[&topic], "").await?;
    let path = format!("/sse?topic={topic}&from=earliest&fields=value.n");
    let mut sse = SseClient::connect(gw.addr, &path, None).await?;
    assert_eq!(sse.status, 200);
    let first = sse.next(T).await?;
    assert_eq!(first.event, "subscribed", "{first:?}");
    let mut got = Vec::new();
    let mut last_id = None;
    while got.len() < 10 {
        let ev = sse.next(T).await?;
        assert_eq!(ev.event, "records", "{ev:?}");
        let v: Value = serde_json::from_str(&ev.data)?;
        got.extend(ns(v["records"].as_array().map_or(&[][..], |a| a)));
        last_id = ev.id;
    }
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    let last_id = last_id.unwrap_or_default();
    assert_eq!(
        last_id, "0:5,1:5",
        "the position after 5 records in each partition"
    );
    drop(sse);
    // Records produced while the client is away arrive after a resume, and nothing before them.
    produce(&p, &topic, 2, &payloads(10..16)).await?;
    let mut sse = SseClient::connect(gw.addr, &path, Some(&last_id)).await?;
    assert_eq!(sse.next(T).await?.event, "subscribed");
    let mut again = Vec::new();
    while again.len() < 6 {
        let ev = sse.next(T).await?;
        let v: Value = serde_json::from_str(&ev.data)?;
        again.extend(ns(v["records"].as_array().map_or(&[][..], |a| a)));
    }
    again.sort_unstable();
    assert_eq!(again, (10..16).collect::<Vec<_>>());
    // A refused subscription is an HTTP error with the protocol's error body.
    let bad = SseClient::connect(
        gw.addr,
        &format!("/sse?topic={topic}&filter=nope%20%3E%201"),
        None,
    )
    .await?;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("bad_filter"), "{}", bad.body);
    gw.stop().await;
    Ok(())
}
