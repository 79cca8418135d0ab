//! Decode stage: a raw Kafka record (bytes) becomes a [`Record`] whose value is JSON, once per
//! record however many clients read it. Input: [`RawRecord`]; output: `Arc<Record>` or a
//! [`DecodeError`] that the source counts and skips (and, if configured, copies to a dead-letter
//! topic). Formats: JSON as is; Avro in the Confluent (schema registry, [`registry`]),
//! single-object (schemas folder) or raw framing ([`framing`]), written as JSON by [`avro`] from a
//! plan compiled by [`schema`]; in the Confluent framing also Protobuf ([`protobuf`]) and JSON
//! Schema ([`json_schema`]), as the registry says of the record's schema id.

pub mod avro;
pub mod dead_letter;
mod framing;
pub mod json_schema;
pub mod protobuf;
pub mod registry;
pub mod schema;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use self::avro::AvroError;
use self::dead_letter::DeadLetters;
use self::framing::{Format, Framing, confluent_id, to_json, writer_schema};
use self::registry::{Registry, RegistryError};
use self::schema::ParsedSchema;
use crate::config::{Config, PayloadFormat, TopicConfig};
use crate::metrics::Metrics;
use crate::record::{RawRecord, Record, header_texts, key_text};

/// Why a record could not be decoded. The record is counted under [`DecodeError::reason`] and
/// skipped; the records after it are still delivered.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not a JSON document.
    #[error("payload is not valid JSON: {0}")]
    BadJson(#[source] serde_json::Error),
    /// The payload does not start with its format's magic bytes.
    #[error("wrong magic byte for format {format}: expected {expected}, found {found}")]
    WrongMagic {
        format: PayloadFormat,
        expected: &'static str,
        found: String,
    },
    /// The payload is shorter than its framing, or the Avro data ends early.
    #[error("truncated record: {0}")]
    Truncated(&'static str),
    /// The Avro data does not fit its schema.
    #[error("{0}")]
    BadAvro(String),
    /// The registry does not know the Confluent schema id.
    #[error("schema id {0} is not in the schema registry")]
    UnknownSchemaId(u32),
    /// The registry's schema for the id cannot be used.
    #[error("schema id {id}: {why}")]
    BadSchema { id: u32, why: String },
    /// No schema in `schemas_dir` has the single-object record's fingerprint.
    #[error("no schema with fingerprint {0:016x} in the schemas folder")]
    UnknownFingerprint(u64),
    /// The Protobuf message-index list (after the Confluent header) is too long or names no
    /// message of the schema.
    #[error("bad Protobuf message index: {0}")]
    BadMessageIndex(String),
    /// The Protobuf bytes do not fit the message type.
    #[error("bad Protobuf data: {0}")]
    BadProtobuf(String),
    /// The JSON value does not validate against its registry JSON Schema
    /// (`validate_json_schema = true`); `why` is the validator's first error.
    #[error("schema id {id}: the value does not match its JSON Schema: {why}")]
    JsonSchemaInvalid { id: u32, why: String },
    /// An Avro writer schema was needed (the sink) but the registry's schema is of another type.
    #[error("schema id {id} is a {schema_type} schema, not Avro")]
    NotAvro { id: u32, schema_type: &'static str },
    /// The key could not be decoded.
    #[error("key: {0}")]
    Key(Box<DecodeError>),
}

impl DecodeError {
    /// The `reason` label of `lakewire_decode_errors_total`.
    pub const fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadJson(_) => "bad_json",
            DecodeError::WrongMagic { .. } => "wrong_magic",
            DecodeError::Truncated(_) => "truncated",
            DecodeError::BadAvro(_) => "bad_avro",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::BadSchema { .. } => "bad_schema",
            DecodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            DecodeError::BadMessageIndex(_) => "bad_message_index",
            DecodeError::BadProtobuf(_) => "bad_protobuf",
            DecodeError::JsonSchemaInvalid { .. } => "json_schema_invalid",
            DecodeError::NotAvro { .. } => "not_avro",
            DecodeError::Key(_) => "bad_key",
        }
    }
}

impl From<AvroError> for DecodeError {
    fn from(e: AvroError) -> Self {
        match e {
            AvroError::Truncated => DecodeError::Truncated("the Avro data ends early"),
            other => DecodeError::BadAvro(other.to_string()),
        }
    }
}

