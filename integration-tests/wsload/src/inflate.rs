//! permessage-deflate (RFC 7692) on the receiving side: a message whose first frame has RSV1
//! set is raw DEFLATE data, ended by a sync flush whose last four bytes (`00 00 ff ff`) the
//! server strips (§7.2.1); the receiver appends them again and inflates (§7.2.2).
//!
//! Inflating needs a 32 KiB window. A server that says `server_no_context_takeover` (Lakewire
//! does) resets its compressor after every message, so every message inflates alone: one
//! [`Scratch`] per thread serves all its connections, reset before each message. A server that
//! does not say it (context takeover) refers back to earlier messages, so each such connection
//! keeps its own inflater ([`Message::new`] makes it), never reset.
//!
//! A compressed message in one frame is inflated straight from the read buffer; the frames of a
//! fragmented one are gathered (still compressed) in the connection's [`Message`] until the
//! last, then inflated: the scanner always sees a whole message.

use anyhow::{Context as _, bail};
use flate2::{Decompress, FlushDecompress, Status};

use crate::ws::{Deflate, FrameHeader, opcode};

/// What the server strips from the end of each compressed message (§7.2.1).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest message this client inflates (a bound against a runaway stream).
pub const MAX_MESSAGE: usize = 64 << 20;

/// The per-thread inflater and output buffer.
pub struct Scratch {
    decompress: Decompress,
    out: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            decompress: Decompress::new(false),
            out: Vec::with_capacity(64 * 1024),
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// A data frame's payload as the scanner should see it.
#[derive(Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// Not compressed: the payload itself (an uncompressed fragment is scanned on its own, as
    /// without deflate).
    Plain(&'a [u8]),
    /// The last frame of a compressed message: the whole message, inflated.
    Inflated(&'a [u8]),
    /// A frame of a compressed message that is not its last: nothing yet.
    Partial,
}

/// One connection's receiving side of permessage-deflate.
pub struct Message {
    /// The connection's own inflater when the server keeps its context across messages.
    takeover: Option<Box<Decompress>>,
    /// The compressed frames so far of a fragmented compressed message.
    pending: Vec<u8>,
    /// Inside a fragmented message whose first frame had RSV1.
    compressed: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("takeover", &self.takeover.is_some())
            .field("pending", &self.pending.len())
            .field("compressed", &self.compressed)
            .finish()
    }
}

impl Message {
    /// The state for a connection on which the server accepted `deflate`.
    pub fn new(deflate: &Deflate) -> Self {
        Self {
            takeover: (!deflate.server_no_context_takeover)
                .then(|| Box::new(Decompress::new(false))),
            pending: Vec::new(),
            compressed: false,
        }
    }

    /// Whether this connection keeps its own inflater (context takeover).
    pub fn keeps_context(&self) -> bool {
        self.takeover.is_some()
    }

    /// One data frame (text, binary or continuation; its payload unmasked) of the connection.
    pub fn frame<'a>(
        &'a mut self,
        h: &FrameHeader,
        payload: &'a [u8],
        scratch: &'a mut Scratch,
    ) -> anyhow::Result<Data<'a>> {
        let first = h.opcode != opcode::CONTINUATION;
        if first {
            if self.compressed {
                bail!("a new data frame inside a fragmented compressed message");
            }
            if !h.rsv1 {
                return Ok(Data::Plain(payload));
            }
        } else if h.rsv1 {
            bail!("RSV1 on a continuation frame");
        } else if !self.compressed {
            return Ok(Data::Plain(payload));
        }
        if !h.fin {
            if self.pending.len() + payload.len() > MAX_MESSAGE {
                bail!("a compressed message of more than {MAX_MESSAGE} bytes");
            }
            self.pending.extend_from_slice(payload);
            self.compressed = true;
            return Ok(Data::Partial);
        }
        let input: &[u8] = if self.compressed {
            self.pending.extend_from_slice(payload);
            &self.pending
        } else {
            payload
        };
        self.compressed = false;
        let Scratch { decompress, out } = scratch;
        out.clear();
        let d: &mut Decompress = match &mut self.takeover {
            Some(own) => own,
            None => {
                decompress.reset(false);
                decompress
            }
        };
        let r = inflate_into(d, input, out).and_then(|()| inflate_into(d, &TAIL, out));
        self.pending.clear();
        r?;
        Ok(Data::Inflated(out))
    }
}

