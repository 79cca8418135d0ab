//! permessage-deflate (RFC 7692) on a real socket: what the handshake agrees to and declines,
//! `records` frames on the wire compressed (RSV1) and inflating to exactly what an
//! uncompressed client gets, a compressed client message, a deflate bomb (1009) and data that
//! does not inflate (1007). The gateway runs in this process on librdkafka's mock cluster.

use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::{SinkExt as _, StreamExt as _};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

mod common;

const SUBSCRIBE: &str = r#"{"op":"subscribe","id":"s","topic":"t"}"#;

fn config(brokers: &str, deflate: bool) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\nmax_frame_bytes = 4096\npermessage_deflate = {deflate}\n"
    )
}

/// The handshake with `offer` (if any): the server's `Sec-WebSocket-Extensions` answer, and the
/// raw socket after it.
async fn handshake(
    addr: std::net::SocketAddr,
    offer: Option<&str>,
) -> anyhow::Result<(Option<String>, TcpStream)> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    if let Some(o) = offer {
        req.headers_mut()
            .insert("sec-websocket-extensions", HeaderValue::from_str(o)?);
    }
    let tcp = TcpStream::connect(addr).await?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    let answer = resp
        .headers()
        .get("sec-websocket-extensions")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    Ok((answer, ws.into_inner()))
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// `message` compressed as a client sends it (the sync tail dropped, RFC 7692 §7.2.1).
fn compress(message: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    c.compress_vec(message, &mut out, FlushCompress::Sync)
        .unwrap_or_else(|e| panic!("{e}"));
    out.truncate(out.len().saturating_sub(4));
    out
}

fn inflate(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)?;
    Ok(out)
}

