//! The listener's HTTP limits, over raw TCP: slow request heads and idle keep-alive connections
//! are closed, plain HTTP connections count against `max_http_connections` and one address's
//! share of it (WebSocket upgrades leave the count), an SSE stream that does not end after an
//! idle close or whose client stopped reading frees its place, `/readyz` answers from the
//! background check, and the admin listener serves what the public one may not. No Kafka is
//! needed: the broker address answers nothing (records are published into the hub directly).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lakewire::config::Config;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn start(websocket: &str) -> anyhow::Result<lakewire::app::Running> {
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n\n[websocket]\nlisten = \"127.0.0.1:0\"\n{websocket}\n"
    );
    Ok(lakewire::app::start(Config::from_toml_and_env(&toml, &[], "test")?).await?)
}

/// Waits (at most `within`) for the server to close `s`; returns how long that took, or an
/// error when it was still open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + within).into(), s.read(&mut buf)).await {
            Err(_) => anyhow::bail!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(t0.elapsed()),
            // A response (e.g. hyper's 408) before the close is fine.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one keep-alive `GET path` on `s` and reads its response (status, body).
async fn get(s: &mut TcpStream, path: &str) -> anyhow::Result<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "closed before the response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok((status, body.to_string()));
            }
        }
    }
}

async fn get_once(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    get(&mut TcpStream::connect(addr).await?, path).await
}

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_slow_request_head_is_closed_after_header_read_timeout() -> anyhow::Result<()> {
    let gw = start("header_read_timeout_ms = 300\nhttp_idle_timeout_ms = 60000").await?;
    // Half a request line, then nothing (and bytes now and then would not help: the head
    // has a deadline, not each byte).
    let mut s = TcpStream::connect(gw.addr).await?;
    s.write_all(b"GET /healthz HT").await?;
    let took = closed_within(&mut s, Duration::from_secs(3)).await?;
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(gw.addr).await?;
    closed_within(&mut silent, Duration::from_secs(3)).await?;
    // The second request of a kept-alive connection has the same deadline.
    let mut s = TcpStream::connect(gw.addr).await?;
    assert_eq!(get(&mut s, "/healthz").await?.0, 200);
    s.write_all(b"GET /hea").await?;
    closed_within(&mut s, Duration::from_secs(3)).await?;
    let metrics = get_once(gw.addr, "/metrics").await?.1;
    assert!(
        metric(
            &metrics,
            "lakewire_http_closed_total{reason=\"header_timeout\"}"
        ) >= 3.0,
        "{metrics}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_http_idle_timeout() -> anyhow::Result<()> {
    let gw = start("header_read_timeout_ms = 60000\nhttp_idle_timeout_ms = 400").await?;
    let mut s = TcpStream::connect(gw.addr).await?;
    assert_eq!(get(&mut s, "/healthz").await?.0, 200);
    let took = closed_within(&mut s, Duration::from_secs(3)).await?;
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
    let metrics = get_once(gw.addr, "/metrics").await?.1;
    assert_eq!(
        metric(&metrics, "lakewire_http_closed_total{reason=\"idle\"}"),
        1.0,
        "{metrics}"
    );
    // A connection in use stays open past the idle time.
    let mut busy = TcpStream::connect(gw.addr).await?;
    for _ in 0..6 {
        assert_eq!(get(&mut busy, "/healthz").await?.0, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn plain_http_connections_count_against_max_http_connections() -> anyhow::Result<()> {
    // All from 127.0.0.1: its share is the whole limit here.
    let gw = start("max_http_connections = 2\nmax_http_connections_per_ip = 2").await?;
    let mut held = vec![
        TcpStream::connect(gw.addr).await?,
        TcpStream::connect(gw.addr).await?,
    ];
    assert_eq!(get(&mut held[0], "/healthz").await?.0, 200);
    // The third is answered 503 and closed.
    let answer = refused_answer(gw.addr).await?;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // A freed place is taken again.
    held.pop();
    let metrics = place_free(gw.addr, Duration::from_secs(3)).await?;
    assert_eq!(
        metric(
            &metrics,
            "lakewire_ws_refused_total{reason=\"max_http_connections\"}"
        ),
        1.0,
        "{metrics}"
    );
    // An upgraded WebSocket leaves the count: with it open, a plain request still gets in.
    drop(held);
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut c1 = loop {
        let mut c = TcpStream::connect(gw.addr).await?;
        match get(&mut c, "/healthz").await {
            Ok((200, _)) => break c,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => anyhow::bail!("the WebSocket kept its HTTP place: {other:?}"),
        }
    };
    assert_eq!(get(&mut c1, "/healthz").await?.0, 200);
    drop(ws);
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn one_address_gets_its_share_of_max_http_connections_and_is_refused_with_429()
-> anyhow::Result<()> {
    let gw = start("max_http_connections = 8\nmax_http_connections_per_ip = 2").await?;
    let mut held = vec![
        TcpStream::connect(gw.addr).await?,
        TcpStream::connect(gw.addr).await?,
    ];
    assert_eq!(get(&mut held[0], "/healthz").await?.0, 200);
    assert_eq!(get(&mut held[1], "/healthz").await?.0, 200);
    // The third from the same address is answered 429 and closed, with places left in all.
    let answer = refused_answer(gw.addr).await?;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    // A freed place is the address's again.
    held.pop();
    let metrics = place_free(gw.addr, Duration::from_secs(3)).await?;
    assert_eq!(
        metric(
            &metrics,
            "lakewire_ws_refused_total{reason=\"max_http_connections_per_ip\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "lakewire_ws_refused_total{reason=\"max_http_connections\"}"
        ),
        0.0,
        "{metrics}"
    );
    gw.stop().await;
    Ok(())
}

/// A gateway with topic `t`, whose subscriptions do not wait long for the absent broker.
async fn start_with_topic(websocket: &str) -> anyhow::Result<lakewire::app::Running> {
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\nrequest_timeout_ms = 50\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n[websocket]\nlisten = \"127.0.0.1:0\"\n{websocket}\n"
    );
    Ok(lakewire::app::start(Config::from_toml_and_env(&toml, &[], "test")?).await?)
}

/// Opens `GET /sse?topic=t` on a raw connection and reads until its `subscribed` event.
async fn open_sse(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("event:subscribed") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "closed before subscribed: {got:?}");
        got.extend_from_slice(&chunk[..n]);
        got.retain(|b| *b != b' ');
    }
    Ok(s)
}

/// Waits (at most `within`) until a plain request gets a place and is answered; the metrics
/// then.
async fn place_free(addr: SocketAddr, within: Duration) -> anyhow::Result<String> {
    let t0 = Instant::now();
    loop {
        match get_once(addr, "/metrics").await {
            Ok((200, body)) => return Ok(body),
            _ if t0.elapsed() < within => tokio::time::sleep(Duration::from_millis(20)).await,
            other => anyhow::bail!("no place freed: {other:?}"),
        }
    }
}

/// What a connection the listener refuses at accept is answered before it is closed (within
/// 3 s).
async fn refused_answer(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn an_idle_closed_sse_stream_that_does_not_end_is_dropped_after_the_drain()
-> anyhow::Result<()> {
    // No keep-alive comment for a minute: the stream carries no byte after `subscribed`, so the
    // connection is idle, and its response never ends on its own.
    let gw = start_with_topic(
        "http_idle_timeout_ms = 300\nping_interval_ms = 60000\nidle_timeout_ms = 120000\nmax_http_connections = 1",
    )
    .await?;
    let mut sse = open_sse(gw.addr).await?;
    let took = closed_within(&mut sse, Duration::from_secs(4)).await?;
    assert!(
        took >= lakewire::listener::DRAIN,
        "closed before the drain: {took:?}"
    );
    let metrics = place_free(gw.addr, Duration::from_secs(5)).await?;
    // Counted as what ended it, not as a client that went away.
    let series = "lakewire_ws_closed_total{reason=\"idle_timeout\"}";
    assert_eq!(metric(&metrics, series), 1.0, "{series}: {metrics}");
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_sse_stream_ended_by_shutdown_is_counted_as_shutdown() -> anyhow::Result<()> {
    let gw = start_with_topic("").await?;
    let mut sse = open_sse(gw.addr).await?;
    let services = gw.services.clone();
    tokio::time::timeout(Duration::from_secs(10), gw.stop()).await?;
    closed_within(&mut sse, Duration::from_secs(2)).await?;
    let metrics = lakewire::metrics::render(&services.prometheus);
    for (reason, n) in [("shutdown", 1.0), ("client_closed", 0.0)] {
        let series = format!("lakewire_ws_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), n, "{series}: {metrics}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_cut_after_write_timeout() -> anyhow::Result<()> {
    let gw = start_with_topic("write_timeout_ms = 500\nmax_http_connections = 1").await?;
    // Subscribed, then never read again.
    let _sse = open_sse(gw.addr).await?;
    let hub = gw
        .services
        .hub
        .topic("t")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no hub"))?;
    let pad = "x".repeat(32 * 1024);
    let publishing = tokio::spawn(async move {
        for offset in 0..4000 {
            hub.publish(std::sync::Arc::new(lakewire::record::Record::new(
                std::sync::Arc::from("t"),
                0,
                offset,
                Some(offset),
                None,
                bytes::Bytes::from(format!("{{\"n\":{offset},\"pad\":\"{pad}\"}}")),
            )));
            if offset % 32 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // The only place is the stream's until the listener cuts it.
    let metrics = place_free(gw.addr, Duration::from_secs(5)).await?;
    publishing.abort();
    for series in [
        "lakewire_ws_closed_total{reason=\"write_timeout\"}",
        "lakewire_http_closed_total{reason=\"write_timeout\"}",
    ] {
        assert_eq!(metric(&metrics, series), 1.0, "{series}: {metrics}");
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn readyz_answers_from_the_background_check_without_asking_kafka() -> anyhow::Result<()> {
    let gw = start("").await?;
    // The broker answers nothing: a metadata request per probe would take its 2 s timeout.
    for _ in 0..5 {
        let t0 = Instant::now();
        let (status, body) = get_once(gw.addr, "/readyz").await?;
        let took = t0.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"kafka_reachable\":false"), "{body}");
        assert!(took < Duration::from_millis(500), "/readyz took {took:?}");
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_kept_off_the_public_port() -> anyhow::Result<()> {
    let gw = start("admin_listen = \"127.0.0.1:0\"\npublic_metrics = false").await?;
    let admin = gw
        .admin_addr
        .ok_or_else(|| anyhow::anyhow!("no admin listener"))?;
    let (status, body) = get_once(admin, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(body.contains("lakewire_http_connections"), "{body}");
    assert_eq!(get_once(admin, "/healthz").await?.0, 200);
    assert_eq!(get_once(admin, "/readyz").await?.0, 503);
    // Nothing else on the admin port; no metrics on the public one.
    assert_eq!(get_once(admin, "/api/topics").await?.0, 404);
    assert_eq!(get_once(gw.addr, "/metrics").await?.0, 404);
    assert_eq!(get_once(gw.addr, "/healthz").await?.0, 200);
    gw.stop().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_kept_alive_connections() -> anyhow::Result<()> {
    let gw = start("").await?;
    let mut s = TcpStream::connect(gw.addr).await?;
    assert_eq!(get(&mut s, "/healthz").await?.0, 200);
    tokio::time::timeout(Duration::from_secs(3), gw.stop()).await?;
    closed_within(&mut s, Duration::from_secs(2)).await?;
    Ok(())
}
