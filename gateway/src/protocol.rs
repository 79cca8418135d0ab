//! WebSocket protocol v1 (see README "Protocol"): the client's JSON requests and the server's JSON
//! replies. Input: a text frame; output: a [`ClientMessage`] or a [`ProtocolError`] that becomes
//! an `error` frame. Pure functions, no I/O.
//!
//! Wire format v1 is written here and nowhere else: the record envelope
//! (`{"partition":..,"offset":..,"timestamp":..,"key":..,"value":..}`, whole or projected), the
//! `records` frame around rendered envelopes, the other server frames, and the start positions
//! a client names. It depends on no server module: the hub calls [`write_record`] and
//! [`write_projected`], the session and SSE call [`records_frame`], and `lakewire tail` reads
//! and writes the same types.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    Subscribe(Subscribe),
    Unsubscribe {
        id: String,
    },
    Ping,
    /// A fresh token for a connection whose token is about to expire.
    Auth {
        token: String,
    },
}

/// `{"op":"subscribe", ...}`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    pub id: String,
    pub topic: String,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    #[serde(default)]
    pub from: StartFrom,
}

/// Where a subscription starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Records produced from now on.
    #[default]
    Latest,
    /// Everything Kafka still holds.
    Earliest,
    /// The first record at or after this time (ms since the epoch) in each partition.
    Timestamp(i64),
    /// Exactly these next offsets per partition (resume after reconnect).
    Offsets(BTreeMap<i32, i64>),
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            Object(Obj),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Obj {
            timestamp: Option<i64>,
            offsets: Option<BTreeMap<String, i64>>,
        }
        use serde::de::Error;
        let bad = || {
            D::Error::custom(
                "`from` must be \"latest\", \"earliest\", {\"timestamp\": <ms>} or {\"offsets\": {\"<partition>\": <offset>}}",
            )
        };
        match Repr::deserialize(d).map_err(|_| bad())? {
            Repr::Word(w) if w == "latest" => Ok(StartFrom::Latest),
            Repr::Word(w) if w == "earliest" => Ok(StartFrom::Earliest),
            Repr::Word(_) => Err(bad()),
            Repr::Object(Obj {
                timestamp: Some(ts),
                offsets: None,
            }) => Ok(StartFrom::Timestamp(ts)),
            Repr::Object(Obj {
                timestamp: None,
                offsets: Some(map),
            }) => {
                let mut out = BTreeMap::new();
                for (p, o) in map {
                    let p: i32 = p.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
                        D::Error::custom(format!(
                            "partition {p:?} in `from.offsets` is not a partition number"
                        ))
                    })?;
                    if o < 0 {
                        return Err(D::Error::custom(format!(
                            "offset {o} for partition {p} in `from.offsets` is negative"
                        )));
                    }
                    out.insert(p, o);
                }
                Ok(StartFrom::Offsets(out))
            }
            Repr::Object(_) => Err(bad()),
        }
    }
}

/// The error codes of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    BadFilter,
    UnknownTopic,
    Forbidden,
    TooManySubscriptions,
    DuplicateId,
    UnknownId,
}

impl ErrorCode {
    /// The code as sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadFilter => "bad_filter",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::UnknownId => "unknown_id",
        }
    }
}

/// A refused request: becomes `{"type":"error","id":...,"code":...,"message":...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// The subscription id the request named, when it could be read.
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id: id.map(str::to_owned),
            code,
            message: message.into(),
        }
    }
}

/// Parses one text frame. A frame that is not a valid request is a `bad_request` that names
/// the problem and, when it can be read, the request's `id`.
pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(None, ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let id = value.get("id").and_then(|v| v.as_str()).map(str::to_owned);
    let msg = ClientMessage::deserialize(&value)
        .map_err(|e| ProtocolError::new(id.as_deref(), ErrorCode::BadRequest, e.to_string()))?;
    if let ClientMessage::Subscribe(s) = &msg {
        if s.id.is_empty() || s.id.len() > 256 {
            return Err(ProtocolError::new(
                Some(&s.id),
                ErrorCode::BadRequest,
                "`id` must have 1 to 256 characters",
            ));
        }
    }
    Ok(msg)
}

