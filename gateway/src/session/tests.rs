//! The session through channels: no socket, no broker (records are published into the hub
//! directly).
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::config::Config;
use crate::record::Record;

/// A WebSocket made of two channels.
struct ChannelSocket {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for ChannelSocket {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for ChannelSocket {
    type Error = std::io::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outgoing
            .send(item)
            .map_err(|_| std::io::Error::other("peer gone"))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

struct Client {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
    services: Arc<Services>,
    session: tokio::task::JoinHandle<Ended>,
    cancel: CancellationToken,
}

impl Client {
    async fn new(extra: &str) -> anyhow::Result<Self> {
        let toml = format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\nrequest_timeout_ms = 50\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n[websocket]\n{extra}\n"
        );
        let services = Services::new(Config::from_toml_and_env(&toml, &[], "test")?)?;
        let (tx, incoming) = mpsc::unbounded_channel();
        let (outgoing, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let session = tokio::spawn(run(
            ChannelSocket { incoming, outgoing },
            Written::default(),
            services.clone(),
            cancel.clone(),
            Access::all(),
        ));
        Ok(Self {
            tx,
            rx,
            services,
            session,
            cancel,
        })
    }

    fn send(&self, v: Value) -> anyhow::Result<()> {
        self.tx.send(Message::text(v.to_string()))?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Message> {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("session ended"))
    }

    async fn json(&mut self) -> anyhow::Result<Value> {
        loop {
            let m = self.recv().await?;
            if m.is_ping() {
                continue;
            }
            return Ok(serde_json::from_str(
                m.to_text()
                    .map_err(|_| anyhow::anyhow!("not text: {m:?}"))?,
            )?);
        }
    }

