//! Helpers for Lakewire's cross-process tests: a WebSocket client that speaks protocol v1, a raw
//! HTTP GET, unique topic names, a gateway configuration for a given broker, and `lakewire` run
//! as a process ([`process`]), a Hive Metastore of a test's own ([`metastore`]).
//!
//! The tests themselves are in `tests/`; those that need the real broker are behind the
//! `real-kafka` feature (see `integration-tests/run-all`).

pub mod metastore;
pub mod monitoring;
pub mod process;
pub mod registry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The broker the real-Kafka tests use (`TEST_KAFKA_BROKERS`, default `127.0.0.1:9092`, where
/// `integration-tests/bin/kafka up` starts one).
pub fn brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Creates `name` with `partitions` partitions (replication 1) on [`brokers`]; an error if it
/// exists already, so tests never share a topic by accident.
pub async fn create_topic(name: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Produces `payload` with key `k` to `topic` and waits for Kafka to confirm it (10 s).
pub async fn send_keyed(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    p.send(
        rdkafka::producer::FutureRecord::to(topic)
            .key("k")
            .payload(payload),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| anyhow!("produce: {e}"))?;
    Ok(())
}

/// The head of a gateway configuration (TOML) on [`brokers`] with the schema registry at
/// `registry_url` (retried every 200 ms at most) and a free port; the `[[topics]]` follow.
pub fn registry_config_head(registry_url: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\nrequest_timeout_ms = 5000\n\n\
         [schema_registry]\nurl = \"{registry_url}\"\nmax_backoff_ms = 200\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\n\n",
        brokers()
    )
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A gateway configuration (TOML) for `brokers` serving `topics` as JSON, on a free port.
pub fn config_toml(brokers: &str, topics: &[&str], extra: &str) -> String {
    let mut s = format!(
        "[kafka]\nbrokers = \"{brokers}\"\nrequest_timeout_ms = 5000\n\n[websocket]\nlisten = \"127.0.0.1:0\"\n{extra}\n"
    );
    for t in topics {
        s.push_str(&format!(
            "\n[[topics]]\nname = \"{t}\"\nformat = \"json\"\n"
        ));
    }
    s
}

/// A protocol v1 client.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read ahead while waiting for a reply (records of an earlier subscription that
    /// arrived before it), handed out first by [`WsClient::next`].
    pending: std::collections::VecDeque<Value>,
}

impl WsClient {
    /// Connects to `ws://addr/ws`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .with_context(|| format!("connecting to ws://{addr}/ws"))?;
        Ok(Self {
            ws,
            pending: Default::default(),
        })
    }

    /// Sends a JSON text frame.
    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, s: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(s.to_string())).await?;
        Ok(())
    }

    /// The next message: `Ok(Some(json))` for a text frame, `Ok(None)` once closed, with the
    /// close frame's code in `last_close`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Frame> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(Frame::Json(v));
        }
        // One deadline for the whole wait: pings and pongs do not extend it.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no message within {timeout:?}"))?;
            match msg {
                None => return Ok(Frame::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(Frame::Json(serde_json::from_str(&t)?)),
                Some(Ok(Message::Close(c))) => {
                    return Ok(Frame::Closed(
                        c.map(|c| (u16::from(c.code), c.reason.to_string())),
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON frame; an error if the connection closed.
    pub async fn next_json(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        match self.next(timeout).await? {
            Frame::Json(v) => Ok(v),
            Frame::Closed(c) => bail!("connection closed: {c:?}"),
        }
    }

    /// The next JSON frame that is not a `records` frame (records arriving meanwhile are
    /// skipped).
    pub async fn next_reply(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        loop {
            let v = self.next_json(timeout).await?;
            if v["type"] != "records" {
                return Ok(v);
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply (an error for any other reply).
    pub async fn subscribe(&mut self, req: Value) -> anyhow::Result<Value> {
        let id = req["id"].clone();
        self.send(req).await?;
        // Records of the connection's other subscriptions may come first: kept for later.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut ahead = Vec::new();
        let reply = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match self.next(left).await? {
                Frame::Json(v) => v,
                Frame::Closed(c) => bail!("connection closed: {c:?}"),
            };
            let other_records =
                matches!(frame["type"].as_str(), Some("records" | "lagged")) && frame["id"] != id;
            if other_records {
                ahead.push(frame);
            } else {
                break frame;
            }
        };
        // In front of anything read meanwhile, in the order they came.
        for v in ahead.into_iter().rev() {
            self.pending.push_front(v);
        }
        if reply["type"] != "subscribed" {
            bail!("subscribe refused: {reply}");
        }
        Ok(reply)
    }

    /// Collects records of subscription `id` until `n` arrived; other frames are returned
    /// alongside (lagged, gap, ...).
    pub async fn records(
        &mut self,
        id: &str,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
        let deadline = Instant::now() + within;
        let mut records = Vec::new();
        let mut others = Vec::new();
        while records.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "got {} of {n} records within {within:?}; other frames: {others:?}",
                    records.len()
                );
            }
            let v = self
                .next_json(left)
                .await
                .with_context(|| format!("after {} of {n} records", records.len()))?;
            if v["type"] == "records" && v["id"] == id {
                match v["records"].as_array() {
                    Some(rs) => records.extend(rs.iter().cloned()),
                    None => bail!("records frame without records: {v}"),
                }
            } else {
                others.push(v);
            }
        }
        Ok((records, others))
    }

    /// Closes the connection.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }
}

/// A message from the server.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<(u16, String)>),
}

/// `GET path` over a fresh connection; returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(addr, path, &[]).await
}

/// Polls `GET /readyz` until it answers 200.
pub async fn wait_ready(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http_get(addr, "/readyz").await?;
        if status == 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within {within:?}: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a metric line (`name{labels} value`) in a Prometheus text body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// A server-sent-events stream read over a plain HTTP/1.1 connection.
pub struct SseClient {
    stream: tokio::io::BufReader<TcpStream>,
    /// Decoded body bytes not yet parsed into events.
    buf: String,
    /// The HTTP status of the response.
    pub status: u16,
    /// The body, when the response was not an event stream.
    pub body: String,
}

impl SseClient {
    /// `GET path` with an optional `Last-Event-ID`.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt as _;
        let mut s = TcpStream::connect(addr).await?;
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut stream = tokio::io::BufReader::new(s);
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response: {line:?}"))?;
        let mut content_length = None;
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = String::new();
        if let Some(n) = content_length {
            let mut b = vec![0; n];
            stream.read_exact(&mut b).await?;
            body = String::from_utf8_lossy(&b).to_string();
        }
        Ok(Self {
            stream,
            buf: String::new(),
            status,
            body,
        })
    }

    /// Reads one chunk of the chunked body into `buf`.
    async fn fill(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncBufReadExt as _;
        let mut size = String::new();
        if self.stream.read_line(&mut size).await? == 0 {
            bail!("stream ended");
        }
        let n = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size:?}"))?;
        if n == 0 {
            bail!("stream ended");
        }
        let mut chunk = vec![0; n + 2];
        self.stream.read_exact(&mut chunk).await?;
        chunk.truncate(n);
        self.buf.push_str(&String::from_utf8_lossy(&chunk));
        Ok(())
    }

    /// The next event (comments and keep-alives skipped), within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if ev.event.is_empty() && ev.data.is_empty() {
                    continue;
                }
                return Ok(ev);
            }
            tokio::time::timeout_at(deadline, self.fill())
                .await
                .map_err(|_| anyhow!("no event within {timeout:?}"))??;
        }
    }
}

