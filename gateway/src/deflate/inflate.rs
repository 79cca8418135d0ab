//! Compressed frames from the peer, inflated below tungstenite: [`Inflating`] sits between the
//! socket and the WebSocket, passes every frame through as it came except those of compressed
//! messages (RSV1 on the first frame), which it hands on inflated, as frames of at most
//! [`CHUNK`] bytes with RSV1 clear. tungstenite then applies every RFC 6455 rule and limit to
//! what the peer meant: UTF-8, fragmentation, control frames, and the message size limit on the
//! inflated size. A message that inflates past the limit is cut there: the adapter announces a
//! frame one byte over the limit, which tungstenite refuses (1009) before reading it, so a
//! deflate bomb costs at most the limit in memory and in inflating.

use std::io;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::SYNC_TAIL;

/// Inflated bytes handed on per frame at most (and no more than the limit).
const CHUNK: usize = 16 * 1024;

/// Bytes read from the socket at a time.
const READ: usize = 4 * 1024;

/// The peer's compressed data did not inflate (RFC 7692 §6.2: fail the connection; 1007).
#[derive(Debug, thiserror::Error)]
#[error("the peer's compressed message does not inflate: {0}")]
pub struct BadDeflate(String);

/// Where the adapter is in the peer's byte stream.
#[derive(Debug, Clone, Copy)]
enum At {
    /// At a frame header (or inside one not yet complete).
    Header,
    /// Inside the payload of a frame that passes as is: this many bytes left.
    Pass(u64),
    /// Inside the payload of a compressed message's frame.
    Compressed {
        left: u64,
        mask: Option<[u8; 4]>,
        /// Payload bytes of this frame already taken (where the mask is).
        taken: u64,
        fin: bool,
    },
    /// The message went over the limit: tungstenite was told, nothing more is read.
    Cut,
}

/// A compressed message being inflated.
struct Message {
    inflater: Decompress,
    /// The opcode of its first frame, until that frame is handed on.
    opcode: Option<OpCode>,
    /// Whether the peer masks its frames (a client does): the frames handed on are masked the
    /// same way, with a zero mask, as tungstenite checks.
    masked: bool,
    /// Inflated so far, over all its frames.
    total: usize,
    /// Inflated and not yet handed on.
    pending: Vec<u8>,
    /// The peer ended the deflate stream (a final block); anything after it is ignored.
    ended: bool,
}

/// Inflates the peer's compressed messages (see the module doc). Off, it is the bare socket.
pub struct Inflating<S> {
    inner: S,
    on: bool,
    /// The message size limit (tungstenite's `max_message_size`).
    limit: usize,
    at: At,
    message: Option<Box<Message>>,
    /// Read from the socket, not yet taken (empty, unallocated, while idle).
    input: Vec<u8>,
    input_at: usize,
    /// Ready for tungstenite (empty, unallocated, while idle).
    out: Vec<u8>,
    out_at: usize,
}

