//! Avro records (Confluent wire format) through the real Apache Kafka broker and a
//! Confluent-compatible schema registry API to a WebSocket client: bad records are counted,
//! copied to the dead-letter topic and skipped, the stream goes on past them, and records wait
//! (not skipped) while the registry is down.
#![cfg(feature = "real-kafka")]

use std::time::Duration;

use apache_avro::types::Value as AV;
use lakewire::config::Config;
use lakewire_integration_tests::registry::{Registry, TestRegistry};
use lakewire_integration_tests::{
    WsClient, brokers, http_get, metric, registry_config_head, send_keyed, unique_topic, wait_ready,
};
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

const SCHEMA: &str = r#"{"type":"record","name":"Fill","namespace":"it","fields":[
  {"name":"n","type":"long"},
  {"name":"venue","type":["null","string"]},
  {"name":"px","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":3}}]}"#;

fn fill(id: u32, n: i64) -> anyhow::Result<Vec<u8>> {
    let schema = apache_avro::Schema::parse_str(SCHEMA)?;
    let datum = apache_avro::to_avro_datum(
        &schema,
        AV::Record(vec![
            ("n".into(), AV::Long(n)),
            (
                "venue".into(),
                AV::Union(1, Box::new(AV::String("XETR".into()))),
            ),
            (
                "px".into(),
                AV::Decimal(apache_avro::Decimal::from(
                    (n as i32 * 1000 + 5).to_be_bytes(),
                )),
            ),
        ]),
    )?;
    Ok(confluent(id, &datum))
}

fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(datum);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_through_kafka_and_registry_skips_bad_records_and_waits_for_the_registry()
-> anyhow::Result<()> {
    let topic = unique_topic("avro");
    let dlq = format!("{topic}-dlq");
    // The real registry, behind a proxy the test can switch off (an outage on cue).
    let real = Registry::start().await?;
    let id = real.register(&format!("{topic}-value"), SCHEMA).await?;
    let registry = TestRegistry::proxy(&real.url).await?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()?;
    // Creates the topic (auto-created on first produce) before the gateway starts.
    send_keyed(&p, &topic, &fill(id, -1)?).await?;

    let text = format!(
        "{}[[topics]]\nname = \"{topic}\"\nformat = \"confluent\"\ndead_letter_topic = \"{dlq}\"\n",
        registry_config_head(&registry.url)
    );
    let gw = lakewire::app::start(Config::from_toml_and_env(&text, &[], "test")?).await?;
    wait_ready(gw.addr, T).await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"s","topic":topic,"from":"latest"}))
        .await?;

    // The registry is down: the first record waits instead of being skipped.
    registry.set_down(true);
    send_keyed(&p, &topic, &fill(id, 0)?).await?;
    let early = ws.next_json(Duration::from_millis(1500)).await;
    assert!(
        early.is_err(),
        "a record arrived while the registry was down: {early:?}"
    );
    registry.set_down(false);

    send_keyed(&p, &topic, &[0x07, 0, 0, 0, 7, 2]).await?; // wrong magic byte
    send_keyed(&p, &topic, &fill(id, 1)?).await?;
    let good = fill(id, 2)?;
    send_keyed(&p, &topic, &good[..good.len() - 2]).await?; // truncated
    send_keyed(&p, &topic, &confluent(424_242, &good[5..])).await?; // unknown schema id
    send_keyed(&p, &topic, &good).await?;

    let (records, others) = ws.records("s", 3, T).await?;
    assert!(others.is_empty(), "{others:?}");
    let values: Vec<_> = records.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        values,
        vec![
            json!({"n":0,"venue":"XETR","px":"0.005"}),
            json!({"n":1,"venue":"XETR","px":"1.005"}),
            json!({"n":2,"venue":"XETR","px":"2.005"}),
        ]
    );

    let (_, body) = http_get(gw.addr, "/metrics").await?;
    for reason in ["wrong_magic", "truncated", "unknown_schema_id"] {
        let series =
            format!("lakewire_decode_errors_total{{topic=\"{topic}\",reason=\"{reason}\"}}");
        assert_eq!(metric(&body, &series), Some(1.0), "{series} in\n{body}");
    }
    assert!(
        metric(&body, "lakewire_schema_registry_failures_total").unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "lakewire_schema_registry_waiting"),
        Some(0.0),
        "{body}"
    );

    // The three bad records, as they were, with the reason in a header.
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "avro-dlq-check")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlq, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let m = tokio::time::timeout(T, c.recv()).await??;
        let reason = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "lakewire.error.reason")
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        });
        reasons.push(reason.unwrap_or_default());
        if reasons.len() == 1 {
            assert_eq!(m.payload(), Some(&[0x07, 0, 0, 0, 7, 2][..]));
        }
    }
    assert_eq!(reasons, ["wrong_magic", "truncated", "unknown_schema_id"]);

    ws.close().await?;
    gw.stop().await;
    Ok(())
}
