//! Unit tests of the sink's pieces that need no broker: Avro → Arrow, Parquet round trip,
//! partition values, landing files on a local root.

use std::sync::Arc;

use anyhow::Context as _;
use apache_avro::types::Value as AV;
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;

use super::avro_to_arrow::{BatchBuilder, Meta};
use super::hive_paths::{self, FileName};
use super::storage::Storage;
use super::*;
use crate::config::SinkConfig;

const ORDER: &str = include_str!("../../../schemas/order.avsc");

fn order(i: i64) -> AV {
    let s = |v: &str| AV::String(v.to_string());
    AV::Record(vec![
        ("id".into(), AV::Long(i)),
        ("ts".into(), AV::TimestampMillis(1_732_690_000_000 + i)),
        ("customer".into(), s(&format!("c{i}"))),
        ("status".into(), AV::Enum(2, "SHIPPED".into())),
        (
            "amount".into(),
            AV::Decimal(apache_avro::Decimal::from((-12345i32).to_be_bytes())),
        ),
        ("currency".into(), s("EUR")),
        ("quantity".into(), AV::Int(3)),
        ("price".into(), AV::Double(1.5)),
        (
            "discount".into(),
            if i % 2 == 0 {
                AV::Union(0, Box::new(AV::Null))
            } else {
                AV::Union(1, Box::new(AV::Float(0.25)))
            },
        ),
        ("express".into(), AV::Boolean(i % 3 == 0)),
        ("coupon".into(), AV::Union(0, Box::new(AV::Null))),
        ("tags".into(), AV::Array(vec![s("a"), s("b")])),
        (
            "attributes".into(),
            AV::Map([("k".to_string(), s("v"))].into_iter().collect()),
        ),
        (
            "ship_to".into(),
            AV::Record(vec![
                ("street".into(), s("Main 1")),
                ("city".into(), s("Bern")),
                ("zip".into(), s("3000")),
                ("country".into(), s("CH")),
            ]),
        ),
        (
            "delivery_date".into(),
            AV::Union(1, Box::new(AV::Date(20_000))),
        ),
    ])
}

fn encode_avro(schema: &str, v: AV) -> anyhow::Result<Vec<u8>> {
    let s = apache_avro::Schema::parse_str(schema)?;
    Ok(apache_avro::to_avro_datum(&s, v)?)
}

fn json(schema: &str) -> anyhow::Result<Arc<serde_json::Value>> {
    Ok(Arc::new(serde_json::from_str(schema)?))
}

fn meta(offset: i64) -> Meta<'static> {
    Meta {
        offset,
        timestamp: Some(1_732_690_000_000 + offset),
        ..Meta::default()
    }
}

