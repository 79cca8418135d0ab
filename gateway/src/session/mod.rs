//! Session stage: one WebSocket connection. Input: the client's frames and its [`ClientQueue`];
//! output: protocol v1 replies and `records` frames written to the socket.
//!
//! The session is generic over any `Stream + Sink` of WebSocket messages, so it can be tested with
//! channels and no socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tungstenite::Message;

use crate::auth::Access;
use crate::deflate::Segment;
use crate::hub::{ClientQueue, Delivery, Next, Subscription};
use crate::protocol::{self, ClientMessage, ErrorCode, ProtocolError, ServerMessage};
use crate::services::Services;
use crate::subscribe::{self, ActiveSub, sleep_until};

pub mod close;
mod compressed;
#[cfg(test)]
mod tests;

pub use close::{CountWrites, Written};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    Shutdown,
    SlowConsumer,
    FrameTooBig,
    Idle,
    TokenExpired,
    RateLimited,
    SocketError,
    /// The client broke the WebSocket protocol (RFC 6455 §7.4.1: 1002).
    ProtocolError,
    /// A text message or close reason was not UTF-8 (1007).
    InvalidData,
    /// A compressed message did not inflate (RFC 7692 §6.2; 1007).
    BadDeflate,
    /// A write did not complete within `websocket.write_timeout_ms` (the client stopped reading
    /// at the TCP level): no close frame can reach it.
    WriteTimeout,
}

impl Ended {
    /// The close frame the server sends for this ending, if it initiates the close.
    const fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            Ended::Shutdown => Some((close::GOING_AWAY, "server shutting down")),
            Ended::Idle => Some((close::GOING_AWAY, "idle timeout")),
            Ended::TokenExpired => Some((close::TOKEN_EXPIRED, "token expired")),
            Ended::FrameTooBig => Some((close::TOO_BIG, "frame too large")),
            Ended::ProtocolError => Some((close::PROTOCOL_ERROR, "protocol error")),
            Ended::InvalidData => Some((close::INVALID_DATA, "invalid UTF-8")),
            Ended::BadDeflate => Some((close::INVALID_DATA, "invalid compressed data")),
            Ended::RateLimited => Some((close::POLICY, "too many messages")),
            Ended::SlowConsumer => Some((close::SLOW_CONSUMER, "slow consumer")),
            Ended::ClientClosed | Ended::SocketError | Ended::WriteTimeout => None,
        }
    }

    /// The `reason` label of `lakewire_ws_closed_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Ended::ClientClosed => "client_closed",
            Ended::Shutdown => "shutdown",
            Ended::SlowConsumer => "slow_consumer",
            Ended::FrameTooBig => "frame_too_big",
            Ended::Idle => "idle_timeout",
            Ended::TokenExpired => "token_expired",
            Ended::RateLimited => "rate_limited",
            Ended::SocketError => "socket_error",
            Ended::WriteTimeout => "write_timeout",
            Ended::ProtocolError => "protocol_error",
            Ended::InvalidData => "invalid_data",
            Ended::BadDeflate => "bad_deflate",
        }
    }
}

struct Session<'a> {
    services: &'a Arc<Services>,
    conn: u64,
    queue: Arc<ClientQueue>,
    subs: HashMap<String, ActiveSub>,
    cancel: CancellationToken,
    access: Access,
    /// When the token runs out (the connection is closed with 4001 then).
    expires: Option<tokio::time::Instant>,
    /// permessage-deflate was agreed: `records` frames go compressed.
    deflate: bool,
    /// Per subscription id, the compressed start of its `records` frames.
    prefixes: HashMap<Arc<str>, Segment>,
}

/// What the session knows of its socket: the bytes the socket under the WebSocket took
/// ([`CountWrites`]), and whether the handshake agreed permessage-deflate.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    pub written: Written,
    pub deflate: bool,
}

impl From<Written> for Wire {
    fn from(written: Written) -> Self {
        Wire {
            written,
            deflate: false,
        }
    }
}

/// A token bucket: `rate` messages per second, bursts of as many.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        Self {
            rate: f64::from(per_second),
            tokens: f64::from(per_second),
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one token; false when there is none.
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn deadline(access: &Access) -> Option<tokio::time::Instant> {
    access.remaining().map(|d| tokio::time::Instant::now() + d)
}

