//! Avro binary straight into Arrow builders, for the sink. Input: a writer schema's JSON (from
//! [`crate::decode::schema::ParsedSchema::json`]) and Avro datums after their framing (found by
//! [`crate::decode::Decoder::value_writer`]); output: Arrow [`RecordBatch`]es with the Kafka
//! metadata columns `_topic`, `_partition`, `_offset`, `_timestamp` after the value's fields.
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
//! ([`crate::decode::avro::AvroCursor`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Decimal128Builder, FixedSizeBinaryBuilder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::types::{
    Date32Type, Int32Type, Time32MillisecondType, Time64MicrosecondType, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType,
};
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int32Array, ListArray, MapArray, NullArray, RecordBatch,
    StringArray, StructArray,
};
use arrow_buffer::{NullBuffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

use crate::decode::avro::{AvroCursor, AvroError};
use crate::decode::schema::full_name;

/// Deeper nesting is refused (it also stops recursive schemas).
const MAX_DEPTH: u32 = 64;

/// The Kafka metadata columns, after the value's fields.
pub const META_COLUMNS: [&str; 4] = ["_topic", "_partition", "_offset", "_timestamp"];

/// A schema that has no Arrow form here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ArrowSchemaError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, ArrowSchemaError> {
    Err(ArrowSchemaError(msg.into()))
}

#[derive(Debug, Clone, Copy)]
enum I32Kind {
    Int,
    Date,
    TimeMillis,
}

#[derive(Debug, Clone, Copy)]
enum I64Kind {
    Long,
    TimeMicros,
    Timestamp(TimeUnit, bool),
}

/// One column being built: the Arrow type of one Avro schema node plus its builder.
#[derive(Debug)]
enum Col {
    Null(usize),
    Bool(BooleanBuilder),
    Int32(Int32Builder, I32Kind),
    Int64(Int64Builder, I64Kind),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Binary(BinaryBuilder),
    Utf8(StringBuilder),
    Fixed(FixedSizeBinaryBuilder, usize),
    /// Decimal on bytes (`size` None) or fixed; `wide` when the precision is over 38 (Binary).
    Decimal {
        b: Decimal128Builder,
        size: Option<usize>,
        precision: u8,
        scale: i8,
    },
    WideDecimal(BinaryBuilder, Option<usize>),
    Enum {
        keys: Int32Builder,
        symbols: Arc<StringArray>,
    },
    List {
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        item: Box<Col>,
        field: FieldRef,
    },
    Map {
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        keys: StringBuilder,
        values: Box<Col>,
        entries: FieldRef,
    },
    Struct {
        fields: Fields,
        cols: Vec<Col>,
        nulls: NullBufferBuilder,
    },
    Nullable {
        null_branch: i64,
        inner: Box<Col>,
    },
    Union {
        /// Per Avro branch: its member column, or `None` for the `null` branch.
        branches: Vec<Option<usize>>,
        fields: Fields,
        cols: Vec<Col>,
        nulls: NullBufferBuilder,
    },
}

fn inv(e: ArrowError) -> AvroError {
    tracing::debug!(error = %e, "arrow builder refused a value");
    AvroError::Invalid("value does not fit its Arrow column")
}

impl Col {
    fn data_type(&self) -> DataType {
        match self {
            Col::Null(_) => DataType::Null,
            Col::Bool(_) => DataType::Boolean,
            Col::Int32(_, k) => match k {
                I32Kind::Int => DataType::Int32,
                I32Kind::Date => DataType::Date32,
                I32Kind::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
            },
            Col::Int64(_, k) => match k {
                I64Kind::Long => DataType::Int64,
                I64Kind::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
                I64Kind::Timestamp(u, utc) => {
                    DataType::Timestamp(*u, utc.then(|| Arc::from("UTC")))
                }
            },
            Col::Float32(_) => DataType::Float32,
            Col::Float64(_) => DataType::Float64,
            Col::Binary(_) | Col::WideDecimal(..) => DataType::Binary,
            Col::Utf8(_) => DataType::Utf8,
            Col::Fixed(_, n) => DataType::FixedSizeBinary(*n as i32),
            Col::Decimal {
                precision, scale, ..
            } => DataType::Decimal128(*precision, *scale),
            Col::Enum { .. } => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            Col::List { field, .. } => DataType::List(field.clone()),
            Col::Map { entries, .. } => DataType::Map(entries.clone(), false),
            Col::Struct { fields, .. } | Col::Union { fields, .. } => {
                DataType::Struct(fields.clone())
            }
            Col::Nullable { inner, .. } => inner.data_type(),
        }
    }