#[test]
fn order_record_becomes_typed_columns() -> anyhow::Result<()> {
    let mut b = BatchBuilder::new(json(ORDER)?, Arc::from("orders"), 2, &[])?;
    for i in 0..5 {
        b.append(&encode_avro(ORDER, order(i))?, meta(100 + i))?;
    }
    let batches = b.finish()?;
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.num_rows(), 5);
    let ty = |n: &str| {
        batch
            .schema()
            .field_with_name(n)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Null)
    };
    let nullable = |n: &str| {
        batch
            .schema()
            .field_with_name(n)
            .is_ok_and(|f| f.is_nullable())
    };
    assert_eq!(ty("id"), DataType::Int64);
    assert_eq!(
        ty("ts"),
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert_eq!(
        ty("status"),
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    );
    assert_eq!(ty("amount"), DataType::Decimal128(12, 2));
    assert_eq!(ty("discount"), DataType::Float32);
    assert!(nullable("discount"));
    assert!(!nullable("id"));
    assert_eq!(ty("delivery_date"), DataType::Date32);
    assert!(matches!(ty("tags"), DataType::List(_)));
    assert!(matches!(ty("attributes"), DataType::Map(_, false)));
    assert!(matches!(ty("ship_to"), DataType::Struct(_)));
    assert_eq!(ty("_topic"), DataType::Utf8);
    assert_eq!(ty("_partition"), DataType::Int32);
    assert_eq!(ty("_offset"), DataType::Int64);

    let col = |n: &str| {
        batch
            .column_by_name(n)
            .cloned()
            .unwrap_or_else(|| arrow_array::new_null_array(&DataType::Null, 0))
    };
    assert_eq!(
        col("amount").as_primitive::<Decimal128Type>().value(0),
        -12345
    );
    let discount = col("discount");
    assert!(discount.is_null(0) && !discount.is_null(1));
    assert_eq!(
        col("ts")
            .as_primitive::<TimestampMillisecondType>()
            .value(4),
        1_732_690_000_004
    );
    let status = col("status");
    let status = status.as_dictionary::<Int32Type>();
    assert_eq!(status.keys().value(0), 2);
    assert_eq!(
        col("_offset")
            .as_primitive::<arrow_array::types::Int64Type>()
            .value(3),
        103
    );
    assert_eq!(col("_partition").as_primitive::<Int32Type>().value(0), 2);
    assert_eq!(col("_topic").as_string::<i32>().value(0), "orders");
    let ship = col("ship_to");
    let city = ship
        .as_struct()
        .column_by_name("city")
        .context("city")?
        .clone();
    assert_eq!(city.as_string::<i32>().value(1), "Bern");
    let tags = col("tags");
    assert_eq!(tags.as_list::<i32>().value(0).len(), 2);
    Ok(())
}

#[test]
fn a_bad_record_is_refused_and_the_others_kept() -> anyhow::Result<()> {
    let mut b = BatchBuilder::new(json(ORDER)?, Arc::from("orders"), 0, &[])?;
    b.append(&encode_avro(ORDER, order(0))?, meta(0))?;
    let good = encode_avro(ORDER, order(1))?;
    // Cut in the middle: the builders hold part of it when the error comes.
    assert!(b.append(&good[..good.len() - 12], meta(1)).is_err());
    b.append(&good, meta(2))?;
    let batches = b.finish()?;
    let offsets: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("_offset")
                .map(|c| {
                    c.as_primitive::<arrow_array::types::Int64Type>()
                        .values()
                        .to_vec()
                })
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(offsets, vec![0, 2]);
    // Every chunk is a whole, valid batch.
    for batch in &batches {
        for c in batch.columns() {
            c.to_data().validate_full()?;
        }
    }
    Ok(())
}

#[test]
fn unions_fixed_and_micros_have_documented_forms() -> anyhow::Result<()> {
    let schema = r#"{"type":"record","name":"U","fields":[
        {"name":"u","type":["null","int","string"]},
        {"name":"f","type":{"type":"fixed","name":"F","size":4}},
        {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"again","type":"F"},
        {"name":"d","type":{"type":"fixed","name":"D","size":20,"logicalType":"decimal","precision":40,"scale":3}}
    ]}"#;
    let mut b = BatchBuilder::new(json(schema)?, Arc::from("t"), 0, &[])?;
    let rec = |u: AV| {
        AV::Record(vec![
            ("u".into(), u),
            ("f".into(), AV::Fixed(4, vec![1, 2, 3, 4])),
            ("t".into(), AV::TimestampMicros(5)),
            ("again".into(), AV::Fixed(4, vec![9, 9, 9, 9])),
            ("d".into(), AV::Fixed(20, vec![0; 20])),
        ])
    };
    let s = apache_avro::Schema::parse_str(schema)?;
    for u in [
        AV::Union(0, Box::new(AV::Null)),
        AV::Union(1, Box::new(AV::Int(7))),
        AV::Union(2, Box::new(AV::String("x".into()))),
    ] {
        b.append(&apache_avro::to_avro_datum(&s, rec(u))?, meta(0))?;
    }
    let batches = b.finish()?;
    let batch = &batches[0];
    let u = batch.column_by_name("u").context("u")?.as_struct().clone();
    assert_eq!(u.column_names(), vec!["member1", "member2"]);
    assert!(u.is_null(0));
    assert_eq!(u.column(0).as_primitive::<Int32Type>().value(1), 7);
    assert!(u.column(1).is_null(1));
    assert_eq!(u.column(1).as_string::<i32>().value(2), "x");
    assert_eq!(
        batch.schema().field_with_name("t")?.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(
        batch.schema().field_with_name("again")?.data_type(),
        &DataType::FixedSizeBinary(4)
    );
    assert_eq!(
        batch.schema().field_with_name("d")?.data_type(),
        &DataType::Binary
    );
    Ok(())
}

