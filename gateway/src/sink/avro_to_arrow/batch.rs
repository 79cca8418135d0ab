//! Assembling the sink's record batches. Input: Avro datums of one topic partition under one
//! writer schema, each with its Kafka offset and timestamp; output: Arrow [`RecordBatch`]es of
//! the value's columns (less the partition columns taken from fields) followed by the Kafka
//! metadata columns [`META_COLUMNS`].

use std::sync::Arc;

use arrow_array::builder::Int64Builder;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use super::columns::ColumnBuilder;
use super::types::Compiler;
use super::{ArrowSchemaError, META_COLUMNS, bad};
use crate::decode::avro::{AvroCursor, AvroError};

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
    root: ColumnBuilder,
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