    fn publish(&self, offset: i64, value: Value) -> anyhow::Result<()> {
        let hub = self
            .services
            .hub
            .topic("t")
            .ok_or_else(|| anyhow::anyhow!("no hub"))?;
        hub.publish(Arc::new(Record::new(
            Arc::from("t"),
            0,
            offset,
            Some(1000 + offset),
            None,
            Bytes::from(value.to_string()),
        )));
        Ok(())
    }
}

#[tokio::test]
async fn subscribe_then_records_then_unsubscribe() -> anyhow::Result<()> {
    let mut c = Client::new("").await?;
    c.send(
        json!({"op":"subscribe","id":"a","topic":"t","filter":"value.n > 1","fields":["value.n"]}),
    )?;
    assert_eq!(
        c.json().await?,
        json!({"type":"subscribed","id":"a","topic":"t","partitions":[],"start":{}})
    );
    for n in 0..4 {
        c.publish(n, json!({"n": n, "pad": "x"}))?;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let v = c.json().await?;
        assert_eq!(v["type"], "records", "{v}");
        got.extend(v["records"].as_array().cloned().unwrap_or_default());
    }
    assert_eq!(
        got,
        vec![
            json!({"partition":0,"offset":2,"timestamp":1002,"value":{"n":2}}),
            json!({"partition":0,"offset":3,"timestamp":1003,"value":{"n":3}}),
        ]
    );
    c.send(json!({"op":"unsubscribe","id":"a"}))?;
    assert_eq!(c.json().await?, json!({"type":"unsubscribed","id":"a"}));
    c.publish(4, json!({"n": 9}))?;
    c.send(json!({"op":"ping"}))?;
    assert_eq!(
        c.json().await?,
        json!({"type":"pong"}),
        "nothing after unsubscribe"
    );
    Ok(())
}

#[tokio::test]
async fn subscribed_names_the_start_offset_of_every_partition() -> anyhow::Result<()> {
    let mut c = Client::new("").await?;
    let hub = c
        .services
        .hub
        .topic("t")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no hub"))?;
    hub.set_assigned(Some(std::collections::BTreeMap::from([(0, 5), (1, 0)])));
    c.publish(5, json!({"n": 5}))?;
    c.send(json!({"op":"subscribe","id":"a","topic":"t"}))?;
    assert_eq!(
        c.json().await?,
        json!({"type":"subscribed","id":"a","topic":"t","partitions":[0,1],"start":{"0":6,"1":0}})
    );
    Ok(())
}

#[tokio::test]
async fn limits_and_errors_keep_the_connection() -> anyhow::Result<()> {
    let mut c = Client::new("max_subscriptions = 2").await?;
    c.send(json!({"op":"subscribe","id":"d","topic":"t","fields":["nope.x"]}))?;
    assert_eq!(c.json().await?["code"], "bad_request");
    for id in ["a", "b"] {
        c.send(json!({"op":"subscribe","id":id,"topic":"t"}))?;
        assert_eq!(c.json().await?["type"], "subscribed");
    }
    c.send(json!({"op":"subscribe","id":"a","topic":"t"}))?;
    assert_eq!(c.json().await?["code"], "duplicate_id");
    c.send(json!({"op":"subscribe","id":"c","topic":"t"}))?;
    assert_eq!(c.json().await?["code"], "too_many_subscriptions");
    c.tx.send(Message::binary(vec![1, 2, 3]))?;
    assert_eq!(c.json().await?["code"], "bad_request");
    let body = crate::metrics::render(&c.services.prometheus);
    assert!(
        body.contains("lakewire_ws_request_errors_total{code=\"duplicate_id\"} 1"),
        "{body}"
    );
    assert!(body.contains("lakewire_ws_subscriptions 2"), "{body}");
    drop(c.tx);
    assert_eq!(c.session.await?, Ended::ClientClosed);
    let body = crate::metrics::render(&c.services.prometheus);
    assert!(body.contains("lakewire_ws_subscriptions 0"), "{body}");
    assert!(body.contains("lakewire_ws_connections 0"), "{body}");
    Ok(())
}

#[tokio::test]
async fn overflow_under_disconnect_closes_with_4008() -> anyhow::Result<()> {
    let mut c = Client::new("queue_size = 4\nslow_client = \"disconnect\"").await?;
    c.send(json!({"op":"subscribe","id":"a","topic":"t"}))?;
    assert_eq!(c.json().await?["type"], "subscribed");
    // Published in one go, before the session gets to run: more than the queue holds.
    for n in 0..10 {
        c.publish(n, json!({"n": n}))?;
    }
    let ended = c.session.await?;
    assert_eq!(ended, Ended::SlowConsumer);
    let mut close = None;
    while let Ok(m) = c.rx.try_recv() {
        if let Some(code) = close_code(&m) {
            close = Some(code);
        }
    }
    assert_eq!(close, Some(close::SLOW_CONSUMER));
    Ok(())
}

/// The code of a close frame.
fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(f.code.into()),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_closed_as_idle() -> anyhow::Result<()> {
    let mut c = Client::new("ping_interval_ms = 1000\nidle_timeout_ms = 3000").await?;
    let first = c.recv().await?;
    assert!(first.is_ping(), "{first:?}");
    assert_eq!(c.session.await?, Ended::Idle);
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_with_1001() -> anyhow::Result<()> {
    let mut c = Client::new("").await?;
    c.cancel.cancel();
    let m = c.recv().await?;
    assert_eq!(close_code(&m), Some(close::GOING_AWAY));
    assert_eq!(c.session.await?, Ended::Shutdown);
    Ok(())
}

#[tokio::test]
async fn reader_hands_frames_over_in_order_and_stops_after_close() {
    let frames: Vec<Result<Message, std::io::Error>> = vec![
        Ok(Message::text("one")),
        Ok(Message::text("two")),
        Ok(Message::Close(None)),
        Ok(Message::text("after close")),
    ];
    let mut reader = FrameReader::spawn(futures_util::stream::iter(frames));
    let mut got = Vec::new();
    while let Some(Ok(m)) = reader.next().await {
        got.push(match m {
            Message::Text(t) => t.to_string(),
            _ => "close".into(),
        });
    }
    assert_eq!(got, ["one", "two", "close"]);
}

#[tokio::test]
async fn reader_stops_after_an_error() {
    let frames: Vec<Result<Message, std::io::Error>> = vec![
        Err(std::io::Error::other("reset")),
        Ok(Message::text("never")),
    ];
    let mut reader = FrameReader::spawn(futures_util::stream::iter(frames));
    assert!(matches!(reader.next().await, Some(Err(_))));
    assert!(reader.next().await.is_none());
}

/// Over a real loopback TCP connection, built as `http.rs` builds it: what the kernel's buffers
/// do to a close (a client that does not read, or reads late, or is still sending).
mod over_tcp {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    type ClientWs = WebSocketStream<TcpStream>;

    struct Tcp {
        ws: ClientWs,
        services: Arc<Services>,
        session: tokio::task::JoinHandle<anyhow::Result<Ended>>,
    }

    /// A session on one end of a TCP connection, a subscribed tokio-tungstenite client on the
    /// other.
    async fn connect(extra: &str) -> anyhow::Result<Tcp> {
        let toml = format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\nrequest_timeout_ms = 50\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n[websocket]\n{extra}\n"
        );
        let services = Services::new(Config::from_toml_and_env(&toml, &[], "test")?)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let session = tokio::spawn({
            let services = services.clone();
            async move {
                let (tcp, _) = listener.accept().await?;
                let written = Written::default();
                let config = crate::http::ws_config(services.config.websocket.max_frame_bytes);
                let ws = tokio_tungstenite::accept_async_with_config(
                    CountWrites::new(tcp, written.clone()),
                    Some(config),
                )
                .await?;
                let cancel = CancellationToken::new();
                Ok(run(ws, written, services, cancel, Access::all()).await)
            }
        });
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}/ws"),
            TcpStream::connect(addr).await?,
        )
        .await?;
        ws.send(Message::text(
            json!({"op":"subscribe","id":"a","topic":"t"}).to_string(),
        ))
        .await?;
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
        anyhow::ensure!(
            matches!(&m, Some(Ok(Message::Text(t))) if t.contains("subscribed")),
            "{m:?}"
        );
        Ok(Tcp {
            ws,
            services,
            session,
        })
    }

