//! A minimal WebSocket client (RFC 6455) for the load: handshake, masked text frames out, and an
//! in-place frame parser for what the server sends. No allocation per received message: frames
//! are parsed straight from the connection's read buffer, which is what lets one thread drive
//! thousands of connections.
//!
//! With `deflate` the handshake offers permessage-deflate (RFC 7692) as browsers do
//! ([`DEFLATE_OFFER`]) and returns what the server accepted ([`Deflate`]); the messages it then
//! compresses (RSV1 on their first frame) are inflated by [`crate::inflate`].

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// WebSocket opcodes the client handles.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of its message.
    pub fin: bool,
    /// RSV1: on the first frame of a message, the message is compressed (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    /// Where the payload starts in the buffer.
    pub payload_start: usize,
    /// Payload length.
    pub payload_len: usize,
    /// The 4-byte mask, when the frame is masked (servers do not mask).
    pub mask: Option<[u8; 4]>,
}

impl FrameHeader {
    /// Bytes of the whole frame, header included.
    pub fn total_len(&self) -> usize {
        self.payload_start + self.payload_len
    }
}

/// Parses the frame header at the start of `buf`; `Ok(None)` when more bytes are needed for it.
pub fn parse_header(buf: &[u8]) -> anyhow::Result<Option<FrameHeader>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let len7 = (buf[1] & 0x7F) as usize;
    let (len, mut at) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len > (1 << 31) {
                bail!("frame of {len} bytes: larger than this client accepts");
            }
            (len as usize, 10)
        }
        n => (n, 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin: buf[0] & 0x80 != 0,
        rsv1: buf[0] & 0x40 != 0,
        opcode,
        payload_start: at,
        payload_len: len,
        mask,
    }))
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    // The mask only has to be unpredictable to defeat cache poisoning through proxies; on
    // loopback to our own gateway a fixed one is fine.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// Unmasks a masked payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The extension offer of a client with `deflate`: what browsers send.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// permessage-deflate as the server accepted it (its `Sec-WebSocket-Extensions` response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deflate {
    /// The server resets its compressor after every message: each message inflates alone.
    pub server_no_context_takeover: bool,
    /// The client must not keep its compressor's context (this client never compresses).
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window, when it said (8..=15; a 15-bit inflater reads any of them).
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: Option<u8>,
}

impl Deflate {
    /// The parameters as the server wrote them, for reports.
    pub fn describe(&self) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(b) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={b}"));
        }
        if let Some(b) = self.client_max_window_bits {
            s.push_str(&format!("; client_max_window_bits={b}"));
        }
        s
    }
}

/// The permessage-deflate the server accepted, from the header lines of its handshake response
/// (`head`, status line and headers): `None` when it answered no `Sec-WebSocket-Extensions`
/// with `permessage-deflate`. An extension this client did not offer, or a parameter RFC 7692
/// does not define, is an error (the client must fail the connection, §5).
pub fn accepted_deflate(head: &str) -> anyhow::Result<Option<Deflate>> {
    let mut found = None;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("sec-websocket-extensions") {
            continue;
        }
        for ext in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut params = ext.split(';').map(str::trim);
            let name = params.next().unwrap_or_default();
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                bail!("the server accepted an extension that was not offered: {ext:?}");
            }
            if found.is_some() {
                bail!("the server accepted permessage-deflate twice: {value:?}");
            }
            let mut d = Deflate::default();
            for p in params.filter(|p| !p.is_empty()) {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                };
                let bits = |v: Option<&str>| -> anyhow::Result<Option<u8>> {
                    v.map(|v| match v.parse::<u8>() {
                        Ok(b @ 8..=15) => Ok(b),
                        _ => Err(anyhow::anyhow!("bad window bits {v:?} in {ext:?}")),
                    })
                    .transpose()
                };
                match k.to_ascii_lowercase().as_str() {
                    "server_no_context_takeover" => d.server_no_context_takeover = true,
                    "client_no_context_takeover" => d.client_no_context_takeover = true,
                    "server_max_window_bits" => {
                        d.server_max_window_bits =
                            Some(bits(v)?.context("server_max_window_bits without a value")?);
                    }
                    "client_max_window_bits" => d.client_max_window_bits = bits(v)?,
                    _ => bail!("unknown permessage-deflate parameter {p:?} in {ext:?}"),
                }
            }
            found = Some(d);
        }
    }
    Ok(found)
}

/// An open connection, past its handshake.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// The bytes read past the handshake response (the start of the first frames, if any).
    pub rest: Vec<u8>,
    /// The permessage-deflate the server accepted (only when it was offered).
    pub deflate: Option<Deflate>,
}

