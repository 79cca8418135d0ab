//! Assembling the sink's record batches. Input: Avro datums of one topic partition under one
//! writer schema, each with its Kafka offset and timestamp; output: Arrow [`RecordBatch`]es of
//! the value's columns (less the partition columns taken from fields) followed by the Kafka
//! metadata columns [`META_COLUMNS`], then, where the table asks for them, [`KEY_COLUMN`] and
//! [`HEADERS_COLUMN`].

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder};
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{ArrayRef, Int32Array, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use super::columns::ColumnBuilder;
use super::types::Compiler;
use super::{ArrowSchemaError, HEADERS_COLUMN, KEY_COLUMN, META_COLUMNS, bad};
use crate::decode::avro::{AvroCursor, AvroError};

/// Kafka metadata of one record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta<'a> {
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
    /// The key as text (written only with [`BatchBuilder::with_key`]).
    pub key: Option<&'a str>,
    /// The headers, names and values (written only with [`BatchBuilder::with_headers`]).
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// The `_headers` column being built: each row's headers as a run of (name, value) entries.
#[derive(Debug)]
struct HeadersBuilder {
    /// Where each row's entries start, and the end of the last.
    offsets: Vec<i32>,
    names: StringBuilder,
    values: BinaryBuilder,
}

impl HeadersBuilder {
    fn new() -> Self {
        Self {
            offsets: vec![0],
            names: StringBuilder::new(),
            values: BinaryBuilder::new(),
        }
    }

    fn append(&mut self, headers: &[(&str, Option<&[u8]>)]) {
        for (name, value) in headers {
            self.names.append_value(name);
            self.values.append_option(*value);
        }
        let end = self.offsets.last().copied().unwrap_or(0);
        self.offsets
            .push(end.saturating_add(i32::try_from(headers.len()).unwrap_or(i32::MAX)));
    }

    /// The first `len` rows as a list array; the builder is empty afterwards.
    fn finish(&mut self, len: usize) -> Result<ArrayRef, ArrowError> {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let names = self.names.finish();
        let values = self.values.finish();
        let end = usize::try_from(offsets.get(len).copied().unwrap_or(0)).unwrap_or(0);
        let entries = StructArray::try_new(
            header_entry_fields(),
            vec![
                Arc::new(names.slice(0, end)),
                Arc::new(values.slice(0, end)),
            ],
            None,
        )?;
        let offsets = offsets.get(..=len).unwrap_or(&[0]).to_vec();
        Ok(Arc::new(ListArray::try_new(
            header_entry_field(),
            OffsetBuffer::new(offsets.into()),
            Arc::new(entries),
            None,
        )?))
    }
}

/// Rows of one topic partition under one writer schema, built column by column.
#[derive(Debug)]
pub struct BatchBuilder {
    json: Arc<Value>,
    topic: Arc<str>,
    partition: i32,
    /// Top-level fields left out of the files (the partition columns taken from fields).
    drop: Vec<bool>,
    root: ColumnBuilder,
    offsets: Int64Builder,
    timestamps: Int64Builder,
    keys: Option<StringBuilder>,
    headers: Option<HeadersBuilder>,
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
        let ColumnBuilder::Struct { fields, .. } = &root else {
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
            keys: None,
            headers: None,
            rows: 0,
            chunks: Vec::new(),
            chunk_rows: 0,
            schema: Arc::new(Schema::new(out)),
        })
    }

    /// Also writes the Kafka key, as the column [`KEY_COLUMN`] (text, null for no key). Call
    /// before any row is appended.
    pub fn with_key(self) -> Result<Self, ArrowSchemaError> {
        let mut b = self.with_column(Field::new(KEY_COLUMN, DataType::Utf8, true))?;
        b.keys = Some(StringBuilder::new());
        Ok(b)
    }

    /// Also writes the Kafka headers, as the column [`HEADERS_COLUMN`]: a list of
    /// `{key: string, value: binary}` entries in the record's order (names may repeat; a null
    /// value stays null). Call before any row is appended.
    pub fn with_headers(self) -> Result<Self, ArrowSchemaError> {
        let mut b = self.with_column(Field::new(
            HEADERS_COLUMN,
            DataType::List(header_entry_field()),
            false,
        ))?;
        b.headers = Some(HeadersBuilder::new());
        Ok(b)
    }

    fn with_column(mut self, field: Field) -> Result<Self, ArrowSchemaError> {
        if self.schema.field_with_name(field.name()).is_ok() {
            return bad(format!(
                "field {:?} clashes with a Kafka metadata column",
                field.name()
            ));
        }
        let mut fields: Vec<FieldRef> = self.schema.fields().iter().cloned().collect();
        fields.push(Arc::new(field));
        self.schema = Arc::new(Schema::new(fields));
        Ok(self)
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
                if let Some(keys) = &mut self.keys {
                    keys.append_option(meta.key);
                }
                if let Some(headers) = &mut self.headers {
                    headers.append(meta.headers);
                }
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
        let keys = self.keys.as_mut().map(|k| k.finish().slice(0, len));
        let headers = match &mut self.headers {
            Some(h) => Some(h.finish(len)?),
            None => None,
        };
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
        if let Some(keys) = keys {
            columns.push(Arc::new(keys));
        }
        columns.extend(headers);
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

/// The fields of one `_headers` entry.
fn header_entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn header_entry_field() -> FieldRef {
    Arc::new(Field::new(
        "element",
        DataType::Struct(header_entry_fields()),
        false,
    ))
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
