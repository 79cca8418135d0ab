//! Tests of the registry's Protobuf and JSON-Schema values end to end through [`Decoder`]: the
//! Confluent Protobuf framing (message indexes), the proto3 JSON written, references fetched
//! from a registry (a small HTTP server in the test), JSON Schema validation, and what the sink
//! gets of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost_reflect::prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::json_schema::JsonSchema;
use super::protobuf::ProtoSchema;
use super::registry::RegistrySchema;
use super::*;
use crate::config::Config;

pub(crate) const COMMON: &str = r#"syntax = "proto3";
package common;
message Money { int64 units = 1; string currency = 2; }
"#;

pub(crate) const ORDER: &str = r#"syntax = "proto3";
package shop;
import "common.proto";
import "google/protobuf/timestamp.proto";

message Order {
  message Line {
    message Detail { string note = 1; }
    string sku = 1;
    Detail detail = 2;
  }
  message Wallet { string name = 1; }
  enum Status { NEW = 0; SHIPPED = 1; }
  string id = 1;
  int64 qty = 2;
  common.Money price = 3;
  repeated string tags = 4;
  map<string, int32> counts = 5;
  Status status = 6;
  google.protobuf.Timestamp at = 7;
  oneof pay {
    string card = 8;
    Wallet wallet = 9;
  }
  Line line = 10;
  bytes blob = 11;
  double ratio = 12;
}

message Other {
  message Inner {
    message Deep { string z = 1; }
    string y = 1;
  }
  string x = 1;
}
"#;

fn compiled() -> anyhow::Result<ProtoSchema> {
    ProtoSchema::compile(
        7,
        ORDER,
        &[("common.proto".to_string(), COMMON.to_string())],
    )
    .map_err(anyhow::Error::msg)
}

/// The descriptor named `name` of [`ORDER`], to build test messages with.
fn descriptor(name: &str) -> anyhow::Result<MessageDescriptor> {
    // Compiled from the same texts, by protox from files (not the decoder's own way).
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("common.proto"), COMMON)?;
    std::fs::write(dir.path().join("order.proto"), ORDER)?;
    let pool = protox::Compiler::new([dir.path()])?
        .open_file("order.proto")?
        .descriptor_pool();
    pool.get_message_by_name(name)
        .ok_or_else(|| anyhow::anyhow!("no message {name}"))
}

/// The Protobuf bytes of `json` as message `name`.
pub(crate) fn encode(name: &str, json: Value) -> anyhow::Result<Vec<u8>> {
    let desc = descriptor(name)?;
    let msg = DynamicMessage::deserialize(desc, json)?;
    Ok(msg.encode_to_vec())
}

/// Confluent framing: `0x00`, the id, the message-index bytes, the message.
pub(crate) fn framed(id: u32, indexes: &[u8], message: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(indexes);
    v.extend_from_slice(message);
    v
}

fn decoder_with(topic: &str, url: &str) -> anyhow::Result<(Decoder, DecodeContext)> {
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[schema_registry]\nurl = \"{url}\"\n\
         max_backoff_ms = 50\n[[topics]]\n{topic}\n"
    );
    let config = Config::from_toml_and_env(&text, &[], "test")?;
    let cx = DecodeContext::new(&config, &Metrics::default())?;
    Ok((Decoder::new(&config.topics[0], &cx)?, cx))
}

/// A confluent topic whose registry has [`ORDER`] preloaded as id 7.
fn proto_decoder() -> anyhow::Result<Decoder> {
    let (d, cx) = decoder_with("name = \"t\"\nformat = \"confluent\"", "http://127.0.0.1:1")?;
    let registry = cx
        .registry()
        .ok_or_else(|| anyhow::anyhow!("no registry"))?;
    registry.preload(7, RegistrySchema::Protobuf(Arc::new(compiled()?)));
    Ok(d)
}

fn raw(payload: &[u8]) -> RawRecord<'_> {
    RawRecord {
        partition: 0,
        offset: 7,
        timestamp: None,
        key: None,
        payload: Some(payload),
        headers: None,
    }
}

fn value(d: &Decoder, payload: &[u8]) -> Result<Value, DecodeError> {
    let r = d.decode(&raw(payload))?;
    Ok(r.value().clone())
}

