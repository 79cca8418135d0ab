//! Decode stage: a raw Kafka record (bytes) becomes a [`Record`] whose value is JSON, once per
//! record however many clients read it. Input: [`RawRecord`]; output: `Arc<Record>` or a
//! [`DecodeError`] that the source counts and skips.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use std::sync::OnceLock;

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
///
/// The value is kept as JSON text, written once by the decoder: sending a whole record copies
/// bytes and parses nothing. Filters and projections that need the structure get it from
/// [`Record::value`], parsed at most once per record.
#[derive(Debug)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    /// The key as UTF-8 text, or base64 when it is not valid UTF-8; `None` for a null key.
    pub key: Option<String>,
    /// The decoded value as one JSON text; `null` for a tombstone (null payload). Always valid
    /// JSON: decoders only produce valid JSON.
    pub value_json: Bytes,
    /// Kafka headers: name and value (UTF-8 text, or base64 when not UTF-8; `None` for null).
    pub headers: Vec<(String, Option<String>)>,
    parsed: OnceLock<serde_json::Value>,
}

impl Record {
    /// A record whose value is the JSON text `value_json` (which must be valid JSON).
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<String>,
        value_json: Bytes,
    ) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp,
            key,
            value_json,
            headers: Vec::new(),
            parsed: OnceLock::new(),
        }
    }

    /// The record with these Kafka headers.
    pub fn with_headers(mut self, headers: Vec<(String, Option<String>)>) -> Self {
        self.headers = headers;
        self
    }

    /// The value as a JSON tree, parsed on first use.
    pub fn value(&self) -> &serde_json::Value {
        self.parsed.get_or_init(|| {
            serde_json::from_slice(&self.value_json).unwrap_or(serde_json::Value::Null)
        })
    }

    /// Appends the protocol v1 envelope
    /// `{"partition":..,"offset":..,"timestamp":..,"key":..,"value":..}` to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            r#"{{"partition":{},"offset":{},"timestamp":"#,
            self.partition, self.offset
        );
        match self.timestamp {
            Some(t) => {
                let _ = write!(out, "{t}");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","key":"#);
        let _ = serde_json::to_writer(&mut *out, &self.key);
        out.extend_from_slice(br#","value":"#);
        out.extend_from_slice(&self.value_json);
        out.push(b'}');
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.partition == other.partition
            && self.offset == other.offset
            && self.timestamp == other.timestamp
            && self.key == other.key
            && self.value_json == other.value_json
            && self.headers == other.headers
    }
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
        let value_json = match (self.format, raw.payload) {
            (_, None) => Bytes::from_static(b"null"),
            (PayloadFormat::Json, Some(bytes)) => {
                // Validate without building a tree; the text itself is what clients get.
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                    .map_err(DecodeError::BadJson)?;
                Bytes::copy_from_slice(bytes)
            }
        };
        Ok(Record::new(
            self.topic.clone(),
            raw.partition,
            raw.offset,
            raw.timestamp,
            raw.key.map(key_text),
            value_json,
        ))
    }
}

/// A key as text: UTF-8 as is, anything else base64 (RFC 4648, padded).
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_owned(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(key),
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
        let mut out = Vec::new();
        r.write_json(&mut out);
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
        r.write_json(&mut out);
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