/// Serves one connection until the client leaves, the queue overflows under the `disconnect`
/// policy, its token expires, or `cancel` fires (then the client gets close code 1001).
/// `wire` says what the socket under `socket` took and agreed.
pub async fn run<S, E>(
    socket: S,
    wire: impl Into<Wire>,
    services: Arc<Services>,
    cancel: CancellationToken,
    access: Access,
) -> Ended
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let Wire { written, deflate } = wire.into();
    let (mut socket, reader) = socket.split();
    let mut reader = FrameReader::spawn(reader);
    let ws = &services.config.websocket;
    let metrics = services.metrics.clone();
    metrics.ws_connections.inc();
    let mut session = Session {
        services: &services,
        conn: services.next_conn_id(),
        queue: ClientQueue::new(
            ws.queue_size,
            ws.queue_bytes,
            ws.slow_client,
            metrics.clone(),
        ),
        subs: HashMap::new(),
        cancel: cancel.child_token(),
        expires: deadline(&access),
        access,
        deflate,
        prefixes: HashMap::new(),
    };
    if deflate {
        session.queue.compress();
        metrics.ws_deflate_connections.inc();
    }
    let mut rate = RateLimit::new(ws.max_messages_per_second);
    let max_records = ws.max_records_per_frame;
    let idle_timeout = Duration::from_millis(ws.idle_timeout_ms);
    let write_timeout = Duration::from_millis(ws.write_timeout_ms);
    let mut keepalive = tokio::time::interval(Duration::from_millis(ws.ping_interval_ms));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    let mut last_heard = tokio::time::Instant::now();
    let ended = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                break Ended::Shutdown;
            }
            _ = sleep_until(session.expires) => {
                break Ended::TokenExpired;
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    break Ended::Idle;
                }
                let ping = vec![Message::Ping(bytes::Bytes::new())];
                if let Err(ended) = write(&mut socket, ping, &session, &cancel, write_timeout).await {
                    break ended;
                }
            }
            incoming = reader.next() => match incoming {
                None => break Ended::ClientClosed,
                Some(Err(e)) => {
                    tracing::debug!(conn = session.conn, error = %e, "WebSocket read failed");
                    break read_error(&e);
                }
                Some(Ok(msg)) => {
                    last_heard = tokio::time::Instant::now();
                    if msg.is_close() {
                        break Ended::ClientClosed;
                    }
                    // Pings count too: answering them is work the client asks for.
                    if (msg.is_text() || msg.is_binary() || msg.is_ping()) && !rate.take() {
                        break Ended::RateLimited;
                    }
                    let replies = session.handle(&msg).await;
                    if let Err(ended) = write(&mut socket, texts(replies), &session, &cancel, write_timeout).await {
                        break ended;
                    }
                }
            },
            next = session.queue.next(max_records) => match next {
                Next::Overflowed => {
                    break Ended::SlowConsumer;
                }
                Next::Batch { lagged, deliveries } => {
                    if let Some(t) = deliveries.first().and_then(|d| d.timestamp) {
                        metrics.ws_send_delay_seconds.observe(crate::metrics::since_timestamp(t));
                    }
                    let frames = session.frames(lagged, &deliveries);
                    let started = std::time::Instant::now();
                    if let Err(ended) = write(&mut socket, frames, &session, &cancel, write_timeout).await {
                        break ended;
                    }
                    metrics.ws_write_seconds.observe(started.elapsed().as_secs_f64());
                }
            },
        }
    };
    session.end();
    let mut stuck = None;
    if let Some((code, reason)) = ended.close_frame() {
        // A client that is slow, not gone, gets its close frame for as long as it keeps reading;
        // one that took nothing for `close::DEADLINE` no longer holds the session.
        match close::handshake(&mut socket, &mut reader, code, reason, &written).await {
            close::Handshake::Done => {}
            close::Handshake::Stuck { queued } => stuck = Some((code, reason, queued)),
        }
    }
    metrics.ws_connections.dec();
    metrics.closed(ended.label());
    match stuck {
        // The socket alone stays, for at most as long as one write may take: a client that
        // reads late still gets its close frame behind the records it had not read.
        Some((code, reason, queued)) => {
            let until = tokio::time::Instant::now() + write_timeout;
            services.sessions.spawn(close::linger(
                socket,
                reader,
                code,
                reason,
                queued,
                until,
                cancel.clone(),
            ));
        }
        None => {
            // Bounded too: a client that stopped reading never takes the close.
            let _ = tokio::time::timeout(close::DEADLINE, socket.close()).await;
        }
    }
    ended
}

