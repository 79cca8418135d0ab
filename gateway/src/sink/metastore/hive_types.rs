//! Arrow types as Hive column types. Input: the Arrow schema of the sink's files; output: the
//! Hive columns of a table (`decimal(10,3)`, `array<struct<a:int,b:string>>`, ...), or an
//! [`MetastoreError::UnsupportedType`] for a type Hive has no equivalent of.

use arrow_schema::{DataType, Field, Schema};
use hive_metastore::FieldSchema;

use super::MetastoreError;

/// The Hive columns of `schema`, leaving out fields named like a partition key.
pub(super) fn hive_columns(
    schema: &Schema,
    partition_keys: &[String],
) -> Result<Vec<FieldSchema>, MetastoreError> {
    schema
        .fields()
        .iter()
        .filter(|f| {
            !partition_keys
                .iter()
                .any(|k| k.eq_ignore_ascii_case(f.name()))
        })
        .map(|f| Ok(field_schema(f.name(), &hive_field_type(f, f.name())?)))
        .collect()
}

fn hive_field_type(field: &Field, column: &str) -> Result<String, MetastoreError> {
    hive_type(field.data_type()).map_err(|data_type| MetastoreError::UnsupportedType {
        column: column.into(),
        data_type,
    })
}

/// The Hive type of an Arrow type, e.g. `decimal(10,3)`, `array<struct<a:int,b:string>>`;
/// `Err` carries the Arrow type that has no Hive equivalent.
///
/// Integers keep their width (`tinyint`, `smallint`, `int`, `bigint`); unsigned ones take the
/// next signed width, `UInt64` is `decimal(20,0)`; `Float16` is `float`. Strings and string
/// views are `string`, binaries `binary`, dictionaries and run-end encoded arrays their value
/// type. Timestamps (any unit, with or without a zone) are `timestamp`, `Date32/64` `date`,
/// `Time32` `int` and `Time64` `bigint` (Hive has no time of day). Decimals up to precision 38
/// with a scale from 0 to the precision are `decimal(p,s)`. Lists of any kind are `array<..>`,
/// maps `map<k,v>`, structs `struct<name:type,..>`. No equivalent: `Null`, `Duration`,
/// `Interval`, `Union`, decimals of precision > 38 or negative scale.
pub fn hive_type(data_type: &DataType) -> Result<String, String> {
    use DataType as D;
    let unsupported = || Err(data_type.to_string());
    Ok(match data_type {
        D::Boolean => "boolean".into(),
        D::Int8 => "tinyint".into(),
        D::Int16 | D::UInt8 => "smallint".into(),
        D::Int32 | D::UInt16 | D::Time32(_) => "int".into(),
        D::Int64 | D::UInt32 | D::Time64(_) => "bigint".into(),
        D::UInt64 => "decimal(20,0)".into(),
        D::Float16 | D::Float32 => "float".into(),
        D::Float64 => "double".into(),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "string".into(),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "binary".into(),
        D::Timestamp(_, _) => "timestamp".into(),
        D::Date32 | D::Date64 => "date".into(),
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
            if *p == 0 || *p > 38 || *s < 0 || i16::from(*s) > i16::from(*p) {
                return unsupported();
            }
            format!("decimal({p},{s})")
        }
        D::List(f)
        | D::LargeList(f)
        | D::ListView(f)
        | D::LargeListView(f)
        | D::FixedSizeList(f, _) => format!("array<{}>", hive_type(f.data_type())?),
        D::Map(entries, _) => match entries.data_type() {
            D::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                hive_type(kv[0].data_type())?,
                hive_type(kv[1].data_type())?
            ),
            _ => return unsupported(),
        },
        D::Struct(fields) => {
            if fields.is_empty() {
                // Hive cannot declare a struct without fields.
                return unsupported();
            }
            let inner = fields
                .iter()
                .map(|f| Ok(format!("{}:{}", f.name(), hive_type(f.data_type())?)))
                .collect::<Result<Vec<_>, String>>()?;
            format!("struct<{}>", inner.join(","))
        }
        D::Dictionary(_, value) => hive_type(value)?,
        D::RunEndEncoded(_, values) => hive_type(values.data_type())?,
        D::Null | D::Duration(_) | D::Interval(_) | D::Union(_, _) => return unsupported(),
    })
}

/// One Hive column: its name and Hive type.
pub(super) fn field_schema(name: &str, hive_type: &str) -> FieldSchema {
    FieldSchema {
        name: Some(pilota::FastStr::new(name)),
        r#type: Some(pilota::FastStr::new(hive_type)),
        comment: None,
    }
}
