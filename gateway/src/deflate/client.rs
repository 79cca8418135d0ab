//! The client side (`lakewire tail`, the tests): a WebSocket connection that offers
//! permessage-deflate and inflates what the server sends compressed. The client itself sends
//! uncompressed messages (RFC 7692 lets each message choose).

use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::client::Request;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;

use super::Inflating;

/// What the client offers: the server must compress each message on its own (the client keeps
/// no inflate window between messages), and may limit the client's window.
pub const OFFER: &str = "permessage-deflate; server_no_context_takeover; client_max_window_bits";

/// A client connection: the WebSocket, and whether the server agreed to compress.
pub type Connection = WebSocketStream<Inflating<TcpStream>>;

/// Connects to the `ws://` URL of `request`, offering permessage-deflate (unless `offer` is
/// false). Returns the WebSocket and whether the server agreed.
pub async fn connect(
    mut request: Request,
    config: Option<WebSocketConfig>,
    offer: bool,
) -> Result<(Connection, bool), tungstenite::Error> {
    if offer {
        request
            .headers_mut()
            .insert("sec-websocket-extensions", HeaderValue::from_static(OFFER));
    }
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or(tungstenite::Error::Url(
            tungstenite::error::UrlError::NoHostName,
        ))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if uri.scheme_str() != Some("ws") {
        return Err(tungstenite::Error::Url(
            tungstenite::error::UrlError::UnsupportedUrlScheme,
        ));
    }
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let limit = config
        .as_ref()
        .and_then(|c| c.max_message_size)
        .unwrap_or(64 << 20);
    let (mut ws, response) = tokio_tungstenite::client_async_with_config(
        request,
        Inflating::new(tcp, false, limit),
        config,
    )
    .await?;
    let agreed = match response.headers().get("sec-websocket-extensions") {
        None => false,
        Some(v) if offer && accepts(v.to_str().unwrap_or("")) => true,
        // An extension the client did not offer, or parameters it cannot honour: RFC 6455
        // §9.1 says to fail the connection.
        Some(_) => {
            return Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::InvalidHeader(Box::new(
                    tungstenite::http::header::SEC_WEBSOCKET_EXTENSIONS,
                )),
            ));
        }
    };
    if agreed {
        ws.get_mut().enable();
    }
    Ok((ws, agreed))
}

/// Whether the server's answer is one the client can work with: permessage-deflate with
/// `server_no_context_takeover` (each message inflates alone).
fn accepts(answer: &str) -> bool {
    let mut parts = answer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut no_takeover = false;
    for p in parts {
        let name = p
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "server_no_context_takeover" => no_takeover = true,
            // The client does not compress; a window smaller than 15 bits inflates with 15.
            "client_no_context_takeover" | "client_max_window_bits" | "server_max_window_bits" => {}
            _ => return false,
        }
    }
    no_takeover
}