/// Reads the client's frames in a task of its own and hands them over through a small channel.
///
/// The session loop wakes for every batch of records; if it polled the socket's read side each
/// time, every wake-up would cost a read attempt, and tungstenite zero-fills its read buffer
/// (128 KiB by default) before each attempt, even one that finds nothing to read. Under fan-out
/// that memset was 40% of the gateway's CPU (BENCHMARKS.md, "WebSocket fan-out"). The reader task
/// is woken only when the socket has something to read.
struct FrameReader<E> {
    frames: tokio::sync::mpsc::Receiver<Result<Message, E>>,
    task: tokio::task::JoinHandle<()>,
}

impl<E: Send + 'static> FrameReader<E> {
    fn spawn<R>(mut stream: R) -> Self
    where
        R: Stream<Item = Result<Message, E>> + Unpin + Send + 'static,
    {
        let (tx, frames) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                // After an error or a close frame the session ends: nothing more to read.
                let last = item.as_ref().map_or(true, Message::is_close);
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        Self { frames, task }
    }

    /// The client's next frame; `None` once its side of the connection has ended.
    async fn next(&mut self) -> Option<Result<Message, E>> {
        self.frames.recv().await
    }
}

impl<E> Drop for FrameReader<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send_all<S, E>(socket: &mut S, frames: Vec<Message>) -> Result<(), E>
where
    S: Sink<Message, Error = E> + Unpin,
{
    if frames.is_empty() {
        return Ok(());
    }
    for f in frames {
        socket.feed(f).await?;
    }
    socket.flush().await
}

fn texts(frames: Vec<String>) -> Vec<Message> {
    frames.into_iter().map(Message::text).collect()
}

/// Writes `frames` within `limit`. A client that stops reading at the TCP level leaves a write
/// pending forever; meanwhile the session still ends on shutdown, on token expiry and on a
/// queue overflow under the `disconnect` policy, and after `limit` it ends on its own.
async fn write<S, E>(
    socket: &mut S,
    frames: Vec<Message>,
    session: &Session<'_>,
    cancel: &CancellationToken,
    limit: Duration,
) -> Result<(), Ended>
where
    S: Sink<Message, Error = E> + Unpin,
{
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Ended::Shutdown),
        _ = sleep_until(session.expires) => Err(Ended::TokenExpired),
        _ = session.queue.overflowed() => Err(Ended::SlowConsumer),
        sent = tokio::time::timeout(limit, send_all(socket, frames)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ended::SocketError),
            Err(_) => Err(Ended::WriteTimeout),
        },
    }
}

/// How a failed read ends the session (RFC 6455 §7.4.1): a message over the configured size
/// is 1009, invalid UTF-8 1007, any other breach of the protocol 1002; an I/O error, or a peer
/// gone without a close frame (EOF, reset), is a socket error and has no close frame.
fn read_error(e: &(dyn std::error::Error + 'static)) -> Ended {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // An I/O error's own source is what it wraps, not itself: look inside.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<crate::deflate::BadDeflate>())
        {
            return Ended::BadDeflate;
        }
        match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => return Ended::FrameTooBig,
            Some(tungstenite::Error::Utf8(_)) => return Ended::InvalidData,
            Some(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => return Ended::SocketError,
            Some(tungstenite::Error::Protocol(_)) => return Ended::ProtocolError,
            _ => {}
        }
        cur = err.source();
    }
    Ended::SocketError
}