fn reason(r: Result<Value, DecodeError>) -> &'static str {
    match r {
        Ok(v) => panic!("decoded {v}"),
        Err(e) => e.reason(),
    }
}

fn full_order() -> Value {
    json!({
        "id": "o1",
        "qty": "5",
        "price": {"units": "12", "currency": "EUR"},
        "tags": ["a", "b"],
        "counts": {"x": 1},
        "status": "SHIPPED",
        "at": "2024-11-27T06:46:40Z",
        "wallet": {"name": "w"},
        "line": {"sku": "s", "detail": {"note": "n"}},
        "blob": "AQI=",
        "ratio": 0.5
    })
}

#[test]
fn a_message_with_every_kind_of_field_is_written_as_proto3_json() -> anyhow::Result<()> {
    let d = proto_decoder()?;
    let bytes = encode("shop.Order", full_order())?;
    // The single byte 0: the first message of the file.
    let v = value(&d, &framed(7, &[0], &bytes))?;
    assert_eq!(v, full_order());
    // The same as the explicit list [0] (count 1 = zig-zag 2, index 0).
    assert_eq!(value(&d, &framed(7, &[2, 0], &bytes))?, full_order());
    // Field names as in the .proto; the text as written (the fields' order kept).
    let text = String::from_utf8(
        d.decode(&raw(&framed(7, &[0], &bytes)))?
            .value_json
            .to_vec(),
    )?;
    assert!(
        text.starts_with(r#"{"id":"o1","qty":"5","price":{"units":"12""#),
        "{text}"
    );
    Ok(())
}

#[test]
fn fields_without_presence_are_written_with_their_defaults() -> anyhow::Result<()> {
    let d = proto_decoder()?;
    let bytes = encode("shop.Order", json!({"id": "o2", "card": "visa"}))?;
    assert_eq!(
        value(&d, &framed(7, &[0], &bytes))?,
        json!({"id": "o2", "qty": "0", "tags": [], "counts": {}, "status": "NEW",
               "card": "visa", "blob": "", "ratio": 0.0})
    );
    Ok(())
}

#[test]
fn message_indexes_walk_top_level_then_nested_messages() -> anyhow::Result<()> {
    let d = proto_decoder()?;
    // [1] = Other (count 1, index 1: zig-zag 2, 2).
    let other = encode("shop.Other", json!({"x": "top"}))?;
    assert_eq!(value(&d, &framed(7, &[2, 2], &other))?, json!({"x": "top"}));
    // [1, 0] = Other.Inner.
    let inner = encode("shop.Other.Inner", json!({"y": "mid"}))?;
    assert_eq!(
        value(&d, &framed(7, &[4, 2, 0], &inner))?,
        json!({"y": "mid"})
    );
    // [1, 0, 0] = Other.Inner.Deep.
    let deep = encode("shop.Other.Inner.Deep", json!({"z": "low"}))?;
    assert_eq!(
        value(&d, &framed(7, &[6, 2, 0, 0], &deep))?,
        json!({"z": "low"})
    );
    // [0, 0] = Order.Line: nested in the first message.
    let line = encode(
        "shop.Order.Line",
        json!({"sku": "k", "detail": {"note": "x"}}),
    )?;
    assert_eq!(
        value(&d, &framed(7, &[4, 0, 0], &line))?,
        json!({"sku": "k", "detail": {"note": "x"}})
    );
    Ok(())
}

#[test]
fn bad_indexes_bytes_and_headers_are_errors_with_reasons() -> anyhow::Result<()> {
    let d = proto_decoder()?;
    let bytes = encode("shop.Order", full_order())?;
    // Index 2 at the top: the file has two messages.
    assert_eq!(
        reason(value(&d, &framed(7, &[2, 4], &bytes))),
        "bad_message_index"
    );
    // Other.Inner.Deep has no nested message.
    assert_eq!(
        reason(value(&d, &framed(7, &[8, 2, 0, 0, 0], &bytes))),
        "bad_message_index"
    );
    // A negative count, a negative index, and 65 indexes (the limit is 64).
    assert_eq!(
        reason(value(&d, &framed(7, &[1], &bytes))),
        "bad_message_index"
    );
    assert_eq!(
        reason(value(&d, &framed(7, &[2, 1], &bytes))),
        "bad_message_index"
    );
    let mut many = vec![130, 1];
    many.extend(std::iter::repeat_n(0, 65));
    assert_eq!(
        reason(value(&d, &framed(7, &many, &bytes))),
        "bad_message_index"
    );
    // A varint that never ends, one cut short, and a huge count.
    assert_eq!(
        reason(value(&d, &framed(7, &[0xff; 11], &[]))),
        "bad_message_index"
    );
    assert_eq!(reason(value(&d, &framed(7, &[4, 0], &[]))), "truncated");
    assert_eq!(
        reason(value(&d, &framed(7, &[0xfe, 0xff, 0xff, 0xff, 0x0f], &[]))),
        "bad_message_index"
    );
    // The header itself cut short, and the indexes missing.
    assert_eq!(reason(value(&d, &[0, 0, 0, 0])), "truncated");
    assert_eq!(reason(value(&d, &framed(7, &[], &[]))), "truncated");
    // Bytes that are not the message: a field of the wrong wire type, a length past the end.
    assert_eq!(
        reason(value(&d, &framed(7, &[0], &[0x0a, 0x09, b'x']))),
        "bad_protobuf"
    );
    assert_eq!(reason(value(&d, &framed(7, &[0], &[0x08]))), "bad_protobuf");
    assert_eq!(
        reason(value(&d, &framed(7, &[0], &[0x0d, 1, 2, 3, 4]))),
        "bad_protobuf"
    );
    // An id the registry does not have.
    assert_eq!(
        reason(value(&d, &framed(99, &[0], &bytes))),
        "unknown_schema_id"
    );
    // Every prefix and some bit flips: an error or a value, never a panic.
    let good = framed(7, &[0], &bytes);
    for n in 0..good.len() {
        let _ = d.decode(&raw(&good[..n]));
        let mut flipped = good.clone();
        flipped[n] ^= 0x5a;
        let _ = d.decode(&raw(&flipped));
    }
    Ok(())
}

#[test]
fn a_schema_that_does_not_compile_is_refused_with_the_reason() {
    let missing_import = ProtoSchema::compile(3, ORDER, &[]).map(|_| ());
    match missing_import {
        Err(why) => assert!(why.contains("common.proto"), "{why}"),
        Ok(()) => panic!("compiled without its import"),
    }
    assert!(ProtoSchema::compile(3, "message {", &[]).is_err());
}

#[test]
fn the_sink_gets_not_avro_for_a_protobuf_value() -> anyhow::Result<()> {
    let d = proto_decoder()?;
    let bytes = framed(7, &[0], &encode("shop.Order", full_order())?);
    match d.value_writer(&bytes) {
        Err(
            e @ DecodeError::NotAvro {
                id: 7,
                schema_type: "PROTOBUF",
            },
        ) => {
            assert_eq!(e.reason(), "not_avro");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an Avro writer schema for a Protobuf value"),
    }
    Ok(())
}

const PERSON: &str = r#"{"type":"object","properties":{"name":{"type":"string"},
    "age":{"type":"integer","minimum":0},"home":{"$ref":"address.json"}},"required":["name"]}"#;
