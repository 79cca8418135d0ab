//! The column builders of the Avro -> Arrow conversion. Input: Avro binary, read one schema node
//! at a time with the gateway's [`AvroCursor`]; output: one Arrow array per column (nested columns
//! hold their children's builders), the first `len` rows of what was read.

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
    Array, ArrayRef, DictionaryArray, ListArray, MapArray, NullArray, StringArray, StructArray,
};
use arrow_buffer::{NullBuffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, FieldRef, Fields, TimeUnit};

use super::MAX_DEPTH;
use crate::decode::avro::{AvroCursor, AvroError};

#[derive(Debug, Clone, Copy)]
pub(super) enum I32Kind {
    Int,
    Date,
    TimeMillis,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum I64Kind {
    Long,
    TimeMicros,
    Timestamp(TimeUnit, bool),
}

/// One column being built: the Arrow type of one Avro schema node plus its builder.
#[derive(Debug)]
pub(super) enum ColumnBuilder {
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
        item: Box<ColumnBuilder>,
        field: FieldRef,
    },
    Map {
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        keys: StringBuilder,
        values: Box<ColumnBuilder>,
        entries: FieldRef,
    },
    Struct {
        fields: Fields,
        cols: Vec<ColumnBuilder>,
        nulls: NullBufferBuilder,
    },
    Nullable {
        null_branch: i64,
        inner: Box<ColumnBuilder>,
    },
    Union {
        /// Per Avro branch: its member column, or `None` for the `null` branch.
        branches: Vec<Option<usize>>,
        fields: Fields,
        cols: Vec<ColumnBuilder>,
        nulls: NullBufferBuilder,
    },
}

fn inv(e: ArrowError) -> AvroError {
    tracing::debug!(error = %e, "arrow builder refused a value");
    AvroError::Invalid("value does not fit its Arrow column")
}

impl ColumnBuilder {
    pub(super) fn data_type(&self) -> DataType {
        match self {
            ColumnBuilder::Null(_) => DataType::Null,
            ColumnBuilder::Bool(_) => DataType::Boolean,
            ColumnBuilder::Int32(_, k) => match k {
                I32Kind::Int => DataType::Int32,
                I32Kind::Date => DataType::Date32,
                I32Kind::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
            },
            ColumnBuilder::Int64(_, k) => match k {
                I64Kind::Long => DataType::Int64,
                I64Kind::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
                I64Kind::Timestamp(u, utc) => {
                    DataType::Timestamp(*u, utc.then(|| Arc::from("UTC")))
                }
            },
            ColumnBuilder::Float32(_) => DataType::Float32,
            ColumnBuilder::Float64(_) => DataType::Float64,
            ColumnBuilder::Binary(_) | ColumnBuilder::WideDecimal(..) => DataType::Binary,
            ColumnBuilder::Utf8(_) => DataType::Utf8,
            ColumnBuilder::Fixed(_, n) => DataType::FixedSizeBinary(*n as i32),
            ColumnBuilder::Decimal {
                precision, scale, ..
            } => DataType::Decimal128(*precision, *scale),
            ColumnBuilder::Enum { .. } => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            ColumnBuilder::List { field, .. } => DataType::List(field.clone()),
            ColumnBuilder::Map { entries, .. } => DataType::Map(entries.clone(), false),
            ColumnBuilder::Struct { fields, .. } | ColumnBuilder::Union { fields, .. } => {
                DataType::Struct(fields.clone())
            }
            ColumnBuilder::Nullable { inner, .. } => inner.data_type(),
        }
    }

    pub(super) fn nullable(&self) -> bool {
        match self {
            ColumnBuilder::Null(_) | ColumnBuilder::Nullable { .. } => true,
            ColumnBuilder::Union { branches, .. } => branches.iter().any(Option::is_none),
            _ => false,
        }
    }

