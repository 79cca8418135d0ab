//! The sink's Hive Metastore registration (`lakewire::sink::metastore`) against a real Hive
//! Metastore (`integration-tests/bin/metastore up`, whose URI `run-all` passes in
//! `TEST_HIVE_METASTORE`), and Spark SQL with Hive support reading what it registered:
//! - tables and partitions are created once, however often they are registered;
//! - Parquet files written by pyarrow in the sink's Hive layout, registered through the Rust
//!   API, read by Spark through the metastore: every row once, the partitions, the types;
//! - a metastore outage is a quick retryable error, and the same client works again once the
//!   metastore is back.
//!
//! Needs the venv `integration-tests/.cache/venv` with `integration-tests/sink/requirements-spark.txt`
//! (or `LAKEWIRE_VENV`), Java 17+. Built only with the `real-metastore` feature.
#![cfg(feature = "real-metastore")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use lakewire::sink::metastore::{
    HiveTable, Metastore, MetastoreError, PARQUET_INPUT_FORMAT, PARQUET_SERDE, Timeouts,
};
use lakewire_integration_tests::metastore::{OwnMetastore, run, shared_uri, spark_columns};
use lakewire_integration_tests::unique_topic;
use serde_json::Value;

fn it_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let venv = std::env::var_os("LAKEWIRE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| it_dir().join(".cache/venv"));
    venv.join("bin/python")
}

/// A Hive table name (lower case, digits, `_`) no other test or run uses.
fn unique_table(prefix: &str) -> String {
    unique_topic(prefix).replace('-', "_")
}

/// The schema the sink gives a topic: Kafka metadata columns, then the value's fields.
fn trade_schema() -> Schema {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    Schema::new(vec![
        Field::new("_topic", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        f("id", DataType::Int64),
        f(
            "venue",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        ),
        f("px", DataType::Decimal128(10, 3)),
        f(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        f("flag", DataType::Boolean),
        f("score", DataType::Float64),
        f("qty", DataType::Int32),
        f("day", DataType::Date32),
        f(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        ),
        f(
            "attrs",
            DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", DataType::Utf8, false),
                        Field::new("value", DataType::Int64, true),
                    ])),
                    false,
                )),
                false,
            ),
        ),
        f(
            "leg",
            DataType::Struct(Fields::from(vec![
                f("side", DataType::Utf8),
                f("n", DataType::Int32),
            ])),
        ),
    ])
}

/// The Hive columns of `trade_schema()`, as (name, type).
fn value_columns() -> Vec<(String, String)> {
    [
        ("_topic", "string"),
        ("_partition", "int"),
        ("_offset", "bigint"),
        ("_timestamp", "timestamp"),
        ("id", "bigint"),
        ("venue", "string"),
        ("px", "decimal(10,3)"),
        ("ts", "timestamp"),
        ("flag", "boolean"),
        ("score", "double"),
        ("qty", "int"),
        ("day", "date"),
        ("tags", "array<string>"),
        ("attrs", "map<string,bigint>"),
        ("leg", "struct<side:string,n:int>"),
    ]
    .iter()
    .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
    .collect()
}

fn keys() -> Vec<String> {
    vec!["dt".into(), "hr".into()]
}