#[test]
fn recursive_and_non_record_schemas_are_refused() -> anyhow::Result<()> {
    let rec = r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#;
    assert!(BatchBuilder::new(json(rec)?, Arc::from("t"), 0, &[]).is_err());
    assert!(BatchBuilder::new(json(r#""string""#)?, Arc::from("t"), 0, &[]).is_err());
    let clash = r#"{"type":"record","name":"C","fields":[{"name":"_offset","type":"long"}]}"#;
    assert!(BatchBuilder::new(json(clash)?, Arc::from("t"), 0, &[]).is_err());
    Ok(())
}

#[test]
fn partition_fields_are_left_out_of_the_file() -> anyhow::Result<()> {
    let b = BatchBuilder::new(json(ORDER)?, Arc::from("t"), 0, &["currency".to_string()])?;
    assert!(b.schema().field_with_name("currency").is_err());
    assert!(b.schema().field_with_name("customer").is_ok());
    Ok(())
}

fn read_parquet(bytes: Vec<u8>) -> anyhow::Result<Vec<RecordBatch>> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))?
            .build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[test]
fn parquet_round_trip_keeps_types_and_values() -> anyhow::Result<()> {
    let mut b = BatchBuilder::new(json(ORDER)?, Arc::from("orders"), 1, &[])?;
    for i in 0..100 {
        b.append(&encode_avro(ORDER, order(i))?, meta(i))?;
    }
    let schema = b.schema().clone();
    let batches = b.finish()?;
    for c in [SinkCompression::Zstd, SinkCompression::Snappy] {
        let bytes = encode(&batches, &schema, c)?;
        let back = read_parquet(bytes)?;
        let back = arrow_select::concat::concat_batches(&schema, &back)?;
        assert_eq!(back.schema(), schema);
        assert_eq!(back, batches[0]);
    }
    Ok(())
}

/// A sink on a local folder `lake` under `dir`, with no tables.
fn local_sink(dir: &std::path::Path) -> SinkConfig {
    SinkConfig {
        root: dir.join("lake").display().to_string(),
        group_id: "g".into(),
        compression: SinkCompression::Zstd,
        roll_rows: 10,
        roll_bytes: 1 << 20,
        roll_interval_ms: 0,
        roll_record_ms: 0,
        max_open_files: 64,
        max_open_bytes: 1 << 30,
        shutdown_timeout_ms: 50_000,
        metastore_uri: None,
        database: "default".into(),
        s3: None,
        tables: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_replaces_and_leaves_no_temporary_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let st = Storage::new(&local_sink(dir.path()))?;
    let name = FileName {
        topic: "t".into(),
        partition: 0,
        start: 0,
        end: 9,
    }
    .render();
    st.land("tbl/dt=2026-01-01/hr=00", &name, Bytes::from_static(b"one"))
        .await?;
    st.land("tbl/dt=2026-01-01/hr=00", &name, Bytes::from_static(b"two"))
        .await?;
    let (files, temps) = st.list("tbl").await?;
    assert_eq!(files.len(), 1);
    assert!(temps.is_empty());
    assert_eq!(files[0].dir, "dt=2026-01-01/hr=00");
    let on_disk = dir.path().join("lake/tbl/dt=2026-01-01/hr=00").join(&name);
    assert_eq!(std::fs::read(on_disk)?, b"two");
    let names: Vec<_> = std::fs::read_dir(dir.path().join("lake/tbl/dt=2026-01-01/hr=00"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, vec![name]);
    assert!(st.location("tbl").starts_with("file:/"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_resume_marks_are_read_back_from_its_footer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let st = Storage::new(&local_sink(dir.path()))?;
    let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "n",
        DataType::Int64,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow_array::Int64Array::from(vec![1, 2, 3]))],
    )?;
    let kv = super::resume::Marks::key_values(42, 7);
    let bytes = encode_with(&[batch], &schema, SinkCompression::Zstd, kv)?;
    st.land("tbl", "t+0+40+44.parquet", Bytes::from(bytes))
        .await?;
    let (files, _) = st.list("tbl").await?;
    let got = st
        .parquet_key_values(&files[0].path)
        .await
        .map_err(anyhow::Error::msg)?;
    let marks = super::resume::Marks::from_footer(Some(&got), 44);
    assert_eq!(marks.resume, Some(42));
    assert_eq!(marks.holds, super::resume::Holds::Schema(7));
    // A file without them (an older version's): resume after its end.
    let plain = encode(&[], &schema, SinkCompression::Zstd)?;
    st.land("tbl", "t+0+45+49.parquet", Bytes::from(plain))
        .await?;
    let (files, _) = st.list("tbl").await?;
    let f = files
        .iter()
        .find(|f| f.name.start == 45)
        .context("the second file")?;
    let got = st
        .parquet_key_values(&f.path)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        super::resume::Marks::from_footer(Some(&got), 49).resume,
        Some(50)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_escaped_partition_values_are_the_folders_on_disk() -> anyhow::Result<()> {
    // Hive names the folder of `k = "a/b"` `k=a%2Fb` and of `city = "Zürich"` `city=Zürich`;
    // the metastore is told that location, so the folder on disk must be exactly that, not
    // escaped a second time (`k=a%252Fb`, `city=Z%C3%BCrich`).
    let dir = tempfile::tempdir()?;
    let st = Storage::new(&local_sink(dir.path()))?;
    let values = ["a/b", "Zürich", "x:y=z", "50%", "q?#*\"", "ünï ✓"];
    for (i, v) in values.iter().enumerate() {
        let hive = format!("k={}", hive_paths::escape_value(v));
        let name = FileName {
            topic: "t".into(),
            partition: 0,
            start: i as i64,
            end: i as i64,
        }
        .render();
        st.land(&format!("tbl/{hive}"), &name, Bytes::from_static(b"x"))
            .await?;
        let on_disk = dir.path().join("lake/tbl").join(&hive).join(&name);
        assert!(
            on_disk.is_file(),
            "{v:?}: expected {}, found {:?}",
            on_disk.display(),
            std::fs::read_dir(dir.path().join("lake/tbl"))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<Vec<_>, _>>()?
        );
        assert_eq!(
            st.location(&format!("tbl/{hive}")),
            format!("{}/{hive}", st.location("tbl"))
        );
    }
    let (files, _) = st.list("tbl").await?;
    let mut got: Vec<String> = files
        .iter()
        .flat_map(|f| hive_paths::dir_values(&f.dir))
        .collect();
    got.sort();
    let mut want: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "listing gives back the original values");
    Ok(())
}

/// The sink consumer's settings for a one-table configuration with `[kafka.properties]`
/// `properties` (TOML lines, or none).
fn sink_consumer_config(properties: &str) -> anyhow::Result<rdkafka::ClientConfig> {
    let props = if properties.is_empty() {
        String::new()
    } else {
        format!("[kafka.properties]\n{properties}\n")
    };
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n{props}\n[[topics]]\nname = \"t\"\nformat = \"raw\"\n\
         schema = \"../schemas/order.avsc\"\n\n[sink]\nroot = \"/tmp/x\"\n\n[[sink.tables]]\ntopic = \"t\"\n"
    );
    let config = Config::from_toml_and_env(&text, &[], "test")?;
    let sink = config.sink.clone().context("no [sink]")?;
    Ok(consumer_config(
        &crate::kafka::KafkaClients::new(&config.kafka, &Metrics::default()),
        &sink,
    ))
}

#[test]
fn the_consumer_fetches_again_soon_after_its_queue_drains_unless_told_otherwise()
-> anyhow::Result<()> {
    let cc = sink_consumer_config("")?;
    assert_eq!(cc.get("fetch.queue.backoff.ms"), Some("10"));
    let cc = sink_consumer_config("\"fetch.queue.backoff.ms\" = \"250\"")?;
    assert_eq!(cc.get("fetch.queue.backoff.ms"), Some("250"));
    Ok(())
}

#[test]
fn the_group_is_cooperative_sticky_unless_the_user_names_a_strategy() -> anyhow::Result<()> {
    let cc = sink_consumer_config("")?;
    assert_eq!(
        cc.get("partition.assignment.strategy"),
        Some("cooperative-sticky")
    );
    let cc = sink_consumer_config("\"partition.assignment.strategy\" = \"range,roundrobin\"")?;
    assert_eq!(
        cc.get("partition.assignment.strategy"),
        Some("range,roundrobin")
    );
    Ok(())
}

#[test]
fn key_and_headers_columns_keep_every_record_s_key_and_headers() -> anyhow::Result<()> {
    let mut b = BatchBuilder::new(json(ORDER)?, Arc::from("orders"), 0, &[])?
        .with_key()?
        .with_headers()?;
    let first: [(&str, Option<&[u8]>); 3] = [
        ("trace", Some(b"t-1")),
        ("trace", Some(b"t-2")),
        ("gone", None),
    ];
    let key_of = |i: i64| format!("customer-{i}");
    b.append(
        &encode_avro(ORDER, order(0))?,
        Meta {
            key: Some(&key_of(0)),
            headers: &first,
            ..meta(0)
        },
    )?;
    // A record refused half-way: its key and headers must not shift those of the next.
    let good = encode_avro(ORDER, order(1))?;
    let bin: [(&str, Option<&[u8]>); 1] = [("bin", Some(&[0xff, 0x00]))];
    assert!(
        b.append(
            &good[..good.len() - 12],
            Meta {
                key: Some("lost"),
                headers: &bin,
                ..meta(1)
            }
        )
        .is_err()
    );
    b.append(&good, meta(2))?;
    b.append(
        &good,
        Meta {
            key: Some(&key_of(3)),
            headers: &bin,
            ..meta(3)
        },
    )?;
    let batches = b.finish()?;
    let schema = b.schema().clone();
    assert_eq!(
        schema
            .fields()
            .iter()
            .rev()
            .take(2)
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        vec!["_headers", "_key"]
    );
    let bytes = encode(&batches, &schema, SinkCompression::Zstd)?;
    let mut keys = Vec::new();
    let mut headers = Vec::new();
    for batch in read_parquet(bytes)? {
        let k = batch
            .column_by_name("_key")
            .context("_key")?
            .as_string::<i32>();
        let h = batch
            .column_by_name("_headers")
            .context("_headers")?
            .as_list::<i32>();
        for row in 0..batch.num_rows() {
            keys.push(k.is_valid(row).then(|| k.value(row).to_string()));
            let entries = h.value(row);
            let entries = entries.as_struct();
            let names = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_binary::<i32>();
            headers.push(
                (0..entries.len())
                    .map(|e| {
                        (
                            names.value(e).to_string(),
                            values.is_valid(e).then(|| values.value(e).to_vec()),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert_eq!(keys, vec![Some(key_of(0)), None, Some(key_of(3))]);
    let h = |n: &str, v: Option<&[u8]>| (n.to_string(), v.map(<[u8]>::to_vec));
    assert_eq!(
        headers,
        vec![
            vec![
                h("trace", Some(b"t-1")),
                h("trace", Some(b"t-2")),
                h("gone", None)
            ],
            vec![],
            vec![h("bin", Some(&[0xff, 0x00]))],
        ]
    );
    // A value field of the same name is refused, as the metadata columns' are.
    let clash = r#"{"type":"record","name":"C","fields":[{"name":"_key","type":"long"}]}"#;
    assert!(
        BatchBuilder::new(json(clash)?, Arc::from("t"), 0, &[])?
            .with_key()
            .is_err()
    );
    Ok(())
}