/// Opens `ws://addr{path}`: connects (from `local`, when given: a loopback address other than
/// 127.0.0.1 gives another 28 k source ports) and completes the upgrade, offering
/// permessage-deflate ([`DEFLATE_OFFER`]) when `deflate`.
pub async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    local: Option<std::net::IpAddr>,
    deflate: bool,
) -> anyhow::Result<Connected> {
    let mut s = match local {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
            sock.connect(addr).await
        }
    }
    .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let ext = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() > 16 * 1024 {
            bail!("handshake response larger than 16 KiB");
        }
        let n = s.read_buf(&mut buf).await?;
        if n == 0 {
            bail!("connection closed during the WebSocket handshake");
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            if !head.starts_with("HTTP/1.1 101") {
                bail!(
                    "upgrade refused: {}",
                    head.lines().next().unwrap_or_default()
                );
            }
            let accepted = accepted_deflate(&head)?;
            if accepted.is_some() && !deflate {
                bail!("the server accepted permessage-deflate, which was not offered");
            }
            return Ok(Connected {
                stream: s,
                rest: buf.split_off(end + 4),
                deflate: accepted,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_medium_and_long_lengths() -> anyhow::Result<()> {
        let h = parse_header(&[0x81, 5, b'h', b'e'])?;
        assert_eq!(
            h,
            Some(FrameHeader {
                fin: true,
                rsv1: false,
                opcode: opcode::TEXT,
                payload_start: 2,
                payload_len: 5,
                mask: None
            })
        );
        assert_eq!(parse_header(&[0x81, 126, 1])?, None);
        let h = parse_header(&[0x81, 126, 1, 0])?.map(|h| (h.payload_start, h.payload_len));
        assert_eq!(h, Some((4, 256)));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        let h = parse_header(&long)?.map(|h| (h.opcode, h.payload_start, h.payload_len));
        assert_eq!(h, Some((opcode::BINARY, 10, 70_000)));
        assert_eq!(parse_header(&[0x89])?, None);
        // A compressed message's first frame (RSV1), not final; its continuation, final.
        let h = parse_header(&[0x41, 3])?.map(|h| (h.fin, h.rsv1, h.opcode));
        assert_eq!(h, Some((false, true, opcode::TEXT)));
        let h = parse_header(&[0x80, 3])?.map(|h| (h.fin, h.rsv1, h.opcode));
        assert_eq!(h, Some((true, false, opcode::CONTINUATION)));
        Ok(())
    }

    #[test]
    fn reads_the_accepted_deflate_parameters() -> anyhow::Result<()> {
        let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                    client_no_context_takeover\r\nConnection: Upgrade";
        let d = accepted_deflate(head)?;
        assert_eq!(
            d,
            Some(Deflate {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: None,
                client_max_window_bits: None,
            })
        );
        let head = "HTTP/1.1 101 x\r\nSec-WebSocket-Extensions: permessage-deflate; \
                    server_max_window_bits=\"10\"; client_max_window_bits=12";
        let Some(d) = accepted_deflate(head)? else {
            anyhow::bail!("deflate not read");
        };
        assert!(!d.server_no_context_takeover);
        assert_eq!(
            (d.server_max_window_bits, d.client_max_window_bits),
            (Some(10), Some(12))
        );
        assert_eq!(
            accepted_deflate("HTTP/1.1 101 x\r\nUpgrade: websocket")?,
            None
        );
        for bad in [
            "HTTP/1.1 101 x\r\nSec-WebSocket-Extensions: x-webkit-deflate-frame",
            "HTTP/1.1 101 x\r\nSec-WebSocket-Extensions: permessage-deflate; foo",
            "HTTP/1.1 101 x\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=20",
            "HTTP/1.1 101 x\r\nSec-WebSocket-Extensions: permessage-deflate, permessage-deflate",
        ] {
            assert!(accepted_deflate(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn written_frames_parse_back_and_unmask() -> anyhow::Result<()> {
        for len in [0usize, 10, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            write_frame(&mut out, opcode::TEXT, &payload);
            let Some(h) = parse_header(&out)? else {
                anyhow::bail!("no header for {len}");
            };
            assert_eq!(
                (h.opcode, h.payload_len, h.total_len()),
                (1, len, out.len())
            );
            let Some(mask) = h.mask else {
                anyhow::bail!("client frames must be masked");
            };
            let body = &mut out[h.payload_start..];
            unmask(body, mask);
            assert_eq!(body, &payload[..]);
        }
        Ok(())
    }
}
