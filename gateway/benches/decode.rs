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
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use lakewire::decode::Decoder;
use lakewire::record::RawRecord;

const N: usize = 1024;

#[path = "common/order_decoder.rs"]
mod order_decoder;
#[path = "common/orders.rs"]
mod orders;

fn raw(payload: &[u8]) -> RawRecord<'_> {
    RawRecord {
        partition: 0,
        offset: 1,
        timestamp: Some(1_732_690_000_000),
        key: Some(b"k"),
        payload: Some(payload),
        headers: None,
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
    let text = orders::SCHEMA;
    let schema = apache_avro::Schema::parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    let data = orders::records(&schema, N);
    let d = order_decoder::decoder();
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
