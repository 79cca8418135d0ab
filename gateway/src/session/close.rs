//! Closing a session: the close codes the gateway sends, and the close handshake.

use std::time::Duration;

use futures_util::{Sink, SinkExt as _};
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

/// Sends the close frame and waits (briefly) for the client's: a socket dropped with the
/// client's reply unread is reset, and a reset discards the close frame before the client
/// reads it.
pub(super) async fn handshake<S, E>(
    socket: &mut S,
    reader: &mut FrameReader<E>,
    code: u16,
    reason: &'static str,
    limit: Duration,
) where
    S: Sink<Message, Error = E> + Unpin,
    E: Send + 'static,
{
    let sent = tokio::time::timeout(
        limit,
        socket.send(Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }))),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(limit.min(Duration::from_secs(1)), async {
        while let Some(Ok(m)) = reader.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}
