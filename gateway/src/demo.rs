//! Demo: `lakewire demo`, the embedded default. Starts librdkafka's in-process mock cluster, a
//! producer of synthetic records on two topics at a steady rate, and the gateway on it. Input: a
//! listen address; output: a running gateway with data moving.
//!
//! The mock cluster keeps a limited history per partition, so `earliest` starts at its log start.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::{
    AuthConfig, Config, ConfigError, KafkaConfig, PayloadFormat, TopicConfig, WebSocketConfig,
};

/// The demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the in-process Kafka cluster: {0}")]
    Cluster(#[source] rdkafka::error::KafkaError),
    #[error("cannot start the demo producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
}

/// The demo's topics: name, partitions, records per second.
pub const TOPICS: &[(&str, i32, u32)] = &[("trades", 3, 40), ("sensors", 2, 10)];

/// The gateway configuration the demo runs with, before `LAKEWIRE_*` overrides.
pub fn config(brokers: String, listen: SocketAddr) -> Config {
    Config {
        kafka: KafkaConfig {
            brokers,
            properties: Default::default(),
            request_timeout_ms: 5_000,
        },
        topics: TOPICS
            .iter()
            .map(|(name, _, _)| TopicConfig::new(*name, PayloadFormat::Json))
            .collect(),
        websocket: WebSocketConfig {
            listen,
            ..WebSocketConfig::default()
        },
        auth: AuthConfig::default(),
        schema_registry: None,
        schemas_dir: "schemas".into(),
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
    for (name, partitions, _) in TOPICS {
        cluster
            .create_topic(name, *partitions, 1)
            .map_err(DemoError::Cluster)?;
    }
    let brokers = cluster.bootstrap_servers();
    let config = config(brokers.clone(), listen).with_env(env)?;
    let running = app::start(config).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(DemoError::Producer)?;
    let cancel = CancellationToken::new();
    let producing = tokio::spawn(produce(producer, cancel.clone()));
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
    let _ = writeln!(
        out,
        "  Try:        {{\"op\":\"subscribe\",\"id\":\"s1\",\"topic\":\"trades\",\"from\":\"latest\"}}"
    );
    let _ = writeln!(out, "  Metrics:    http{s}://{addr}/metrics");
    let _ = writeln!(out, "Press ctrl-c to stop.");
    let _ = out.flush();
    drop(out);
    stop.await;
    demo.stop().await;
    Ok(())
}

/// Writes synthetic trades and sensor readings until `cancel`.
async fn produce(producer: FutureProducer, cancel: CancellationToken) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let tick = Duration::from_millis(100);
    let mut interval = tokio::time::interval(tick);
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        for (topic, _, per_second) in TOPICS {
            for _ in 0..(per_second / 10).max(1) {
                seq += 1;
                let (key, value) = synthetic(topic, seq, &mut rng);
                let payload = value.to_string();
                let record = FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(now_ms());
                if let Err((e, _)) = producer.send_result(record) {
                    tracing::warn!(topic, error = %e, "demo producer could not queue a record");
                }
            }
        }
    }
    let _ = producer.flush(Duration::from_secs(1));
}

fn synthetic(topic: &str, seq: u64, rng: &mut XorShift) -> (String, serde_json::Value) {
    const SYMBOLS: &[&str] = &["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI"];
    const SITES: &[&str] = &["lisbon", "oslo", "osaka", "quito"];
    match topic {
        "trades" => {
            let symbol = SYMBOLS[rng.below(SYMBOLS.len() as u64) as usize];
            let price = 50.0 + rng.below(20_000) as f64 / 100.0;
            (
                symbol.to_string(),
                json!({
                    "id": seq,
                    "symbol": symbol,
                    "price": price,
                    "quantity": 1 + rng.below(500),
                    "side": if rng.below(2) == 0 { "buy" } else { "sell" },
                    "venue": "XLAK",
                }),
            )
        }
        _ => {
            let site = SITES[rng.below(SITES.len() as u64) as usize];
            let sensor = format!("{site}-{:02}", rng.below(8));
            (
                sensor.clone(),
                json!({
                    "sensor_id": sensor,
                    "site": site,
                    "temperature_c": -5.0 + rng.below(400) as f64 / 10.0,
                    "humidity_pct": rng.below(1000) as f64 / 10.0,
                    "battery_ok": rng.below(20) != 0,
                }),
            )
        }
    }
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
