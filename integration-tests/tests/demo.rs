//! `lakewire demo` as a user meets it: the in-process broker, the synthetic producer and the
//! gateway, reached over a real WebSocket and real HTTP on loopback. No external broker needed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lakewire_integration_tests::{Frame, WsClient, http_get, metric, wait_ready};
use serde_json::json;

async fn demo() -> anyhow::Result<lakewire::demo::Demo> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    Ok(lakewire::demo::start(listen, &[]).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_streams_records_within_five_seconds_of_start() -> anyhow::Result<()> {
    let started = Instant::now();
    let demo = demo().await?;
    let addr = demo.running.addr;
    let mut ws = WsClient::connect(addr).await?;
    let sub = ws
        .subscribe(json!({"op":"subscribe","id":"t1","topic":"trades","from":"latest"}))
        .await?;
    assert_eq!(sub["partitions"], json!([0, 1, 2]), "{sub}");
    let (records, _) = ws.records("t1", 5, Duration::from_secs(5)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "first records after {:?}",
        started.elapsed()
    );
    for r in &records {
        assert!(r["value"]["symbol"].is_string(), "{r}");
        assert!(r["value"]["price"].is_number(), "{r}");
        assert!(r["offset"].is_i64() && r["partition"].is_i64() && r["timestamp"].is_i64());
        assert_eq!(r["key"], r["value"]["symbol"]);
    }
    ws.close().await?;
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_topic_streams_decoded_avro_records() -> anyhow::Result<()> {
    let demo = demo().await?;
    let mut ws = WsClient::connect(demo.running.addr).await?;
    for (id, topic) in [("o", "orders"), ("s", "sensors")] {
        ws.subscribe(json!({"op":"subscribe","id":id,"topic":topic,"from":"earliest"}))
            .await?;
    }
    let (orders, _) = ws.records("o", 3, Duration::from_secs(10)).await?;
    for r in &orders {
        let v = &r["value"];
        let amount = v["amount"].as_str().unwrap_or_default();
        assert!(
            amount
                .split_once('.')
                .is_some_and(|(_, cents)| cents.len() == 2),
            "decimal(12,2) as a string: {r}"
        );
        assert!(
            ["NEW", "PAID", "SHIPPED", "CANCELLED"].contains(&v["status"].as_str().unwrap_or("")),
            "{r}"
        );
        assert!(v["ship_to"]["city"].is_string(), "{r}");
        assert_eq!(r["key"], v["customer"], "{r}");
    }
    let (sensors, _) = ws.records("s", 3, Duration::from_secs(10)).await?;
    for r in &sensors {
        let v = &r["value"];
        assert!(
            v["temperature_c"].is_f64() && v["battery_ok"].is_boolean(),
            "{r}"
        );
        assert!(v["location"]["lat"].is_f64(), "{r}");
        assert_eq!(r["key"], v["sensor_id"], "{r}");
    }
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_health_readiness_metrics_and_topics() -> anyhow::Result<()> {
    let demo = demo().await?;
    let addr = demo.running.addr;
    assert_eq!(http_get(addr, "/healthz").await?.0, 200);
    wait_ready(addr, Duration::from_secs(10)).await?;
    let (status, topics) = http_get(addr, "/api/topics").await?;
    assert_eq!(status, 200);
    let topics: serde_json::Value = serde_json::from_str(&topics)?;
    assert_eq!(topics[0]["name"], "trades", "{topics}");
    assert_eq!(topics[1]["name"], "sensors", "{topics}");
    assert_eq!(topics[2]["name"], "orders", "{topics}");
    // Avro topics list their schema's fields, nested records as dotted paths.
    let fields = |i: usize| -> Vec<String> {
        topics[i]["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                format!(
                    "{}:{}",
                    f["path"].as_str().unwrap_or(""),
                    f["type"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert!(
        fields(0).contains(&"value.price:double".to_string()),
        "{topics}"
    );
    assert!(
        fields(1).contains(&"value.location.lat:double".to_string()),
        "{topics}"
    );
    assert!(
        fields(2).contains(&"value.ship_to.city:string".to_string()),
        "{topics}"
    );
    // The live consumers read whether or not anyone listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/metrics").await?;
        assert_eq!(status, 200);
        let n = metric(&body, "lakewire_kafka_records_total{topic=\"sensors\"}").unwrap_or(0.0);
        if n > 0.0 {
            assert!(
                body.contains("lakewire_source_ready{topic=\"trades\"} 1"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no records counted: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_answered_and_the_connection_lives_on() -> anyhow::Result<()> {
    let demo = demo().await?;
    let mut ws = WsClient::connect(demo.running.addr).await?;
    let t = Duration::from_secs(10);

    ws.send_text("{not json").await?;
    let e = ws.next_json(t).await?;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );

    ws.send(json!({"op":"subscribe","id":"a","topic":"nope"}))
        .await?;
    let e = ws.next_json(t).await?;
    assert_eq!(e["code"], "unknown_topic", "{e}");
    assert_eq!(e["id"], "a", "{e}");

    ws.send(json!({"op":"subscribe","id":"a","topik":"trades"}))
        .await?;
    let e = ws.next_json(t).await?;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e["message"].as_str().unwrap_or("").contains("topik"), "{e}");

    ws.subscribe(json!({"op":"subscribe","id":"a","topic":"sensors"}))
        .await?;
    ws.send(json!({"op":"subscribe","id":"a","topic":"trades"}))
        .await?;
    // Records of "a" may arrive in between: next_reply skips them.
    let e = ws.next_reply(t).await?;
    assert_eq!(e["code"], "duplicate_id", "{e}");

    ws.send(json!({"op":"unsubscribe","id":"zzz"})).await?;
    let e = ws.next_reply(t).await?;
    assert_eq!(e["code"], "unknown_id", "{e}");

    ws.send(json!({"op":"ping"})).await?;
    let p = ws.next_reply(t).await?;
    assert_eq!(p, json!({"type":"pong"}));

    ws.send(json!({"op":"unsubscribe","id":"a"})).await?;
    let u = ws.next_reply(t).await?;
    assert_eq!(u, json!({"type":"unsubscribed","id":"a"}));
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_client_frame_closes_with_1009() -> anyhow::Result<()> {
    let demo = demo().await?;
    let mut ws = WsClient::connect(demo.running.addr).await?;
    let big = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(70_000));
    ws.send_text(&big).await?;
    match ws.next(Duration::from_secs(10)).await? {
        Frame::Closed(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    demo.stop().await;
    Ok(())
}

/// The gateway reads client frames through a 4 KiB buffer (to keep idle connections small); a
/// message many times that size, under `max_frame_bytes`, still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frame_larger_than_the_read_buffer_arrives_whole() -> anyhow::Result<()> {
    let demo = demo().await?;
    let mut ws = WsClient::connect(demo.running.addr).await?;
    let big = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(60_000));
    ws.send_text(&big).await?;
    let p = ws.next_reply(Duration::from_secs(10)).await?;
    assert_eq!(p, json!({"type":"pong"}));
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_with_1001() -> anyhow::Result<()> {
    let demo = demo().await?;
    let mut ws = WsClient::connect(demo.running.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"s","topic":"trades"}))
        .await?;
    let stopping = tokio::spawn(async move { demo.running.stop().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws.next(Duration::from_secs(10)).await? {
            Frame::Json(_) => assert!(Instant::now() < deadline, "no close frame"),
            Frame::Closed(c) => {
                assert_eq!(c.map(|c| c.0), Some(1001));
                break;
            }
        }
    }
    stopping.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_matches_the_published_asyncapi_schemas() -> anyhow::Result<()> {
    use lakewire_integration_tests::ProtocolSchema;
    let schema = ProtocolSchema::load()?;
    // The checker can fail: a frame with a field the document does not allow is refused.
    assert!(
        schema
            .check_server(&json!({"type":"pong","extra":1}))
            .is_err()
    );
    assert!(
        schema
            .check_server(&json!({"type":"records","id":"a","records":[{"offset":1}]}))
            .is_err()
    );
    assert!(
        schema
            .check_client(&json!({"op":"subscribe","id":"a"}))
            .is_err()
    );

    let env = [(
        "LAKEWIRE_WEBSOCKET__MAX_SUBSCRIPTIONS".to_string(),
        "3".to_string(),
    )];
    let demo = lakewire::demo::start("127.0.0.1:0".parse()?, &env).await?;
    let mut ws = WsClient::connect(demo.running.addr).await?;
    let requests = [
        json!({"op":"subscribe","id":"y","topic":"nope"}),
        json!({"op":"subscribe","id":"z","topic":"trades","filter":"value.price +"}),
        json!({"op":"subscribe","id":"all","topic":"trades"}),
        json!({"op":"subscribe","id":"slim","topic":"sensors","fields":["value.site","key"],"filter":"value.humidity_pct >= 0.0"}),
        json!({"op":"subscribe","id":"old","topic":"trades","from":"earliest"}),
        json!({"op":"subscribe","id":"x","topic":"trades"}),
        json!({"op":"subscribe","id":"all","topic":"trades"}),
        json!({"op":"unsubscribe","id":"zz"}),
        json!({"op":"ping"}),
        json!({"op":"unsubscribe","id":"old"}),
        json!({"op":"subscribe","id":"t","topic":"trades","from":{"timestamp": 0}}),
        json!({"op":"subscribe","id":"o","topic":"sensors","from":{"offsets":{"0": 0}}}),
    ];
    for r in &requests {
        schema.check_client(r)?;
        ws.send(r.clone()).await?;
    }
    ws.send_text("{\"op\":\"dance\"}").await?;
    let mut seen = std::collections::BTreeSet::new();
    let mut codes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let want_types = ["error", "pong", "records", "subscribed", "unsubscribed"];
    let want_codes = [
        "bad_filter",
        "bad_request",
        "duplicate_id",
        "too_many_subscriptions",
        "unknown_id",
        "unknown_topic",
    ];
    while Instant::now() < deadline
        && (seen.len() < want_types.len() || codes.len() < want_codes.len())
    {
        let frame = ws.next_json(Duration::from_secs(10)).await?;
        schema.check_server(&frame)?;
        if let Some(c) = frame["code"].as_str() {
            codes.insert(c.to_string());
        }
        seen.insert(frame["type"].as_str().unwrap_or_default().to_string());
    }
    for t in want_types {
        assert!(seen.contains(t), "no {t} frame seen: {seen:?}");
    }
    for c in want_codes {
        assert!(codes.contains(c), "no {c} error seen: {codes:?}");
    }
    demo.stop().await;
    Ok(())
}
