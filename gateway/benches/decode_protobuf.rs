//! `cargo bench -p lakewire --bench decode_protobuf`: Confluent-framed Protobuf to the JSON text
//! clients receive, for a ~15-field order message (nested message, enum, repeated, map, oneof,
//! `google.protobuf.Timestamp`, int64, double, bool), one core.
//!
//! - `lakewire`: the gateway's path, `Decoder::decode` of a `format = "confluent"` topic whose
//!   registry schema is Protobuf (the message-index list read, the message decoded with
//!   prost-reflect, its proto3 JSON written, plus the `Record` around it);
//! - `prost-reflect`: the plain path, `DynamicMessage::decode` of the bytes after the framing,
//!   then `serde_json::to_vec` with the same serialize options.
//!
//! Criterion measures both; then each runs alone for a fixed time and the records/s of each and
//! their ratio are printed.

use std::hint::black_box;
use std::sync::Arc;

use lakewire::config::Config;
use lakewire::decode::protobuf::{JSON_OPTIONS, ProtoSchema};
use lakewire::decode::registry::RegistrySchema;
use lakewire::decode::{DecodeContext, Decoder};
use lakewire::metrics::Metrics;
use lakewire::record::RawRecord;
use prost_reflect::prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};

const N: usize = 1024;

#[path = "common/compare.rs"]
mod compare;
const STATUSES: [&str; 3] = ["NEW", "PAID", "SHIPPED"];

const ORDER: &str = r#"syntax = "proto3";
package bench;
import "google/protobuf/timestamp.proto";

message Order {
  message Address { string street = 1; string city = 2; string zip = 3; string country = 4; }
  enum Status { NEW = 0; PAID = 1; SHIPPED = 2; }
  int64 id = 1;
  google.protobuf.Timestamp ts = 2;
  string customer = 3;
  Status status = 4;
  int64 amount_cents = 5;
  string currency = 6;
  int32 quantity = 7;
  double price = 8;
  bool express = 9;
  oneof promo { string coupon = 10; float discount = 11; }
  repeated string tags = 12;
  map<string, string> attributes = 13;
  Address ship_to = 14;
}
"#;

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

fn records(desc: &MessageDescriptor) -> Vec<Vec<u8>> {
    (0..N as i64)
        .map(|i| {
            let promo = if i % 2 == 0 {
                serde_json::json!({"coupon": format!("C{i}")})
            } else {
                serde_json::json!({"discount": 0.25})
            };
            let mut json = serde_json::json!({
                "id": i.to_string(),
                "ts": "2024-11-27T06:46:40.123Z",
                "customer": format!("customer-{i}"),
                "status": STATUSES[(i % 3) as usize],
                "amount_cents": (i * 137).to_string(),
                "currency": "EUR",
                "quantity": i % 7,
                "price": 1.5 + i as f64,
                "express": i % 3 == 0,
                "tags": ["a", "b", "c"],
                "attributes": {"channel": "web", "campaign": "winter"},
                "ship_to": {"street": "Main 1", "city": "Bern", "zip": "3000", "country": "CH"}
            });
            if let (Some(o), Some(p)) = (json.as_object_mut(), promo.as_object()) {
                o.extend(p.clone());
            }
            let msg =
                DynamicMessage::deserialize(desc.clone(), json).unwrap_or_else(|e| panic!("{e}"));
            // Confluent framing: 0x00, schema id 1, message indexes [0] (the single byte 0).
            let mut out = vec![0, 0, 0, 0, 1, 0];
            out.extend_from_slice(&msg.encode_to_vec());
            out
        })
        .collect()
}

fn lakewire_path(d: &Decoder, data: &[Vec<u8>]) -> usize {
    let mut bytes = 0;
    for p in data {
        let r = d.decode(&raw(p)).unwrap_or_else(|e| panic!("{e}"));
        bytes += black_box(r.value_json.len());
    }
    bytes
}

fn baseline_path(desc: &MessageDescriptor, data: &[Vec<u8>]) -> usize {
    let mut bytes = 0;
    for p in data {
        let msg = DynamicMessage::decode(desc.clone(), &p[6..]).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &JSON_OPTIONS)
            .unwrap_or_else(|e| panic!("{e}"));
        bytes += black_box(out.len());
    }
    bytes
}

fn main() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("order.proto"), ORDER).unwrap_or_else(|e| panic!("{e}"));
    let pool = protox::compile(["order.proto"], [dir.path()])
        .map(|set| {
            prost_reflect::DescriptorPool::from_file_descriptor_set(set)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let desc = pool
        .get_message_by_name("bench.Order")
        .unwrap_or_else(|| panic!("no bench.Order"));
    let data = records(&desc);

    let text = "[kafka]\nbrokers = \"127.0.0.1:1\"\n[schema_registry]\nurl = \"http://127.0.0.1:1\"\n\
                [[topics]]\nname = \"orders\"\nformat = \"confluent\"\n";
    let config = Config::from_toml_and_env(text, &[], "bench").unwrap_or_else(|e| panic!("{e}"));
    let cx = DecodeContext::new(&config, &Metrics::default()).unwrap_or_else(|e| panic!("{e}"));
    let schema = ProtoSchema::compile(1, ORDER, &[]).unwrap_or_else(|e| panic!("{e}"));
    cx.registry()
        .unwrap_or_else(|| panic!("no registry"))
        .preload(1, RegistrySchema::Protobuf(Arc::new(schema)));
    let d = Decoder::new(&config.topics[0], &cx).unwrap_or_else(|e| panic!("{e}"));

    // The two paths must give the same JSON before their speed means anything.
    for p in data.iter().take(16) {
        let ours = d.decode(&raw(p)).unwrap_or_else(|e| panic!("{e}"));
        let msg = DynamicMessage::decode(desc.clone(), &p[6..]).unwrap_or_else(|e| panic!("{e}"));
        let mut theirs = Vec::new();
        msg.serialize_with_options(&mut serde_json::Serializer::new(&mut theirs), &JSON_OPTIONS)
            .unwrap_or_else(|e| panic!("{e}"));
        // As values: a map field's entries come in no fixed order.
        let parse = |b: &[u8]| -> serde_json::Value {
            serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(parse(&ours.value_json), parse(&theirs));
    }
    let sample = d.decode(&raw(&data[5])).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "sample record as JSON: {}",
        String::from_utf8_lossy(&sample.value_json)
    );

    let (ours, base) = compare::ours_and_base(
        "decode_protobuf",
        N,
        ("lakewire", || lakewire_path(&d, &data)),
        ("prost-reflect", || baseline_path(&desc, &data)),
    );
    println!();
    println!(
        "decode, one core, Protobuf order ({} bytes avg, Confluent-framed):",
        data.iter().map(Vec::len).sum::<usize>() / N
    );
    println!("  lakewire (Decoder::decode -> JSON text + Record): {ours:>12.0} records/s");
    println!("  prost-reflect (DynamicMessage::decode -> to_vec): {base:>12.0} records/s");
    println!("  ratio: {:.2}x", ours / base);
}