    fn metrics(services: &Services) -> String {
        crate::metrics::render(&services.prometheus)
    }

    /// Publishes big records while the client does not read, until its session has decided to
    /// close it with 4008 (its queue overflowed with the socket's buffers full).
    async fn overflow(c: &Tcp) -> anyhow::Result<()> {
        let hub = c
            .services
            .hub
            .topic("t")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no hub"))?;
        let pad = "x".repeat(32 * 1024);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut offset = 0;
        while !metrics(&c.services).contains("reason=\"disconnected\"") {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "never overflowed");
            for _ in 0..16 {
                hub.publish(Arc::new(Record::new(
                    Arc::from("t"),
                    0,
                    offset,
                    Some(offset),
                    None,
                    Bytes::from(json!({"n": offset, "pad": pad}).to_string()),
                )));
                offset += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Reads everything the server sends; the close code it ends with.
    async fn close_code_at_the_end(ws: &mut ClientWs) -> anyhow::Result<Option<u16>> {
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = ws.next().await {
                if let Message::Close(f) = m? {
                    return Ok(f.map(|f| u16::from(f.code)));
                }
            }
            anyhow::bail!("the connection ended without a close frame")
        });
        read.await?
    }

    const SLOW: &str = "queue_size = 64\nslow_client = \"disconnect\"";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_reading_only_after_the_4008_decision_still_gets_its_close_frame()
    -> anyhow::Result<()> {
        let mut c = connect(SLOW).await?;
        overflow(&c).await?;
        // The socket's buffers are full of records; the client reads them only now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            close_code_at_the_end(&mut c.ws).await?,
            Some(close::SLOW_CONSUMER)
        );
        assert_eq!(c.session.await??, Ended::SlowConsumer);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_reading_long_after_the_4008_decision_still_gets_its_close_frame()
    -> anyhow::Result<()> {
        let mut c = connect(SLOW).await?;
        overflow(&c).await?;
        // Longer than the session waits: the socket stays, with the close frame behind the
        // records the client has not read (as in integration-tests' real-Kafka
        // `slow_client_is_disconnected_with_4008_under_the_disconnect_policy`).
        let t0 = tokio::time::Instant::now();
        assert_eq!(c.session.await??, Ended::SlowConsumer);
        assert!(t0.elapsed() < close::DEADLINE * 3, "{:?}", t0.elapsed());
        tokio::time::sleep(close::DEADLINE * 3).await;
        assert_eq!(
            close_code_at_the_end(&mut c.ws).await?,
            Some(close::SLOW_CONSUMER)
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_4008_close_while_a_write_is_stuck_waits_the_close_deadline_not_write_timeout()
    -> anyhow::Result<()> {
        let c = connect(&format!("{SLOW}\nwrite_timeout_ms = 60000")).await?;
        overflow(&c).await?;
        // The client never reads: its close frame cannot go out.
        let t0 = tokio::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), c.session).await???;
        assert_eq!(ended, Ended::SlowConsumer);
        let took = t0.elapsed();
        assert!(took < close::DEADLINE * 3, "took {took:?}");
        assert!(
            metrics(&c.services).contains("lakewire_ws_closed_total{reason=\"slow_consumer\"} 1"),
            "{}",
            metrics(&c.services)
        );
        drop(c.ws);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_still_sending_after_the_close_decision_gets_the_close_frame()
    -> anyhow::Result<()> {
        let mut c = connect(&format!("{SLOW}\nwrite_timeout_ms = 3000")).await?;
        overflow(&c).await?;
        // The client sends more than the socket's buffers hold before it reads: it is blocked
        // until the server reads what it sent.
        let text = "y".repeat(32 * 1024);
        let sending = async {
            for _ in 0..512 {
                c.ws.feed(Message::text(text.clone())).await?;
            }
            c.ws.flush().await
        };
        tokio::time::timeout(Duration::from_secs(5), sending).await??;
        assert_eq!(
            close_code_at_the_end(&mut c.ws).await?,
            Some(close::SLOW_CONSUMER)
        );
        assert_eq!(c.session.await??, Ended::SlowConsumer);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_gone_without_a_close_frame_is_a_socket_error() -> anyhow::Result<()> {
        let c = connect("").await?;
        // The TCP connection ends with no close frame.
        drop(c.ws);
        let ended = tokio::time::timeout(Duration::from_secs(5), c.session).await???;
        assert_eq!(ended, Ended::SocketError);
        let body = metrics(&c.services);
        assert!(
            body.contains("lakewire_ws_closed_total{reason=\"socket_error\"} 1"),
            "{body}"
        );
        Ok(())
    }
}