impl Session<'_> {
    /// Answers one client frame; returns the frames to send back.
    async fn handle(&mut self, msg: &Message) -> Vec<String> {
        if msg.is_ping() || msg.is_pong() {
            return Vec::new();
        }
        let Message::Text(text) = msg else {
            return vec![self.refuse(ProtocolError::new(
                None,
                ErrorCode::BadRequest,
                "protocol v1 uses text frames with JSON",
            ))];
        };
        let request = match protocol::parse(text.as_str()) {
            Ok(r) => r,
            Err(e) => return vec![self.refuse(e)],
        };
        match request {
            ClientMessage::Ping => vec![ServerMessage::Pong.to_json()],
            ClientMessage::Auth { token } => self.reauthenticate(&token).await,
            ClientMessage::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(active) => {
                    subscribe::stop(self.services, active);
                    vec![ServerMessage::Unsubscribed { id: &id }.to_json()]
                }
                None => vec![self.refuse(ProtocolError::new(
                    Some(&id),
                    ErrorCode::UnknownId,
                    format!("no subscription with id {id:?} on this connection"),
                ))],
            },
            ClientMessage::Subscribe(req) => match self.subscribe(req).await {
                Ok(frames) => frames,
                Err(e) => vec![self.refuse(e)],
            },
        }
    }

    fn refuse(&self, e: ProtocolError) -> String {
        self.services.metrics.request_error(e.code.as_str());
        e.to_json()
    }

    /// Takes a fresh token: the connection lives on until it expires; subscriptions to topics
    /// it no longer grants end with `forbidden`.
    async fn reauthenticate(&mut self, token: &str) -> Vec<String> {
        let access = match self.services.auth.authenticate(Some(token)).await {
            Ok(a) => a,
            Err(e) => {
                return vec![self.refuse(ProtocolError::new(
                    None,
                    ErrorCode::Forbidden,
                    format!("token refused, the current one stays in force: {e}"),
                ))];
            }
        };
        let mut frames = vec![
            ServerMessage::Authenticated {
                expires_at: access.expires_at,
            }
            .to_json(),
        ];
        let revoked: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, a)| !access.allows(a.topic()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in revoked {
            if let Some(active) = self.subs.remove(&id) {
                let topic = active.topic().to_string();
                subscribe::stop(self.services, active);
                frames.push(self.refuse(ProtocolError::new(
                    Some(&id),
                    ErrorCode::Forbidden,
                    format!("the new token does not grant topic {topic:?}; subscription ended"),
                )));
            }
        }
        self.expires = deadline(&access);
        self.access = access;
        frames
    }

    async fn subscribe(&mut self, req: protocol::Subscribe) -> Result<Vec<String>, ProtocolError> {
        let id = req.id.as_str();
        let err = |code, message: String| ProtocolError::new(Some(id), code, message);
        if !self.access.allows(&req.topic) {
            return Err(err(
                ErrorCode::Forbidden,
                format!("your token does not grant topic {:?}", req.topic),
            ));
        }
        if self.subs.contains_key(id) {
            return Err(err(
                ErrorCode::DuplicateId,
                format!("subscription id {id:?} is already in use on this connection"),
            ));
        }
        let max = self.services.config.websocket.max_subscriptions;
        if self.subs.len() >= max {
            return Err(err(
                ErrorCode::TooManySubscriptions,
                format!("this connection already has {max} subscriptions, the limit"),
            ));
        }
        let started =
            subscribe::start(self.services, self.conn, &self.queue, &self.cancel, &req).await?;
        self.subs.insert(req.id.clone(), started.active);
        Ok(started.frames)
    }

    /// Turns a batch into frames: `lagged` first, then one `records` frame per subscription (in
    /// order of first appearance), skipping subscriptions that ended meanwhile; compressed when
    /// the connection agreed to it.
    fn frames(&mut self, lagged: Vec<(Arc<str>, u64)>, deliveries: &[Delivery]) -> Vec<Message> {
        let mut frames: Vec<Message> = lagged
            .iter()
            .filter(|(id, _)| self.subs.contains_key(&**id))
            .map(|(id, n)| Message::text(ServerMessage::Lagged { id, dropped: *n }.to_json()))
            .collect();
        let mut groups: Vec<(&Arc<Subscription>, Vec<&Delivery>)> = Vec::new();
        for d in deliveries.iter().filter(|d| d.sub.is_active()) {
            match groups.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &d.sub)) {
                Some((_, v)) => v.push(d),
                None => groups.push((&d.sub, vec![d])),
            }
        }
        if self.deflate && self.prefixes.len() > self.subs.len() * 2 {
            let subs = &self.subs;
            self.prefixes.retain(|id, _| subs.contains_key(&**id));
        }
        let metrics = &self.services.metrics;
        for (sub, ds) in groups {
            metrics.ws_records_sent.inc_by(ds.len() as u64);
            metrics.ws_frames_sent.inc();
            let frame = if self.deflate {
                let prefix = self
                    .prefixes
                    .entry(sub.id.clone())
                    .or_insert_with(|| Segment::of(&[&protocol::records_prefix(&sub.id)]));
                metrics.ws_frames_compressed.inc();
                compressed::records(prefix, &ds)
            } else {
                let records: Vec<&[u8]> = ds.iter().map(|d| &d.bytes[..]).collect();
                Message::text(protocol::records_frame(&sub.id, &records))
            };
            metrics.ws_bytes_sent.inc_by(frame.len() as u64);
            frames.push(frame);
        }
        frames
    }

    fn end(&mut self) {
        for (_, active) in std::mem::take(&mut self.subs) {
            subscribe::stop(self.services, active);
        }
        self.cancel.cancel();
        self.queue.close();
    }
}
