//! `cargo bench -p lakewire --bench decode`: Avro binary to the JSON text clients receive, for
//! the ~15-field `schemas/order.avsc` record (nested record, unions, map, array, decimal, enum,
//! timestamp, date), one core.
//!
//! - `lakewire`: the gateway's path, `Decoder::decode` of a raw-Avro topic (the record's JSON
//!   text written straight from the binary, plus the `Record` around it);
//! - `apache-avro`: the plain path, `from_avro_datum` to an `apache_avro::types::Value`, then to
//!   `serde_json::Value` and its text.
//!
//! Criterion measures both; then each runs alone for a fixed time and the records/s of each and
//! their ratio are printed.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use apache_avro::types::Value as AV;
use criterion::{Criterion, Throughput};
use lakewire::config::{Config, PayloadFormat, TopicConfig};
use lakewire::decode::{DecodeContext, Decoder, RawRecord};
use lakewire::metrics::Metrics;

const N: usize = 1024;

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/order.avsc")
}

/// `N` encoded orders with varied contents.
fn records(schema: &apache_avro::Schema) -> Vec<Vec<u8>> {
    (0..N)
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

fn decoder() -> Decoder {
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

fn raw(payload: &[u8]) -> RawRecord<'_> {
    RawRecord {
        partition: 0,
        offset: 1,
        timestamp: Some(1_732_690_000_000),
        key: Some(b"k"),
        payload: Some(payload),
    }
}

fn lakewire_path(d: &Decoder, data: &[Vec<u8>]) -> usize {
    let mut bytes = 0;
    for p in data {
        let r = d.decode(&raw(p)).unwrap_or_else(|e| panic!("{e}"));
        bytes += black_box(r.value_json.len());
    }
    bytes
}

fn baseline_path(schema: &apache_avro::Schema, data: &[Vec<u8>]) -> usize {
    let mut bytes = 0;
    for p in data {
        let v = apache_avro::from_avro_datum(schema, &mut p.as_slice(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::Value::try_from(v).unwrap_or_else(|e| panic!("{e}"));
        bytes += black_box(serde_json::to_vec(&json).map_or(0, |v| v.len()));
    }
    bytes
}

/// Records per second of `f` (which handles `N` records per call), run for about `secs`.
fn rate(secs: f64, mut f: impl FnMut() -> usize) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        black_box(f());
        n += N;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let text = std::fs::read_to_string(schema_path()).unwrap_or_else(|e| panic!("{e}"));
    let schema = apache_avro::Schema::parse_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let data = records(&schema);
    let d = decoder();
    // The two paths must read the same records before their speed means anything.
    for p in data.iter().take(16) {
        let ours: serde_json::Value = serde_json::from_slice(
            &d.decode(&raw(p))
                .unwrap_or_else(|e| panic!("{e}"))
                .value_json,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let v = apache_avro::from_avro_datum(&schema, &mut p.as_slice(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let theirs = serde_json::Value::try_from(v).unwrap_or_else(|e| panic!("{e}"));
        for field in [
            "id", "ts", "customer", "quantity", "price", "tags", "ship_to",
        ] {
            assert_eq!(ours[field], theirs[field], "{field}");
        }
    }
    let sample: serde_json::Value = serde_json::from_slice(
        &d.decode(&raw(&data[5]))
            .unwrap_or_else(|e| panic!("{e}"))
            .value_json,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("sample record as JSON: {sample}");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("lakewire", |b| b.iter(|| lakewire_path(&d, &data)));
    g.bench_function("apache-avro", |b| b.iter(|| baseline_path(&schema, &data)));
    g.finish();
    c.final_summary();

    let ours = rate(3.0, || lakewire_path(&d, &data));
    let base = rate(3.0, || baseline_path(&schema, &data));
    println!();
    println!(
        "decode, one core, schemas/order.avsc ({} bytes avg Avro):",
        data.iter().map(Vec::len).sum::<usize>() / N
    );
    println!(
        "  lakewire (Avro -> JSON text):               {:>12.0} records/s",
        ours
    );
    println!(
        "  apache-avro (from_avro_datum -> serde_json): {:>12.0} records/s",
        base
    );
    println!("  ratio: {:.1}x", ours / base);
}