const ADDRESS: &str = r#"{"type":"object","properties":{"city":{"type":"string"}},
    "required":["city"]}"#;

fn json_decoder(validate: bool) -> anyhow::Result<Decoder> {
    let topic = format!("name = \"t\"\nformat = \"confluent\"\nvalidate_json_schema = {validate}");
    let (d, cx) = decoder_with(&topic, "http://127.0.0.1:1")?;
    let registry = cx
        .registry()
        .ok_or_else(|| anyhow::anyhow!("no registry"))?;
    let schema = JsonSchema::parse(
        9,
        PERSON,
        &[("address.json".to_string(), ADDRESS.to_string())],
    )
    .map_err(anyhow::Error::msg)?;
    registry.preload(9, RegistrySchema::Json(Arc::new(schema)));
    Ok(d)
}

#[test]
fn json_schema_values_are_validated_only_when_asked() -> anyhow::Result<()> {
    let good = br#"{"name":"ann","age":3,"home":{"city":"Bern"}}"#;
    let bad_age = br#"{"name":"ann","age":-1}"#;
    let bad_ref = br#"{"name":"ann","home":{}}"#;
    let on = json_decoder(true)?;
    assert_eq!(
        value(&on, &framed(9, &[], good))?,
        json!({"name":"ann","age":3,"home":{"city":"Bern"}})
    );
    match on.decode(&raw(&framed(9, &[], bad_age))) {
        Err(e) => {
            assert_eq!(e.reason(), "json_schema_invalid");
            let msg = e.to_string();
            assert!(msg.contains("/age") && msg.contains("minimum"), "{msg}");
        }
        Ok(r) => panic!("validated {:?}", r.value()),
    }
    // The referenced schema is used: `home` needs a `city`.
    assert_eq!(
        reason(value(&on, &framed(9, &[], bad_ref))),
        "json_schema_invalid"
    );
    assert_eq!(reason(value(&on, &framed(9, &[], b"{nope"))), "bad_json");

    let off = json_decoder(false)?;
    assert_eq!(
        value(&off, &framed(9, &[], bad_age))?,
        json!({"name":"ann","age":-1})
    );
    assert_eq!(reason(value(&off, &framed(9, &[], b"{nope"))), "bad_json");
    match off.value_writer(&framed(9, &[], good)) {
        Err(e) => assert_eq!(e.reason(), "not_avro"),
        Ok(_) => panic!("an Avro writer schema for a JSON value"),
    }
    Ok(())
}

