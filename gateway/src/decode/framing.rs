//! How one part of a record (value or key) is framed and decoded: the framings of the schema
//! formats (raw, single-object, Confluent), their writer schemas, and the JSON text of one part.
//! Input: the part's bytes and its [`Format`]; output: JSON text, or the writer schema and datum
//! of an Avro part (for the sink). A Confluent-framed part is Avro, Protobuf or JSON Schema, as
//! the registry says of its schema id.

use std::collections::HashMap;
use std::sync::Arc;

use super::avro::{self, AvroError};
use super::registry::{Lookup, Registry, RegistrySchema};
use super::schema::ParsedSchema;
use super::{DecodeError, json_schema, protobuf};
use crate::config::PayloadFormat;

/// Where a topic's writer schemas come from.
#[derive(Debug, Clone)]
pub(super) enum Framing {
    /// No framing; one Avro schema.
    Raw(Arc<ParsedSchema>),
    /// `0xC3 0x01` + fingerprint (little-endian), Avro schema from the schemas folder.
    SingleObject(Arc<HashMap<u64, Arc<ParsedSchema>>>),
    /// `0x00` + schema id (big-endian), schema (of any registry type) from the registry.
    Confluent {
        registry: Arc<Registry>,
        /// Validate JSON-Schema payloads against their schema (`validate_json_schema`).
        validate_json: bool,
    },
}

/// How one part of a record (value or key) is decoded.
#[derive(Debug, Clone)]
pub(super) enum Format {
    Json,
    /// A schema format.
    Framed {
        framing: Framing,
        /// The Avro reader schema to resolve to, if configured.
        reader: Option<Arc<ParsedSchema>>,
    },
}

/// The schema id of a Confluent-framed payload.
pub(super) fn confluent_id(b: &[u8]) -> Option<u32> {
    match b {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn magic_error(format: PayloadFormat, expected: &'static str, b: &[u8]) -> DecodeError {
    DecodeError::WrongMagic {
        format,
        expected,
        found: b
            .iter()
            .take(2)
            .map(|x| format!("0x{x:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The registry schema of a Confluent-framed payload (its id, from the cache) and the bytes after
/// the 5-byte header.
fn confluent_schema<'b>(
    registry: &Registry,
    bytes: &'b [u8],
) -> Result<(u32, RegistrySchema, &'b [u8]), DecodeError> {
    if bytes.first().is_some_and(|&b| b != 0) {
        return Err(magic_error(PayloadFormat::Confluent, "0x00", bytes));
    }
    let (Some(id), Some(data)) = (confluent_id(bytes), bytes.get(5..)) else {
        return Err(DecodeError::Truncated("shorter than the Confluent header"));
    };
    match registry.cached(id) {
        Some(Lookup::Found(s)) => Ok((id, s, data)),
        Some(Lookup::Unusable { why, .. }) => Err(DecodeError::BadSchema { id, why }),
        Some(Lookup::Missing { .. }) | None => Err(DecodeError::UnknownSchemaId(id)),
    }
}

/// The Avro writer schema of a framed payload and the datum after the framing; for a
/// Confluent-framed payload whose schema is not Avro, [`DecodeError::NotAvro`].
pub(super) fn writer_schema<'b>(
    framing: &Framing,
    bytes: &'b [u8],
) -> Result<(Arc<ParsedSchema>, &'b [u8]), DecodeError> {
    Ok(match framing {
        Framing::Raw(s) => (s.clone(), bytes),
        Framing::SingleObject(known) => {
            if bytes.len() >= 2 && bytes[..2] != [0xc3, 0x01] {
                return Err(magic_error(PayloadFormat::SingleObject, "0xc3 0x01", bytes));
            }
            let Some((head, data)) = bytes.split_first_chunk::<10>() else {
                return Err(DecodeError::Truncated(
                    "shorter than the single-object header",
                ));
            };
            let mut fp = [0u8; 8];
            fp.copy_from_slice(&head[2..]);
            let fp = u64::from_le_bytes(fp);
            match known.get(&fp) {
                Some(s) => (s.clone(), data),
                None => return Err(DecodeError::UnknownFingerprint(fp)),
            }
        }
        Framing::Confluent { registry, .. } => match confluent_schema(registry, bytes)? {
            (_, RegistrySchema::Avro(s), data) => (s, data),
            (id, other, _) => {
                return Err(DecodeError::NotAvro {
                    id,
                    schema_type: other.type_name(),
                });
            }
        },
    })
}

/// The JSON text of one value or key.
pub(super) fn to_json(format: &Format, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (framing, reader) = match format {
        Format::Json => {
            // Validate without building a tree; the text itself is what clients get.
            serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(DecodeError::BadJson)?;
            return Ok(bytes.to_vec());
        }
        Format::Framed { framing, reader } => (framing, reader),
    };
    let (writer, data) = match framing {
        Framing::Confluent {
            registry,
            validate_json,
        } => match confluent_schema(registry, bytes)? {
            (_, RegistrySchema::Avro(s), data) => (s, data),
            (id, other, _) if reader.is_some() => {
                return Err(DecodeError::BadSchema {
                    id,
                    why: format!(
                        "a {} schema cannot be resolved to the topic's Avro reader_schema",
                        other.type_name()
                    ),
                });
            }
            (_, RegistrySchema::Protobuf(p), data) => {
                let mut out = Vec::with_capacity(data.len() * 2 + 16);
                protobuf::to_json(&p, data, &mut out)?;
                return Ok(out);
            }
            (_, RegistrySchema::Json(j), data) => {
                return json_schema::to_json(&j, data, *validate_json);
            }
        },
        other => writer_schema(other, bytes)?,
    };
    let mut out = Vec::with_capacity(data.len() * 2 + 16);
    match reader {
        None => avro::to_json(&writer.plan, data, &mut out)?,
        Some(reader) => {
            // The writer's plan checks every block count against the bytes left first:
            // apache-avro reserves a block's claimed item count up front, so a few hostile bytes
            // would make it allocate gigabytes (found by fuzzing).
            avro::to_json(&writer.plan, data, &mut out)?;
            out.clear();
            // Avro's resolution rules, by apache-avro; the resolved value is then written
            // following the reader's plan, with the same mapping.
            let mut rest = data;
            let value = apache_avro::from_avro_datum(&writer.avro, &mut rest, Some(&reader.avro))
                .map_err(|e| {
                DecodeError::BadAvro(format!("resolving to the reader schema: {e}"))
            })?;
            if !rest.is_empty() {
                return Err(AvroError::Trailing(rest.len()).into());
            }
            avro::value_to_json(&reader.plan, reader.plan.root, &value, &mut out)?;
        }
    }
    Ok(out)
}
