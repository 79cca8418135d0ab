//! Replays (subscriptions that start in the past) on librdkafka's in-process mock cluster: an
//! undecodable record is dead-lettered once, by the live consumer, not again by each replay
//! that reads it; a replay's place under the limits is freed when it catches up. (The limits
//! themselves: `services::tests`.)

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_tungstenite::tungstenite::Message;

mod common;

async fn send(producer: &FutureProducer, payload: &str) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::<(), _>::to("t").payload(payload),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

fn metric(running: &lakewire::app::Running, line_start: &str) -> Option<f64> {
    lakewire::metrics::render(&running.services.prometheus)
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn reply(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.contains(kind) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no {kind} frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_dead_letter_again_and_frees_its_place_when_caught_up()
-> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    cluster.create_topic("t.dlq", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let toml = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\ndead_letter_topic = \"t.dlq\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\n"
    );
    let running = common::start_ready(&toml, "t").await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    send(&producer, "{not json").await?;
    send(&producer, r#"{"n":1}"#).await?;
    let dead = r#"lakewire_dead_letter_records_total{topic="t"} "#;
    wait_for("the live consumer's dead letter", || {
        metric(&running, dead) == Some(1.0)
    })
    .await?;

    let url = format!("ws://{}/ws", running.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    ws.send(Message::text(
        r#"{"op":"subscribe","id":"r","topic":"t","from":"earliest"}"#,
    ))
    .await?;
    reply(&mut ws, "\"subscribed\"").await?;
    // The replay read both records (the good one reaches the client) ...
    let records = reply(&mut ws, "\"records\"").await?;
    assert!(records.contains(r#""n":1"#), "{records}");
    let replayed = r#"lakewire_kafka_replay_records_total{topic="t"} "#;
    wait_for("the replay to read both", || {
        metric(&running, replayed) == Some(2.0)
    })
    .await?;
    // ... and the bad one was counted, not sent to the dead-letter topic a second time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(metric(&running, dead), Some(1.0));

    // Its reader ended once it caught up, freeing its place under the replay limits.
    wait_for("the caught-up reader's place to be freed", || {
        metric(&running, "lakewire_ws_replays ") == Some(0.0)
    })
    .await?;
    Ok(())
}