    fn nullable(&self) -> bool {
        match self {
            Col::Null(_) | Col::Nullable { .. } => true,
            Col::Union { branches, .. } => branches.iter().any(Option::is_none),
            _ => false,
        }
    }

    /// Whether a value may take zero bytes (the bound on block counts depends on it).
    fn may_be_empty(&self) -> bool {
        match self {
            Col::Null(_) | Col::Struct { .. } | Col::Union { .. } | Col::Nullable { .. } => true,
            Col::Fixed(_, n) => *n == 0,
            Col::Decimal { size, .. } | Col::WideDecimal(_, size) => *size == Some(0),
            _ => false,
        }
    }

    fn append_null(&mut self) {
        match self {
            Col::Null(n) => *n += 1,
            Col::Bool(b) => b.append_null(),
            Col::Int32(b, _) => b.append_null(),
            Col::Int64(b, _) => b.append_null(),
            Col::Float32(b) => b.append_null(),
            Col::Float64(b) => b.append_null(),
            Col::Binary(b) | Col::WideDecimal(b, _) => b.append_null(),
            Col::Utf8(b) => b.append_null(),
            Col::Fixed(b, _) => b.append_null(),
            Col::Decimal { b, .. } => b.append_null(),
            Col::Enum { keys, .. } => keys.append_null(),
            Col::List { offsets, nulls, .. } | Col::Map { offsets, nulls, .. } => {
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last);
                nulls.append_null();
            }
            Col::Struct { cols, nulls, .. } | Col::Union { cols, nulls, .. } => {
                cols.iter_mut().for_each(Col::append_null);
                nulls.append_null();
            }
            Col::Nullable { inner, .. } => inner.append_null(),
        }
    }

    fn read(&mut self, r: &mut AvroCursor<'_>, depth: u32) -> Result<(), AvroError> {
        if depth > MAX_DEPTH {
            return Err(AvroError::Invalid("nesting too deep"));
        }
        match self {
            Col::Null(n) => *n += 1,
            Col::Bool(b) => match r.take(1)?[0] {
                0 => b.append_value(false),
                1 => b.append_value(true),
                _ => return Err(AvroError::Invalid("boolean is not 0 or 1")),
            },
            Col::Int32(b, _) => b.append_value(r.int()?),
            Col::Int64(b, _) => b.append_value(r.long()?),
            Col::Float32(b) => {
                let x = r.take(4)?;
                b.append_value(f32::from_le_bytes([x[0], x[1], x[2], x[3]]));
            }
            Col::Float64(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(r.take(8)?);
                b.append_value(f64::from_le_bytes(a));
            }
            Col::Binary(b) => b.append_value(r.len_prefixed()?),
            Col::Utf8(b) => b.append_value(r.string()?),
            Col::Fixed(b, n) => {
                let n = *n;
                b.append_value(r.take(n)?).map_err(inv)?;
            }
            Col::Decimal { b, size, .. } => {
                let bytes = match size {
                    Some(n) => r.take(*n)?,
                    None => r.len_prefixed()?,
                };
                b.append_value(decimal_i128(bytes)?);
            }
            Col::WideDecimal(b, size) => {
                let bytes = match size {
                    Some(n) => r.take(*n)?,
                    None => r.len_prefixed()?,
                };
                b.append_value(bytes);
            }
            Col::Enum { keys, symbols } => {
                let i = r.int()?;
                if i < 0 || i as usize >= symbols.len() {
                    return Err(AvroError::Invalid("enum index out of range"));
                }
                keys.append_value(i);
            }
            Col::List {
                offsets,
                nulls,
                item,
                ..
            } => {
                let mut end = offsets.last().copied().unwrap_or(0);
                let empty = item.may_be_empty();
                loop {
                    let count = r.block_len(empty)?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        item.read(r, depth + 1)?;
                    }
                    end = i32::try_from(i64::from(end) + count as i64)
                        .map_err(|_| AvroError::Invalid("list too long"))?;
                }
                offsets.push(end);
                nulls.append_non_null();
            }
            Col::Map {
                offsets,
                nulls,
                keys,
                values,
                ..
            } => {
                let mut end = offsets.last().copied().unwrap_or(0);
                loop {
                    // Every entry has at least its key's length byte.
                    let count = r.block_len(false)?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        keys.append_value(r.string()?);
                        values.read(r, depth + 1)?;
                    }
                    end = i32::try_from(i64::from(end) + count as i64)
                        .map_err(|_| AvroError::Invalid("map too long"))?;
                }
                offsets.push(end);
                nulls.append_non_null();
            }
            Col::Struct { cols, nulls, .. } => {
                for c in cols.iter_mut() {
                    c.read(r, depth + 1)?;
                }
                nulls.append_non_null();
            }
            Col::Nullable { null_branch, inner } => {
                let i = r.long()?;
                if i == *null_branch {
                    inner.append_null();
                } else if i == 1 - *null_branch {
                    inner.read(r, depth + 1)?;
                } else {
                    return Err(AvroError::Invalid("union branch index out of range"));
                }
            }
            Col::Union {
                branches,
                cols,
                nulls,
                ..
            } => {
                let i = r.long()?;
                let Some(branch) = usize::try_from(i).ok().and_then(|i| branches.get(i)) else {
                    return Err(AvroError::Invalid("union branch index out of range"));
                };
                match *branch {
                    None => {
                        cols.iter_mut().for_each(Col::append_null);
                        nulls.append_null();
                    }
                    Some(m) => {
                        for (j, c) in cols.iter_mut().enumerate() {
                            if j == m {
                                c.read(r, depth + 1)?;
                            } else {
                                c.append_null();
                            }
                        }
                        nulls.append_non_null();
                    }
                }
            }
        }
        Ok(())
    }

    /// The first `len` values as an array (values appended after them, by a record that failed
    /// half-way, are left out). The builder is empty afterwards.
    fn finish(&mut self, len: usize) -> Result<ArrayRef, ArrowError> {
        fn nulls_of(b: &mut NullBufferBuilder, len: usize) -> Option<NullBuffer> {
            b.finish()
                .map(|n| n.slice(0, len))
                .filter(|n| n.null_count() > 0)
        }
        Ok(match self {
            Col::Null(n) => {
                *n = 0;
                Arc::new(NullArray::new(len))
            }
            Col::Bool(b) => Arc::new(b.finish().slice(0, len)),
            Col::Int32(b, k) => {
                let a = b.finish().slice(0, len);
                match k {
                    I32Kind::Int => Arc::new(a),
                    I32Kind::Date => Arc::new(a.reinterpret_cast::<Date32Type>()),
                    I32Kind::TimeMillis => Arc::new(a.reinterpret_cast::<Time32MillisecondType>()),
                }
            }
            Col::Int64(b, k) => {
                let a = b.finish().slice(0, len);
                match *k {
                    I64Kind::Long => Arc::new(a),
                    I64Kind::TimeMicros => Arc::new(a.reinterpret_cast::<Time64MicrosecondType>()),
                    I64Kind::Timestamp(u, utc) => {
                        let tz = utc.then_some("UTC");
                        match u {
                            TimeUnit::Millisecond => Arc::new(
                                a.reinterpret_cast::<TimestampMillisecondType>()
                                    .with_timezone_opt(tz),
                            ),
                            TimeUnit::Microsecond => Arc::new(
                                a.reinterpret_cast::<TimestampMicrosecondType>()
                                    .with_timezone_opt(tz),
                            ),
                            _ => Arc::new(
                                a.reinterpret_cast::<TimestampNanosecondType>()
                                    .with_timezone_opt(tz),
                            ),
                        }
                    }
                }
            }
            Col::Float32(b) => Arc::new(b.finish().slice(0, len)),
            Col::Float64(b) => Arc::new(b.finish().slice(0, len)),
            Col::Binary(b) | Col::WideDecimal(b, _) => Arc::new(b.finish().slice(0, len)),
            Col::Utf8(b) => Arc::new(b.finish().slice(0, len)),
            Col::Fixed(b, _) => Arc::new(b.finish().slice(0, len)),
            Col::Decimal {
                b,
                precision: p,
                scale: s,
                ..
            } => {
                let (p, s) = (*p, *s);
                let a = b.finish().slice(0, len);
                // finish() keeps the builder's precision and scale.
                *b = Decimal128Builder::new().with_precision_and_scale(p, s)?;
                Arc::new(a)
            }
            Col::Enum { keys, symbols } => {
                let k = keys.finish().slice(0, len);
                Arc::new(DictionaryArray::<Int32Type>::try_new(
                    k,
                    symbols.clone() as ArrayRef,
                )?)
            }
            Col::List {
                offsets,
                nulls,
                item,
                field,
            } => {
                let offs: Vec<i32> = offsets.get(..=len).unwrap_or(offsets).to_vec();
                let child_len = offs.last().copied().unwrap_or(0) as usize;
                let values = item.finish(child_len)?;
                let nulls = nulls_of(nulls, len);
                offsets.clear();
                offsets.push(0);
                Arc::new(ListArray::try_new(
                    field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offs)),
                    values,
                    nulls,
                )?)
            }
            Col::Map {
                offsets,
                nulls,
                keys,
                values,
                entries,
            } => {
                let offs: Vec<i32> = offsets.get(..=len).unwrap_or(offsets).to_vec();
                let child_len = offs.last().copied().unwrap_or(0) as usize;
                let k: ArrayRef = Arc::new(keys.finish().slice(0, child_len));
                let v = values.finish(child_len)?;
                let DataType::Struct(entry_fields) = entries.data_type() else {
                    return Err(ArrowError::SchemaError(
                        "map entries are not a struct".into(),
                    ));
                };
                let entry = StructArray::try_new(entry_fields.clone(), vec![k, v], None)?;
                let nulls = nulls_of(nulls, len);
                offsets.clear();
                offsets.push(0);
                Arc::new(MapArray::try_new(
                    entries.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offs)),
                    entry,
                    nulls,
                    false,
                )?)
            }
            Col::Struct {
                fields,
                cols,
                nulls,
            }
            | Col::Union {
                fields,
                cols,
                nulls,
                ..
            } => {
                let arrays = cols
                    .iter_mut()
                    .map(|c| c.finish(len))
                    .collect::<Result<Vec<_>, _>>()?;
                let nulls = nulls_of(nulls, len);
                Arc::new(StructArray::try_new_with_length(
                    fields.clone(),
                    arrays,
                    nulls,
                    len,
                )?)
            }
            Col::Nullable { inner, .. } => inner.finish(len)?,
        })
    }
}

