//! Session stage: one WebSocket connection. Input: the client's frames and its [`ClientQueue`];
//! output: protocol v1 replies and `records` frames written to the socket.
//!
//! The session is generic over any `Stream + Sink` of WebSocket messages, so it can be tested with
//! channels and no socket.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use warp::ws::Message;

use crate::app::Services;
use crate::filter::{Shape, ShapeError};
use crate::hub::{ClientQueue, Delivery, Next, Subscription, TopicHub};
use crate::protocol::{self, ClientMessage, ErrorCode, ProtocolError, ServerMessage, StartFrom};
use crate::source::{self, SourceError};

/// Close codes the gateway sends.
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A client frame was larger than `websocket.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The client read too slowly and the policy is `disconnect`.
    pub const SLOW_CONSUMER: u16 = 4008;
}

struct ActiveSub {
    sub: Arc<Subscription>,
    topic: Arc<TopicHub>,
    /// Stops the subscription's replay reader, if it has one.
    replay: Option<CancellationToken>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    Shutdown,
    SlowConsumer,
    FrameTooBig,
    Idle,
    SocketError,
}

impl Ended {
    const fn label(self) -> &'static str {
        match self {
            Ended::ClientClosed => "client_closed",
            Ended::Shutdown => "shutdown",
            Ended::SlowConsumer => "slow_consumer",
            Ended::FrameTooBig => "frame_too_big",
            Ended::Idle => "idle_timeout",
            Ended::SocketError => "socket_error",
        }
    }
}

struct Session<'a> {
    services: &'a Services,
    conn: u64,
    queue: Arc<ClientQueue>,
    subs: HashMap<String, ActiveSub>,
    cancel: CancellationToken,
}

/// Serves one connection until the client leaves, the queue overflows under the `disconnect`
/// policy, or `cancel` fires (then the client gets close code 1001).
pub async fn run<S, E>(socket: S, services: Arc<Services>, cancel: CancellationToken) -> Ended
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let (mut socket, reader) = socket.split();
    let mut reader = Reader::spawn(reader);
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
    };
    let max_records = ws.max_records_per_frame;
    let idle_timeout = Duration::from_millis(ws.idle_timeout_ms);
    let mut keepalive = tokio::time::interval(Duration::from_millis(ws.ping_interval_ms));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    let mut last_heard = tokio::time::Instant::now();
    let ended = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = socket.send(Message::close_with(close::GOING_AWAY, "server shutting down")).await;
                break Ended::Shutdown;
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    let _ = socket.send(Message::close_with(close::GOING_AWAY, "idle timeout")).await;
                    break Ended::Idle;
                }
                if socket.send(Message::ping(Vec::new())).await.is_err() {
                    break Ended::SocketError;
                }
            }
            incoming = reader.next() => match incoming {
                None => break Ended::ClientClosed,
                Some(Err(e)) => {
                    if is_too_big(&e) {
                        let _ = socket.send(Message::close_with(close::TOO_BIG, "frame too large")).await;
                        break Ended::FrameTooBig;
                    }
                    tracing::debug!(conn = session.conn, error = %e, "WebSocket read failed");
                    break Ended::SocketError;
                }
                Some(Ok(msg)) => {
                    last_heard = tokio::time::Instant::now();
                    if msg.is_close() {
                        break Ended::ClientClosed;
                    }
                    let replies = session.handle(&msg).await;
                    if send_all(&mut socket, replies).await.is_err() {
                        break Ended::SocketError;
                    }
                }
            },
            next = session.queue.next(max_records) => match next {
                Next::Overflowed => {
                    let _ = socket.send(Message::close_with(close::SLOW_CONSUMER, "slow consumer")).await;
                    break Ended::SlowConsumer;
                }
                Next::Batch { lagged, deliveries } => {
                    let frames = session.frames(lagged, &deliveries);
                    if send_all(&mut socket, frames).await.is_err() {
                        break Ended::SocketError;
                    }
                }
            },
        }
    };
    session.end();
    metrics.ws_connections.dec();
    metrics.closed(ended.label());
    let _ = socket.close().await;
    ended
}

/// Reads the client's frames in a task of its own and hands them over through a small channel.
///
/// The session loop wakes for every batch of records; if it polled the socket's read side each
/// time, every wake-up would cost a read attempt, and tungstenite zero-fills its read buffer
/// (128 KiB by default) before each attempt, even one that finds nothing to read. Under fan-out
/// that memset was 40% of the gateway's CPU (BENCHMARKS.md, "WebSocket fan-out"). The reader task
/// is woken only when the socket has something to read.
struct Reader<E> {
    frames: tokio::sync::mpsc::Receiver<Result<Message, E>>,
    task: tokio::task::JoinHandle<()>,
}

impl<E: Send + 'static> Reader<E> {
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

impl<E> Drop for Reader<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send_all<S, E>(socket: &mut S, frames: Vec<String>) -> Result<(), E>
where
    S: Sink<Message, Error = E> + Unpin,
{
    if frames.is_empty() {
        return Ok(());
    }
    for f in frames {
        socket.feed(Message::text(f)).await?;
    }
    socket.flush().await
}

/// True when a read failed because the client's message exceeded the configured size.
fn is_too_big(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Session<'_> {
    /// Answers one client frame; returns the frames to send back.
    async fn handle(&mut self, msg: &Message) -> Vec<String> {
        if msg.is_ping() || msg.is_pong() {
            return Vec::new();
        }
        let Ok(text) = msg.to_str() else {
            return vec![self.refuse(ProtocolError::new(
                None,
                ErrorCode::BadRequest,
                "protocol v1 uses text frames with JSON",
            ))];
        };
        let request = match protocol::parse(text) {
            Ok(r) => r,
            Err(e) => return vec![self.refuse(e)],
        };
        match request {
            ClientMessage::Ping => vec![ServerMessage::Pong.to_json()],
            ClientMessage::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(active) => {
                    self.drop_sub(active);
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

    async fn subscribe(&mut self, req: protocol::Subscribe) -> Result<Vec<String>, ProtocolError> {
        let id = req.id.as_str();
        let err = |code, message: String| ProtocolError::new(Some(id), code, message);
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
        let Some(topic) = self.services.hub.topic(&req.topic).cloned() else {
            return Err(err(
                ErrorCode::UnknownTopic,
                format!("topic {:?} is not served by this gateway", req.topic),
            ));
        };
        let shape = Shape::new(
            req.filter.as_deref(),
            req.fields.as_deref(),
            topic.env(),
            &self.services.config.shape_limits(),
        )
        .map_err(|e| match e {
            ShapeError::BadFilter(m) => err(ErrorCode::BadFilter, m),
            ShapeError::BadFields(m) => err(ErrorCode::BadRequest, m),
        })?;
        let timeout = Duration::from_millis(self.services.config.kafka.request_timeout_ms);
        let live = req.from == StartFrom::Latest;
        let sub = Subscription::new(
            self.conn,
            Arc::from(id),
            self.queue.clone(),
            Arc::new(shape),
            live,
        );
        let (partitions, replay, gaps) = if live {
            let partitions = topic.wait_assigned(timeout).await.unwrap_or_default();
            topic.add(sub.clone());
            (partitions, None, Vec::new())
        } else {
            let plan = self
                .replay_plan(&req.topic, &req.from)
                .await
                .map_err(|e| match e {
                    SourceError::NoSuchTopic(_) => err(ErrorCode::UnknownTopic, e.to_string()),
                    other => err(
                        ErrorCode::BadRequest,
                        format!("cannot start the subscription: {other}"),
                    ),
                })?;
            let Some(decoder) = self.services.decoders.get(req.topic.as_str()).cloned() else {
                return Err(err(ErrorCode::UnknownTopic, "no decoder for topic".into()));
            };
            // In the hub first (not yet live), so the replay reader can hand partitions over.
            topic.add(sub.clone());
            let token = self.cancel.child_token();
            tokio::spawn({
                let kafka = self.services.kafka.clone();
                let topic = topic.clone();
                let sub = sub.clone();
                let token = token.clone();
                let start = plan.start;
                async move {
                    if let Err(e) =
                        source::run_replay(kafka, decoder, topic, sub, start, token).await
                    {
                        tracing::warn!(error = %e, "replay reader failed");
                    }
                }
            });
            (plan.partitions, Some(token), plan.gaps)
        };
        let mut frames = vec![
            ServerMessage::Subscribed {
                id,
                topic: &req.topic,
                partitions: &partitions,
            }
            .to_json(),
        ];
        frames.extend(gaps.iter().map(|g| {
            ServerMessage::Gap {
                id,
                partition: g.partition,
                requested: g.requested,
                first_available: g.first_available,
            }
            .to_json()
        }));
        self.services.metrics.ws_subscriptions.inc();
        self.subs
            .insert(req.id.clone(), ActiveSub { sub, topic, replay });
        Ok(frames)
    }

    /// Where a replay starts in each partition, and the gaps a resume cannot fill.
    async fn replay_plan(&self, topic: &str, from: &StartFrom) -> Result<ReplayPlan, SourceError> {
        let kafka = &self.services.kafka;
        let partitions = kafka.partitions(topic).await?;
        let marks = kafka.watermarks(topic, &partitions).await?;
        let mut gaps = Vec::new();
        let start: BTreeMap<i32, i64> = match from {
            StartFrom::Latest | StartFrom::Earliest => {
                marks.iter().map(|(&p, &(low, _))| (p, low)).collect()
            }
            StartFrom::Timestamp(ms) => kafka.offsets_for_time(topic, &partitions, *ms).await?,
            StartFrom::Offsets(wanted) => marks
                .iter()
                .map(|(&p, &(low, high))| {
                    // A partition the client did not name starts at the beginning: a resuming
                    // client that had seen nothing of it must not lose what it holds.
                    let requested = wanted.get(&p).copied().unwrap_or(low);
                    let offset = if requested < low {
                        gaps.push(Gap {
                            partition: p,
                            requested,
                            first_available: low,
                        });
                        low
                    } else {
                        requested.min(high)
                    };
                    (p, offset)
                })
                .collect(),
        };
        Ok(ReplayPlan {
            partitions,
            start,
            gaps,
        })
    }

    /// Turns a batch into frames: `lagged` first, then one `records` frame per subscription (in
    /// order of first appearance), skipping subscriptions that ended meanwhile.
    fn frames(&self, lagged: Vec<(Arc<str>, u64)>, deliveries: &[Delivery]) -> Vec<String> {
        let mut frames: Vec<String> = lagged
            .iter()
            .filter(|(id, _)| self.subs.contains_key(&**id))
            .map(|(id, n)| ServerMessage::Lagged { id, dropped: *n }.to_json())
            .collect();
        let mut groups: Vec<(&Arc<Subscription>, Vec<&Delivery>)> = Vec::new();
        for d in deliveries.iter().filter(|d| d.sub.is_active()) {
            match groups.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &d.sub)) {
                Some((_, v)) => v.push(d),
                None => groups.push((&d.sub, vec![d])),
            }
        }
        let metrics = &self.services.metrics;
        for (sub, ds) in groups {
            metrics.ws_records_sent.inc_by(ds.len() as u64);
            metrics.ws_frames_sent.inc();
            let frame = protocol::records_frame(&sub.id, &ds);
            metrics.ws_bytes_sent.inc_by(frame.len() as u64);
            frames.push(frame);
        }
        frames
    }

    fn drop_sub(&self, active: ActiveSub) {
        active.sub.deactivate();
        active.topic.remove(&active.sub);
        if let Some(t) = active.replay {
            t.cancel();
        }
        self.services.metrics.ws_subscriptions.dec();
    }

    fn end(&mut self) {
        for (_, active) in std::mem::take(&mut self.subs) {
            self.drop_sub(active);
        }
        self.cancel.cancel();
        self.queue.close();
    }
}

struct Gap {
    partition: i32,
    requested: i64,
    first_available: i64,
}

struct ReplayPlan {
    partitions: Vec<i32>,
    start: BTreeMap<i32, i64>,
    gaps: Vec<Gap>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reader_hands_frames_over_in_order_and_stops_after_close() {
        let frames: Vec<Result<Message, std::io::Error>> = vec![
            Ok(Message::text("one")),
            Ok(Message::text("two")),
            Ok(Message::close()),
            Ok(Message::text("after close")),
        ];
        let mut reader = Reader::spawn(futures_util::stream::iter(frames));
        let mut got = Vec::new();
        while let Some(Ok(m)) = reader.next().await {
            got.push(
                m.to_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|_| "close".into()),
            );
        }
        assert_eq!(got, ["one", "two", "close"]);
    }

    #[tokio::test]
    async fn reader_stops_after_an_error() {
        let frames: Vec<Result<Message, std::io::Error>> = vec![
            Err(std::io::Error::other("reset")),
            Ok(Message::text("never")),
        ];
        let mut reader = Reader::spawn(futures_util::stream::iter(frames));
        assert!(matches!(reader.next().await, Some(Err(_))));
        assert!(reader.next().await.is_none());
    }
}
