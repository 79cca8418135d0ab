//! The realistic record of the benchmarks: `schemas/order.avsc` orders, encoded. Only
//! `apache-avro` is used here, so that the load tool (`integration-tests/wsload`, the sink
//! scenario) includes this file too; the gateway's decoder of these records is in
//! `order_decoder.rs`.

use apache_avro::types::Value as AV;

/// `schemas/order.avsc`.
pub const SCHEMA: &str = include_str!("../../../schemas/order.avsc");

/// `n` encoded orders (`schemas/order.avsc`) with varied contents.
#[allow(dead_code)] // not every includer uses both
pub fn records(schema: &apache_avro::Schema, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| encode(schema, i)).collect()
}

/// Order number `i`, Avro binary (no framing).
pub fn encode(schema: &apache_avro::Schema, i: usize) -> Vec<u8> {
    apache_avro::to_avro_datum(schema, order(i)).unwrap_or_else(|e| panic!("encoding: {e}"))
}

/// Order number `i`: contents vary with `i` (id, customer, status, amount, nullable unions, ...).
pub fn order(i: usize) -> AV {
    let s = |v: &str| AV::String(v.to_string());
    AV::Record(vec![
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
    ])
}
