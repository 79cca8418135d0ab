//! The Avro -> Arrow type mapping (the table in [`super`]'s header). Input: a writer schema's
//! JSON; output: the tree of empty [`ColumnBuilder`]s whose Arrow types the schema maps to, or an
//! [`ArrowSchemaError`] for a schema that has no Arrow form (recursive, too deep, unknown names).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Decimal128Builder, FixedSizeBinaryBuilder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::{Array, StringArray};
use arrow_buffer::NullBufferBuilder;
use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde_json::{Map, Value};

use super::columns::{ColumnBuilder, I32Kind, I64Kind};
use super::{ArrowSchemaError, MAX_DEPTH, bad};
use crate::decode::schema::full_name;

/// Compiles schema JSON into a column tree. Named types are kept by full name and compiled
/// again where they are referenced.
#[derive(Default)]
pub(super) struct Compiler {
    names: HashMap<String, Value>,
}

impl Compiler {
    pub(super) fn col(
        &mut self,
        json: &Value,
        ns: &str,
        depth: u32,
    ) -> Result<ColumnBuilder, ArrowSchemaError> {
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
    ) -> Result<ColumnBuilder, ArrowSchemaError> {
        Ok(match name {
            "null" => ColumnBuilder::Null(0),
            "boolean" => ColumnBuilder::Bool(BooleanBuilder::new()),
            "int" => ColumnBuilder::Int32(Int32Builder::new(), I32Kind::Int),
            "long" => ColumnBuilder::Int64(Int64Builder::new(), I64Kind::Long),
            "float" => ColumnBuilder::Float32(Float32Builder::new()),
            "double" => ColumnBuilder::Float64(Float64Builder::new()),
            "bytes" => ColumnBuilder::Binary(BinaryBuilder::new()),
            "string" => ColumnBuilder::Utf8(StringBuilder::new()),
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

    fn union(
        &mut self,
        branches: &[Value],
        ns: &str,
        depth: u32,
    ) -> Result<ColumnBuilder, ArrowSchemaError> {
        let is_null = |v: &Value| v.as_str() == Some("null");
        if branches.len() == 2 {
            if let Some(nb) = branches.iter().position(is_null) {
                let other = &branches[1 - nb];
                if !is_null(other) {
                    let inner = self.col(other, ns, depth + 1)?;
                    return Ok(ColumnBuilder::Nullable {
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
            return Ok(ColumnBuilder::Null(0));
        }
        Ok(ColumnBuilder::Union {
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
    ) -> Result<ColumnBuilder, ArrowSchemaError> {
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
    ) -> Result<ColumnBuilder, ArrowSchemaError> {
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
        let logical = obj.get("logicalType").and_then(Value::as_str);
        let decimal = |size: Option<usize>| -> Option<ColumnBuilder> {
            let p = obj.get("precision")?.as_u64()?;
            let s = obj.get("scale").map_or(Some(0), Value::as_u64)?;
            if p == 0 || s > p {
                return None;
            }
            if p > 38 {
                return Some(ColumnBuilder::WideDecimal(BinaryBuilder::new(), size));
            }
            let b = Decimal128Builder::new()
                .with_precision_and_scale(p as u8, s as i8)
                .ok()?;
            Some(ColumnBuilder::Decimal {
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
                ColumnBuilder::Struct {
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
                ColumnBuilder::Enum {
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
                .unwrap_or_else(|| {
                    ColumnBuilder::Fixed(FixedSizeBinaryBuilder::new(size as i32), size)
                })
            }
            "array" => {
                let Some(items) = obj.get("items") else {
                    return bad("array without \"items\"");
                };
                let item = self.col(items, ns, depth + 1)?;
                let field = Arc::new(Field::new("item", item.data_type(), item.nullable()));
                ColumnBuilder::List {
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
                ColumnBuilder::Map {
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(0),
                    keys: StringBuilder::new(),
                    values: Box::new(values),
                    entries: Arc::new(Field::new("entries", DataType::Struct(entry), false)),
                }
            }
            "bytes" if logical == Some("decimal") => {
                decimal(None).unwrap_or_else(|| ColumnBuilder::Binary(BinaryBuilder::new()))
            }
            "int" => match logical {
                Some("date") => ColumnBuilder::Int32(Int32Builder::new(), I32Kind::Date),
                Some("time-millis") => {
                    ColumnBuilder::Int32(Int32Builder::new(), I32Kind::TimeMillis)
                }
                _ => ColumnBuilder::Int32(Int32Builder::new(), I32Kind::Int),
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
                ColumnBuilder::Int64(Int64Builder::new(), k)
            }
            other => self.named_or_primitive(other, ns, depth + 1)?,
        })
    }
}
