//! Closing a session: the close codes the gateway sends, and the close handshake. Input: the
//! ended session's socket and reader; output: its close frame delivered (or given up on) and the
//! client's frames drained until its own close frame.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::FrameReader;

/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the WebSocket protocol (an unmasked frame, RSV bits, a reserved
/// opcode, a bad control or continuation frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message or close reason that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// A client frame was larger than `websocket.max_frame_bytes`.
pub const TOO_BIG: u16 = 1009;
/// The client sent more messages per second than `websocket.max_messages_per_second`.
pub const POLICY: u16 = 1008;
/// The connection's token expired and was not renewed with `{"op":"auth"}`.
pub const TOKEN_EXPIRED: u16 = 4001;
/// The client read too slowly and the policy is `disconnect`.
pub const SLOW_CONSUMER: u16 = 4008;

/// How long a close waits without progress: for its close frame to go out (no byte taken by the
/// socket for this long), then for the client's close frame.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// Bytes the socket under a WebSocket has taken (see [`CountWrites`]): how a close tells a slow
/// client still reading from one that is gone.
#[derive(Debug, Clone, Default)]
pub struct Written(Arc<AtomicU64>);

impl Written {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A byte stream that counts in [`Written`] the bytes written through it.
#[derive(Debug)]
pub struct CountWrites<T> {
    inner: T,
    written: Written,
}

impl<T> CountWrites<T> {
    pub fn new(inner: T, written: Written) -> Self {
        Self { inner, written }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.0.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.0.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How a close handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// The close frame went out (and the client's came back, or did not within [`DEADLINE`]),
    /// or the socket failed: nothing more to do.
    Done,
    /// The socket took no byte for [`DEADLINE`]: the close frame is still behind unsent data
    /// (`queued`: handed to the socket's buffer; else not even that).
    Stuck { queued: bool },
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

/// Sends the close frame and waits for the client's, handling nothing more meanwhile.
///
/// The frame is queued behind whatever an interrupted write left unsent (a slow client reads
/// that first), and flushed for as long as the socket keeps taking bytes; after [`DEADLINE`]
/// without progress the session stops waiting ([`Handshake::Stuck`], see [`linger`]).
/// Meanwhile, and until the client's close frame (or [`DEADLINE`] after ours went out), what
/// the client sends is read and discarded: a client blocked writing to us cannot read our close
/// frame, and a socket closed with unread bytes is reset, which discards the close frame before
/// the client reads it.
pub(super) async fn handshake<S, E>(
    socket: &mut S,
    reader: &mut FrameReader<E>,
    code: u16,
    reason: &'static str,
    written: &Written,
) -> Handshake
where
    S: Sink<Message, Error = E> + Unpin,
    E: Send + 'static,
{
    let mut queued = false;
    // Boxed, so that dropping it ends its borrow of `queued`.
    let mut send = Box::pin(async {
        socket.feed(close_frame(code, reason)).await?;
        queued = true;
        socket.flush().await
    });
    let mut sent = false;
    let mut reading = true;
    let mut seen = written.get();
    let mut until = tokio::time::Instant::now() + DEADLINE;
    let stuck = loop {
        tokio::select! {
            r = send.as_mut(), if !sent => match r {
                Ok(()) => {
                    sent = true;
                    until = tokio::time::Instant::now() + DEADLINE;
                }
                Err(_) => break false,
            },
            m = reader.next(), if reading => match m {
                // The client's close frame: nothing more comes after it.
                Some(Ok(m)) if m.is_close() => reading = false,
                // Discarded: the session handles nothing after its close.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => reading = false,
            },
            _ = tokio::time::sleep_until(until) => {
                let w = written.get();
                if sent {
                    break false;
                }
                if w == seen {
                    break true;
                }
                // Still going out: the client reads, slowly.
                seen = w;
                until = tokio::time::Instant::now() + DEADLINE;
            }
        }
        if sent && !reading {
            break false;
        }
    };
    drop(send);
    if stuck {
        Handshake::Stuck { queued }
    } else {
        Handshake::Done
    }
}

/// After a [`Handshake::Stuck`]: keeps the socket (and nothing else of the session) until the
/// close frame is out, `until`, or `cancel`. A slow client that reads late (its buffers full of
/// records when the session decided to close it) reads those, then gets its close frame, instead
/// of a TCP reset; dropping the socket with the frame unsent would lose it.
pub(super) async fn linger<S, E>(
    mut socket: S,
    mut reader: FrameReader<E>,
    code: u16,
    reason: &'static str,
    queued: bool,
    until: tokio::time::Instant,
    cancel: tokio_util::sync::CancellationToken,
) where
    S: Sink<Message, Error = E> + Unpin,
    E: Send + 'static,
{
    let out = async {
        if !queued {
            socket.feed(close_frame(code, reason)).await?;
        }
        socket.flush().await
    };
    let drain = async {
        // The client's frames until its close frame, as in the handshake.
        while let Some(Ok(m)) = reader.next().await {
            if m.is_close() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let sent = tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep_until(until) => false,
        r = out => r.is_ok(),
        () = drain => false,
    };
    if sent {
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(m)) = reader.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(DEADLINE, socket.close()).await;
}
