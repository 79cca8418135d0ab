//! `[kafka]`, `[[topics]]` and `[schema_registry]`: where the records come from and how they are
//! encoded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `Err((key, why))` of a section's checks.
pub(super) type Invalid = (String, String);

/// `[schema_registry]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the registry, `http://` or `https://`, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// User name for HTTP basic authentication (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for HTTP basic authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of CA certificates to trust for `https://` besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one schema request may take before it counts as failed and is retried.
    #[serde(default = "default_registry_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long connecting to the registry may take.
    #[serde(default = "default_registry_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The longest wait between two attempts while the registry is unavailable.
    #[serde(default = "default_registry_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

const fn default_registry_request_timeout_ms() -> u64 {
    5_000
}
const fn default_registry_connect_timeout_ms() -> u64 {
    2_000
}
const fn default_registry_max_backoff_ms() -> u64 {
    10_000
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Any librdkafka client property, passed through as is (e.g. `"security.protocol"`). Set
    /// here, they apply to every consumer the gateway creates; they win over Lakewire's own
    /// defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long a metadata or watermark request to Kafka may take before it counts as failed.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How often the cluster is asked whether it answers; `/readyz` reports the last answer.
    #[serde(default = "default_readiness_check_ms")]
    pub readiness_check_ms: u64,
    /// How often each topic's partitions are looked up again, so that partitions added to a
    /// topic are read (from their first record) within about this long.
    #[serde(default = "default_partition_refresh_ms")]
    pub partition_refresh_ms: u64,
}

const fn default_request_timeout_ms() -> u64 {
    10_000
}
const fn default_readiness_check_ms() -> u64 {
    5_000
}
const fn default_partition_refresh_ms() -> u64 {
    30_000
}

/// One `[[topics]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// The Kafka topic name.
    pub name: String,
    /// How record values are encoded on the wire.
    pub format: PayloadFormat,
    /// The Avro schema file of the values: required for `raw`; for `single-object`, one more
    /// schema to match besides those in `schemas_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// An Avro reader schema: values are resolved from the writer's schema to this one (Avro's
    /// schema resolution rules), so clients see one shape while producers evolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_schema: Option<PathBuf>,
    /// How record keys are encoded. Absent: keys are sent as UTF-8 text, or base64 when not
    /// UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format: Option<PayloadFormat>,
    /// The Avro schema file of the keys, for `key_format = "raw"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_schema: Option<PathBuf>,
    /// A topic that undecodable records are copied to, as they are, with the error in headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// `format = "confluent"`: validate values (and keys) whose registry schema is a JSON
    /// Schema against it; otherwise they are only checked to be JSON.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validate_json_schema: bool,
}

impl TopicConfig {
    /// A topic of `format` with every optional key unset.
    pub fn new(name: impl Into<String>, format: PayloadFormat) -> Self {
        Self {
            name: name.into(),
            format,
            schema: None,
            reader_schema: None,
            key_format: None,
            key_schema: None,
            dead_letter_topic: None,
            validate_json_schema: false,
        }
    }
}

/// The wire format of a topic's record values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// UTF-8 JSON documents.
    Json,
    /// Confluent wire format: `0x00`, a 4-byte big-endian schema id, then Avro binary, Protobuf
    /// (message indexes, then the message) or JSON text, as the schema's type says; the schema
    /// comes from `[schema_registry]`.
    Confluent,
    /// Avro single-object encoding: `0xC3 0x01`, the schema's 8-byte fingerprint, Avro binary;
    /// the schema comes from `schemas_dir`.
    SingleObject,
    /// Avro binary with no framing, in the topic's `schema`.
    Raw,
}

impl PayloadFormat {
    /// True for the Avro formats.
    pub const fn is_avro(self) -> bool {
        !matches!(self, PayloadFormat::Json)
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadFormat::Json => f.write_str("json"),
            PayloadFormat::Confluent => f.write_str("confluent"),
            PayloadFormat::SingleObject => f.write_str("single-object"),
            PayloadFormat::Raw => f.write_str("raw"),
        }
    }
}

impl KafkaConfig {
    /// `brokers` with every other key at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
            request_timeout_ms: default_request_timeout_ms(),
            readiness_check_ms: default_readiness_check_ms(),
            partition_refresh_ms: default_partition_refresh_ms(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let bad = |key: &str, why: &str| Err((key.to_string(), why.to_string()));
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must name at least one broker (host:port)");
        }
        if self.request_timeout_ms == 0 {
            return bad("kafka.request_timeout_ms", "must be greater than 0");
        }
        if self.readiness_check_ms == 0 {
            return bad("kafka.readiness_check_ms", "must be greater than 0");
        }
        if self.partition_refresh_ms == 0 {
            return bad("kafka.partition_refresh_ms", "must be greater than 0");
        }
        Ok(())
    }
}

impl TopicConfig {
    /// Checks `topics[i]`'s decoding keys (its schema files are read by the decoder).
    pub(super) fn validate(&self, i: usize, has_registry: bool) -> Result<(), Invalid> {
        let key = |k: &str| format!("topics[{i}].{k}");
        match (self.format, &self.schema) {
            (PayloadFormat::Raw, None) => {
                return Err((key("schema"), "required when format = \"raw\"".into()));
            }
            (PayloadFormat::Json | PayloadFormat::Confluent, Some(_)) => {
                return Err((
                    key("schema"),
                    format!("only for format raw or single-object, not {}", self.format),
                ));
            }
            _ => {}
        }
        if self.reader_schema.is_some() && !self.format.is_avro() {
            return Err((key("reader_schema"), "only for the Avro formats".into()));
        }
        match (self.key_format, &self.key_schema) {
            (Some(PayloadFormat::Raw), None) => {
                return Err((
                    key("key_schema"),
                    "required when key_format = \"raw\"".into(),
                ));
            }
            (f, Some(_)) if f != Some(PayloadFormat::Raw) => {
                return Err((key("key_schema"), "only with key_format = \"raw\"".into()));
            }
            _ => {}
        }
        let confluent = self.format == PayloadFormat::Confluent
            || self.key_format == Some(PayloadFormat::Confluent);
        if self.validate_json_schema && !confluent {
            return Err((
                key("validate_json_schema"),
                "only with format = \"confluent\" or key_format = \"confluent\"".into(),
            ));
        }
        if confluent && !has_registry {
            return Err((
                "schema_registry".into(),
                format!("required: topic {:?} uses format \"confluent\"", self.name),
            ));
        }
        if let Some(dlq) = &self.dead_letter_topic {
            super::check_topic_name(dlq).map_err(|why| (key("dead_letter_topic"), why))?;
            if dlq == &self.name {
                return Err((
                    key("dead_letter_topic"),
                    "must differ from the topic itself".into(),
                ));
            }
        }
        Ok(())
    }
}

impl SchemaRegistryConfig {
    /// Checks `[schema_registry]` (its `ca_file` is read by the registry client).
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let k = |s: &str| format!("schema_registry.{s}");
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        if rest.is_none_or(|h| h.trim_end_matches('/').is_empty()) {
            return Err((
                k("url"),
                format!("{:?} is not an http:// or https:// URL", self.url),
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err((k("username"), "username and password go together".into()));
        }
        for (name, v) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("max_backoff_ms", self.max_backoff_ms),
        ] {
            if v == 0 {
                return Err((k(name), "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}