/// A reply from the server (everything but `records`, which [`records_frame`] writes).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    Subscribed {
        id: &'a str,
        topic: &'a str,
        partitions: &'a [i32],
        /// Per partition, the first offset the subscription can deliver (what a resume names
        /// for a partition it has seen no record of).
        start: &'a std::collections::BTreeMap<i32, i64>,
    },
    Unsubscribed {
        id: &'a str,
    },
    Authenticated {
        /// When the new token expires, seconds since the epoch.
        expires_at: Option<u64>,
    },
    Lagged {
        id: &'a str,
        dropped: u64,
    },
    Gap {
        id: &'a str,
        partition: i32,
        requested: i64,
        first_available: i64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: &'static str,
        message: &'a str,
    },
    Pong,
}

impl ServerMessage<'_> {
    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ProtocolError {
    /// The `error` frame.
    pub fn to_json(&self) -> String {
        ServerMessage::Error {
            id: self.id.as_deref(),
            code: self.code.as_str(),
            message: &self.message,
        }
        .to_json()
    }
}

/// Writes `{"type":"records","id":...,"records":[...]}` around records (each an envelope, see
/// [`write_record`]) that all belong to the subscription `id`.
pub fn records_frame(id: &str, records: &[&[u8]]) -> String {
    let body: usize = records.iter().map(|r| r.len() + 1).sum();
    let mut out = records_prefix(id);
    out.reserve(body + 2);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
    let _ = out.write_all(b"]}");
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// The start of every `records` frame of subscription `id`, up to its first record.
pub fn records_prefix(id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + id.len());
    out.extend_from_slice(br#"{"type":"records","id":"#);
    // Writing JSON into a Vec cannot fail; the result is ignored for that reason.
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(br#","records":["#);
    out
}

/// Appends the whole record envelope
/// `{"partition":..,"offset":..,"timestamp":..,"key":..,"value":..}` to `out`.
pub fn write_record(record: &Record, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"partition":{},"offset":{},"timestamp":"#,
        record.partition, record.offset
    );
    match record.timestamp {
        Some(t) => {
            let _ = write!(out, "{t}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","key":"#);
    let _ = serde_json::to_writer(&mut *out, &record.key);
    out.extend_from_slice(br#","value":"#);
    out.extend_from_slice(&record.value_json);
    out.push(b'}');
}

/// The envelope of a projection (`fields`): `partition`, `offset` and `timestamp` always, `key`
/// when asked for, and `value` when there is one to send (the projected part of the value).
pub fn write_projected(record: &Record, key: bool, value: Option<serde_json::Value>) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("partition".into(), record.partition.into());
    m.insert("offset".into(), record.offset.into());
    m.insert("timestamp".into(), record.timestamp.into());
    if key {
        m.insert("key".into(), record.key.clone().into());
    }
    if let Some(v) = value {
        m.insert("value".into(), v);
    }
    serde_json::to_vec(&serde_json::Value::Object(m)).unwrap_or_default()
}

impl ClientMessage {
    /// The request's JSON text, as a client sends it (`lakewire tail`).
    pub fn to_json(&self) -> String {
        // Serializing these plain values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Written by hand for the field order of docs/protocol.md (`id`, `topic`, `from`, then
/// `filter` and `fields` when set), the order `lakewire tail` has always sent; a derive would
/// follow the declaration order, which also orders the "expected one of" list of a
/// `bad_request` about an unknown field.
impl Serialize for Subscribe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let len = 3 + usize::from(self.filter.is_some()) + usize::from(self.fields.is_some());
        let mut st = s.serialize_struct("Subscribe", len)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("topic", &self.topic)?;
        st.serialize_field("from", &self.from)?;
        match &self.filter {
            Some(f) => st.serialize_field("filter", f)?,
            None => st.skip_field("filter")?,
        }
        match &self.fields {
            Some(f) => st.serialize_field("fields", f)?,
            None => st.skip_field("fields")?,
        }
        st.end()
    }
}

/// The inverse of its `Deserialize`: `"latest"`, `"earliest"`, `{"timestamp":<ms>}`,
/// `{"offsets":{"<partition>":<offset>}}` (partitions in ascending order).
impl Serialize for StartFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            StartFrom::Latest => s.serialize_str("latest"),
            StartFrom::Earliest => s.serialize_str("earliest"),
            StartFrom::Timestamp(ts) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("timestamp", ts)?;
                m.end()
            }
            StartFrom::Offsets(offsets) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("offsets", offsets)?;
                m.end()
            }
        }
    }
}

