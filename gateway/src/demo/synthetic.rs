//! The demo's synthetic records: trades, sensor readings and orders as Avro binary bodies of
//! the schemas in `schemas/`, generated deterministically with some life in them (walking prices,
//! readings that follow the time of day). Input: a producer, each topic's destination and
//! framing; output: records written at each topic's rate in [`TOPICS`] until cancelled. The
//! Avro encoding is written by hand: the demo needs the primitives only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::config::KafkaConfig;
use crate::kafka::{KafkaClients, KafkaContext};
use crate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use super::TOPICS;

/// The single-object framing of a record whose schema has fingerprint `fp`.
pub(super) fn single_object_prefix(fp: u64) -> Vec<u8> {
    let mut p = vec![0xC3, 0x01];
    p.extend_from_slice(&fp.to_le_bytes());
    p
}

/// Writes synthetic trades, sensor readings and orders until `cancel`, each topic at its rate:
/// `outputs[i]` is the Kafka topic of `TOPICS[i]` and the framing before each Avro body.
pub(super) async fn produce(
    producer: FutureProducer<KafkaContext>,
    outputs: Vec<(String, Vec<u8>)>,
    cancel: CancellationToken,
) {
    let mut synth = Synthetic::new();
    let tick = Duration::from_millis(100);
    let mut interval = tokio::time::interval(tick);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        ticks += 1;
        for ((topic, _, per_second, ..), (to, prefix)) in TOPICS.iter().zip(&outputs) {
            // Records due by this tick, so slow rates (4/s) come out evenly too.
            let due =
                (ticks * u64::from(*per_second)) / 10 - ((ticks - 1) * u64::from(*per_second)) / 10;
            for _ in 0..due {
                let now = now_ms();
                let (key, body) = synth.record(topic, now);
                let mut payload = Vec::with_capacity(body.len() + prefix.len());
                payload.extend_from_slice(prefix);
                payload.extend_from_slice(&body);
                let record = FutureRecord::to(to)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(now);
                if let Err((e, _)) = producer.send_result(record) {
                    tracing::warn!(topic, error = %e, "demo producer could not queue a record");
                }
            }
        }
    }
    let _ = producer.flush(Duration::from_secs(1));
}

/// Synthetic records with some life in them: prices walk, sensors drift with the time of day.
struct Synthetic {
    rng: XorShift,
    seq: i64,
    prices: Vec<f64>,
}

const SYMBOLS: &[&str] = &["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI"];
const SITES: &[(&str, f64, f64)] = &[
    ("lisbon", 38.72, -9.14),
    ("oslo", 59.91, 10.75),
    ("osaka", 34.69, 135.50),
    ("quito", -0.18, -78.47),
];
const TRADERS: &[&str] = &["ana", "bo", "chen", "dara", "eli"];
const CUSTOMERS: &[&str] = &["acme-corp", "globex", "initech", "stark", "wayne", "tyrell"];
const CITIES: &[(&str, &str)] = &[
    ("Lisbon", "PT"),
    ("Oslo", "NO"),
    ("Osaka", "JP"),
    ("Quito", "EC"),
    ("Berlin", "DE"),
];

impl Synthetic {
    fn new() -> Self {
        Self {
            rng: XorShift(0x9E37_79B9_7F4A_7C15),
            seq: 0,
            prices: vec![120.0, 85.0, 42.0, 230.0, 310.0],
        }
    }