fn col_types(table: &HiveTable) -> Vec<(String, String)> {
    table
        .sd
        .as_ref()
        .and_then(|sd| sd.cols.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c.name.as_deref().unwrap_or_default().to_owned(),
                c.r#type.as_deref().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn tables_and_partitions_are_registered_once() -> anyhow::Result<()> {
    let ms = Metastore::connect(&shared_uri()).await?;
    let db = "lakewire_it";
    let table = unique_table("reg");
    // The metastore makes the directories of the locations it is given: a temporary one.
    let dir = tempfile::tempdir()?;
    let root = format!("file:{}/{table}", dir.path().display());
    let schema = trade_schema();

    ms.ensure_table(db, &table, &root, &schema, &keys()).await?;
    ms.ensure_table(db, &table, &root, &schema, &keys()).await?;
    let t = ms
        .get_table(db, &table)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{db}.{table} was not created"))?;
    assert_eq!(t.table_type.as_deref(), Some("EXTERNAL_TABLE"));
    assert_eq!(
        t.parameters
            .as_ref()
            .and_then(|p| p.get("EXTERNAL"))
            .map(|v| v.as_str()),
        Some("TRUE")
    );
    let sd = t.sd.clone().unwrap_or_default();
    assert_eq!(sd.location.as_deref(), Some(root.as_str()));
    assert_eq!(sd.input_format.as_deref(), Some(PARQUET_INPUT_FORMAT));
    assert_eq!(
        sd.serde_info
            .as_ref()
            .and_then(|s| s.serialization_lib.as_deref()),
        Some(PARQUET_SERDE)
    );
    let cols = col_types(&t);
    let expected = value_columns();
    assert_eq!(cols, expected);
    let pkeys: Vec<(String, String)> = t
        .partition_keys
        .iter()
        .flatten()
        .map(|c| {
            (
                c.name.as_deref().unwrap_or_default().to_owned(),
                c.r#type.as_deref().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pkeys,
        [
            ("dt".to_owned(), "string".to_owned()),
            ("hr".to_owned(), "string".to_owned())
        ]
    );

    let parts = [("2024-05-01", "00"), ("2024-05-01", "01")];
    for _ in 0..2 {
        for (dt, hr) in parts {
            ms.add_partition(
                db,
                &table,
                &[dt.into(), hr.into()],
                &format!("{root}/dt={dt}/hr={hr}"),
            )
            .await?;
        }
    }
    // A second client (another sink worker) registering the same partition: still one.
    let other = Metastore::connect(&shared_uri()).await?;
    other
        .add_partition(
            db,
            &table,
            &["2024-05-01".into(), "00".into()],
            &format!("{root}/dt=2024-05-01/hr=00"),
        )
        .await?;
    let mut got = ms.get_partitions(db, &table).await?;
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                vec!["2024-05-01".to_owned(), "00".to_owned()],
                format!("{root}/dt=2024-05-01/hr=00")
            ),
            (
                vec!["2024-05-01".to_owned(), "01".to_owned()],
                format!("{root}/dt=2024-05-01/hr=01")
            ),
        ]
    );

    // Wrong number of values, unknown table: permanent errors, nothing registered.
    match ms
        .add_partition(db, &table, &["2024-05-01".into()], &root)
        .await
    {
        Err(e @ MetastoreError::PartitionValues { .. }) => assert!(!e.is_retryable()),
        other => panic!("expected PartitionValues, got {other:?}"),
    }
    match ms
        .add_partition(db, "no_such_table_here", &["a".into(), "b".into()], &root)
        .await
    {
        Err(e @ MetastoreError::NoSuchTable { .. }) => assert!(!e.is_retryable()),
        other => panic!("expected NoSuchTable, got {other:?}"),
    }
    assert_eq!(ms.get_partitions(db, &table).await?.len(), 2);

    // Schema evolution: a new optional field becomes a new last column; the rest stays.
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| (**f).clone()).collect();
    fields.push(Field::new("note", DataType::Utf8, true));
    ms.ensure_table(db, &table, &root, &Schema::new(fields), &keys())
        .await?;
    let t = ms
        .get_table(db, &table)
        .await?
        .ok_or_else(|| anyhow::anyhow!("table gone"))?;
    let cols = col_types(&t);
    assert_eq!(cols.len(), expected.len() + 1);
    assert_eq!(cols[..expected.len()], expected[..]);
    assert_eq!(cols[expected.len()], ("note".into(), "string".into()));
    Ok(())
}