/// A server frame as a client reads it (owned): the frames and fields `lakewire tail` acts on.
/// Other fields are ignored, and a frame of another type is [`ServerFrame::Other`]. The server
/// writes these frames with [`ServerMessage`] and [`records_frame`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    Subscribed {
        /// Per partition, the first offset the subscription can deliver. The keys are the
        /// partition numbers as the JSON has them (strings): a tagged enum's fields cannot
        /// read a string key as an integer.
        #[serde(default)]
        start: BTreeMap<String, i64>,
    },
    Records {
        /// The records as sent (the envelope of docs/protocol.md, projected by `fields`).
        #[serde(default)]
        records: Vec<serde_json::Value>,
    },
    Lagged {
        dropped: u64,
    },
    Gap {
        partition: i32,
        requested: i64,
        first_available: i64,
    },
    Error {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// `unsubscribed`, `authenticated`, `pong` or a type this client does not know.
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_examples() -> anyhow::Result<()> {
        let m = parse(
            r#"{"op":"subscribe","id":"s1","topic":"orders",
                "filter":"value.amount > 100.0","fields":["value.id"],"from":"latest"}"#,
        )?;
        let ClientMessage::Subscribe(s) = m else {
            anyhow::bail!("not a subscribe: {m:?}")
        };
        assert_eq!(s.id, "s1");
        assert_eq!(s.topic, "orders");
        assert_eq!(s.from, StartFrom::Latest);
        assert_eq!(
            parse(r#"{"op":"unsubscribe","id":"s1"}"#)?,
            ClientMessage::Unsubscribe { id: "s1".into() }
        );
        assert_eq!(parse(r#"{"op":"ping"}"#)?, ClientMessage::Ping);
        Ok(())
    }

    #[test]
    fn parses_every_start_position() -> anyhow::Result<()> {
        let from = |f: &str| -> anyhow::Result<StartFrom> {
            match parse(&format!(
                r#"{{"op":"subscribe","id":"a","topic":"t","from":{f}}}"#
            ))? {
                ClientMessage::Subscribe(s) => Ok(s.from),
                other => anyhow::bail!("{other:?}"),
            }
        };
        assert_eq!(from(r#""earliest""#)?, StartFrom::Earliest);
        assert_eq!(from(r#"{"timestamp":5}"#)?, StartFrom::Timestamp(5));
        assert_eq!(
            from(r#"{"offsets":{"0":42,"3":7}}"#)?,
            StartFrom::Offsets(BTreeMap::from([(0, 42), (3, 7)]))
        );
        assert!(from(r#""yesterday""#).is_err());
        assert!(from(r#"{"offsets":{"x":1}}"#).is_err());
        assert!(from(r#"{"offsets":{"0":-1}}"#).is_err());
        Ok(())
    }

    #[test]
    fn bad_requests_name_the_problem_and_keep_the_id() {
        let e = parse("{nope").err();
        assert_eq!(e.as_ref().map(|e| e.code), Some(ErrorCode::BadRequest));
        let e = parse(r#"{"op":"subscribe","id":"s9","topik":"t"}"#).err();
        let e = e.unwrap_or_else(|| panic!("accepted a typo"));
        assert_eq!(e.id.as_deref(), Some("s9"));
        assert!(e.message.contains("topik"), "{}", e.message);
        let e = parse(r#"{"op":"dance"}"#).err();
        assert!(e.is_some_and(|e| e.message.contains("dance")));
    }

    #[test]
    fn server_messages_match_the_protocol() {
        assert_eq!(
            ServerMessage::Subscribed {
                id: "s1",
                topic: "orders",
                partitions: &[0, 1, 2],
                start: &std::collections::BTreeMap::from([(0, 42), (1, 0), (2, 7)]),
            }
            .to_json(),
            r#"{"type":"subscribed","id":"s1","topic":"orders","partitions":[0,1,2],"start":{"0":42,"1":0,"2":7}}"#
        );
        assert_eq!(
            ServerMessage::Lagged {
                id: "s1",
                dropped: 128
            }
            .to_json(),
            r#"{"type":"lagged","id":"s1","dropped":128}"#
        );
        assert_eq!(
            ServerMessage::Gap {
                id: "s1",
                partition: 0,
                requested: 100,
                first_available: 250
            }
            .to_json(),
            r#"{"type":"gap","id":"s1","partition":0,"requested":100,"first_available":250}"#
        );
        assert_eq!(
            ProtocolError::new(Some("s1"), ErrorCode::BadFilter, "x").to_json(),
            r#"{"type":"error","id":"s1","code":"bad_filter","message":"x"}"#
        );
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn every_start_position_round_trips() -> anyhow::Result<()> {
        for from in [
            StartFrom::Latest,
            StartFrom::Earliest,
            StartFrom::Timestamp(1_795_766_400_000),
            StartFrom::Timestamp(-5),
            StartFrom::Offsets(BTreeMap::from([(0, 42), (3, 7), (10, 0)])),
            StartFrom::Offsets(BTreeMap::new()),
        ] {
            let text = serde_json::to_string(&from)?;
            assert_eq!(serde_json::from_str::<StartFrom>(&text)?, from, "{text}");
            let sub = ClientMessage::Subscribe(Subscribe {
                id: "a".into(),
                topic: "t".into(),
                filter: None,
                fields: None,
                from: from.clone(),
            });
            assert_eq!(parse(&sub.to_json())?, sub);
        }
        assert_eq!(
            serde_json::to_string(&StartFrom::Offsets(BTreeMap::from([(10, 1), (2, 3)])))?,
            r#"{"offsets":{"2":3,"10":1}}"#
        );
        Ok(())
    }

    #[test]
    fn client_messages_serialize_as_documented_and_parse_back() -> anyhow::Result<()> {
        let sub = ClientMessage::Subscribe(Subscribe {
            id: "s1".into(),
            topic: "orders".into(),
            filter: Some("value.amount > 100.0".into()),
            fields: Some(vec!["value.id".into()]),
            from: StartFrom::Latest,
        });
        assert_eq!(
            sub.to_json(),
            r#"{"op":"subscribe","id":"s1","topic":"orders","from":"latest","filter":"value.amount > 100.0","fields":["value.id"]}"#
        );
        for m in [
            sub,
            ClientMessage::Unsubscribe { id: "s1".into() },
            ClientMessage::Ping,
            ClientMessage::Auth { token: "t".into() },
        ] {
            assert_eq!(parse(&m.to_json())?, m);
        }
        assert_eq!(ClientMessage::Ping.to_json(), r#"{"op":"ping"}"#);
        Ok(())
    }

    #[test]
    fn server_frames_read_back_what_the_server_writes() -> anyhow::Result<()> {
        let read = |t: &str| serde_json::from_str::<ServerFrame>(t);
        let start = BTreeMap::from([(0, 42), (1, 0)]);
        let subscribed = ServerMessage::Subscribed {
            id: "s1",
            topic: "t",
            partitions: &[0, 1],
            start: &start,
        };
        assert_eq!(
            read(&subscribed.to_json())?,
            ServerFrame::Subscribed {
                start: BTreeMap::from([("0".into(), 42), ("1".into(), 0)])
            }
        );
        assert_eq!(
            read(r#"{"type":"records","id":"s1","records":[{"partition":0,"offset":1}]}"#)?,
            ServerFrame::Records {
                records: vec![serde_json::json!({"partition":0,"offset":1})]
            }
        );
        assert_eq!(
            read(&ProtocolError::new(None, ErrorCode::UnknownTopic, "no").to_json())?,
            ServerFrame::Error {
                code: Some("unknown_topic".into()),
                message: Some("no".into())
            }
        );
        assert_eq!(read(&ServerMessage::Pong.to_json())?, ServerFrame::Other);
        Ok(())
    }
}