/// Inflates all of `input` with `d` into `out` (appended), growing `out` as needed.
fn inflate_into(d: &mut Decompress, mut input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    loop {
        if out.capacity() - out.len() < 1024 {
            if out.len() >= MAX_MESSAGE {
                bail!("a message that inflates to more than {MAX_MESSAGE} bytes");
            }
            out.reserve((input.len() * 4).max(16 * 1024));
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .context("inflating a permessage-deflate message")?;
        let used = (d.total_in() - in0) as usize;
        let made = d.total_out() - out0;
        input = &input[used..];
        let room = out.len() < out.capacity();
        match status {
            // A final block: the stream is over (a server may end a message so, §7.2.3.2 of
            // RFC 7692 allows it); what follows would start a new one.
            Status::StreamEnd => {
                d.reset(false);
                if input.is_empty() || input == TAIL {
                    return Ok(());
                }
            }
            Status::Ok | Status::BufError => {
                if input.is_empty() && room {
                    return Ok(());
                }
                if used == 0 && made == 0 && room {
                    bail!("inflating a permessage-deflate message made no progress");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;
    use crate::scan::Scanner;

    /// What a server sends for `msg`: raw deflate, sync flush, the 4-byte tail stripped.
    fn compress(c: &mut Compress, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(msg.len() + 1024);
        let before = c.total_in();
        while ((c.total_in() - before) as usize) < msg.len() || out.is_empty() {
            let at = (c.total_in() - before) as usize;
            out.reserve(1024);
            c.compress_vec(&msg[at..], &mut out, FlushCompress::Sync)?;
        }
        let Some(body) = out.strip_suffix(&TAIL) else {
            anyhow::bail!("a sync flush ends with 00 00 ff ff");
        };
        Ok(body.to_vec())
    }

    /// A server frame (not masked) with the given first byte.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Parses every frame of `wire` through `m`; the stamps of each whole message.
    fn receive(m: &mut Message, scratch: &mut Scratch, wire: &[u8]) -> anyhow::Result<Vec<u64>> {
        let scanner = Scanner::default();
        let mut stamps = Vec::new();
        let mut at = 0;
        while let Some(h) = crate::ws::parse_header(&wire[at..])? {
            let payload = &wire[at + h.payload_start..at + h.total_len()];
            match m.frame(&h, payload, scratch)? {
                Data::Plain(p) | Data::Inflated(p) => scanner.stamps(p, |t| stamps.push(t)),
                Data::Partial => {}
            }
            at += h.total_len();
        }
        assert_eq!(at, wire.len());
        Ok(stamps)
    }

    fn records(stamps: &[u64]) -> String {
        let recs: Vec<String> = stamps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    r#"{{"partition":0,"offset":{i},"timestamp":5,"key":null,"value":{{"lw_t":{t},"n":{i},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"type":"records","id":"s","records":[{}]}}"#,
            recs.join(",")
        )
    }

    const NO_TAKEOVER: Deflate = Deflate {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: None,
        client_max_window_bits: None,
    };

    #[test]
    fn inflates_a_compressed_message_and_scans_it() -> anyhow::Result<()> {
        let stamps = [
            1_732_690_000_000_123,
            1_732_690_000_000_456,
            1_732_690_000_000_789,
        ];
        let msg = records(&stamps);
        let mut c = Compress::new(Compression::default(), false);
        let body = compress(&mut c, msg.as_bytes())?;
        assert!(body.len() < msg.len(), "{} vs {}", body.len(), msg.len());
        let mut m = Message::new(&NO_TAKEOVER);
        assert!(!m.keeps_context());
        let mut scratch = Scratch::default();
        // FIN + RSV1 + text.
        let wire = frame(0xC1, &body);
        assert_eq!(receive(&mut m, &mut scratch, &wire)?, stamps);
        // Exactly the bytes the server compressed.
        let h = crate::ws::parse_header(&wire)?.context("header")?;
        let Data::Inflated(out) = m.frame(&h, &wire[h.payload_start..], &mut scratch)? else {
            anyhow::bail!("not inflated");
        };
        assert_eq!(out, msg.as_bytes());
        // The next message inflates alone (the server reset its compressor), through the same
        // scratch; an uncompressed one passes as it is.
        let mut c = Compress::new(Compression::default(), false);
        let second = records(&[7, 8]);
        let wire = [
            frame(0xC1, &compress(&mut c, second.as_bytes())?),
            frame(0x81, records(&[9]).as_bytes()),
        ]
        .concat();
        assert_eq!(receive(&mut m, &mut scratch, &wire)?, vec![7, 8, 9]);
        Ok(())
    }

    #[test]
    fn inflates_a_fragmented_compressed_message() -> anyhow::Result<()> {
        let stamps: Vec<u64> = (0..40).map(|i| 1_732_690_000_000_000 + i).collect();
        let msg = records(&stamps);
        let mut c = Compress::new(Compression::default(), false);
        let body = compress(&mut c, msg.as_bytes())?;
        let (a, b) = body.split_at(body.len() / 3);
        let (b, c2) = b.split_at(b.len() / 2);
        let mut m = Message::new(&NO_TAKEOVER);
        let mut scratch = Scratch::default();
        // First frame: RSV1, not FIN (nothing to scan yet); continuations, the last with FIN.
        let first = frame(0x41, a);
        let h = crate::ws::parse_header(&first)?.context("header")?;
        assert_eq!(
            m.frame(&h, &first[h.payload_start..], &mut scratch)?,
            Data::Partial
        );
        let wire = [frame(0x00, b), frame(0x80, c2)].concat();
        assert_eq!(receive(&mut m, &mut scratch, &wire)?, stamps);
        // In two frames, the scanner sees it whole too.
        let (a, b) = body.split_at(body.len() / 2);
        let wire = [frame(0x41, a), frame(0x80, b)].concat();
        assert_eq!(receive(&mut m, &mut scratch, &wire)?, stamps);
        // RSV1 on a continuation is a protocol error.
        let wire = [frame(0x41, a), frame(0xC0, b)].concat();
        assert!(receive(&mut m, &mut scratch, &wire).is_err());
        Ok(())
    }

    #[test]
    fn keeps_the_context_when_the_server_does() -> anyhow::Result<()> {
        let takeover = Deflate::default();
        let mut m = Message::new(&takeover);
        assert!(m.keeps_context());
        let mut scratch = Scratch::default();
        let mut c = Compress::new(Compression::default(), false);
        let one = records(&[11, 12, 13]);
        let two = records(&[14, 15, 16]);
        let b1 = compress(&mut c, one.as_bytes())?;
        // Not reset: the second message refers back to the first (so it is much smaller).
        let b2 = compress(&mut c, two.as_bytes())?;
        assert!(b2.len() < b1.len() / 2, "{} vs {}", b2.len(), b1.len());
        let wire = [frame(0xC1, &b1), frame(0xC1, &b2)].concat();
        assert_eq!(
            receive(&mut m, &mut scratch, &wire)?,
            vec![11, 12, 13, 14, 15, 16]
        );
        // The exact bytes of the second message.
        let h = crate::ws::parse_header(&wire)?.context("header")?;
        let m2 = &wire[h.total_len()..];
        let mut fresh = Message::new(&takeover);
        let mut c = Compress::new(Compression::default(), false);
        let w1 = frame(0xC1, &compress(&mut c, one.as_bytes())?);
        let h1 = crate::ws::parse_header(&w1)?.context("header")?;
        fresh.frame(&h1, &w1[h1.payload_start..], &mut scratch)?;
        let h2 = crate::ws::parse_header(m2)?.context("header")?;
        let Data::Inflated(out) = fresh.frame(&h2, &m2[h2.payload_start..], &mut scratch)? else {
            anyhow::bail!("not inflated");
        };
        assert_eq!(out, two.as_bytes());
        // The same second message with a reset inflater (no context) does not decode to it.
        let mut reset = Message::new(&NO_TAKEOVER);
        let r = reset.frame(&h2, &m2[h2.payload_start..], &mut scratch);
        assert!(!matches!(r, Ok(Data::Inflated(o)) if o == two.as_bytes()));
        Ok(())
    }
}
