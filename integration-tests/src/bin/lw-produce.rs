//! `lw-produce BROKERS TOPIC PARTITIONS`: creates TOPIC with PARTITIONS partitions if it does not
//! exist, then writes one record per stdin line `PARTITION<TAB>KEY<TAB>VALUE` (the value as is,
//! e.g. JSON) and waits until Kafka has them all. For the browser tests, which drive the real
//! broker from Node without a Kafka client of their own.

use std::io::BufRead as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, partitions] = args.as_slice() else {
        bail!("usage: lw-produce BROKERS TOPIC PARTITIONS < lines of PARTITION\\tKEY\\tVALUE");
    };
    let partitions: i32 = partitions.parse().context("PARTITIONS")?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let created = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create {t}: {e}"),
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let lines = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<Vec<String>, _>>()?;
    let mut pending = Vec::new();
    for line in &lines {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(p), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad line (want PARTITION\\tKEY\\tVALUE): {line}");
        };
        let p: i32 = p.parse().context("PARTITION")?;
        let mut record = FutureRecord::to(topic).partition(p).key(key).payload(value);
        // send_result queues at once (send() would only queue when awaited, one at a time).
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        };
        pending.push(delivery);
        if pending.len() >= 1000 {
            for f in pending.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    println!(
        "produced {} record(s) to {topic}",
        lines.iter().filter(|l| !l.is_empty()).count()
    );
    Ok(())
}
