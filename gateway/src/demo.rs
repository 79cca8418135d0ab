//! Demo: `lakewire demo`, the embedded default. Starts librdkafka's in-process mock cluster, a
//! producer of synthetic Avro records (single-object encoding, schemas from `schemas/` embedded
//! in the binary) on three topics at steady rates, and the gateway on it. Input: a listen
//! address; output: a running gateway with data moving, and its dashboard at `/`.
//!
//! The mock cluster keeps a limited history per partition, so `earliest` starts at its log start.
//!
//! [`produce_to`] is the same producer against a real broker (`lakewire produce-demo`, the
//! demo producer of `docker-compose.yml`): it creates the topics, and with a schema registry
//! registers the schemas and writes the Confluent framing instead of single-object.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::{
    AuthConfig, Config, ConfigError, KafkaConfig, PayloadFormat, TopicConfig, WebSocketConfig,
};
use crate::decode::schema::ParsedSchema;

/// The demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the in-process Kafka cluster: {0}")]
    Cluster(#[source] rdkafka::error::KafkaError),
    #[error("cannot start the demo producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("cannot write the demo's schemas to {path}: {source}")]
    Schemas {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a demo schema is invalid: {0}")]
    Schema(String),
    #[error("cannot create the demo topics: {0}")]
    Topics(String),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
}

/// The demo's topics: name, partitions, records per second, schema file name and text.
pub const TOPICS: &[(&str, i32, u32, &str, &str)] = &[
    (
        "trades",
        3,
        50,
        "trade.avsc",
        include_str!("../../schemas/trade.avsc"),
    ),
    (
        "sensors",
        2,
        10,
        "sensor_reading.avsc",
        include_str!("../../schemas/sensor_reading.avsc"),
    ),
    (
        "orders",
        2,
        4,
        "order.avsc",
        include_str!("../../schemas/order.avsc"),
    ),
];

/// Writes the embedded schemas to a fresh folder, so the demo runs from any directory.
fn write_schemas() -> Result<PathBuf, DemoError> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lakewire-demo-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| DemoError::Schemas { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for (_, _, _, file, text) in TOPICS {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(dir)
}

/// The gateway configuration the demo runs with, before `LAKEWIRE_*` overrides: every topic
/// Avro single-object, its schema in `schemas_dir`.
pub fn config(brokers: String, listen: SocketAddr, schemas_dir: PathBuf) -> Config {
    Config {
        kafka: KafkaConfig {
            brokers,
            properties: Default::default(),
            request_timeout_ms: 5_000,
        },
        topics: TOPICS
            .iter()
            .map(|(name, _, _, file, _)| {
                let mut t = TopicConfig::new(*name, PayloadFormat::SingleObject);
                t.schema = Some(schemas_dir.join(file));
                t
            })
            .collect(),
        websocket: WebSocketConfig {
            listen,
            ..WebSocketConfig::default()
        },
        auth: AuthConfig::default(),
        schema_registry: None,
        schemas_dir,
        sink: None,
    }
}

/// A running demo: the in-process cluster, the producer and the gateway.
pub struct Demo {
    /// The gateway.
    pub running: app::Running,
    /// The in-process cluster's bootstrap address.
    pub brokers: String,
    cancel: CancellationToken,
    producing: tokio::task::JoinHandle<()>,
    // Last: the cluster must outlive every client of it.
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Demo {
    /// Stops the producer, then the gateway, then the cluster.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.producing.await {
            tracing::warn!(error = %e, "demo producer task failed");
        }
        self.running.stop().await;
    }
}

/// Starts the cluster, the gateway on `listen` and the producer.
pub async fn start(listen: SocketAddr, env: &[(String, String)]) -> Result<Demo, DemoError> {
    let cluster = MockCluster::new(1).map_err(DemoError::Cluster)?;
    for (name, partitions, ..) in TOPICS {
        cluster
            .create_topic(name, *partitions, 1)
            .map_err(DemoError::Cluster)?;
    }
    let brokers = cluster.bootstrap_servers();
    let schemas_dir = write_schemas()?;
    let config = config(brokers.clone(), listen, schemas_dir.clone()).with_env(env)?;
    let started = app::start(config).await;
    // The gateway has read the schemas by now (or failed to); the folder is no longer needed.
    let _ = std::fs::remove_dir_all(&schemas_dir);
    let running = started?;
    let schemas = TOPICS
        .iter()
        .map(|(_, _, _, _, text)| {
            ParsedSchema::parse(text)
                .map(|s| s.fingerprint)
                .map_err(|e| DemoError::Schema(e.to_string()))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(DemoError::Producer)?;
    let cancel = CancellationToken::new();
    let outputs = TOPICS
        .iter()
        .zip(&schemas)
        .map(|((name, ..), fp)| (name.to_string(), single_object_prefix(*fp)))
        .collect();
    let producing = tokio::spawn(produce(producer, outputs, cancel.clone()));
    Ok(Demo {
        running,
        brokers,
        cancel,
        producing,
        _cluster: cluster,
    })
}

/// Runs the demo until `stop` resolves.
pub async fn run(
    listen: SocketAddr,
    env: &[(String, String)],
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let demo = start(listen, env).await?;
    let addr = demo.running.addr;
    let s = if demo
        .running
        .services
        .config
        .websocket
        .tls_cert_file
        .is_some()
    {
        "s"
    } else {
        ""
    };
    // Written with errors ignored: a closed stdout (`lakewire demo | head`) must not end the demo.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Lakewire demo is running (in-process Kafka at {}).",
        demo.brokers
    );
    let _ = writeln!(out, "  Dashboard:  http{s}://{addr}/");
    let _ = writeln!(out, "  WebSocket:  ws{s}://{addr}/ws");
    if s.is_empty() {
        // (`lakewire tail` speaks plain ws:// only.)
        let _ = writeln!(
            out,
            "  Tail:       lakewire tail --url ws://{addr} trades --filter \"value.price > 200.0\""
        );
    }
    let _ = writeln!(out, "  Metrics:    http{s}://{addr}/metrics");
    let _ = writeln!(out, "Press ctrl-c to stop.");
    let _ = out.flush();
    drop(out);
    stop.await;
    demo.stop().await;
    Ok(())
}

/// The single-object framing of a record whose schema has fingerprint `fp`.
fn single_object_prefix(fp: u64) -> Vec<u8> {
    let mut p = vec![0xC3, 0x01];
    p.extend_from_slice(&fp.to_le_bytes());
    p
}

/// The Confluent framing of a record whose schema has registry id `id`.
fn confluent_prefix(id: u32) -> Vec<u8> {
    let mut p = vec![0x00];
    p.extend_from_slice(&id.to_be_bytes());
    p
}

/// How long `produce_to` keeps retrying the broker or the registry at start-up (they may still
/// be starting, as in `docker compose up`).
const START_RETRY: Duration = Duration::from_secs(120);

/// `lakewire produce-demo`: creates the demo topics on `brokers`, each name after
/// `topic_prefix` (an existing topic is kept), then writes the demo's synthetic records to them
/// until `stop` resolves. With `registry` the schemas are registered under `<topic>-value` and
/// records carry the Confluent framing (gateway topics with `format = "confluent"`); without,
/// the single-object framing.
pub async fn produce_to(
    brokers: &str,
    registry: Option<&str>,
    topic_prefix: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let names: Vec<String> = TOPICS
        .iter()
        .map(|(name, ..)| format!("{topic_prefix}{name}"))
        .collect();
    create_topics(brokers, &names).await?;
    let mut outputs = Vec::new();
    for ((_, _, _, _, text), topic) in TOPICS.iter().zip(names) {
        let prefix = match registry {
            Some(url) => confluent_prefix(register(url, &format!("{topic}-value"), text).await?),
            None => single_object_prefix(
                ParsedSchema::parse(text)
                    .map_err(|e| DemoError::Schema(e.to_string()))?
                    .fingerprint,
            ),
        };
        outputs.push((topic, prefix));
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(DemoError::Producer)?;
    let cancel = CancellationToken::new();
    tracing::info!(
        brokers,
        registry,
        topics = %outputs.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", "),
        "producing the demo topics"
    );
    let producing = tokio::spawn(produce(producer, outputs, cancel.clone()));
    stop.await;
    cancel.cancel();
    if let Err(e) = producing.await {
        tracing::warn!(error = %e, "demo producer task failed");
    }
    Ok(())
}

/// Creates the demo topics (`names`, in [`TOPICS`] order) with their partition counts, retrying
/// while the broker starts.
async fn create_topics(brokers: &str, names: &[String]) -> Result<(), DemoError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| DemoError::Topics(e.to_string()))?;
    let topics: Vec<NewTopic<'_>> = TOPICS
        .iter()
        .zip(names)
        .map(|((_, partitions, ..), name)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(1))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = tokio::time::Instant::now() + START_RETRY;
    loop {
        let failed = match admin.create_topics(&topics, &opts).await {
            Ok(results) => results
                .into_iter()
                .filter_map(|r| match r {
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) | Ok(_) => None,
                    Err((topic, code)) => Some(format!("{topic}: {code}")),
                })
                .collect::<Vec<_>>(),
            Err(e) => vec![e.to_string()],
        };
        if failed.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DemoError::Topics(failed.join(", ")));
        }
        tracing::warn!(errors = %failed.join(", "), "cannot create the demo topics yet; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Registers `schema` under `subject` in the Confluent-compatible registry at `url` and returns
/// its id, retrying while the registry starts.
async fn register(url: &str, subject: &str, schema: &str) -> Result<u32, DemoError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DemoError::Registry(e.to_string()))?;
    let endpoint = format!("{}/subjects/{subject}/versions", url.trim_end_matches('/'));
    let body = serde_json::json!({ "schema": schema }).to_string();
    let deadline = tokio::time::Instant::now() + START_RETRY;
    loop {
        let attempt = async {
            let resp = client
                .post(&endpoint)
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("POST {endpoint}: {status} {text}"));
            }
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["id"].as_u64())
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("POST {endpoint}: no id in {text}"))
        };
        match attempt.await {
            Ok(id) => return Ok(id),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(DemoError::Registry(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the demo schema yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Writes synthetic trades, sensor readings and orders until `cancel`, each topic at its rate:
/// `outputs[i]` is the Kafka topic of `TOPICS[i]` and the framing before each Avro body.
async fn produce(
    producer: FutureProducer,
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

#[cfg(test)]
mod tests {
    use super::*;

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
