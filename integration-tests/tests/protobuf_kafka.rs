//! Protobuf and JSON-Schema records (Confluent wire format) through the real Apache Kafka broker
//! and the real schema registry (Apicurio's Confluent API) to a WebSocket client: a Protobuf
//! schema with nested messages, an import (a second subject, referenced) and a oneof, decoded
//! to proto3 JSON and filtered on a nested field; a JSON-Schema topic validated against its
//! schema, where a bad record is counted and skipped and the good ones are delivered.
#![cfg(all(feature = "real-kafka", feature = "real-registry"))]

use std::time::Duration;

use lakewire::config::Config;
use lakewire_integration_tests::registry::Registry;
use lakewire_integration_tests::{
    WsClient, brokers, http_get, metric, registry_config_head, send_keyed, unique_topic, wait_ready,
};
use prost_reflect::DynamicMessage;
use prost_reflect::prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

const MONEY: &str = r#"syntax = "proto3";
package it.common;
message Money { int64 units = 1; string currency = 2; }
"#;

const ORDER: &str = r#"syntax = "proto3";
package it.shop;
import "it/common/money.proto";

message Order {
  message Line {
    message Item { string sku = 1; int32 qty = 2; }
    Item item = 1;
    string note = 2;
  }
  enum Status { NEW = 0; SHIPPED = 1; }
  string id = 1;
  it.common.Money total = 2;
  Line line = 3;
  Status status = 4;
  oneof pay {
    string card = 5;
    string voucher = 6;
  }
}
"#;

const PERSON: &str = r#"{"type":"object","properties":{"name":{"type":"string"},
  "age":{"type":"integer","minimum":0}},"required":["name","age"]}"#;

/// `0x00`, the id, then `rest`.
fn framed(id: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

/// The Protobuf bytes of `json` as `it.shop.Order`, compiled here from the same texts.
fn order(json: Value) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("it/common"))?;
    std::fs::write(dir.path().join("it/common/money.proto"), MONEY)?;
    std::fs::write(dir.path().join("order.proto"), ORDER)?;
    let pool = protox::Compiler::new([dir.path()])?
        .open_file("order.proto")?
        .descriptor_pool();
    let desc = pool
        .get_message_by_name("it.shop.Order")
        .ok_or_else(|| anyhow::anyhow!("no it.shop.Order"))?;
    Ok(DynamicMessage::deserialize(desc, json)?.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_and_json_schema_through_kafka_and_the_real_registry() -> anyhow::Result<()> {
    let pb = unique_topic("proto");
    let js = unique_topic("jsonschema");
    let registry = Registry::start().await?;
    let common = format!("{pb}-money");
    registry
        .register_as(&common, json!({"schemaType": "PROTOBUF", "schema": MONEY}))
        .await?;
    let pb_id = registry
        .register_as(
            &format!("{pb}-value"),
            json!({"schemaType": "PROTOBUF", "schema": ORDER, "references": [
                {"name": "it/common/money.proto", "subject": common, "version": 1}]}),
        )
        .await?;
    let js_id = registry
        .register_as(
            &format!("{js}-value"),
            json!({"schemaType": "JSON", "schema": PERSON}),
        )
        .await?;

    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()?;
    // Creates the topics (auto-created on first produce) before the gateway starts.
    send_keyed(&p, &pb, &framed(pb_id, &[0])).await?;
    send_keyed(&p, &js, &framed(js_id, br#"{"name":"warm-up","age":0}"#)).await?;

    let text = format!(
        "{}[[topics]]\nname = \"{pb}\"\nformat = \"confluent\"\n\n\
         [[topics]]\nname = \"{js}\"\nformat = \"confluent\"\nvalidate_json_schema = true\n",
        registry_config_head(&registry.url)
    );
    let gw = lakewire::app::start(Config::from_toml_and_env(&text, &[], "test")?).await?;
    wait_ready(gw.addr, T).await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"all","topic":pb,"from":"latest"}))
        .await?;
    ws.subscribe(json!({"op":"subscribe","id":"b","topic":pb,"from":"latest",
                        "filter":"value.line.item.sku == \"B-2\""}))
        .await?;
    ws.subscribe(json!({"op":"subscribe","id":"people","topic":js,"from":"latest"}))
        .await?;

    let a = json!({"id": "o-1", "total": {"units": "1250", "currency": "EUR"},
                   "line": {"item": {"sku": "A-1", "qty": 2}, "note": "gift"},
                   "status": "SHIPPED", "card": "visa"});
    let b = json!({"id": "o-2", "total": {"units": "-7", "currency": "CHF"},
                   "line": {"item": {"sku": "B-2", "qty": 1}}, "voucher": "V9"});
    // The first message of the file: the single-byte index list 0.
    let mut pa = vec![0];
    pa.extend(order(a)?);
    let mut pbytes = vec![0];
    pbytes.extend(order(b)?);
    send_keyed(&p, &pb, &framed(pb_id, &pa)).await?;
    send_keyed(&p, &pb, &framed(pb_id, &[0, 0xff])).await?; // bad Protobuf bytes
    send_keyed(&p, &pb, &framed(pb_id, &[2, 8])).await?; // message index 4: out of range
    send_keyed(&p, &pb, &framed(pb_id, &pbytes)).await?;

    send_keyed(&p, &js, &framed(js_id, br#"{"name":"ann","age":31}"#)).await?;
    send_keyed(&p, &js, &framed(js_id, br#"{"name":"bob","age":-4}"#)).await?; // invalid
    send_keyed(&p, &js, &framed(js_id, br#"{"name":"cy","age":7}"#)).await?;

    // Proto3 JSON: field names as in the .proto, int64 as strings, enums by name, fields without
    // presence written with their default, the oneof member set and no other.
    let want_a = json!({"id": "o-1", "total": {"units": "1250", "currency": "EUR"},
        "line": {"item": {"sku": "A-1", "qty": 2}, "note": "gift"},
        "status": "SHIPPED", "card": "visa"});
    let want_b = json!({"id": "o-2", "total": {"units": "-7", "currency": "CHF"},
        "line": {"item": {"sku": "B-2", "qty": 1}, "note": ""},
        "status": "NEW", "voucher": "V9"});
    let mut all = Vec::new();
    let mut filtered = Vec::new();
    let mut people = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while all.len() < 2 || filtered.is_empty() || people.len() < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "timed out: all {all:?}, filtered {filtered:?}, people {people:?}"
        );
        let v = ws.next_json(left).await?;
        if v["type"] != "records" {
            continue;
        }
        let values = v["records"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["value"].clone());
        match v["id"].as_str() {
            Some("all") => all.extend(values),
            Some("b") => filtered.extend(values),
            Some("people") => people.extend(values),
            _ => {}
        }
    }
    assert_eq!(all, vec![want_a, want_b.clone()]);
    assert_eq!(filtered, vec![want_b]);
    assert_eq!(
        people,
        vec![json!({"name":"ann","age":31}), json!({"name":"cy","age":7})]
    );

    let (_, body) = http_get(gw.addr, "/metrics").await?;
    for (topic, reason) in [
        (&pb, "bad_protobuf"),
        (&pb, "bad_message_index"),
        (&js, "json_schema_invalid"),
    ] {
        let series =
            format!("lakewire_decode_errors_total{{topic=\"{topic}\",reason=\"{reason}\"}}");
        assert_eq!(metric(&body, &series), Some(1.0), "{series} in\n{body}");
    }
    gw.stop().await;
    Ok(())
}