#[tokio::test]
async fn spark_reads_the_registered_table() -> anyhow::Result<()> {
    let uri = shared_uri();
    let dir = tempfile::tempdir()?;
    let table = unique_table("spark");
    let table_dir = dir.path().join(&table);
    let fixture = run(Command::new(python())
        .arg(it_dir().join("sink/write_hive_fixture.py"))
        .arg(&table_dir))?;
    let fixture: Value = serde_json::from_str(fixture.trim())?;
    assert_eq!(fixture["rows"], 12);

    let ms = Metastore::connect(&uri).await?;
    let db = "lakewire_it";
    let location = format!("file:{}", table_dir.display());
    ms.ensure_table(db, &table, &location, &trade_schema(), &keys())
        .await?;
    let parts = [
        "dt=2024-05-01/hr=00",
        "dt=2024-05-01/hr=01",
        "dt=2024-05-02/hr=23",
    ];
    for p in parts {
        let values: Vec<String> = p
            .split('/')
            .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_owned()))
            .collect();
        ms.add_partition(db, &table, &values, &format!("{location}/{p}"))
            .await?;
    }

    let started = Instant::now();
    let out = run(Command::new(python())
        .arg(it_dir().join("sink/spark_read.py"))
        .args(["--metastore", &uri, "--table", &format!("{db}.{table}")])
        .arg("--query")
        .arg(format!(
            "SELECT id, venue, px, ts, day, tags[0] AS tag, attrs['b'] AS b, leg.side AS side \
             FROM {db}.{table} WHERE dt = '2024-05-02' AND hr = '23' AND id = 7"
        ))
        .arg("--query")
        .arg(format!(
            "SELECT dt, hr, count(*) AS n, sum(px) AS px FROM {db}.{table} GROUP BY dt, hr \
             ORDER BY dt, hr"
        )))?;
    let wall = started.elapsed();
    let got: Value = serde_json::from_str(out.trim())?;
    println!(
        "spark_read.py: {:.1}s wall (session start {}s, reads {}s)",
        wall.as_secs_f64(),
        got["seconds"]["start"],
        got["seconds"]["read"]
    );

    // Every row once (the hidden leftover files are not read), every partition, every type.
    assert_eq!(got["rows"], 12, "{got}");
    assert_eq!(got["distinct_keys"], 12, "{got}");
    assert_eq!(got["partitions"], serde_json::json!(parts), "{got}");
    let columns = spark_columns(&got);
    // Spark shows the partition columns last.
    let mut expected = value_columns();
    expected.extend([
        ("dt".into(), "string".into()),
        ("hr".into(), "string".into()),
    ]);
    assert_eq!(columns, expected, "{got}");

    // Values through the metastore's types: decimal, UTC timestamp, date, list, map, struct.
    assert_eq!(
        got["queries"][0],
        serde_json::json!([{
            "id": 7, "venue": null, "px": "7.125", "ts": "2024-05-01 07:00:00",
            "day": "2024-05-08", "tag": "t7", "b": 14, "side": "sell"
        }]),
        "{got}"
    );
    assert_eq!(
        got["queries"][1],
        serde_json::json!([
            {"dt": "2024-05-01", "hr": "00", "n": 4, "px": "6.500"},
            {"dt": "2024-05-01", "hr": "01", "n": 3, "px": "15.375"},
            {"dt": "2024-05-02", "hr": "23", "n": 5, "px": "45.625"},
        ]),
        "{got}"
    );

    // Schema evolution after Spark has read (and saved what it inferred): files with a new
    // optional field, the column added by ensure_table, read again: old rows null, new ones set.
    run(Command::new(python())
        .arg(it_dir().join("sink/write_hive_fixture.py"))
        .arg("--evolved")
        .arg(&table_dir))?;
    let mut fields: Vec<Field> = trade_schema()
        .fields()
        .iter()
        .map(|f| (**f).clone())
        .collect();
    fields.push(Field::new("note", DataType::Utf8, true));
    ms.ensure_table(db, &table, &location, &Schema::new(fields), &keys())
        .await?;
    ms.add_partition(
        db,
        &table,
        &["2024-05-03".into(), "00".into()],
        &format!("{location}/dt=2024-05-03/hr=00"),
    )
    .await?;
    let out = run(Command::new(python())
        .arg(it_dir().join("sink/spark_read.py"))
        .args(["--metastore", &uri, "--table", &format!("{db}.{table}")])
        .arg("--query")
        .arg(format!(
            "SELECT count(*) AS n, count(note) AS notes, max(note) AS last FROM {db}.{table}"
        )))?;
    let got: Value = serde_json::from_str(out.trim())?;
    assert_eq!(got["rows"], 14, "{got}");
    assert_eq!(got["distinct_keys"], 14, "{got}");
    let names: Vec<&str> = got["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names[names.len() - 3..], ["note", "dt", "hr"], "{got}");
    assert_eq!(
        got["queries"][0],
        serde_json::json!([{"n": 14, "notes": 2, "last": "n13"}]),
        "{got}"
    );
    Ok(())
}

#[tokio::test]
async fn an_outage_is_retryable_and_the_client_recovers() -> anyhow::Result<()> {
    let own = OwnMetastore::start()?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        call: Duration::from_secs(5),
    };
    let ms = Metastore::connect_with(&own.uri(), timeouts).await?;
    let (db, table) = ("outage", "events");
    let dir = tempfile::tempdir()?;
    let root = &format!("file:{}/events", dir.path().display());
    ms.ensure_table(db, table, root, &trade_schema(), &keys())
        .await?;
    ms.add_partition(
        db,
        table,
        &["2024-05-01".into(), "00".into()],
        &format!("{root}/dt=2024-05-01/hr=00"),
    )
    .await?;

    own.command("stop")?;
    for attempt in 0..2 {
        let started = Instant::now();
        let res = ms
            .add_partition(
                db,
                table,
                &["2024-05-01".into(), "01".into()],
                &format!("{root}/dt=2024-05-01/hr=01"),
            )
            .await;
        let took = started.elapsed();
        match res {
            Err(e) => assert!(e.is_retryable(), "attempt {attempt}: {e}"),
            Ok(()) => panic!("add_partition succeeded with the metastore stopped"),
        }
        assert!(took <= timeouts.call + Duration::from_secs(1), "{took:?}");
        println!("add_partition during the outage failed (retryable) in {took:?}");
    }
    match ms
        .ensure_table(db, "other", root, &trade_schema(), &keys())
        .await
    {
        Err(e) => assert!(e.is_retryable(), "{e}"),
        Ok(()) => panic!("ensure_table succeeded with the metastore stopped"),
    }

    own.command("up")?;
    // The same client, no reconnect by the caller.
    ms.add_partition(
        db,
        table,
        &["2024-05-01".into(), "01".into()],
        &format!("{root}/dt=2024-05-01/hr=01"),
    )
    .await?;
    let got = ms.get_partitions(db, table).await?;
    assert_eq!(got.len(), 2, "{got:?}");
    Ok(())
}
