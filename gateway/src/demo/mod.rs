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
//!
//! This module runs the in-process demo; `synthetic.rs` makes the records and writes them at the
//! topics' rates, and `real_kafka.rs` is `produce_to`'s topic creation and schema registration.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::{
    AuthConfig, Config, ConfigError, KafkaConfig, PayloadFormat, TopicConfig, WebSocketConfig,
};
use crate::decode::schema::ParsedSchema;

mod real_kafka;
mod synthetic;

pub use real_kafka::produce_to;
use synthetic::{produce, single_object_prefix};

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
        include_str!("../../../schemas/trade.avsc"),
    ),
    (
        "sensors",
        2,
        10,
        "sensor_reading.avsc",
        include_str!("../../../schemas/sensor_reading.avsc"),
    ),
    (
        "orders",
        2,
        4,
        "order.avsc",
        include_str!("../../../schemas/order.avsc"),
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
            request_timeout_ms: 5_000,
            ..KafkaConfig::new(brokers)
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
    let producer = synthetic::producer(&brokers)?;
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
