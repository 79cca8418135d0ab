//! A client that stops reading at the TCP level (its receive buffer full, the server's send
//! buffer full behind it) is still closed: by `websocket.write_timeout_ms`, and at shutdown
//! within the grace period. The gateway runs in this process on librdkafka's mock cluster; the
//! client is a real socket with a small receive buffer that is never read after `subscribed`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_tungstenite::tungstenite::Message;

mod common;

struct Setup {
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    producer: FutureProducer,
    running: lakewire::app::Running,
}

async fn gateway(write_timeout_ms: u64) -> anyhow::Result<Setup> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let toml = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\nwrite_timeout_ms = {write_timeout_ms}\nshutdown_grace_ms = 2000\n"
    );
    let running = common::start_ready(&toml, "t").await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    Ok(Setup {
        _cluster: cluster,
        producer,
        running,
    })
}

/// Connects with a 4 KiB receive buffer, subscribes, reads `subscribed`, and returns the
/// connection, never to be read again.
async fn stuck_client(
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    ws.send(Message::text(r#"{"op":"subscribe","id":"s","topic":"t"}"#))
        .await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.contains("subscribed") => Ok(ws),
        other => anyhow::bail!("no subscribed reply: {other:?}"),
    }
}

/// Writes up to `n` records of 16 KiB, until `until` says stop.
async fn flood(
    producer: &FutureProducer,
    n: usize,
    until: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
    for _ in 0..n {
        if until() {
            return Ok(());
        }
        producer
            .send(
                FutureRecord::<(), _>::to("t").payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

fn open_connections(running: &lakewire::app::Running) -> i64 {
    running.services.metrics.ws_connections.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_full_receive_buffer_is_closed_after_the_write_timeout()
-> anyhow::Result<()> {
    let s = gateway(1000).await?;
    let _ws = stuck_client(s.running.addr).await?;
    assert_eq!(open_connections(&s.running), 1);
    let started = Instant::now();
    let running = Arc::new(s.running);
    let watched = running.clone();
    flood(&s.producer, 4096, move || {
        open_connections(&watched) == 0 || started.elapsed() > Duration::from_secs(30)
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_connections(&running) != 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stuck client still holds its connection {:?} after the flood began",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = lakewire::metrics::render(&running.services.prometheus);
    assert!(
        text.contains(r#"lakewire_ws_closed_total{reason="write_timeout"} 1"#),
        "{}",
        text.lines()
            .filter(|l| l.contains("ws_closed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_client_whose_receive_buffer_is_full() -> anyhow::Result<()> {
    // A write timeout far away: only the shutdown can end the session.
    let s = gateway(600_000).await?;
    let _ws = stuck_client(s.running.addr).await?;
    // Enough to fill both buffers and leave a write pending.
    flood(&s.producer, 1024, || false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(open_connections(&s.running), 1);
    let services = s.running.services.clone();
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), s.running.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the stop did not return in 10 s"))?;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(services.metrics.ws_connections.get(), 0);
    Ok(())
}
