//! The realistic record of the benchmarks: `schemas/order.avsc` orders, encoded.

use std::path::PathBuf;

use apache_avro::types::Value as AV;
use lakewire::config::{Config, PayloadFormat, TopicConfig};
use lakewire::decode::{DecodeContext, Decoder};
use lakewire::metrics::Metrics;

/// `n` encoded orders (`schemas/order.avsc`) with varied contents.
pub fn records(schema: &apache_avro::Schema, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let s = |v: &str| AV::String(v.to_string());
            let v = AV::Record(vec![
                ("id".into(), AV::Long(1_000_000 + i as i64)),
                (
                    "ts".into(),
                    AV::TimestampMillis(1_732_690_000_000 + i as i64),
                ),
                (
                    "customer".into(),
                    s(&format!("customer-{:05}", i * 7919 % 100_000)),
                ),
                (
                    "status".into(),
                    AV::Enum(
                        (i % 4) as u32,
                        ["NEW", "PAID", "SHIPPED", "CANCELLED"][i % 4].into(),
                    ),
                ),
                (
                    "amount".into(),
                    AV::Decimal(apache_avro::Decimal::from(
                        ((i as i64 * 1234 + 99) as i32).to_be_bytes(),
                    )),
                ),
                ("currency".into(), s("EUR")),
                ("quantity".into(), AV::Int((i % 17) as i32 + 1)),
                ("price".into(), AV::Double(12.5 + i as f64 * 0.25)),
                (
                    "discount".into(),
                    if i % 3 == 0 {
                        AV::Union(0, Box::new(AV::Null))
                    } else {
                        AV::Union(1, Box::new(AV::Float(0.1)))
                    },
                ),
                ("express".into(), AV::Boolean(i % 2 == 0)),
                (
                    "coupon".into(),
                    if i % 5 == 0 {
                        AV::Union(1, Box::new(s("WINTER-\"24\"")))
                    } else {
                        AV::Union(0, Box::new(AV::Null))
                    },
                ),
                (
                    "tags".into(),
                    AV::Array(vec![s("web"), s("eu"), s("priority")]),
                ),
                (
                    "attributes".into(),
                    AV::Map(
                        [
                            ("channel".to_string(), s("app")),
                            ("campaign".to_string(), s("autumn")),
                        ]
                        .into(),
                    ),
                ),
                (
                    "ship_to".into(),
                    AV::Record(vec![
                        ("street".into(), s("Königstraße 12")),
                        ("city".into(), s("Stuttgart")),
                        ("zip".into(), s("70173")),
                        ("country".into(), s("DE")),
                    ]),
                ),
                (
                    "delivery_date".into(),
                    AV::Union(1, Box::new(AV::Date(20_060 + (i % 30) as i32))),
                ),
            ]);
            apache_avro::to_avro_datum(schema, v).unwrap_or_else(|e| panic!("encoding: {e}"))
        })
        .collect()
}

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
