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

use lakewire::decode::Decoder;
use lakewire::record::RawRecord;

const N: usize = 1024;

#[path = "common/compare.rs"]
mod compare;

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

    let (ours, base) = compare::ours_and_base(
        "decode",
        N,
        ("lakewire", || lakewire_path(&d, &data)),
        ("apache-avro", || baseline_path(&schema, &data)),
    );
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
