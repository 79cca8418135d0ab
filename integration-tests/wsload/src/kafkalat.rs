//! The Kafka leg alone: produce→consume latency of the load's records through librdkafka, with
//! no gateway: a `StreamConsumer` awaited on a tokio runtime (how the gateway reads) and a
//! `BaseConsumer` polled by a thread of its own, side by side on the same records. It tells how
//! much of the end-to-end latency is Kafka's and the client library's.

use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::scan::Scanner;

/// Latency percentiles of one consumer, ms.
#[derive(Debug, Clone)]
pub struct Leg {
    pub name: &'static str,
    pub records: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn config(brokers: &str, props: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", "wsload-kafka-latency")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

fn assignment(topic: &str, partitions: i32) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    Ok(tpl)
}

fn leg(name: &'static str, h: &Histogram<u64>) -> Leg {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    Leg {
        name,
        records: h.len(),
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        max_ms: h.max() as f64 / 1000.0,
    }
}

fn record(h: &mut Histogram<u64>, scanner: &Scanner, payload: Option<&[u8]>) {
    if let Some(p) = payload {
        let now = crate::now_us();
        scanner.stamps(p, |t| h.saturating_record(now.saturating_sub(t).max(1)));
    }
}

/// Consumes `topic` from its end with both consumers until `stop` is set; returns each one's
/// latencies. `props`: extra librdkafka properties for both.
pub fn measure(
    brokers: &str,
    topic: &str,
    partitions: i32,
    props: &[(String, String)],
    stop: &std::sync::atomic::AtomicBool,
    ready: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Vec<Leg>> {
    use std::sync::atomic::Ordering;
    let base: BaseConsumer = config(brokers, props).create().context("consumer")?;
    base.assign(&assignment(topic, partitions)?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stream: StreamConsumer = {
        let _in_runtime = rt.enter();
        config(brokers, props).create().context("consumer")?
    };
    stream.assign(&assignment(topic, partitions)?)?;
    std::thread::scope(|s| {
        let polled = s.spawn(|| -> anyhow::Result<Histogram<u64>> {
            let scanner = Scanner::default();
            let mut h = Histogram::new_with_bounds(1, 600_000_000, 3)?;
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = base.poll(Duration::from_millis(100)) {
                    record(&mut h, &scanner, m.payload());
                }
            }
            Ok(h)
        });
        let streamed = rt.block_on(async {
            let scanner = Scanner::default();
            let mut h = Histogram::new_with_bounds(1, 600_000_000, 3)?;
            ready.store(true, Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(m)) =
                    tokio::time::timeout(Duration::from_millis(100), stream.recv()).await
                {
                    record(&mut h, &scanner, m.payload());
                }
            }
            anyhow::Ok(h)
        })?;
        let polled = polled
            .join()
            .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
        Ok(vec![
            leg("StreamConsumer (tokio, as the gateway)", &streamed),
            leg("BaseConsumer::poll (own thread)", &polled),
        ])
    })
}