#[test]
fn validate_json_schema_is_only_for_confluent_topics() {
    let text = "[kafka]\nbrokers = \"b:1\"\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\
                validate_json_schema = true\n";
    match Config::from_toml_and_env(text, &[], "t") {
        Err(e) => assert!(
            e.to_string().starts_with("topics[0].validate_json_schema:"),
            "{e}"
        ),
        Ok(_) => panic!("accepted"),
    }
}

/// The head of an HTTP request (up to the blank line); `None` when the connection ends first.
pub(crate) async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Writes an HTTP/1.1 answer with `status` (code and text) and the JSON `body`, then the
/// connection is to be closed.
pub(crate) async fn reply(sock: &mut tokio::net::TcpStream, status: &str, body: &str) {
    let _ = sock
        .write_all(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
}

/// A registry that answers each path with its answers in turn (the last one again after
/// them), 404 for other paths; the requests per path are counted.
pub(crate) struct Routes {
    pub(crate) url: String,
    pub(crate) requests: Arc<Mutex<HashMap<String, usize>>>,
}

pub(crate) async fn routes(answers: Vec<(&str, Vec<(u16, Value)>)>) -> anyhow::Result<Routes> {
    let answers: Arc<HashMap<String, Vec<(u16, String)>>> = Arc::new(
        answers
            .into_iter()
            .map(|(p, a)| {
                let a = a.into_iter().map(|(s, v)| (s, v.to_string())).collect();
                (p.to_string(), a)
            })
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let requests: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counts = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (answers, counts) = (answers.clone(), counts.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut sock).await else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let n = {
                    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                    let n = c.entry(path.clone()).or_default();
                    *n += 1;
                    *n - 1
                };
                let (status, body) = match answers.get(&path) {
                    Some(a) => a[n.min(a.len() - 1)].clone(),
                    None => (404, r#"{"error_code":40401}"#.to_string()),
                };
                reply(&mut sock, &format!("{status} X"), &body).await;
            });
        }
    });
    Ok(Routes { url, requests })
}