/// A big-endian two's-complement decimal as i128.
fn decimal_i128(b: &[u8]) -> Result<i128, AvroError> {
    if b.is_empty() {
        return Ok(0);
    }
    let negative = b[0] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let (head, tail) = b.split_at(b.len().saturating_sub(16));
    // Bytes beyond 16 must be sign extension only.
    if head.iter().any(|&x| x != fill) || (!head.is_empty() && (tail[0] & 0x80 != 0) != negative) {
        return Err(AvroError::Invalid("decimal does not fit 128 bits"));
    }
    let mut a = [fill; 16];
    a[16 - tail.len()..].copy_from_slice(tail);
    Ok(i128::from_be_bytes(a))
}

/// Compiles schema JSON into a column tree. Named types are kept by full name and compiled
/// again where they are referenced.
#[derive(Default)]
struct Compiler {
    names: HashMap<String, Value>,
}

impl Compiler {
    fn col(&mut self, json: &Value, ns: &str, depth: u32) -> Result<Col, ArrowSchemaError> {
        if depth > MAX_DEPTH {
            return bad("nested too deep (recursive schemas have no Arrow form)");
        }
        match json {
            Value::String(name) => self.named_or_primitive(name, ns, depth),
            Value::Array(branches) => self.union(branches, ns, depth),
            Value::Object(obj) => self.complex(obj, ns, depth),
            other => bad(format!("{other} is not a schema")),
        }
    }

