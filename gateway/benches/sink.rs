//! `cargo bench -p lakewire --bench sink`: the sink's CPU work per record, on one core, for the
//! realistic record of the decode benchmark (`schemas/order.avsc`, 1024 different encodings,
//! cycled), with the gateway's JSON decode measured in the same run as the baseline:
//!
//! - `json` (baseline): `Decoder::decode`, the WebSocket path (Avro → JSON text);
//! - `arrow`: Avro → Arrow builders → `RecordBatch` (`sink::avro_to_arrow::BatchBuilder`), files of
//!   100,000 rows;
//! - `parquet zstd` / `parquet snappy`: the same, plus the Parquet encoding of each file
//!   (`sink::encode`): everything the sink worker does per record except Kafka and storage I/O;
//! - `arrow-avro`: the `arrow-avro` crate's decoder on the same records (Confluent framing, the
//!   schema registered under an id), batches of 8192 rows, for comparison with `arrow`.
//!
//! Before timing, it checks that the Arrow rows hold the values the JSON path decodes. Each path
//! runs alone for 3 s; the benchmark prints records/s, µs per record and the ratio to the
//! baseline.

use std::hint::black_box;
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use lakewire::config::SinkCompression;
use lakewire::record::RawRecord;
use lakewire::sink::avro_to_arrow::{BatchBuilder, Meta};

#[path = "common/compare.rs"]
#[allow(dead_code)] // its rate only
mod compare;
#[path = "common/order_decoder.rs"]
mod order_decoder;
#[path = "common/orders.rs"]
mod orders;

const N: usize = 1024;
const FILE_ROWS: usize = 100_000;
const SECS: f64 = 3.0;

fn raw(payload: &[u8], offset: i64) -> RawRecord<'_> {
    RawRecord {
        partition: 0,
        offset,
        timestamp: Some(1_732_690_000_000 + offset),
        key: None,
        payload: Some(payload),
        headers: None,
    }
}