impl<S> Inflating<S> {
    /// The adapter over `inner`, on when deflate was agreed; `limit` is the largest message
    /// (inflated) the WebSocket takes.
    pub fn new(inner: S, on: bool, limit: usize) -> Self {
        Self {
            inner,
            on,
            limit,
            at: At::Header,
            message: None,
            input: Vec::new(),
            input_at: 0,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Turns inflating on (a client, once its handshake agreed deflate).
    pub fn enable(&mut self) {
        self.on = true;
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Takes what it can of the buffered input, appending to `out`; stops when it needs more
    /// input, or when `out` holds a chunk (tungstenite takes it before more is inflated).
    fn process(&mut self) -> io::Result<()> {
        while self.input_at < self.input.len() && self.out.len() - self.out_at < CHUNK {
            let avail = &self.input[self.input_at..];
            match self.at {
                At::Cut => {
                    self.input_at = self.input.len();
                }
                At::Header => {
                    let mut cursor = Cursor::new(avail);
                    let (header, len) = match FrameHeader::parse(&mut cursor) {
                        Ok(Some(parsed)) => parsed,
                        Ok(None) => return Ok(()),
                        // A header tungstenite refuses too (a reserved opcode): it gets the
                        // bytes as they are, and fails the connection with its own error.
                        Err(_) => {
                            self.out.extend_from_slice(avail);
                            self.input_at = self.input.len();
                            self.on = false;
                            return Ok(());
                        }
                    };
                    let header_len = usize::try_from(cursor.position()).unwrap_or(avail.len());
                    let clean = !header.rsv2 && !header.rsv3;
                    let starts = clean
                        && header.rsv1
                        && self.message.is_none()
                        && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
                    let continues = clean
                        && !header.rsv1
                        && self.message.is_some()
                        && header.opcode == OpCode::Data(Data::Continue);
                    if starts {
                        self.message = Some(Box::new(Message {
                            inflater: Decompress::new(false),
                            opcode: Some(header.opcode),
                            masked: header.mask.is_some(),
                            total: 0,
                            pending: Vec::new(),
                            ended: false,
                        }));
                    }
                    if starts || continues {
                        self.at = At::Compressed {
                            left: len,
                            mask: header.mask,
                            taken: 0,
                            fin: header.is_final,
                        };
                    } else {
                        // Control frames, uncompressed messages, and what tungstenite refuses
                        // (reserved bits, RSV1 on a control or continuation frame, a new
                        // message inside a fragmented one) pass as they are.
                        if matches!(header.opcode, OpCode::Data(_)) {
                            self.message = None;
                        }
                        self.out.extend_from_slice(&avail[..header_len]);
                        self.at = At::Pass(len);
                    }
                    self.input_at += header_len;
                    self.end_of_frame()?;
                }
                At::Pass(left) => {
                    let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.out.extend_from_slice(&avail[..n]);
                    self.input_at += n;
                    self.at = At::Pass(left - n as u64);
                    self.end_of_frame()?;
                }
                At::Compressed {
                    left,
                    mask,
                    taken,
                    fin,
                } => {
                    let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let mut data = avail[..n].to_vec();
                    if let Some(mask) = mask {
                        for (i, b) in data.iter_mut().enumerate() {
                            *b ^= mask[(taken as usize + i) % 4];
                        }
                    }
                    let (used, _) = self.inflate(&data)?;
                    self.input_at += used;
                    self.at = match self.at {
                        At::Cut => At::Cut,
                        _ => At::Compressed {
                            left: left - used as u64,
                            mask,
                            taken: taken + used as u64,
                            fin,
                        },
                    };
                    self.end_of_frame()?;
                }
            }
        }
        Ok(())
    }

    /// Inflates from `data` into the message's pending bytes, up to a chunk, and hands a full
    /// chunk on. Returns how much of `data` it took and how many bytes came out.
    fn inflate(&mut self, data: &[u8]) -> io::Result<(usize, usize)> {
        let limit = self.limit;
        let Some(msg) = self.message.as_mut() else {
            return Ok((data.len(), 0));
        };
        if msg.ended {
            return Ok((data.len(), 0));
        }
        // decompress_vec writes into the spare capacity only: that is the bound.
        let room = CHUNK.min(limit.max(1));
        if msg.pending.capacity() < room {
            msg.pending.reserve_exact(room - msg.pending.len());
        }
        let before_in = msg.inflater.total_in();
        let before_out = msg.inflater.total_out();
        let status = msg
            .inflater
            .decompress_vec(data, &mut msg.pending, FlushDecompress::None);
        let used = usize::try_from(msg.inflater.total_in() - before_in).unwrap_or(data.len());
        let produced = usize::try_from(msg.inflater.total_out() - before_out).unwrap_or(0);
        msg.total = msg.total.saturating_add(produced);
        match status {
            Ok(Status::StreamEnd) => msg.ended = true,
            Ok(Status::Ok | Status::BufError) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    BadDeflate(e.to_string()),
                ));
            }
        }
        if msg.total > limit {
            self.cut();
            return Ok((data.len(), produced));
        }
        if msg.pending.len() >= room {
            self.hand_on(false);
        } else if used == 0 && produced == 0 && !data.is_empty() && !msg.ended {
            // Room to write and input to read, and the inflater took none of it.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BadDeflate("the inflater made no progress".into()),
            ));
        }
        Ok((used, produced))
    }

    /// At the end of a frame's payload: back to reading headers; at the end of a compressed
    /// message, the rest inflated and handed on as the final frame.
    fn end_of_frame(&mut self) -> io::Result<()> {
        match self.at {
            At::Pass(0) => self.at = At::Header,
            At::Compressed { left: 0, fin, .. } => {
                self.at = At::Header;
                if fin {
                    // RFC 7692 §7.2.2: the tail the sender dropped, added back; then whatever
                    // the inflater still holds.
                    let mut fed = 0;
                    loop {
                        let (used, produced) = self.inflate(&SYNC_TAIL[fed..])?;
                        if matches!(self.at, At::Cut) {
                            return Ok(());
                        }
                        fed += used;
                        if produced == 0 && (fed == SYNC_TAIL.len() || used == 0) {
                            break;
                        }
                    }
                    self.hand_on(true);
                    self.message = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Hands the pending inflated bytes on as one frame.
    fn hand_on(&mut self, fin: bool) {
        let Some(msg) = self.message.as_mut() else {
            return;
        };
        let header = FrameHeader {
            is_final: fin,
            opcode: msg.opcode.take().unwrap_or(OpCode::Data(Data::Continue)),
            mask: msg.masked.then_some([0; 4]),
            ..FrameHeader::default()
        };
        // Formatting into a vector cannot fail.
        let _ = header.format(msg.pending.len() as u64, &mut self.out);
        self.out.extend_from_slice(&msg.pending);
        msg.pending = Vec::new();
    }

    /// The message went over the limit: tungstenite is shown a frame one byte longer than it
    /// takes, and refuses it; nothing more is inflated or read.
    fn cut(&mut self) {
        let Some(msg) = self.message.take() else {
            return;
        };
        let header = FrameHeader {
            is_final: false,
            opcode: msg.opcode.unwrap_or(OpCode::Data(Data::Continue)),
            mask: msg.masked.then_some([0; 4]),
            ..FrameHeader::default()
        };
        let _ = header.format(self.limit as u64 + 1, &mut self.out);
        self.at = At::Cut;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.on && this.out_at == this.out.len() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    // Nothing kept while idle.
                    this.out = Vec::new();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !this.on {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if matches!(this.at, At::Cut) {
                // tungstenite has failed the connection; the rest is not read.
                return Poll::Ready(Ok(()));
            }
            if this.input_at < this.input.len() {
                this.process()?;
                if this.out_at < this.out.len() {
                    continue;
                }
            }
            // Everything buffered is taken (or an incomplete header waits for more).
            if this.input_at == this.input.len() {
                this.input = Vec::new();
                this.input_at = 0;
            } else if this.input_at > 0 {
                this.input.drain(..this.input_at);
                this.input_at = 0;
            }
            let mut block = [0u8; READ];
            let mut read = ReadBuf::new(&mut block);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        // End of stream: tungstenite sees it and knows whether a frame was cut.
                        return Poll::Ready(Ok(()));
                    }
                    this.input.extend_from_slice(read.filled());
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