    fn named_or_primitive(
        &mut self,
        name: &str,
        ns: &str,
        depth: u32,
    ) -> Result<Col, ArrowSchemaError> {
        Ok(match name {
            "null" => Col::Null(0),
            "boolean" => Col::Bool(BooleanBuilder::new()),
            "int" => Col::Int32(Int32Builder::new(), I32Kind::Int),
            "long" => Col::Int64(Int64Builder::new(), I64Kind::Long),
            "float" => Col::Float32(Float32Builder::new()),
            "double" => Col::Float64(Float64Builder::new()),
            "bytes" => Col::Binary(BinaryBuilder::new()),
            "string" => Col::Utf8(StringBuilder::new()),
            _ => {
                let qualified = if name.contains('.') || ns.is_empty() {
                    name.to_string()
                } else {
                    format!("{ns}.{name}")
                };
                let Some((full, def)) = self
                    .names
                    .get_key_value(&qualified)
                    .or_else(|| self.names.get_key_value(name))
                    .map(|(k, v)| (k.clone(), v.clone()))
                else {
                    return bad(format!("unknown type {name:?}"));
                };
                let def_ns = full.rsplit_once('.').map_or("", |(n, _)| n).to_string();
                let Value::Object(obj) = def else {
                    return bad(format!("type {full} is broken"));
                };
                self.body(&obj, &full, &def_ns, depth + 1)?
            }
        })
    }

