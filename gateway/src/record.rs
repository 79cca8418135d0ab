//! Record: a Kafka record as the gateway carries it. [`RawRecord`] is what the consumer read
//! (bytes borrowed from its buffer); [`Record`] is what [`crate::decode`] builds from it once,
//! key, value and headers decoded, shared by every subscription and written to clients by
//! [`crate::protocol`].

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use rdkafka::message::{BorrowedHeaders, Headers as _};

/// A Kafka record as it came off the wire, borrowed from the consumer's buffer.
#[derive(Clone, Copy)]
pub struct RawRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (create or log-append time), when the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The Kafka headers, when the record has any.
    pub headers: Option<&'a BorrowedHeaders>,
}

impl std::fmt::Debug for RawRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRecord")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key", &self.key)
            .field("payload", &self.payload)
            .field("headers", &self.headers.map(|h| h.count()))
            .finish()
    }
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

    /// The record with these Kafka headers (as [`header_texts`] gives them).
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

/// A key as text: UTF-8 as is, anything else base64 (RFC 4648, padded).
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_owned(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(key),
    }
}

/// Kafka headers as name and text (UTF-8 as is, else base64; `None` for a null value).
pub fn header_texts(headers: Option<&BorrowedHeaders>) -> Vec<(String, Option<String>)> {
    headers
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(key_text)))
                .collect()
        })
        .unwrap_or_default()
}