/// The message schemas of `docs/asyncapi.yaml`, to check frames the server really sends (and
/// requests the tests send) against the published protocol description.
pub struct ProtocolSchema {
    validators: std::collections::HashMap<String, jsonschema::Validator>,
}

impl ProtocolSchema {
    /// Loads and compiles every message payload schema of the AsyncAPI document.
    pub fn load() -> anyhow::Result<Self> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml");
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("parsing {path}"))?;
        if doc["asyncapi"] != "3.0.0" {
            bail!("{path} is not an AsyncAPI 3.0.0 document");
        }
        let messages = doc["components"]["messages"]
            .as_object()
            .ok_or_else(|| anyhow!("{path} has no components.messages"))?;
        let mut validators = std::collections::HashMap::new();
        for (name, message) in messages {
            let wire_name = message["name"]
                .as_str()
                .ok_or_else(|| anyhow!("message {name} has no name"))?;
            // The whole document is the root, so the payload's $refs into components resolve.
            let mut root = doc.clone();
            if let Some(obj) = root.as_object_mut() {
                obj.insert(
                    "$ref".into(),
                    Value::String(format!("#/components/messages/{name}/payload")),
                );
            }
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .build(&root)
                .map_err(|e| anyhow!("schema of {name}: {e}"))?;
            validators.insert(wire_name.to_string(), v);
        }
        Ok(Self { validators })
    }

    fn check(&self, name: &str, v: &Value) -> anyhow::Result<()> {
        let validator = self
            .validators
            .get(name)
            .ok_or_else(|| anyhow!("docs/asyncapi.yaml has no message {name:?}: {v}"))?;
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            bail!("{v} does not match message {name}: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Checks a server frame against the message named by its `type`.
    pub fn check_server(&self, frame: &Value) -> anyhow::Result<()> {
        let name = frame["type"].as_str().unwrap_or("<no type>");
        self.check(name, frame)
    }

    /// Checks a client request against the message named by its `op`.
    pub fn check_client(&self, request: &Value) -> anyhow::Result<()> {
        let name = request["op"].as_str().unwrap_or("<no op>");
        self.check(name, request)
    }
}

/// Connects to `ws://addr/ws` with extra request headers; the HTTP status of a refused upgrade is
/// the error's `status`.
pub async fn connect_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, Option<String>), u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .map_err(|_| 0_u16)?;
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| 0_u16)?;
        let value =
            tokio_tungstenite::tungstenite::http::HeaderValue::from_str(v).map_err(|_| 0_u16)?;
        req.headers_mut().insert(name, value);
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((
                WsClient {
                    ws,
                    pending: Default::default(),
                },
                proto,
            ))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// GET with headers; returns status and body.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Serves `body` as JSON at any path on a fresh loopback port until the runtime ends; returns
/// the address. (A stand-in identity provider's JWKS endpoint.)
pub async fn serve_json(body: String) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}
