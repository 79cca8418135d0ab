//! Avro binary straight into Arrow builders, for the sink. Input: a writer schema's JSON (from
//! [`crate::decode::schema::ParsedSchema::json`]) and Avro datums after their framing (found by
//! [`crate::decode::Decoder::value_writer`]); output: Arrow `RecordBatch`es with the Kafka
//! metadata columns `_topic`, `_partition`, `_offset`, `_timestamp` after the value's fields
//! (and `_key`, `_headers` where the table asks for them).
//!
//! The mapping (also in docs/configuration.md, "Sink type mapping"):
//!
//! | Avro | Arrow |
//! | --- | --- |
//! | `null` | Null |
//! | `boolean`, `int`, `long`, `float`, `double` | Boolean, Int32, Int64, Float32, Float64 |
//! | `bytes`, `fixed(n)` | Binary, FixedSizeBinary(n) |
//! | `string` (also `uuid`) | Utf8 |
//! | `decimal(p, s)` on bytes or fixed, p ≤ 38 | Decimal128(p, s) (p > 38: Binary) |
//! | `date`, `time-millis`, `time-micros` | Date32, Time32(ms), Time64(µs) |
//! | `timestamp-millis/micros/nanos` | Timestamp(unit, "UTC") |
//! | `local-timestamp-*` | Timestamp(unit) without time zone |
//! | `enum` | Dictionary(Int32, Utf8) of the symbols |
//! | `array<T>`, `map<T>` | List(T), Map(Utf8, T) |
//! | `record` | Struct (the top-level record's fields are the columns) |
//! | `[null, T]` / `[T, null]` | T, nullable |
//! | other unions | Struct of nullable `member<i>` fields (i = branch index), one set per row; null when the `null` branch is taken (Spark's layout) |
//!
//! Recursive schemas have no Arrow form and are refused. The reading primitives are the gateway's
//! (`decode::avro::AvroCursor`).
//!
//! The parts: `types` compiles the writer schema into a tree of column builders (the mapping
//! above), `columns` reads datums into those builders and finishes them into arrays, and
//! `batch` puts the value's columns and the Kafka metadata columns together into batches.

mod batch;
mod columns;
mod types;

pub use self::batch::{BatchBuilder, Meta};

/// Deeper nesting is refused (it also stops recursive schemas).
const MAX_DEPTH: u32 = 64;

/// The Kafka metadata columns, after the value's fields.
pub const META_COLUMNS: [&str; 4] = ["_topic", "_partition", "_offset", "_timestamp"];

/// The Kafka key column, after the metadata columns, in tables with `key_column = true`.
pub const KEY_COLUMN: &str = "_key";

/// The Kafka headers column, last, in tables with `headers_column = true`.
pub const HEADERS_COLUMN: &str = "_headers";

/// A schema that has no Arrow form here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ArrowSchemaError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, ArrowSchemaError> {
    Err(ArrowSchemaError(msg.into()))
}
