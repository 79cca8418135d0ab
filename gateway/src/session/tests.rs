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