#[tokio::test]
async fn references_are_fetched_recursively_through_outages() -> anyhow::Result<()> {
    let money = r#"syntax = "proto3";
package common;
import "unit.proto";
message Money { int64 units = 1; string currency = 2; unit.Unit unit = 3; }
"#;
    let unit = "syntax = \"proto3\";\npackage unit;\nmessage Unit { string name = 1; }\n";
    let reg = routes(vec![
        (
            "/schemas/ids/7",
            vec![(
                200,
                json!({"schemaType": "PROTOBUF", "schema": ORDER,
                       "references": [{"name": "common.proto", "subject": "com mon", "version": 1}]}),
            )],
        ),
        (
            "/subjects/com%20mon/versions/1",
            vec![
                (503, json!({})),
                (
                    200,
                    json!({"subject": "com mon", "version": 1, "id": 5, "schemaType": "PROTOBUF",
                           "schema": money,
                           "references": [{"name": "unit.proto", "subject": "unit", "version": 2}]}),
                ),
            ],
        ),
        (
            "/subjects/unit/versions/2",
            vec![
                (200, json!("<html>a proxy's page</html>")),
                (200, json!({"schema": unit, "schemaType": "PROTOBUF"})),
            ],
        ),
        (
            "/schemas/ids/8",
            vec![(
                200,
                json!({"schemaType": "PROTOBUF", "schema": ORDER,
                       "references": [{"name": "common.proto", "subject": "gone", "version": 1}]}),
            )],
        ),
    ])
    .await?;
    let (d, _cx) = decoder_with("name = \"t\"\nformat = \"confluent\"", &reg.url)?;
    let money_json = json!({"units": "12", "currency": "EUR", "unit": {"name": "cent"}});
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("common.proto"), money)?;
    std::fs::write(dir.path().join("unit.proto"), unit)?;
    std::fs::write(dir.path().join("order.proto"), ORDER)?;
    let pool = protox::Compiler::new([dir.path()])?
        .open_file("order.proto")?
        .descriptor_pool();
    let desc = pool
        .get_message_by_name("shop.Order")
        .ok_or_else(|| anyhow::anyhow!("no Order"))?;
    let msg = DynamicMessage::deserialize(desc, json!({"id": "r", "price": money_json}))?;
    let payload = framed(7, &[0], &msg.encode_to_vec());
    d.prepare(&raw(&payload)).await;
    let v = value(&d, &payload).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(v["price"], money_json);
    let requests = reg
        .requests
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    // One 503 and one garbled answer waited through: each id fetch made again from the start.
    assert_eq!(requests.get("/schemas/ids/7"), Some(&3));
    assert_eq!(requests.get("/subjects/com%20mon/versions/1"), Some(&3));
    assert_eq!(requests.get("/subjects/unit/versions/2"), Some(&2));

    // A reference the registry does not have: the id is "missing".
    let gone = framed(8, &[0], &msg.encode_to_vec());
    d.prepare(&raw(&gone)).await;
    assert_eq!(reason(value(&d, &gone)), "unknown_schema_id");
    Ok(())
}

#[tokio::test]
async fn the_sink_refuses_a_table_whose_subject_is_protobuf() -> anyhow::Result<()> {
    let reg = routes(vec![
        (
            "/subjects/pb-value/versions/latest",
            vec![(
                200,
                json!({"schemaType": "PROTOBUF", "schema": ORDER, "id": 7}),
            )],
        ),
        (
            "/subjects/av-value/versions/latest",
            vec![(200, json!({"schema": "\"string\"", "id": 8}))],
        ),
    ])
    .await?;
    let config = |topic: &str, url: &str| {
        Config::from_toml_and_env(
            &format!(
                "[kafka]\nbrokers = \"127.0.0.1:1\"\n[schema_registry]\nurl = \"{url}\"\n\
                 request_timeout_ms = 2000\n[[topics]]\nname = \"{topic}\"\nformat = \"confluent\"\n\
                 [sink]\nroot = \"/tmp/lake\"\n[[sink.tables]]\ntopic = \"{topic}\"\n"
            ),
            &[],
            "test",
        )
    };
    let check = |c: Config| async move {
        let cx = DecodeContext::new(&c, &Metrics::default())?;
        let decoders = Decoder::for_topics(&c, &cx)?;
        anyhow::Ok(crate::sink::check_schema_types(&c, &decoders).await)
    };
    match check(config("pb", &reg.url)?).await? {
        Err(e) => assert_eq!(
            e.to_string(),
            "sink.tables: table pb (topic pb): the schema registry's latest schema of subject \
             pb-value is a PROTOBUF schema; the sink writes Avro values only"
        ),
        Ok(()) => panic!("a Protobuf sink table accepted"),
    }
    // Avro, a subject not registered yet, and a registry that does not answer: accepted.
    assert!(check(config("av", &reg.url)?).await?.is_ok());
    assert!(check(config("new", &reg.url)?).await?.is_ok());
    assert!(check(config("pb", "http://127.0.0.1:1")?).await?.is_ok());
    Ok(())
}