/// A decoder could not be set up (a schema file, the registry client).
#[derive(Debug, thiserror::Error)]
pub enum DecodeSetupError {
    /// A schema file is missing or invalid; the message names the key.
    #[error("{key}: {why}")]
    Schema { key: String, why: String },
    /// A topic needs the registry and `[schema_registry]` is absent.
    #[error("schema_registry: required by topic {0} (format confluent)")]
    NoRegistry(String),
    /// The registry client could not be built.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The dead-letter producer could not be created.
    #[error(transparent)]
    DeadLetters(#[from] self::dead_letter::DeadLetterError),
}

/// What the decoders of all topics share: the registry client, the schemas folder, the
/// dead-letter producer.
#[derive(Debug, Clone, Default)]
pub struct DecodeContext {
    registry: Option<Arc<Registry>>,
    known: Arc<HashMap<u64, Arc<ParsedSchema>>>,
    dead_letters: Option<Arc<DeadLetters>>,
}

impl DecodeContext {
    /// Loads what `config`'s topics need: the schemas folder (when a topic is `single-object`),
    /// the registry client (when one is configured), the dead-letter producer (when a topic has
    /// a dead-letter topic).
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Self, DecodeSetupError> {
        let uses = |f: PayloadFormat| {
            config
                .topics
                .iter()
                .any(|t| t.format == f || t.key_format == Some(f))
        };
        let known = if uses(PayloadFormat::SingleObject) {
            load_schemas_dir(&config.schemas_dir).map_err(|why| DecodeSetupError::Schema {
                key: "schemas_dir".into(),
                why,
            })?
        } else {
            HashMap::new()
        };
        let registry = match &config.schema_registry {
            Some(r) => Some(Arc::new(Registry::new(r, metrics.clone())?)),
            None => None,
        };
        let dead_letters = if config.topics.iter().any(|t| t.dead_letter_topic.is_some()) {
            Some(Arc::new(DeadLetters::new(&config.kafka, metrics.clone())?))
        } else {
            None
        };
        Ok(Self {
            registry,
            known: Arc::new(known),
            dead_letters,
        })
    }

    /// The registry client, when one is configured. For the fuzz targets, which preload its
    /// cache ([`Registry::preload`]).
    #[doc(hidden)]
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }
}

/// Adds `s` under its fingerprints (the specification's, and Python avro's when it differs).
/// Two schemas with one fingerprint that decode differently (the canonical form leaves out
/// logical types, so `decimal` scales may differ) would make records ambiguous: refused.
fn insert_known(
    known: &mut HashMap<u64, Arc<ParsedSchema>>,
    s: Arc<ParsedSchema>,
) -> Result<(), String> {
    for fp in std::iter::once(s.fingerprint).chain(s.python_fingerprint) {
        if let Some(other) = known.get(&fp) {
            if other.plan != s.plan {
                return Err(format!(
                    "two schemas have fingerprint {fp:016x} but decode differently \
                     (their logical types differ): {} and {}",
                    other.canonical, s.canonical
                ));
            }
        }
        known.insert(fp, s.clone());
    }
    Ok(())
}

/// Every `*.avsc` in `dir`, by fingerprint.
fn load_schemas_dir(dir: &Path) -> Result<HashMap<u64, Arc<ParsedSchema>>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = HashMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|x| x == "avsc") {
            let s = ParsedSchema::from_file(&path).map_err(|e| e.to_string())?;
            insert_known(&mut out, Arc::new(s)).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(out)
}

/// Decodes one topic's records.
#[derive(Debug, Clone)]
pub struct Decoder {
    topic: Arc<str>,
    value: Format,
    key: Option<Format>,
    dead_letter_topic: Option<(Arc<DeadLetters>, String)>,
    /// The value schema clients see (the reader schema, else the topic's `schema` file), for
    /// `/api/topics`.
    client_schema: Option<Arc<ParsedSchema>>,
}

impl Decoder {
    /// A decoder for `topic`'s configured formats.
    pub fn new(topic: &TopicConfig, cx: &DecodeContext) -> Result<Self, DecodeSetupError> {
        Self::named(topic, cx, &format!("topics.{}", topic.name))
    }