    /// The key and the Avro binary body of the next record of `topic`.
    fn record(&mut self, topic: &str, now: i64) -> (String, Vec<u8>) {
        self.seq += 1;
        let mut w = AvroWriter::default();
        let rng = &mut self.rng;
        match topic {
            "trades" => {
                let i = rng.below(SYMBOLS.len() as u64) as usize;
                let step = (rng.below(201) as f64 - 100.0) / 1000.0;
                let price = (self.prices[i] * (1.0 + step / 10.0)).max(1.0);
                self.prices[i] = price;
                w.long(self.seq);
                w.long(now);
                w.string(SYMBOLS[i]);
                w.double((price * 100.0).round() / 100.0);
                w.long(1 + rng.below(500) as i64);
                w.long(rng.below(2) as i64);
                w.string("XLAK");
                match rng.below(4) {
                    0 => w.long(0),
                    n => {
                        w.long(1);
                        w.string(TRADERS[(n as usize + self.seq as usize) % TRADERS.len()]);
                    }
                }
                (SYMBOLS[i].to_string(), w.0)
            }
            "sensors" => {
                let (site, lat, lon) = SITES[rng.below(SITES.len() as u64) as usize];
                let sensor = format!("{site}-{:02}", rng.below(8));
                let day = ((now / 1000) % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
                w.string(&sensor);
                w.string(site);
                w.long(now);
                w.double(
                    ((15.0 + 8.0 * day.sin() + rng.below(30) as f64 / 10.0) * 10.0).round() / 10.0,
                );
                w.double((55.0 + 20.0 * day.cos() + rng.below(100) as f64 / 10.0).round());
                w.boolean(rng.below(20) != 0);
                w.double(lat + rng.below(100) as f64 / 10_000.0);
                w.double(lon + rng.below(100) as f64 / 10_000.0);
                (sensor, w.0)
            }
            _ => {
                let customer = CUSTOMERS[rng.below(CUSTOMERS.len() as u64) as usize];
                let quantity = 1 + rng.below(12) as i64;
                let price_cents = 499 + rng.below(20_000) as i64;
                let (city, country) = CITIES[rng.below(CITIES.len() as u64) as usize];
                w.long(self.seq);
                w.long(now);
                w.string(customer);
                w.long(rng.below(4) as i64); // status
                w.bytes(&decimal_bytes(price_cents * quantity));
                w.string("EUR");
                w.long(quantity);
                w.double(price_cents as f64 / 100.0);
                match rng.below(3) {
                    0 => {
                        w.long(1);
                        w.float(0.1);
                    }
                    _ => w.long(0),
                }
                w.boolean(rng.below(3) == 0);
                w.long(0); // coupon: null
                w.long(2); // tags: one block of two
                w.string("web");
                w.string(if quantity > 6 { "bulk" } else { "retail" });
                w.long(0);
                w.long(1); // attributes: one entry
                w.string("channel");
                w.string("demo");
                w.long(0);
                w.string(&format!("{} Harbour Street", 1 + rng.below(200)));
                w.string(city);
                w.string(&format!("{:05}", rng.below(99_999)));
                w.string(country);
                w.long(1);
                w.long(now / 86_400_000 + 2);
                (customer.to_string(), w.0)
            }
        }
    }
}

/// Avro binary encoding of the primitives the demo's schemas use (ints and longs share the
/// zig-zag varint; an enum or a union branch is its index as a long).
#[derive(Default)]
struct AvroWriter(Vec<u8>);

impl AvroWriter {
    fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8 & 0x7F) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }
    fn double(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn float(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn boolean(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.long(b.len() as i64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// The big-endian two's-complement bytes of a decimal's unscaled value, shortest form.
fn decimal_bytes(unscaled: i64) -> Vec<u8> {
    let all = unscaled.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (all[start], all[start + 1]);
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    all[start..].to_vec()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A tiny deterministic generator: the demo needs variety, not randomness.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The client factory for the demo's own clients on `brokers`.
pub(super) fn clients(brokers: &str) -> KafkaClients {
    KafkaClients::new(&KafkaConfig::new(brokers), &Metrics::default())
}

/// The demo's producer on `brokers` (from the shared client factory: its librdkafka logs are
/// rate-limited like the gateway's own clients').
pub(super) fn producer(brokers: &str) -> Result<FutureProducer<KafkaContext>, super::DemoError> {
    let clients = clients(brokers);
    clients
        .producer("lakewire-demo", 5)
        .create_with_context(clients.context("demo"))
        .map_err(super::DemoError::Producer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::schema::ParsedSchema;

    #[test]
    fn synthetic_records_are_valid_avro_of_their_topic_schema() -> anyhow::Result<()> {
        let mut synth = Synthetic::new();
        for (topic, _, _, _, text) in TOPICS {
            let schema = ParsedSchema::parse(text)?;
            for _ in 0..200 {
                let (key, body) = synth.record(topic, 1_764_000_000_000);
                assert!(!key.is_empty());
                let mut rest = &body[..];
                let value = apache_avro::from_avro_datum(&schema.avro, &mut rest, None)?;
                assert!(rest.is_empty(), "{topic}: {} bytes left over", rest.len());
                assert!(matches!(value, apache_avro::types::Value::Record(_)));
            }
        }
        Ok(())
    }

    #[test]
    fn decimal_bytes_are_the_shortest_twos_complement() {
        assert_eq!(decimal_bytes(0), vec![0]);
        assert_eq!(decimal_bytes(127), vec![0x7F]);
        assert_eq!(decimal_bytes(128), vec![0x00, 0x80]);
        assert_eq!(decimal_bytes(-1), vec![0xFF]);
        assert_eq!(decimal_bytes(-129), vec![0xFF, 0x7F]);
        assert_eq!(decimal_bytes(123_456), vec![0x01, 0xE2, 0x40]);
    }
}
