//! `wsload wire`: bytes on the wire per record for the topics of a running gateway (e.g.
//! `lakewire demo`): one client per topic subscribes (`from: latest`, no filter) and reads for
//! N seconds; then records, frames, wire bytes and payload bytes (inflated, with `--deflate`)
//! and their ratios per record.
//!
//! Wire bytes are the WebSocket frames' bytes (headers and payloads as sent, compressed or not)
//! from the first frame after the `subscribed` reply on; the handshake and TCP/IP headers are
//! not counted. Payload bytes are the text messages' payloads (inflated). Records are counted by
//! parsing each `records` frame (the demo topics carry no load stamps).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::gateway;
use crate::inflate::{Data, Message, Scratch};
use crate::load::Protocol;
use crate::scan::{Kind, Scanner};
use crate::subscribe::{FilterMode, subscribe_request};
use crate::ws::{self, opcode};

/// A `ws://host:port/path` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `host:port` (port 80 when the URL has none).
    pub authority: String,
    pub path: String,
}

/// Splits a `ws://` URL (`wss://` is not supported by this client).
pub fn parse_url(url: &str) -> anyhow::Result<WsUrl> {
    let Some(rest) = url.strip_prefix("ws://") else {
        bail!("{url:?}: only ws:// URLs are supported");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    if authority.is_empty() {
        bail!("{url:?}: no host");
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(WsUrl {
        authority,
        path: path.to_string(),
    })
}

/// What one topic's client measured.
#[derive(Debug, Clone)]
pub struct WireOutcome {
    pub topic: String,
    pub secs: f64,
    /// What the server answered to the deflate offer (None: not offered).
    pub deflate: Option<String>,
    pub records: u64,
    /// Data messages (after the `subscribed` reply).
    pub messages: u64,
    pub wire_bytes: u64,
    pub payload_bytes: u64,
    /// Frames that were not `records` (lagged, errors).
    pub other: u64,
}

impl WireOutcome {
    fn per_record(&self, bytes: u64) -> Option<f64> {
        (self.records > 0).then(|| bytes as f64 / self.records as f64)
    }

    pub fn table_header() -> String {
        format!(
            "{:>20} {:>8} {:>8} {:>8} {:>11} {:>11} {:>10} {:>10} {:>7} {:>6}",
            "topic",
            "deflate",
            "records",
            "msgs",
            "wire B",
            "payload B",
            "wireB/rec",
            "plB/rec",
            "wire/pl",
            "other"
        )
    }

    pub fn table_row(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        let ratio =
            (self.payload_bytes > 0).then(|| self.wire_bytes as f64 / self.payload_bytes as f64);
        format!(
            "{:>20} {:>8} {:>8} {:>8} {:>11} {:>11} {:>10} {:>10} {:>7} {:>6}",
            self.topic,
            if self.deflate.is_some() { "on" } else { "off" },
            self.records,
            self.messages,
            self.wire_bytes,
            self.payload_bytes,
            f(self.per_record(self.wire_bytes), 1),
            f(self.per_record(self.payload_bytes), 1),
            f(ratio, 3),
            self.other
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let r1 = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
        serde_json::json!({
            "wsload": "wire",
            "topic": self.topic,
            "seconds": self.secs,
            "deflate": self.deflate.is_some(),
            "deflate_params": self.deflate,
            "records": self.records,
            "messages": self.messages,
            "wire_bytes": self.wire_bytes,
            "payload_bytes": self.payload_bytes,
            "wire_bytes_per_record": r1(self.per_record(self.wire_bytes)),
            "payload_bytes_per_record": r1(self.per_record(self.payload_bytes)),
            "wire_to_payload": (self.payload_bytes > 0)
                .then(|| (self.wire_bytes as f64 / self.payload_bytes as f64 * 1000.0).round() / 1000.0),
            "other_frames": self.other,
        })
    }
}

/// The topics the gateway at `addr` serves (`GET /api/topics`).
pub async fn topics(addr: SocketAddr) -> anyhow::Result<Vec<String>> {
    let (status, body) = gateway::http_get(addr, "/api/topics").await?;
    if status != 200 {
        bail!("GET /api/topics on {addr}: {status} (give --topic)");
    }
    let list: serde_json::Value =
        serde_json::from_str(&body).context("GET /api/topics: not JSON")?;
    let names: Vec<String> = list
        .as_array()
        .context("GET /api/topics: not a list")?
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    if names.is_empty() {
        bail!("GET /api/topics on {addr}: no topics");
    }
    Ok(names)
}

/// One client on `topic` for `secs` seconds after its subscription.
pub async fn measure(
    addr: SocketAddr,
    path: &str,
    topic: &str,
    secs: f64,
    deflate: bool,
) -> anyhow::Result<WireOutcome> {
    let conn = ws::connect(addr, path, None, deflate).await?;
    let mut inflating = match (deflate, conn.deflate) {
        (false, _) => None,
        (true, None) => bail!(
            "{topic}: the server did not accept permessage-deflate (offered {:?})",
            ws::DEFLATE_OFFER
        ),
        (true, Some(d)) => Some((d.describe(), Message::new(&d))),
    };
    let (mut sock, mut buf) = (conn.stream, conn.rest);
    let mut out = Vec::with_capacity(256);
    let req = subscribe_request(Protocol::Lakewire, topic, 0, 1, FilterMode::None);
    ws::write_frame(&mut out, opcode::TEXT, req.as_bytes());
    sock.write_all(&out).await?;
    let scanner = Scanner::default();
    let mut scratch = Scratch::default();
    let mut o = WireOutcome {
        topic: topic.to_string(),
        secs,
        deflate: inflating.as_ref().map(|(d, _)| d.clone()),
        records: 0,
        messages: 0,
        wire_bytes: 0,
        payload_bytes: 0,
        other: 0,
    };
    let subscribe_deadline = Instant::now() + Duration::from_secs(10);
    let mut end: Option<tokio::time::Instant> = None;
    loop {
        let mut at = 0;
        while let Some(h) = ws::parse_header(&buf[at..])? {
            if buf.len() - at < h.total_len() {
                break;
            }
            let (p0, p1) = (at + h.payload_start, at + h.total_len());
            if let Some(m) = h.mask {
                ws::unmask(&mut buf[p0..p1], m);
            }
            let payload = &buf[p0..p1];
            let counting = end.is_some();
            if counting {
                o.wire_bytes += h.total_len() as u64;
            }
            match h.opcode {
                opcode::TEXT | opcode::CONTINUATION => {
                    let data = match &mut inflating {
                        None if h.rsv1 => {
                            bail!("a frame with RSV1 set, but no permessage-deflate was agreed")
                        }
                        None => Data::Plain(payload),
                        Some((_, m)) => m.frame(&h, payload, &mut scratch)?,
                    };
                    let msg = match data {
                        Data::Plain(p) | Data::Inflated(p) => p,
                        Data::Partial => &[][..],
                    };
                    if !msg.is_empty() {
                        match scanner.kind(msg) {
                            Kind::Subscribed if !counting => {
                                end = Some(
                                    tokio::time::Instant::now() + Duration::from_secs_f64(secs),
                                );
                            }
                            Kind::Records if counting => {
                                o.messages += 1;
                                o.payload_bytes += msg.len() as u64;
                                let v: serde_json::Value = serde_json::from_slice(msg)
                                    .context("a records frame that is not JSON")?;
                                o.records += v["records"].as_array().map_or(0, |r| r.len() as u64);
                            }
                            Kind::Other if !counting => bail!(
                                "{topic}: subscribing failed: {}",
                                String::from_utf8_lossy(msg)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            ),
                            _ => {
                                if counting {
                                    o.messages += 1;
                                    o.payload_bytes += msg.len() as u64;
                                    o.other += 1;
                                }
                            }
                        }
                    }
                }
                opcode::PING => {
                    out.clear();
                    ws::write_frame(&mut out, opcode::PONG, payload);
                    sock.write_all(&out).await?;
                }
                opcode::CLOSE => bail!("{topic}: the server closed the connection"),
                _ => {}
            }
            at += h.total_len();
        }
        buf.drain(..at);
        if end.is_none() && Instant::now() > subscribe_deadline {
            bail!("{topic}: no `subscribed` reply within 10 s");
        }
        let until = end.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        buf.reserve(64 * 1024);
        match tokio::time::timeout_at(until, sock.read_buf(&mut buf)).await {
            Ok(Ok(0)) => bail!("{topic}: the connection closed"),
            Ok(r) => {
                r?;
            }
            Err(_) if end.is_some() => return Ok(o),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ws_urls() -> anyhow::Result<()> {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/ws")?,
            WsUrl {
                authority: "127.0.0.1:8080".into(),
                path: "/ws".into()
            }
        );
        assert_eq!(parse_url("ws://localhost")?.authority, "localhost:80");
        assert_eq!(parse_url("ws://localhost")?.path, "/ws");
        assert_eq!(parse_url("ws://[::1]:9000/x/y")?.authority, "[::1]:9000");
        assert_eq!(parse_url("ws://[::1]/x")?.authority, "[::1]:80");
        assert!(parse_url("wss://h/ws").is_err());
        assert!(parse_url("http://h/ws").is_err());
        Ok(())
    }
}
