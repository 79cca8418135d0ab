//! The gateway's decoder of the benchmarks' orders (`orders.rs`, `schemas/order.avsc`).

use std::path::PathBuf;

use lakewire::config::{Config, PayloadFormat, TopicConfig};
use lakewire::decode::{DecodeContext, Decoder};
use lakewire::metrics::Metrics;

/// `schemas/order.avsc`.
pub fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/order.avsc")
}

/// The gateway's decoder of a `format = "raw"` topic of orders.
pub fn decoder() -> Decoder {
    let mut topic = TopicConfig::new("orders", PayloadFormat::Raw);
    topic.schema = Some(schema_path());
    let config = Config::from_toml_and_env("[kafka]\nbrokers = \"127.0.0.1:1\"\n", &[], "bench")
        .unwrap_or_else(|e| panic!("{e}"));
    let config = Config {
        topics: vec![topic.clone()],
        ..config
    };
    let cx = DecodeContext::new(&config, &Metrics::default()).unwrap_or_else(|e| panic!("{e}"));
    Decoder::new(&topic, &cx).unwrap_or_else(|e| panic!("{e}"))
}