    /// A decoder for every topic of `config`, by name; errors name the key as
    /// `topics[i].schema`, as configuration errors do.
    pub fn for_topics(
        config: &Config,
        cx: &DecodeContext,
    ) -> Result<HashMap<String, Arc<Self>>, DecodeSetupError> {
        config
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let decoder = Self::named(t, cx, &format!("topics[{i}]"))?;
                Ok((t.name.clone(), Arc::new(decoder)))
            })
            .collect()
    }

    /// A decoder for `topic`; `at` names its configuration section in errors.
    fn named(topic: &TopicConfig, cx: &DecodeContext, at: &str) -> Result<Self, DecodeSetupError> {
        let format = |f: PayloadFormat,
                      schema: &Option<std::path::PathBuf>,
                      reader: &Option<std::path::PathBuf>,
                      which: &str|
         -> Result<Format, DecodeSetupError> {
            let load = |key: &str, p: &std::path::Path| {
                ParsedSchema::from_file(p)
                    .map(Arc::new)
                    .map_err(|e| DecodeSetupError::Schema {
                        key: format!("{at}.{key}"),
                        why: e.to_string(),
                    })
            };
            let reader = match reader {
                Some(p) => Some(load("reader_schema", p)?),
                None => None,
            };
            let framing = match f {
                PayloadFormat::Json => return Ok(Format::Json),
                PayloadFormat::Raw => match schema {
                    Some(p) => Framing::Raw(load(which, p)?),
                    None => {
                        return Err(DecodeSetupError::Schema {
                            key: format!("{at}.{which}"),
                            why: "required for raw".into(),
                        });
                    }
                },
                PayloadFormat::SingleObject => {
                    let mut known = cx.known.clone();
                    if let Some(p) = schema {
                        insert_known(Arc::make_mut(&mut known), load(which, p)?).map_err(
                            |why| DecodeSetupError::Schema {
                                key: format!("{at}.{which}"),
                                why,
                            },
                        )?;
                    }
                    Framing::SingleObject(known)
                }
                PayloadFormat::Confluent => match &cx.registry {
                    Some(r) => Framing::Confluent {
                        registry: r.clone(),
                        validate_json: topic.validate_json_schema,
                    },
                    None => return Err(DecodeSetupError::NoRegistry(topic.name.clone())),
                },
            };
            Ok(Format::Framed { framing, reader })
        };
        let value = format(topic.format, &topic.schema, &topic.reader_schema, "schema")?;
        let client_schema = match &value {
            Format::Framed {
                reader: Some(r), ..
            } => Some(r.clone()),
            Format::Framed {
                framing: Framing::Raw(s),
                ..
            } => Some(s.clone()),
            Format::Framed { .. } => match &topic.schema {
                // Already loaded and checked above; parsed again only to keep it.
                Some(p) => ParsedSchema::from_file(p).ok().map(Arc::new),
                None => None,
            },
            Format::Json => None,
        };
        Ok(Self {
            topic: Arc::from(topic.name.as_str()),
            value,
            client_schema,
            key: match topic.key_format {
                Some(f) => Some(format(f, &topic.key_schema, &None, "key_schema")?),
                None => None,
            },
            dead_letter_topic: match (&cx.dead_letters, &topic.dead_letter_topic) {
                (Some(d), Some(t)) => Some((d.clone(), t.clone())),
                _ => None,
            },
        })
    }

    /// A decoder of JSON values and text keys (no schema, no registry).
    pub fn json(topic: &str) -> Self {
        Self {
            topic: Arc::from(topic),
            value: Format::Json,
            key: None,
            dead_letter_topic: None,
            client_schema: None,
        }
    }

    /// The value's fields as clients see them (dotted paths from `value`, with their Avro
    /// types), when the topic has a fixed schema: a `reader_schema`, or a `schema` file.
    pub fn value_fields(&self) -> Option<Vec<schema::FieldInfo>> {
        self.client_schema
            .as_ref()
            .map(|s| schema::field_paths(&s.canonical))
    }

    /// The topic this decoder is for.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// The registry client of the topic's values, when they are Confluent-framed.
    pub fn value_registry(&self) -> Option<&Arc<Registry>> {
        match &self.value {
            Format::Framed {
                framing: Framing::Confluent { registry, .. },
                ..
            } => Some(registry),
            _ => None,
        }
    }

    /// Makes sure the schemas `raw` needs are at hand: on a registry cache miss, fetches the
    /// schema, waiting (with retries) while the registry is unavailable. Cheap otherwise.
    pub async fn prepare(&self, raw: &RawRecord<'_>) {
        for (registry, id) in self.registry_ids(raw) {
            if registry.cached(id).is_none() {
                registry.lookup(id).await;
            }
        }
    }

    /// Like [`Decoder::prepare`], but a cached "not found" or "unusable" answer for the
    /// record's schema ids is forgotten first, so the registry is asked again (the sink's retry
    /// of a record whose schema may have been registered since).
    pub async fn refetch(&self, raw: &RawRecord<'_>) {
        for (registry, id) in self.registry_ids(raw) {
            registry.forget(id);
        }
        self.prepare(raw).await;
    }

    /// The registry schema ids of `raw`'s value and key, with their registry (Confluent-framed
    /// parts only).
    fn registry_ids<'s>(&'s self, raw: &RawRecord<'_>) -> Vec<(&'s Registry, u32)> {
        [
            (Some(&self.value), raw.payload),
            (self.key.as_ref(), raw.key),
        ]
        .into_iter()
        .filter_map(|(format, bytes)| match (format, bytes) {
            (
                Some(Format::Framed {
                    framing: Framing::Confluent { registry, .. },
                    ..
                }),
                Some(bytes),
            ) => Some((&**registry, confluent_id(bytes)?)),
            _ => None,
        })
        .collect()
    }

    /// Decodes `raw`. Confluent-framed records need [`Decoder::prepare`] first.
    pub fn decode(&self, raw: &RawRecord<'_>) -> Result<Record, DecodeError> {
        let value_json = match raw.payload {
            None => Bytes::from_static(b"null"),
            Some(bytes) => Bytes::from(to_json(&self.value, bytes)?),
        };
        let key = self.key_text(raw)?;
        Ok(Record::new(
            self.topic.clone(),
            raw.partition,
            raw.offset,
            raw.timestamp,
            key,
            value_json,
        )
        .with_headers(header_texts(raw.headers)))
    }

    /// The key of `raw` as clients see it (and the sink's `_key` column holds it): without a
    /// `key_format` the bytes as UTF-8 (else base64); with one, the decoded key, a string key as
    /// that string and any other as its JSON text. Confluent-framed keys need
    /// [`Decoder::prepare`] first.
    pub fn key_text(&self, raw: &RawRecord<'_>) -> Result<Option<String>, DecodeError> {
        Ok(match (&self.key, raw.key) {
            (_, None) => None,
            (None, Some(k)) => Some(key_text(k)),
            (Some(format), Some(k)) => {
                let json = to_json(format, k).map_err(|e| DecodeError::Key(Box::new(e)))?;
                Some(match serde_json::from_slice::<String>(&json) {
                    Ok(s) => s,
                    Err(_) => String::from_utf8_lossy(&json).into_owned(),
                })
            }
        })
    }

    /// The writer schema of an Avro value and its datum (the bytes after the framing), for the
    /// sink, which decodes the datum into Arrow itself. Confluent-framed values need
    /// [`Decoder::prepare`] first. A JSON topic has no writer schema: an error; a Confluent value
    /// whose registry schema is Protobuf or JSON Schema is [`DecodeError::NotAvro`].
    pub fn value_writer<'b>(
        &self,
        payload: &'b [u8],
    ) -> Result<(Arc<ParsedSchema>, &'b [u8]), DecodeError> {
        match &self.value {
            Format::Framed { framing, .. } => writer_schema(framing, payload),
            Format::Json => Err(DecodeError::BadAvro(
                "the topic's format is json, not Avro".into(),
            )),
        }
    }

    /// Copies an undecodable record to the topic's dead-letter topic, if it has one.
    pub fn dead_letter(&self, raw: &RawRecord<'_>, error: &DecodeError) {
        if let Some((dl, to)) = &self.dead_letter_topic {
            dl.send(to, &self.topic, raw, error);
        }
    }

    /// The lowest offset of `partition` whose dead-letter copy Kafka has not confirmed yet (the
    /// sink commits nothing past it).
    pub fn dead_letters_unconfirmed(&self, partition: i32) -> Option<i64> {
        let (dl, _) = self.dead_letter_topic.as_ref()?;
        dl.unconfirmed_from(&self.topic, partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::json("t")
    }

    fn raw<'a>(key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> RawRecord<'a> {
        RawRecord {
            partition: 2,
            offset: 42,
            timestamp: Some(1_732_690_000_000),
            key,
            payload,
            headers: None,
        }
    }

    #[test]
    fn json_record_serializes_as_the_v1_envelope() -> anyhow::Result<()> {
        let r = decoder().decode(&raw(Some(b"k1"), Some(br#"{"id":7,"amount":1.5}"#)))?;
        let mut out = Vec::new();
        crate::protocol::write_record(&r, &mut out);
        assert_eq!(
            String::from_utf8(out)?,
            r#"{"partition":2,"offset":42,"timestamp":1732690000000,"key":"k1","value":{"id":7,"amount":1.5}}"#
        );
        Ok(())
    }

    #[test]
    fn binary_key_is_base64_and_tombstone_is_null() -> anyhow::Result<()> {
        let r = decoder().decode(&raw(Some(&[0xff, 0x00, 0x01]), None))?;
        assert_eq!(r.key.as_deref(), Some("/wAB"));
        assert_eq!(r.value(), &serde_json::Value::Null);
        let mut out = Vec::new();
        crate::protocol::write_record(&r, &mut out);
        assert_eq!(
            String::from_utf8(out)?,
            r#"{"partition":2,"offset":42,"timestamp":1732690000000,"key":"/wAB","value":null}"#
        );
        Ok(())
    }

    #[test]
    fn bad_json_is_an_error_with_a_reason() {
        match decoder().decode(&raw(None, Some(b"{not json"))) {
            Err(e) => assert_eq!(e.reason(), "bad_json"),
            Ok(r) => panic!("decoded garbage: {r:?}"),
        }
    }
}

#[cfg(test)]
mod format_tests;

#[cfg(test)]
pub(crate) mod protobuf_tests;