    fn union(&mut self, branches: &[Value], ns: &str, depth: u32) -> Result<Col, ArrowSchemaError> {
        let is_null = |v: &Value| v.as_str() == Some("null");
        if branches.len() == 2 {
            if let Some(nb) = branches.iter().position(is_null) {
                let other = &branches[1 - nb];
                if !is_null(other) {
                    let inner = self.col(other, ns, depth + 1)?;
                    return Ok(Col::Nullable {
                        null_branch: nb as i64,
                        inner: Box::new(inner),
                    });
                }
            }
        }
        let mut map = Vec::with_capacity(branches.len());
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for (i, b) in branches.iter().enumerate() {
            if is_null(b) {
                map.push(None);
                continue;
            }
            let c = self.col(b, ns, depth + 1)?;
            map.push(Some(cols.len()));
            fields.push(Field::new(format!("member{i}"), c.data_type(), true));
            cols.push(c);
        }
        if cols.is_empty() {
            return Ok(Col::Null(0));
        }
        Ok(Col::Union {
            branches: map,
            fields: Fields::from(fields),
            cols,
            nulls: NullBufferBuilder::new(0),
        })
    }

    fn complex(
        &mut self,
        obj: &Map<String, Value>,
        ns: &str,
        depth: u32,
    ) -> Result<Col, ArrowSchemaError> {
        let ty = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(inner @ (Value::Object(_) | Value::Array(_))) => {
                return self.col(inner, ns, depth + 1);
            }
            _ => return bad("a schema object has no \"type\""),
        };
        match ty {
            "record" | "error" | "enum" | "fixed" => {
                let (full, inner_ns) =
                    full_name(obj, ns).map_err(|e| ArrowSchemaError(e.to_string()))?;
                let mut def = obj.clone();
                def.insert("namespace".into(), Value::String(inner_ns.clone()));
                self.names.insert(full.clone(), Value::Object(def));
                self.body(obj, &full, &inner_ns, depth)
            }
            _ => self.body(obj, ty, ns, depth),
        }
    }

    /// The column of a schema object (`obj`'s "type" decides), `name` naming it in errors.
    fn body(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        ns: &str,
        depth: u32,
    ) -> Result<Col, ArrowSchemaError> {
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
        let logical = obj.get("logicalType").and_then(Value::as_str);
        let decimal = |size: Option<usize>| -> Option<Col> {
            let p = obj.get("precision")?.as_u64()?;
            let s = obj.get("scale").map_or(Some(0), Value::as_u64)?;
            if p == 0 || s > p {
                return None;
            }
            if p > 38 {
                return Some(Col::WideDecimal(BinaryBuilder::new(), size));
            }
            let b = Decimal128Builder::new()
                .with_precision_and_scale(p as u8, s as i8)
                .ok()?;
            Some(Col::Decimal {
                b,
                size,
                precision: p as u8,
                scale: s as i8,
            })
        };
        Ok(match ty {
            "record" | "error" => {
                let Some(fs) = obj.get("fields").and_then(Value::as_array) else {
                    return bad(format!("record {name}: \"fields\" must be an array"));
                };
                let mut fields = Vec::with_capacity(fs.len());
                let mut cols = Vec::with_capacity(fs.len());
                for f in fs {
                    let (Some(fname), Some(fty)) =
                        (f.get("name").and_then(Value::as_str), f.get("type"))
                    else {
                        return bad(format!("record {name}: a field without name or type"));
                    };
                    let c = self
                        .col(fty, ns, depth + 1)
                        .map_err(|e| ArrowSchemaError(format!("{name}.{fname}: {e}")))?;
                    fields.push(Field::new(fname, c.data_type(), c.nullable()));
                    cols.push(c);
                }
                Col::Struct {
                    fields: Fields::from(fields),
                    cols,
                    nulls: NullBufferBuilder::new(0),
                }
            }
            "enum" => {
                let Some(symbols) = obj.get("symbols").and_then(Value::as_array) else {
                    return bad(format!("enum {name}: \"symbols\" must be an array"));
                };
                let symbols: StringArray = symbols.iter().map(Value::as_str).collect();
                if symbols.null_count() > 0 {
                    return bad(format!("enum {name}: symbols must be strings"));
                }
                Col::Enum {
                    keys: Int32Builder::new(),
                    symbols: Arc::new(symbols),
                }
            }
            "fixed" => {
                let Some(size) = obj.get("size").and_then(Value::as_u64) else {
                    return bad(format!("fixed {name}: \"size\" must be an integer"));
                };
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&s| s <= i32::MAX as usize)
                    .ok_or_else(|| ArrowSchemaError(format!("fixed {name}: size too large")))?;
                match logical {
                    Some("decimal") => decimal(Some(size)),
                    _ => None,
                }
                .unwrap_or_else(|| Col::Fixed(FixedSizeBinaryBuilder::new(size as i32), size))
            }
            "array" => {
                let Some(items) = obj.get("items") else {
                    return bad("array without \"items\"");
                };
                let item = self.col(items, ns, depth + 1)?;
                let field = Arc::new(Field::new("item", item.data_type(), item.nullable()));
                Col::List {
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(0),
                    item: Box::new(item),
                    field,
                }
            }
            "map" => {
                let Some(vs) = obj.get("values") else {
                    return bad("map without \"values\"");
                };
                let values = self.col(vs, ns, depth + 1)?;
                let entry = Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", values.data_type(), values.nullable()),
                ]);
                Col::Map {
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(0),
                    keys: StringBuilder::new(),
                    values: Box::new(values),
                    entries: Arc::new(Field::new("entries", DataType::Struct(entry), false)),
                }
            }
            "bytes" if logical == Some("decimal") => {
                decimal(None).unwrap_or_else(|| Col::Binary(BinaryBuilder::new()))
            }
            "int" => match logical {
                Some("date") => Col::Int32(Int32Builder::new(), I32Kind::Date),
                Some("time-millis") => Col::Int32(Int32Builder::new(), I32Kind::TimeMillis),
                _ => Col::Int32(Int32Builder::new(), I32Kind::Int),
            },
            "long" => {
                let k = match logical {
                    Some("time-micros") => I64Kind::TimeMicros,
                    Some("timestamp-millis") => I64Kind::Timestamp(TimeUnit::Millisecond, true),
                    Some("timestamp-micros") => I64Kind::Timestamp(TimeUnit::Microsecond, true),
                    Some("timestamp-nanos") => I64Kind::Timestamp(TimeUnit::Nanosecond, true),
                    Some("local-timestamp-millis") => {
                        I64Kind::Timestamp(TimeUnit::Millisecond, false)
                    }
                    Some("local-timestamp-micros") => {
                        I64Kind::Timestamp(TimeUnit::Microsecond, false)
                    }
                    Some("local-timestamp-nanos") => {
                        I64Kind::Timestamp(TimeUnit::Nanosecond, false)
                    }
                    _ => I64Kind::Long,
                };
                Col::Int64(Int64Builder::new(), k)
            }
            other => self.named_or_primitive(other, ns, depth + 1)?,
        })
    }
}