/// Server frames read raw until `done` says so or 10 s pass: (first byte, payload) each.
async fn read_frames(
    tcp: &mut TcpStream,
    mut done: impl FnMut(&[(u8, Vec<u8>)]) -> bool,
) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 8192];
    while !done(&frames) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(r) => r?,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < at + len {
                break;
            }
            frames.push((buf[0], buf[at..at + len].to_vec()));
            buf.drain(..at + len);
        }
    }
    Ok(frames)
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames
        .iter()
        .find(|(b, p)| *b == 0x88 && p.len() >= 2)
        .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_accepted_declined_or_refused_as_rfc_7692_says() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let on = common::start_ready(&config(&cluster.bootstrap_servers(), true), "t").await?;
    let agreed = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    for (offer, answer) in [
        // Chromium's offer, and the bare one.
        (
            Some("permessage-deflate; client_max_window_bits"),
            Some(agreed),
        ),
        (Some("permessage-deflate"), Some(agreed)),
        // The first acceptable of several.
        (
            Some("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
            Some(agreed),
        ),
        // Cannot be honoured as offered: declined, the connection goes uncompressed.
        (Some("permessage-deflate; server_max_window_bits=10"), None),
        (Some("permessage-deflate; client_max_window_bits=99"), None),
        (Some("permessage-deflate; frobnicate"), None),
        (Some("x-webkit-deflate-frame"), None),
        (None, None),
    ] {
        let (got, mut tcp) = handshake(on.addr, offer).await?;
        assert_eq!(got.as_deref(), answer, "offer {offer:?}");
        // Either way the connection works.
        tcp.write_all(&frame(0x81, SUBSCRIBE.as_bytes())).await?;
        let frames = read_frames(&mut tcp, |f| !f.is_empty()).await?;
        let reply =
            String::from_utf8_lossy(&frames.first().map_or(vec![], |f| f.1.clone())).to_string();
        assert!(reply.contains("\"subscribed\""), "offer {offer:?}: {reply}");
    }
    on.stop().await;
    // Turned off, it is never agreed.
    let off = common::start_ready(&config(&cluster.bootstrap_servers(), false), "t").await?;
    let (got, _) = handshake(off.addr, Some("permessage-deflate")).await?;
    assert_eq!(got, None);
    off.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_compressed_and_inflate_to_what_a_plain_client_gets() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let gw = common::start_ready(&config(&brokers, true), "t").await?;
    // Two compressing clients (one subscribes with a compressed message) and a plain one.
    let (a, mut tcp_a) = handshake(gw.addr, Some("permessage-deflate")).await?;
    let (b, mut tcp_b) = handshake(gw.addr, Some("permessage-deflate")).await?;
    let (plain, mut tcp_plain) = handshake(gw.addr, None).await?;
    assert!(a.is_some() && b.is_some() && plain.is_none());
    tcp_a
        .write_all(&frame(0xC1, &compress(SUBSCRIBE.as_bytes())))
        .await?;
    tcp_b.write_all(&frame(0x81, SUBSCRIBE.as_bytes())).await?;
    tcp_plain
        .write_all(&frame(0x81, SUBSCRIBE.as_bytes()))
        .await?;
    for tcp in [&mut tcp_a, &mut tcp_b, &mut tcp_plain] {
        let reply = read_frames(tcp, |f| !f.is_empty()).await?;
        assert_eq!(
            reply.first().map(|f| f.0),
            Some(0x81),
            "an uncompressed reply"
        );
        let text = String::from_utf8_lossy(&reply[0].1).to_string();
        assert!(text.contains("\"subscribed\""), "{text}");
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let n = 300;
    for i in 0..n {
        let payload = format!(r#"{{"n":{i},"user":"user-{}","kind":"page_view"}}"#, i % 7);
        producer
            .send(
                FutureRecord::<(), _>::to("t").payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let count = |frames: &[(u8, Vec<u8>)], inflated: bool| -> anyhow::Result<Vec<i64>> {
        let mut ns = Vec::new();
        for (first, payload) in frames {
            let json = if inflated {
                assert_eq!(*first, 0xC1, "FIN, RSV1, text");
                inflate(payload)?
            } else {
                assert_eq!(*first, 0x81);
                payload.clone()
            };
            let v: serde_json::Value = serde_json::from_slice(&json)?;
            for r in v["records"].as_array().into_iter().flatten() {
                ns.push(r["value"]["n"].as_i64().unwrap_or(-1));
            }
        }
        Ok(ns)
    };
    let records_in = |f: &[(u8, Vec<u8>)], inflated| count(f, inflated).map_or(0, |v| v.len());
    let got_a = read_frames(&mut tcp_a, |f| records_in(f, true) >= n).await?;
    let got_b = read_frames(&mut tcp_b, |f| records_in(f, true) >= n).await?;
    let got_plain = read_frames(&mut tcp_plain, |f| records_in(f, false) >= n).await?;
    let want: Vec<i64> = (0..n as i64).collect();
    assert_eq!(count(&got_a, true)?, want);
    assert_eq!(count(&got_b, true)?, want);
    assert_eq!(count(&got_plain, false)?, want);
    let wire = |f: &[(u8, Vec<u8>)]| f.iter().map(|(_, p)| p.len()).sum::<usize>();
    assert!(
        wire(&got_a) * 2 < wire(&got_plain),
        "compressed {} bytes, plain {}",
        wire(&got_a),
        wire(&got_plain)
    );
    let m = &gw.services.metrics;
    assert_eq!(m.ws_deflate_connections.get(), 2);
    assert!(m.ws_frames_compressed.get() >= 2);
    // The latency stages saw the batches (produced with CreateTime timestamps).
    let text = lakewire::metrics::render(&gw.services.prometheus);
    for stage in [
        "live_receive_delay_seconds",
        "live_publish_seconds",
        "ws_send_delay_seconds",
        "ws_write_seconds",
    ] {
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("lakewire_{stage}_count ")))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(count.is_some_and(|c| c > 0), "{stage}: {count:?}");
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_closes_1009_and_bad_data_1007() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let gw = common::start_ready(&config(&cluster.bootstrap_servers(), true), "t").await?;
    // 4 MiB of spaces around a subscribe: ~4 KiB compressed, 1,000 times the 4 KiB limit.
    let mut bomb = vec![b' '; 4 << 20];
    bomb.extend_from_slice(SUBSCRIBE.as_bytes());
    let packed = compress(&bomb);
    assert!(packed.len() < 8 << 10, "{}", packed.len());
    let (_, mut tcp) = handshake(gw.addr, Some("permessage-deflate")).await?;
    // Sent in frames the limit allows: a first frame with RSV1, then continuations.
    let pieces: Vec<&[u8]> = packed.chunks(1000).collect();
    let mut wire = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
        let first = if i == 0 { 0x41 } else { 0x00 };
        wire.extend(frame(fin | first, p));
    }
    tcp.write_all(&wire).await?;
    let frames = read_frames(&mut tcp, |f| close_code(f).is_some()).await?;
    assert_eq!(close_code(&frames), Some(1009), "{frames:?}");

    let (_, mut tcp) = handshake(gw.addr, Some("permessage-deflate")).await?;
    tcp.write_all(&frame(0xC1, &[0xff, 0xff, 0xff])).await?;
    let frames = read_frames(&mut tcp, |f| close_code(f).is_some()).await?;
    assert_eq!(close_code(&frames), Some(1007), "{frames:?}");
    let closed = lakewire::metrics::render(&gw.services.prometheus);
    assert!(
        closed.contains(r#"lakewire_ws_closed_total{reason="bad_deflate"} 1"#),
        "{closed}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_of_tail_and_the_tests_agrees_and_inflates() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let gw = common::start_ready(&config(&brokers, true), "t").await?;
    let req = format!("ws://{}/ws", gw.addr).into_client_request()?;
    let (mut ws, agreed) = lakewire::deflate::client::connect(req, None, true).await?;
    assert!(agreed);
    ws.send(Message::text(SUBSCRIBE)).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = false;
    while got < 20 && Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await else {
            break;
        };
        let text = msg?.into_text()?.to_string();
        if text.contains("\"subscribed\"") && !sent {
            for i in 0..20 {
                producer
                    .send(
                        FutureRecord::<(), _>::to("t").payload(&format!("{{\"n\":{i}}}")),
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
            }
            sent = true;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            got += v["records"].as_array().map_or(0, Vec::len);
        }
    }
    assert_eq!(got, 20);
    assert!(gw.services.metrics.ws_frames_compressed.get() >= 1);
    gw.stop().await;
    Ok(())
}
