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