/// Kafka metadata of one record.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
}

/// Rows of one topic partition under one writer schema, built column by column.
#[derive(Debug)]
pub struct BatchBuilder {
    json: Arc<Value>,
    topic: Arc<str>,
    partition: i32,
    /// Top-level fields left out of the files (the partition columns taken from fields).
    drop: Vec<bool>,
    root: Col,
    offsets: Int64Builder,
    timestamps: Int64Builder,
    /// Rows in the builders.
    rows: usize,
    /// Rows already finished (kept when a record failed half-way through the builders).
    chunks: Vec<RecordBatch>,
    chunk_rows: usize,
    schema: SchemaRef,
}

impl BatchBuilder {
    /// A builder for records of writer schema `json` (a record schema); top-level fields named
    /// in `drop` are not written (they are partition columns).
    pub fn new(
        json: Arc<Value>,
        topic: Arc<str>,
        partition: i32,
        drop: &[String],
    ) -> Result<Self, ArrowSchemaError> {
        let root = Compiler::default().col(&json, "", 0)?;
        let Col::Struct { fields, .. } = &root else {
            return bad("the value schema must be a record to be written as a table");
        };
        let keep: Vec<bool> = fields.iter().map(|f| !drop.contains(f.name())).collect();
        let mut out: Vec<FieldRef> = fields
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(f, _)| f.clone())
            .collect();
        if let Some(f) = out
            .iter()
            .find(|f| META_COLUMNS.contains(&f.name().as_str()))
        {
            return bad(format!(
                "field {:?} clashes with a Kafka metadata column",
                f.name()
            ));
        }
        out.extend(meta_fields());
        Ok(Self {
            json,
            topic,
            partition,
            drop: keep.iter().map(|k| !k).collect(),
            root,
            offsets: Int64Builder::new(),
            timestamps: Int64Builder::new(),
            rows: 0,
            chunks: Vec::new(),
            chunk_rows: 0,
            schema: Arc::new(Schema::new(out)),
        })
    }

    /// The Arrow schema of the batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows appended so far.
    pub fn rows(&self) -> usize {
        self.rows + self.chunk_rows
    }

    /// Appends the datum `data`. On error nothing of it is kept; the rows before it are.
    pub fn append(&mut self, data: &[u8], meta: Meta) -> Result<(), AvroError> {
        let mut r = AvroCursor { data, pos: 0 };
        let read = self
            .root
            .read(&mut r, 0)
            .and_then(|()| match data.len() - r.pos {
                0 => Ok(()),
                n => Err(AvroError::Trailing(n)),
            });
        match read {
            Ok(()) => {
                self.offsets.append_value(meta.offset);
                self.timestamps.append_option(meta.timestamp);
                self.rows += 1;
                Ok(())
            }
            Err(e) => {
                // The builders may hold part of the record: keep the rows before it as a
                // finished chunk and start the builders afresh.
                if let Err(fe) = self.finish_chunk() {
                    tracing::error!(error = %fe, "cannot keep the rows before a bad record");
                }
                Err(e)
            }
        }
    }

    fn finish_chunk(&mut self) -> Result<(), ArrowError> {
        let len = self.rows;
        let root = self.root.finish(len)?;
        // Fresh builders: finish() leaves most of them reusable, but not a half-read record.
        if let Ok(fresh) = Compiler::default().col(&self.json, "", 0) {
            self.root = fresh;
        }
        let offsets = self.offsets.finish().slice(0, len);
        let timestamps = self.timestamps.finish().slice(0, len);
        self.rows = 0;
        if len == 0 {
            return Ok(());
        }
        let Some(root) = root.as_any().downcast_ref::<StructArray>() else {
            return Err(ArrowError::SchemaError("root is not a struct".into()));
        };
        let mut columns: Vec<ArrayRef> = root
            .columns()
            .iter()
            .zip(&self.drop)
            .filter(|(_, d)| !**d)
            .map(|(c, _)| c.clone())
            .collect();
        columns.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(&*self.topic, len),
        )));
        columns.push(Arc::new(Int32Array::from_value(self.partition, len)));
        columns.push(Arc::new(offsets));
        columns.push(Arc::new(
            timestamps
                .reinterpret_cast::<TimestampMillisecondType>()
                .with_timezone("UTC"),
        ));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.chunk_rows += len;
        self.chunks.push(batch);
        Ok(())
    }

    /// Every row appended, as batches; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<Vec<RecordBatch>, ArrowError> {
        self.finish_chunk()?;
        self.chunk_rows = 0;
        Ok(std::mem::take(&mut self.chunks))
    }
}

fn meta_fields() -> [FieldRef; 4] {
    [
        Arc::new(Field::new("_topic", DataType::Utf8, false)),
        Arc::new(Field::new("_partition", DataType::Int32, false)),
        Arc::new(Field::new("_offset", DataType::Int64, false)),
        Arc::new(Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        )),
    ]
}
