//! RFC 6455 §7.4 as a client would break it, with raw frames on a real socket: protocol
//! errors are answered with close 1002, invalid UTF-8 with 1007, an oversize message (also in
//! fragments) with 1009, and pings count against the message-rate limit (1008). The gateway runs in this process on librdkafka's mock cluster.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod common;

/// A client frame: FIN/RSV/opcode byte, then the payload masked with a fixed key (or not).
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Opens a WebSocket, writes `bytes` raw, and returns the code of the close frame the server
/// sends back (`None`: the connection ended without one, or none came within 5 s).
async fn close_code_for(addr: std::net::SocketAddr, bytes: &[u8]) -> anyhow::Result<Option<u16>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    let mut tcp = ws.into_inner();
    tcp.write_all(bytes).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            // A close frame from the server: 0x88, length, code.
            if let Some(i) = got.windows(1).position(|w| w[0] == 0x88) {
                if got.len() >= i + 4 {
                    break;
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return Ok(None);
    }
    Ok(got
        .windows(4)
        .find(|w| w[0] == 0x88 && w[1] >= 2)
        .map(|w| u16::from_be_bytes([w[2], w[3]])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_get_the_close_codes_of_rfc_6455() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n[websocket]\nlisten = \"127.0.0.1:0\"\nmax_frame_bytes = 1024\n",
        cluster.bootstrap_servers()
    );
    let running = common::start_ready(&toml, "t").await?;
    let addr = running.addr;
    let text = |p: &[u8]| frame(0x81, p, true);
    let mut cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", frame(0x81, b"{}", false), 1002),
        ("RSV1 without an extension", frame(0xC1, b"{}", true), 1002),
        ("reserved data opcode", frame(0x83, b"{}", true), 1002),
        ("reserved control opcode", frame(0x8B, b"", true), 1002),
        ("ping over 125 bytes", frame(0x89, &[b'p'; 126], true), 1002),
        ("fragmented ping", frame(0x09, b"p", true), 1002),
        ("lone continuation", frame(0x80, b"{}", true), 1002),
        (
            "new text frame inside a fragmented message",
            [frame(0x01, b"{", true), text(b"{}")].concat(),
            1002,
        ),
        ("invalid UTF-8 text", text(&[0x7b, 0xff, 0x7d]), 1007),
        (
            "invalid UTF-8 split across fragments",
            [
                frame(0x01, &[0x7b, 0xe2], true),
                frame(0x80, &[0x28, 0x7d], true),
            ]
            .concat(),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason",
            frame(0x88, &[0x03, 0xe8, 0xff, 0xfe], true),
            1007,
        ),
        ("oversize message in one frame", text(&[b' '; 2000]), 1009),
        (
            "oversize message in fragments",
            [
                frame(0x01, &[b' '; 600], true),
                frame(0x00, &[b' '; 600], true),
                frame(0x80, b"{}", true),
            ]
            .concat(),
            1009,
        ),
    ];
    cases.push((
        "pings over websocket.max_messages_per_second (50)",
        (0..60).flat_map(|_| frame(0x89, b"", true)).collect(),
        1008,
    ));
    let mut wrong = Vec::new();
    for (what, bytes, want) in &cases {
        let got = close_code_for(addr, bytes).await?;
        if got != Some(*want) {
            wrong.push(format!("{what}: expected {want}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}
