//! Decode stage: a raw Kafka record (bytes) becomes a [`Record`] whose value is JSON, once per
//! record however many clients read it. Input: [`RawRecord`]; output: `Arc<Record>` or a
//! [`DecodeError`] that the source counts and skips.

use std::sync::Arc;

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};

use crate::config::{PayloadFormat, TopicConfig};

/// A Kafka record as it came off the wire, borrowed from the consumer's buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (create or log-append time), when the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// A decoded record, shared by every subscription that receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    /// The key as UTF-8 text, or base64 when it is not valid UTF-8; `None` for a null key.
    pub key: Option<String>,
    /// The decoded value; JSON `null` for a tombstone (null payload).
    pub value: serde_json::Value,
}

/// Why a record could not be decoded. The record is counted under [`DecodeError::reason`] and
/// skipped; the records after it are still delivered.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not a JSON document.
    #[error("payload is not valid JSON: {0}")]
    BadJson(#[source] serde_json::Error),
}

impl DecodeError {
    /// The `reason` label of `lakewire_decode_errors_total`.
    pub const fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadJson(_) => "bad_json",
        }
    }
}

/// Decodes one topic's records.
#[derive(Debug, Clone)]
pub struct Decoder {
    topic: Arc<str>,
    format: PayloadFormat,
}

impl Decoder {
    /// A decoder for `topic`'s configured format.
    pub fn new(topic: &TopicConfig) -> Self {
        Self {
            topic: Arc::from(topic.name.as_str()),
            format: topic.format,
        }
    }

    /// The topic this decoder is for.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// Decodes `raw`.
    pub fn decode(&self, raw: &RawRecord<'_>) -> Result<Record, DecodeError> {
        let value = match (self.format, raw.payload) {
            (_, None) => serde_json::Value::Null,
            (PayloadFormat::Json, Some(bytes)) => {
                serde_json::from_slice(bytes).map_err(DecodeError::BadJson)?
            }
        };
        Ok(Record {
            topic: self.topic.clone(),
            partition: raw.partition,
            offset: raw.offset,
            timestamp: raw.timestamp,
            key: raw.key.map(key_text),
            value,
        })
    }
}

/// A key as text: UTF-8 as is, anything else base64 (RFC 4648, padded).
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_owned(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(key),
    }
}

/// The record envelope of protocol v1: `partition`, `offset`, `timestamp`, `key`, `value`.
impl serde::Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("partition", &self.partition)?;
        map.serialize_entry("offset", &self.offset)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("key", &self.key)?;
        map.serialize_entry("value", &self.value)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(&TopicConfig {
            name: "t".into(),
            format: PayloadFormat::Json,
        })
    }

    fn raw<'a>(key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> RawRecord<'a> {
        RawRecord {
            partition: 2,
            offset: 42,
            timestamp: Some(1_732_690_000_000),
            key,
            payload,
        }
    }

    #[test]
    fn json_record_serializes_as_the_v1_envelope() -> anyhow::Result<()> {
        let r = decoder().decode(&raw(Some(b"k1"), Some(br#"{"id":7,"amount":1.5}"#)))?;
        assert_eq!(
            serde_json::to_string(&r)?,
            r#"{"partition":2,"offset":42,"timestamp":1732690000000,"key":"k1","value":{"id":7,"amount":1.5}}"#
        );
        Ok(())
    }

    #[test]
    fn binary_key_is_base64_and_tombstone_is_null() -> anyhow::Result<()> {
        let r = decoder().decode(&raw(Some(&[0xff, 0x00, 0x01]), None))?;
        assert_eq!(r.key.as_deref(), Some("/wAB"));
        assert_eq!(r.value, serde_json::Value::Null);
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
