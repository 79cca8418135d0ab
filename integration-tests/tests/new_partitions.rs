//! Partitions added to a topic while the gateway serves it (a real Apache Kafka broker, started
//! by `integration-tests/bin/kafka up`): the live consumer finds them within
//! `kafka.partition_refresh_ms` and reads them from their first record, so `latest`
//! subscribers, replays that had started and replays that start later all get every record of
//! them, once.
#![cfg(feature = "real-kafka")]

use std::time::{Duration, Instant};

use lakewire::config::Config;
use lakewire_integration_tests::{
    WsClient, brokers, config_toml, create_topic, http_get, unique_topic, wait_ready,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// Produces `{"n": n}` to `partition` for each `n`, retrying while the producer does not know
/// the partition yet (it was just added).
async fn produce(topic: &str, partition: i32, ns: std::ops::Range<i64>) -> anyhow::Result<()> {
    // A producer of its own: its metadata is fetched now, after the partitions were added.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()?;
    for n in ns {
        let payload = json!({ "n": n }).to_string();
        let deadline = Instant::now() + T;
        loop {
            let sent = p
                .send(
                    FutureRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&payload),
                    Duration::from_secs(5),
                )
                .await;
            match sent {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err((e, _)) => anyhow::bail!("produce to partition {partition}: {e}"),
            }
        }
    }
    Ok(())
}

/// The `(partition, n)` of each record, sorted.
fn seen(records: &[Value]) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = records
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap_or(-1),
                r["value"]["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    v.sort_unstable();
    v
}

/// Waits until `/api/topics` lists `want` as the topic's partitions; returns how long it took.
async fn wait_partitions(
    addr: std::net::SocketAddr,
    want: Value,
    within: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let (_, body) = http_get(addr, "/api/topics").await?;
        let topics: Value = serde_json::from_str(&body)?;
        if topics[0]["partitions"] == want {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < within,
            "partitions still {} after {within:?}",
            topics[0]["partitions"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_a_topic_reach_every_subscription_from_their_start()
-> anyhow::Result<()> {
    let topic = unique_topic("grow");
    create_topic(&topic, 1).await?;
    let toml = config_toml(&brokers(), &[&topic], "").replace(
        "request_timeout_ms = 5000",
        "request_timeout_ms = 5000\npartition_refresh_ms = 2000",
    );
    let gw = lakewire::app::start(Config::from_toml_and_env(&toml, &[], "test")?).await?;
    wait_ready(gw.addr, T).await?;

    let mut latest = WsClient::connect(gw.addr).await?;
    let sub = latest
        .subscribe(json!({"op":"subscribe","id":"l","topic":topic,"from":"latest"}))
        .await?;
    assert_eq!(sub["partitions"], json!([0]));
    // A replay: it reads partition 0 from its start, then follows the live stream.
    produce(&topic, 0, 0..4).await?;
    let mut replay = WsClient::connect(gw.addr).await?;
    replay
        .subscribe(json!({"op":"subscribe","id":"r","topic":topic,"from":"earliest"}))
        .await?;

    // Two partitions more, written to at once: before the gateway can know of them.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    for r in admin
        .create_partitions(&[NewPartitions::new(&topic, 3)], &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create partitions of {t}: {e:?}"))?;
    }
    produce(&topic, 1, 4..7).await?;
    produce(&topic, 2, 7..10).await?;
    // Found within the refresh interval (plus a metadata round trip and the poll here).
    let took = wait_partitions(gw.addr, json!([0, 1, 2]), Duration::from_secs(10)).await?;
    assert!(took < Duration::from_secs(5), "found after {took:?}");
    produce(&topic, 0, 10..12).await?;
    produce(&topic, 1, 12..14).await?;
    produce(&topic, 2, 14..16).await?;

    let mut want: Vec<(i64, i64)> = (0..16)
        .map(|n| {
            let p = match n {
                0..4 | 10..12 => 0,
                4..7 | 12..14 => 1,
                _ => 2,
            };
            (p, n)
        })
        .collect();
    want.sort_unstable();
    // Everything was produced after it subscribed.
    let (got, _) = latest.records("l", want.len(), T).await?;
    assert_eq!(seen(&got), want, "latest subscriber");
    let (got, _) = replay.records("r", want.len(), T).await?;
    assert_eq!(
        seen(&got),
        want,
        "replay started before the partitions were added"
    );
    // A replay that starts now knows the new partitions.
    let mut late = WsClient::connect(gw.addr).await?;
    let sub = late
        .subscribe(json!({"op":"subscribe","id":"z","topic":topic,"from":"earliest"}))
        .await?;
    assert_eq!(sub["partitions"], json!([0, 1, 2]));
    let (got, _) = late.records("z", want.len(), T).await?;
    assert_eq!(
        seen(&got),
        want,
        "replay started after the partitions were added"
    );
    // And nothing twice: one more record each, and it is the next thing every one gets.
    produce(&topic, 2, 16..17).await?;
    for (ws, id) in [(&mut latest, "l"), (&mut replay, "r"), (&mut late, "z")] {
        let (got, _) = ws.records(id, 1, T).await?;
        assert_eq!(seen(&got), vec![(2, 16)], "{id}");
    }
    gw.stop().await;
    Ok(())
}