/// One file's worth of rows through the builders; its batches.
fn build(json: &Arc<serde_json::Value>, data: &[Vec<u8>]) -> Vec<arrow_array::RecordBatch> {
    let mut b = BatchBuilder::new(json.clone(), Arc::from("orders"), 0, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..FILE_ROWS {
        let meta = Meta {
            offset: i as i64,
            timestamp: Some(1_732_690_000_000 + i as i64),
            ..Meta::default()
        };
        b.append(&data[i % N], meta)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    b.finish().unwrap_or_else(|e| panic!("{e}"))
}

/// The same rows through `arrow-avro` (records framed as Confluent messages, schema id 1).
fn build_arrow_avro(text: &str, framed: &[Vec<u8>]) -> Vec<arrow_array::RecordBatch> {
    use arrow_avro::reader::ReaderBuilder;
    use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(1), AvroSchema::new(text.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut d = ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(8192)
        .build_decoder()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for i in 0..FILE_ROWS {
        d.decode(&framed[i % N]).unwrap_or_else(|e| panic!("{e}"));
        if d.batch_is_full() {
            out.extend(d.flush().unwrap_or_else(|e| panic!("{e}")));
        }
    }
    out.extend(d.flush().unwrap_or_else(|e| panic!("{e}")));
    out
}

/// Records per second of `f` (which handles `per_call` records), run for about `SECS`.
fn rate(per_call: usize, f: impl FnMut() -> usize) -> f64 {
    compare::rate(per_call, SECS, f)
}

fn main() {
    let text = orders::SCHEMA;
    let schema = apache_avro::Schema::parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    let json: Arc<serde_json::Value> =
        Arc::new(serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}")));
    let data = orders::records(&schema, N);
    let d = order_decoder::decoder();

    // Both paths must read the same values before their speed means anything.
    let batches = build(&json, &data);
    let batch = &batches[0];
    for (i, p) in data.iter().enumerate().take(16) {
        let r = d
            .decode(&raw(p, i as i64))
            .unwrap_or_else(|e| panic!("{e}"));
        let v = r.value();
        let id = batch
            .column_by_name("id")
            .map(|c| c.as_primitive::<arrow_array::types::Int64Type>().value(i));
        assert_eq!(id, v["id"].as_i64(), "id of record {i}");
        let customer = batch
            .column_by_name("customer")
            .map(|c| c.as_string::<i32>().value(i).to_string());
        assert_eq!(customer.as_deref(), v["customer"].as_str(), "customer {i}");
        let city = batch.column_by_name("ship_to").and_then(|c| {
            c.as_struct()
                .column_by_name("city")
                .map(|c| c.as_string::<i32>().value(i).to_string())
        });
        assert_eq!(city.as_deref(), v["ship_to"]["city"].as_str(), "city {i}");
        let discount = batch.column_by_name("discount").map(|c| c.is_null(i));
        assert_eq!(discount, Some(v["discount"].is_null()), "discount {i}");
    }
    let framed: Vec<Vec<u8>> = data
        .iter()
        .map(|d| [&[0u8, 0, 0, 0, 1][..], d].concat())
        .collect();
    let theirs = build_arrow_avro(text, &framed);
    assert_eq!(
        theirs.iter().map(|b| b.num_rows()).sum::<usize>(),
        FILE_ROWS,
        "arrow-avro rows"
    );
    for name in ["id", "customer", "amount"] {
        let ours = batch.column_by_name(name).map(|c| c.slice(0, 16));
        let other = theirs[0].column_by_name(name).map(|c| c.slice(0, 16));
        let same = match (&ours, &other) {
            (Some(a), Some(b)) => a.to_data() == b.to_data(),
            _ => false,
        };
        assert!(same, "arrow-avro reads {name} differently");
    }
    let ts_type = |b: &arrow_array::RecordBatch| {
        b.schema()
            .field_with_name("ts")
            .map(|f| f.data_type().to_string())
            .unwrap_or_default()
    };
    println!(
        "ts column: ours {}, arrow-avro {}",
        ts_type(batch),
        ts_type(&theirs[0])
    );
    let avro_bytes: usize = data.iter().map(Vec::len).sum::<usize>() / N;
    let schema_ref = batch.schema();
    let zstd = lakewire::sink::encode(&batches, &schema_ref, SinkCompression::Zstd)
        .unwrap_or_else(|e| panic!("{e}"));
    let snappy = lakewire::sink::encode(&batches, &schema_ref, SinkCompression::Snappy)
        .unwrap_or_else(|e| panic!("{e}"));

    let json_rate = rate(N, || {
        let mut bytes = 0;
        for (i, p) in data.iter().enumerate() {
            let r = d
                .decode(&raw(p, i as i64))
                .unwrap_or_else(|e| panic!("{e}"));
            bytes += black_box(r.value_json.len());
        }
        bytes
    });
    let arrow_rate = rate(FILE_ROWS, || build(&json, &data).len());
    let arrow_avro_rate = rate(FILE_ROWS, || build_arrow_avro(text, &framed).len());
    let zstd_rate = rate(FILE_ROWS, || {
        let b = build(&json, &data);
        lakewire::sink::encode(&b, &schema_ref, SinkCompression::Zstd).map_or(0, |v| v.len())
    });
    let snappy_rate = rate(FILE_ROWS, || {
        let b = build(&json, &data);
        lakewire::sink::encode(&b, &schema_ref, SinkCompression::Snappy).map_or(0, |v| v.len())
    });

    println!(
        "record: schemas/order.avsc, {avro_bytes} bytes of Avro on average; files of {FILE_ROWS} rows: \
         {:.1} bytes/row with zstd, {:.1} with snappy",
        zstd.len() as f64 / FILE_ROWS as f64,
        snappy.len() as f64 / FILE_ROWS as f64
    );
    println!(
        "{:<44} {:>14} {:>10} {:>8}",
        "path (one core)", "records/s", "µs/record", "ratio"
    );
    for (name, r) in [
        ("json: Decoder::decode (baseline)", json_rate),
        ("arrow: Avro -> Arrow RecordBatch", arrow_rate),
        (
            "arrow-avro: Avro -> Arrow (arrow-avro crate)",
            arrow_avro_rate,
        ),
        ("parquet zstd: Avro -> Arrow -> Parquet", zstd_rate),
        ("parquet snappy: Avro -> Arrow -> Parquet", snappy_rate),
    ] {
        println!(
            "{name:<44} {r:>14.0} {:>10.3} {:>7.2}x",
            1e6 / r,
            r / json_rate
        );
    }
}