    /// Whether a value may take zero bytes (the bound on block counts depends on it).
    fn may_be_empty(&self) -> bool {
        match self {
            ColumnBuilder::Null(_)
            | ColumnBuilder::Struct { .. }
            | ColumnBuilder::Union { .. }
            | ColumnBuilder::Nullable { .. } => true,
            ColumnBuilder::Fixed(_, n) => *n == 0,
            ColumnBuilder::Decimal { size, .. } | ColumnBuilder::WideDecimal(_, size) => {
                *size == Some(0)
            }
            _ => false,
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Null(n) => *n += 1,
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int32(b, _) => b.append_null(),
            ColumnBuilder::Int64(b, _) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Binary(b) | ColumnBuilder::WideDecimal(b, _) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Fixed(b, _) => b.append_null(),
            ColumnBuilder::Decimal { b, .. } => b.append_null(),
            ColumnBuilder::Enum { keys, .. } => keys.append_null(),
            ColumnBuilder::List { offsets, nulls, .. }
            | ColumnBuilder::Map { offsets, nulls, .. } => {
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last);
                nulls.append_null();
            }
            ColumnBuilder::Struct { cols, nulls, .. }
            | ColumnBuilder::Union { cols, nulls, .. } => {
                cols.iter_mut().for_each(ColumnBuilder::append_null);
                nulls.append_null();
            }
            ColumnBuilder::Nullable { inner, .. } => inner.append_null(),
        }
    }

    pub(super) fn read(&mut self, r: &mut AvroCursor<'_>, depth: u32) -> Result<(), AvroError> {
        if depth > MAX_DEPTH {
            return Err(AvroError::Invalid("nesting too deep"));
        }
        match self {
            ColumnBuilder::Null(n) => *n += 1,
            ColumnBuilder::Bool(b) => match r.take(1)?[0] {
                0 => b.append_value(false),
                1 => b.append_value(true),
                _ => return Err(AvroError::Invalid("boolean is not 0 or 1")),
            },
            ColumnBuilder::Int32(b, _) => b.append_value(r.int()?),
            ColumnBuilder::Int64(b, _) => b.append_value(r.long()?),
            ColumnBuilder::Float32(b) => {
                let x = r.take(4)?;
                b.append_value(f32::from_le_bytes([x[0], x[1], x[2], x[3]]));
            }
            ColumnBuilder::Float64(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(r.take(8)?);
                b.append_value(f64::from_le_bytes(a));
            }
            ColumnBuilder::Binary(b) => b.append_value(r.len_prefixed()?),
            ColumnBuilder::Utf8(b) => b.append_value(r.string()?),
            ColumnBuilder::Fixed(b, n) => {
                let n = *n;
                b.append_value(r.take(n)?).map_err(inv)?;
            }
            ColumnBuilder::Decimal { b, size, .. } => {
                let bytes = match size {
                    Some(n) => r.take(*n)?,
                    None => r.len_prefixed()?,
                };
                b.append_value(decimal_i128(bytes)?);
            }
            ColumnBuilder::WideDecimal(b, size) => {
                let bytes = match size {
                    Some(n) => r.take(*n)?,
                    None => r.len_prefixed()?,
                };
                b.append_value(bytes);
            }
            ColumnBuilder::Enum { keys, symbols } => {
                let i = r.int()?;
                if i < 0 || i as usize >= symbols.len() {
                    return Err(AvroError::Invalid("enum index out of range"));
                }
                keys.append_value(i);
            }
            ColumnBuilder::List {
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
            ColumnBuilder::Map {
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
            ColumnBuilder::Struct { cols, nulls, .. } => {
                for c in cols.iter_mut() {
                    c.read(r, depth + 1)?;
                }
                nulls.append_non_null();
            }
            ColumnBuilder::Nullable { null_branch, inner } => {
                let i = r.long()?;
                if i == *null_branch {
                    inner.append_null();
                } else if i == 1 - *null_branch {
                    inner.read(r, depth + 1)?;
                } else {
                    return Err(AvroError::Invalid("union branch index out of range"));
                }
            }
            ColumnBuilder::Union {
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
                        cols.iter_mut().for_each(ColumnBuilder::append_null);
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
    pub(super) fn finish(&mut self, len: usize) -> Result<ArrayRef, ArrowError> {
        fn nulls_of(b: &mut NullBufferBuilder, len: usize) -> Option<NullBuffer> {
            b.finish()
                .map(|n| n.slice(0, len))
                .filter(|n| n.null_count() > 0)
        }
        Ok(match self {
            ColumnBuilder::Null(n) => {
                *n = 0;
                Arc::new(NullArray::new(len))
            }
            ColumnBuilder::Bool(b) => Arc::new(b.finish().slice(0, len)),
            ColumnBuilder::Int32(b, k) => {
                let a = b.finish().slice(0, len);
                match k {
                    I32Kind::Int => Arc::new(a),
                    I32Kind::Date => Arc::new(a.reinterpret_cast::<Date32Type>()),
                    I32Kind::TimeMillis => Arc::new(a.reinterpret_cast::<Time32MillisecondType>()),
                }
            }
            ColumnBuilder::Int64(b, k) => {
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
            ColumnBuilder::Float32(b) => Arc::new(b.finish().slice(0, len)),
            ColumnBuilder::Float64(b) => Arc::new(b.finish().slice(0, len)),
            ColumnBuilder::Binary(b) | ColumnBuilder::WideDecimal(b, _) => {
                Arc::new(b.finish().slice(0, len))
            }
            ColumnBuilder::Utf8(b) => Arc::new(b.finish().slice(0, len)),
            ColumnBuilder::Fixed(b, _) => Arc::new(b.finish().slice(0, len)),
            ColumnBuilder::Decimal {
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
            ColumnBuilder::Enum { keys, symbols } => {
                let k = keys.finish().slice(0, len);
                Arc::new(DictionaryArray::<Int32Type>::try_new(
                    k,
                    symbols.clone() as ArrayRef,
                )?)
            }
            ColumnBuilder::List {
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
            ColumnBuilder::Map {
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
            ColumnBuilder::Struct {
                fields,
                cols,
                nulls,
            }
            | ColumnBuilder::Union {
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
            ColumnBuilder::Nullable { inner, .. } => inner.finish(len)?,
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
