//! Unit tests of the metastore client: the Arrow -> Hive type mapping, the partition columns,
//! URI checks, and an unreachable or silent metastore as a retryable error in bounded time.

use std::sync::Arc;
use std::time::Instant;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

use super::client::parse_uri;
use super::hive_types::hive_columns;
use super::*;

fn f(name: &str, t: DataType) -> Field {
    Field::new(name, t, true)
}

#[test]
fn arrow_types_map_to_hive_types() {
    let item = Arc::new(f("item", DataType::Int64));
    let entries = Arc::new(Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            f("value", DataType::Decimal128(10, 3)),
        ])),
        false,
    ));
    let cases = [
        (DataType::Boolean, "boolean"),
        (DataType::Int8, "tinyint"),
        (DataType::Int16, "smallint"),
        (DataType::Int32, "int"),
        (DataType::Int64, "bigint"),
        (DataType::UInt32, "bigint"),
        (DataType::UInt64, "decimal(20,0)"),
        (DataType::Float32, "float"),
        (DataType::Float64, "double"),
        (DataType::Utf8, "string"),
        (DataType::Utf8View, "string"),
        (DataType::LargeBinary, "binary"),
        (DataType::FixedSizeBinary(16), "binary"),
        (DataType::Decimal128(38, 10), "decimal(38,10)"),
        (DataType::Decimal64(18, 0), "decimal(18,0)"),
        (
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            "timestamp",
        ),
        (
            DataType::Timestamp(TimeUnit::Microsecond, None),
            "timestamp",
        ),
        (DataType::Date32, "date"),
        (DataType::List(item.clone()), "array<bigint>"),
        (DataType::LargeList(item), "array<bigint>"),
        (DataType::Map(entries, false), "map<string,decimal(10,3)>"),
        (
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            "string",
        ),
        (
            DataType::Struct(Fields::from(vec![
                f("a", DataType::Int32),
                f(
                    "b",
                    DataType::List(Arc::new(f(
                        "item",
                        DataType::Struct(Fields::from(vec![f("c", DataType::Utf8)])),
                    ))),
                ),
            ])),
            "struct<a:int,b:array<struct<c:string>>>",
        ),
    ];
    for (arrow, hive) in cases {
        assert_eq!(hive_type(&arrow).as_deref(), Ok(hive), "{arrow}");
    }
}

#[test]
fn types_without_hive_equivalent_are_errors() {
    for t in [
        DataType::Null,
        DataType::Duration(TimeUnit::Second),
        DataType::Decimal256(50, 2),
        DataType::Decimal128(10, -2),
        DataType::Struct(Fields::empty()),
        DataType::List(Arc::new(f("item", DataType::Duration(TimeUnit::Second)))),
    ] {
        assert!(hive_type(&t).is_err(), "{t} should have no Hive type");
    }
    let schema = Schema::new(vec![f("ok", DataType::Int32), f("d", DataType::Null)]);
    match hive_columns(&schema, &[]) {
        Err(err @ MetastoreError::UnsupportedType { .. }) => {
            assert!(!err.is_retryable());
            assert!(err.to_string().contains("\"d\""), "{err}");
        }
        other => panic!("expected UnsupportedType, got {other:?}"),
    }
}

#[test]
fn partition_keys_are_not_columns() -> Result<(), MetastoreError> {
    let schema = Schema::new(vec![
        f("_offset", DataType::Int64),
        f("dt", DataType::Utf8),
        f("venue", DataType::Utf8),
    ]);
    let cols = hive_columns(&schema, &["dt".into(), "hr".into()])?;
    let names: Vec<_> = cols.iter().filter_map(|c| c.name.as_deref()).collect();
    assert_eq!(names, ["_offset", "venue"]);
    Ok(())
}

#[test]
fn uris_are_checked() -> Result<(), MetastoreError> {
    assert_eq!(parse_uri("thrift://hms:9083")?, "hms:9083");
    assert_eq!(parse_uri("thrift://127.0.0.1:9083/")?, "127.0.0.1:9083");
    for bad in [
        "hms:9083",
        "http://hms:9083",
        "thrift://hms",
        "thrift://:9083",
        "thrift://hms:0",
        "thrift://hms:99999",
        "thrift://hms:9083/db",
    ] {
        match parse_uri(bad) {
            Err(err @ MetastoreError::InvalidUri { .. }) => assert!(!err.is_retryable()),
            other => panic!("{bad}: expected InvalidUri, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_metastore_is_a_retryable_error_within_the_timeout()
-> Result<(), Box<dyn std::error::Error>> {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        call: Duration::from_secs(3),
    };
    let ms = Metastore::connect_with(&format!("thrift://127.0.0.1:{port}"), timeouts).await?;
    let started = Instant::now();
    let res = ms
        .add_partition("db", "t", &["2024-01-01".into()], "file:/tmp/x")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    match res {
        Err(err) => assert!(err.is_retryable(), "{err}"),
        Ok(()) => panic!("a call to a closed port succeeded"),
    }
    Ok(())
}

#[tokio::test]
async fn a_metastore_that_never_answers_times_out() -> Result<(), Box<dyn std::error::Error>> {
    // Accepts connections and reads requests, never replies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        call: Duration::from_millis(800),
    };
    let ms = Metastore::connect_with(&format!("thrift://127.0.0.1:{port}"), timeouts).await?;
    let schema = Schema::new(vec![f("a", DataType::Int32)]);
    let started = Instant::now();
    let res = ms
        .ensure_table("db", "t", "file:/tmp/t", &schema, &[])
        .await;
    let took = started.elapsed();
    server.abort();
    match res {
        Err(err) => assert!(err.is_retryable(), "{err}"),
        Ok(()) => panic!("a silent server answered"),
    }
    assert!(
        took >= Duration::from_millis(700),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_millis(2000), "not bounded: {took:?}");
    Ok(())
}
