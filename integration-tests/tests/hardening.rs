//! The gateway-hardening fixes of issue 18 on a real Apache Kafka broker (started by
//! `integration-tests/bin/kafka up`): the gateway in this process, the clients real sockets,
//! the broker one with real fetch sizes, group joins and delivery latency. (These ran on
//! librdkafka's in-process mock cluster before, as `gateway/tests/stuck_client.rs`,
//! `replay.rs` and `sink_shutdown.rs`.)
//!
//! - A client that stops reading at the TCP level (4 KiB receive buffer, never read after
//!   `subscribed`) while 16 KiB records are written is closed by `websocket.write_timeout_ms`,
//!   and at shutdown within the grace period when the write timeout is far away.
//! - An undecodable record is dead-lettered once, by the live consumer, not again by a replay
//!   that reads it; the replay's place under the limits is freed when it catches up.
//! - A graceful stop lands the sink's open file, although the store takes 2 s for it and the
//!   sessions' grace is 1 ms (the store is a stand-in S3 endpoint: a slow store is the point).
//! - A storage outage longer than the sink's `max.poll.interval.ms` (issue 17): the worker goes
//!   on polling, stays in its group and reports the lag; every record lands once afterwards
//!   (the stand-in S3 endpoint answers 503: an outage on cue is the point).
//! - A record the sink dead-letters holds the group's commit and the files' resume marks until
//!   Kafka has the copy (issue 16).
//! - In `--role all`, an undecodable record is dead-lettered once (issue 26).
#![cfg(feature = "real-kafka")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use lakewire::app::{Role, Running};
use lakewire::config::Config;
use lakewire_integration_tests::{brokers, config_toml, create_topic, unique_topic};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_tungstenite::tungstenite::Message;
use warp::Filter as _;

fn producer() -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()?)
}

async fn send(p: &FutureProducer, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
    p.send(
        FutureRecord::<(), _>::to(topic).payload(payload),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)?;
    Ok(())
}

/// Starts the gateway on `toml` and waits until `topic`'s live consumer is assigned, so that
/// records produced from now on reach `latest` subscribers.
async fn start_ready(toml: &str, topic: &str) -> anyhow::Result<Running> {
    let running = lakewire::app::start(Config::from_toml_and_env(toml, &[], "test")?).await?;
    let hub = running
        .services
        .hub
        .topic(topic)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no topic {topic}"))?;
    anyhow::ensure!(
        hub.wait_assigned(Duration::from_secs(20)).await.is_some(),
        "the live consumer was not assigned in 20 s"
    );
    Ok(running)
}

fn metric(running: &Running, line_start: &str) -> Option<f64> {
    lakewire::metrics::render(&running.services.prometheus)
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_for(
    what: &str,
    within: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !ok() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// --- a client whose receive buffer is full ---------------------------------------------------

/// Connects with a 4 KiB receive buffer, subscribes to `topic`, reads `subscribed`, and returns
/// the connection, never to be read again.
async fn stuck_client(
    addr: std::net::SocketAddr,
    topic: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    ws.send(Message::text(format!(
        r#"{{"op":"subscribe","id":"s","topic":"{topic}"}}"#
    )))
    .await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.contains("subscribed") => Ok(ws),
        other => anyhow::bail!("no subscribed reply: {other:?}"),
    }
}

/// Writes up to `n` JSON records of 16 KiB to `topic`, until `until` says stop.
async fn flood(
    p: &FutureProducer,
    topic: &str,
    n: usize,
    until: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
    for _ in 0..n {
        if until() {
            return Ok(());
        }
        send(p, topic, payload.as_bytes()).await?;
    }
    Ok(())
}

fn stuck_gateway_toml(topic: &str, write_timeout_ms: u64) -> String {
    config_toml(
        &brokers(),
        &[topic],
        &format!("write_timeout_ms = {write_timeout_ms}\nshutdown_grace_ms = 2000"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_full_receive_buffer_is_closed_after_the_write_timeout()
-> anyhow::Result<()> {
    let topic = unique_topic("stuck");
    create_topic(&topic, 1).await?;
    let running = Arc::new(start_ready(&stuck_gateway_toml(&topic, 1000), &topic).await?);
    let _ws = stuck_client(running.addr, &topic).await?;
    assert_eq!(running.services.metrics.ws_connections.get(), 1);
    let p = producer()?;
    let started = Instant::now();
    let watched = running.clone();
    flood(&p, &topic, 4096, move || {
        watched.services.metrics.ws_connections.get() == 0
            || started.elapsed() > Duration::from_secs(40)
    })
    .await?;
    wait_for(
        "the stuck client's connection to close",
        Duration::from_secs(20),
        || running.services.metrics.ws_connections.get() == 0,
    )
    .await?;
    assert_eq!(
        metric(
            &running,
            r#"lakewire_ws_closed_total{reason="write_timeout"} "#
        ),
        Some(1.0),
        "closed after {:?}, but not for its write timeout",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_client_whose_receive_buffer_is_full() -> anyhow::Result<()> {
    let topic = unique_topic("stuck-stop");
    create_topic(&topic, 1).await?;
    // A write timeout far away: only the shutdown can end the session.
    let running = start_ready(&stuck_gateway_toml(&topic, 600_000), &topic).await?;
    let _ws = stuck_client(running.addr, &topic).await?;
    // Enough to fill both buffers and leave a write pending: the gateway has delivered what it
    // could, so its session is blocked in a write.
    let p = producer()?;
    flood(&p, &topic, 1024, || false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running.services.metrics.ws_connections.get(), 1);
    let services = running.services.clone();
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the stop did not return in 10 s"))?;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stop took {:?} (grace: 2 s)",
        stopping.elapsed()
    );
    assert_eq!(services.metrics.ws_connections.get(), 0);
    Ok(())
}

// --- replays and the dead-letter topic -------------------------------------------------------

async fn reply(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.contains(kind) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no {kind} frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_dead_letter_again_and_frees_its_place_when_caught_up()
-> anyhow::Result<()> {
    let topic = unique_topic("replay-dlq");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 1).await?;
    create_topic(&dlq, 1).await?;
    let toml = config_toml(&brokers(), &[&topic], "").replace(
        "format = \"json\"\n",
        &format!("format = \"json\"\ndead_letter_topic = \"{dlq}\"\n"),
    );
    let running = start_ready(&toml, &topic).await?;
    let p = producer()?;
    send(&p, &topic, b"{not json").await?;
    send(&p, &topic, br#"{"n":1}"#).await?;
    let dead = format!(r#"lakewire_dead_letter_records_total{{topic="{topic}"}} "#);
    wait_for(
        "the live consumer's dead letter",
        Duration::from_secs(20),
        || metric(&running, &dead) == Some(1.0),
    )
    .await?;

    let url = format!("ws://{}/ws", running.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    ws.send(Message::text(format!(
        r#"{{"op":"subscribe","id":"r","topic":"{topic}","from":"earliest"}}"#
    )))
    .await?;
    reply(&mut ws, "\"subscribed\"").await?;
    // The replay read both records (the good one reaches the client) ...
    let records = reply(&mut ws, "\"records\"").await?;
    assert!(records.contains(r#""n":1"#), "{records}");
    let replayed = format!(r#"lakewire_kafka_replay_records_total{{topic="{topic}"}} "#);
    wait_for("the replay to read both", Duration::from_secs(20), || {
        metric(&running, &replayed) == Some(2.0)
    })
    .await?;
    // ... and the bad one was counted, not sent to the dead-letter topic a second time (a
    // second write would have been counted within this wait: the first took well under it).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&running, &dead), Some(1.0));

    // Its reader ended once it caught up, freeing its place under the replay limits.
    wait_for(
        "the caught-up reader's place to be freed",
        Duration::from_secs(20),
        || metric(&running, "lakewire_ws_replays ") == Some(0.0),
    )
    .await?;
    running.stop().await;
    Ok(())
}

// --- a graceful stop lands the sink's open file ----------------------------------------------

/// `{"n": long}` in Avro binary: the zig-zag varint of `n`.
fn avro_long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// How the stand-in S3 endpoint answers PUTs.
#[derive(Clone)]
enum Store {
    /// The file starting at offset 10 after 2 s, the others at once.
    Slow,
    /// 503 while the flag is set.
    Down(Arc<std::sync::atomic::AtomicBool>),
}

/// An S3 endpoint for one bucket that lists nothing and stores every PUT it takes (see
/// [`Store`]); returns its address and the keys stored so far.
async fn stand_in_s3(
    store: Store,
) -> anyhow::Result<(std::net::SocketAddr, Arc<Mutex<Vec<String>>>)> {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let list = warp::get().map(|| {
        warp::reply::with_header(
            r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"#,
            "content-type",
            "application/xml",
        )
    });
    let put = warp::put()
        .and(warp::path::full())
        .and(warp::body::bytes())
        .and_then({
            let stored = stored.clone();
            move |path: warp::path::FullPath, _body: bytes::Bytes| {
                let (stored, store) = (stored.clone(), store.clone());
                async move {
                    // The key as named (the client sends `+` as `%2B`).
                    let key = path.as_str().replace("%2B", "+");
                    let status = match store {
                        Store::Slow if key.contains("+10+") => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            warp::http::StatusCode::OK
                        }
                        Store::Down(down) if down.load(std::sync::atomic::Ordering::SeqCst) => {
                            warp::http::StatusCode::SERVICE_UNAVAILABLE
                        }
                        _ => warp::http::StatusCode::OK,
                    };
                    if status.is_success()
                        && let Ok(mut s) = stored.lock()
                    {
                        s.push(key);
                    }
                    Ok::<_, warp::Rejection>(warp::reply::with_status(
                        warp::reply::with_header(warp::reply(), "etag", "\"e\""),
                        status,
                    ))
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(list.or(put)).incoming(listener).run());
    Ok((addr, stored))
}

/// A one-field Avro schema (`n: long`, what [`avro_long`] writes) as a file in `dir`.
fn long_schema(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let schema = dir.join("r.avsc");
    std::fs::write(
        &schema,
        r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
    )?;
    Ok(schema)
}

/// A sink-role config writing raw `topic` (records of `schema`) to bucket `b` of the stand-in
/// S3 endpoint at `s3`, a file per `roll_rows`; `kafka` and `websocket` are more lines of
/// those sections.
fn s3_sink_toml(
    topic: &str,
    schema: &std::path::Path,
    s3: std::net::SocketAddr,
    roll_rows: u64,
    kafka: &str,
    websocket: &str,
) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\nrequest_timeout_ms = 5000\n{kafka}\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"raw\"\nschema = \"{}\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\n{websocket}\n\
         [sink]\nroot = \"s3://b\"\nroll_rows = {roll_rows}\ngroup_id = \"{topic}-sink\"\n\n\
         [sink.s3]\nendpoint = \"http://{s3}\"\nallow_http = true\n\
         access_key_id = \"k\"\nsecret_access_key = \"s\"\n\n\
         [[sink.tables]]\ntopic = \"{topic}\"\npartition_by = []\n",
        brokers(),
        schema.display(),
    )
}

fn stored(keys: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    let mut v = keys.lock().map(|k| k.clone()).unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lands_the_open_files_past_the_session_grace() -> anyhow::Result<()> {
    let topic = unique_topic("sink-stop");
    create_topic(&topic, 1).await?;
    let dir = tempfile::tempdir()?;
    let (s3, keys) = stand_in_s3(Store::Slow).await?;
    let schema = long_schema(dir.path())?;
    // Written before the sink starts: it reads all 15 at once from the start of the partition.
    let p = producer()?;
    for n in 0..15 {
        send(&p, &topic, &avro_long(n)).await?;
    }
    // A grace of 1 ms for sessions: before the fix it was all the sink got, and the stop
    // returned while the last file was still open.
    let toml = s3_sink_toml(&topic, &schema, s3, 10, "", "shutdown_grace_ms = 1\n");
    let running =
        lakewire::app::start_role(Config::from_toml_and_env(&toml, &[], "test")?, Role::Sink)
            .await?;
    // The table is the topic's name with `-` as `_`.
    let table = topic.replace('-', "_");
    let first = format!("/b/{table}/{topic}+0+0+9.parquet");
    let last = format!("/b/{table}/{topic}+0+10+14.parquet");
    // The first 10 records land as a file of their own (roll_rows); the 5 after them sit in the
    // open file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&keys).is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no file landed in 60 s (group join, fetch and roll)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&keys), vec![first.clone()]);
    let stopping = Instant::now();
    running.stop().await;
    assert_eq!(
        stored(&keys),
        vec![first, last],
        "the open file was not landed by the time the stop returned ({:?} after it began)",
        stopping.elapsed()
    );
    Ok(())
}

/// Issue 17 item 6: while storage refuses every file for longer than the consumer's
/// `max.poll.interval.ms`, the worker goes on polling: it stays in its group (no partition is
/// revoked), `lakewire_sink_lag` follows the records written meanwhile, and once storage is
/// back every record lands exactly once. (Before, landing retried for 30 s inside the poll
/// loop: no lag was reported meanwhile and the group evicted the worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_keeps_the_worker_polling_and_loses_nothing() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let topic = unique_topic("sink-outage");
    create_topic(&topic, 1).await?;
    let dir = tempfile::tempdir()?;
    let down = Arc::new(AtomicBool::new(true));
    let (s3, keys) = stand_in_s3(Store::Down(down.clone())).await?;
    let schema = long_schema(dir.path())?;
    let p = producer()?;
    for n in 0..10 {
        send(&p, &topic, &avro_long(n)).await?;
    }
    // A poll interval far below the outage: a worker that stops polling for it is evicted.
    let kafka = "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"\n";
    let toml = s3_sink_toml(&topic, &schema, s3, 5, kafka, "");
    let running =
        lakewire::app::start_role(Config::from_toml_and_env(&toml, &[], "test")?, Role::Sink)
            .await?;
    let errors = || metric(&running, "lakewire_sink_storage_errors_total ").unwrap_or(0.0);
    let waiting = || metric(&running, "lakewire_sink_waiting_partitions ").unwrap_or(-1.0);
    let lag_line = format!("lakewire_sink_lag{{topic=\"{topic}\",partition=\"0\"}} ");
    let lag = || metric(&running, &lag_line);
    wait_for("a refused file", Duration::from_secs(60), || {
        errors() >= 1.0
    })
    .await?;
    let outage = Instant::now();
    assert_eq!(waiting(), 1.0, "the partition waits on the refused file");
    for n in 10..20 {
        send(&p, &topic, &avro_long(n)).await?;
    }
    // Nothing is in place: all 20 records are lag, reported while storage is still down.
    wait_for(
        "lakewire_sink_lag to count the records written during the outage",
        Duration::from_secs(20),
        || lag() == Some(20.0),
    )
    .await?;
    // Down for three poll intervals (the worker would have been evicted twice).
    let down_for = Duration::from_secs(21);
    if let Some(rest) = down_for.checked_sub(outage.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert!(errors() >= 3.0, "storage was tried again during the outage");
    assert!(stored(&keys).is_empty());
    down.store(false, Ordering::SeqCst);
    let table = topic.replace('-', "_");
    let mut want: Vec<String> = [(0, 4), (5, 9), (10, 14), (15, 19)]
        .iter()
        .map(|(a, b)| format!("/b/{table}/{topic}+0+{a}+{b}.parquet"))
        .collect();
    want.sort();
    wait_for(
        "the 20 records in place after the outage",
        Duration::from_secs(60),
        || stored(&keys).len() >= want.len(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&keys), want, "each record in place once");
    assert_eq!(
        metric(&running, "lakewire_sink_revoked_partitions_total "),
        Some(0.0),
        "the worker stayed in its group"
    );
    assert_eq!(waiting(), 0.0);
    wait_for("the lag back at 0", Duration::from_secs(15), || {
        lag() == Some(0.0)
    })
    .await?;
    running.stop().await;
    Ok(())
}

/// Writes offsets 0-4 good, 5 bad (an Avro long whose varint never ends), 6-10 good.
async fn send_one_bad_among_good(p: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    for n in 0..5 {
        send(p, topic, &avro_long(n)).await?;
    }
    send(p, topic, &[0x80]).await?;
    for n in 6..11 {
        send(p, topic, &avro_long(n)).await?;
    }
    Ok(())
}

/// The committed offset of `group` for `topic`'s partition 0 (`None`: nothing committed).
async fn committed(group: &str, topic: &str) -> anyhow::Result<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got =
        tokio::task::spawn_blocking(move || c.committed_offsets(tpl, Duration::from_secs(10)))
            .await??;
    Ok(got.elements().first().and_then(|e| match e.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }))
}

/// The resume marks in the footers of `table`'s files (the sink of config `toml`), by file name.
async fn resume_marks(toml: &str, table: &str) -> anyhow::Result<Vec<(String, String)>> {
    let sink = Config::from_toml_and_env(toml, &[], "test")?
        .sink
        .ok_or_else(|| anyhow::anyhow!("no [sink]"))?;
    let storage = lakewire::sink::storage::Storage::new(&sink)?;
    let (files, _) = storage.list(table).await?;
    let mut marks = Vec::new();
    for f in files {
        let kv = storage
            .parquet_key_values(&f.path)
            .await
            .map_err(anyhow::Error::msg)?;
        let mark = kv
            .get(lakewire::sink::resume::RESUME_KEY)
            .cloned()
            .unwrap_or_default();
        marks.push((f.name.render(), mark));
    }
    marks.sort();
    Ok(marks)
}

/// Issue 16 item 3: a record refused by the sink and copied to the dead-letter topic holds the
/// commit and the resume marks until Kafka has the copy. The dead-letter topic does not exist
/// yet (and clients may not create topics), so the copy waits until the test creates it;
/// meanwhile a file after the refused record lands, and neither the group's offset nor that
/// file's mark may pass the record: a crash then would have lost the copy. (Before, both were
/// 11: the copy was fire-and-forget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_holds_the_commit_until_kafka_has_it() -> anyhow::Result<()> {
    let topic = unique_topic("sink-dlq");
    let dlq = format!("{topic}-dlq");
    create_topic(&topic, 1).await?;
    let dir = tempfile::tempdir()?;
    let schema = long_schema(dir.path())?;
    let root = dir.path().join("lake");
    let p = producer()?;
    send_one_bad_among_good(&p, &topic).await?;
    let group = format!("{topic}-sink");
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\nrequest_timeout_ms = 5000\n\n\
         [kafka.properties]\n\"allow.auto.create.topics\" = \"false\"\n\
         \"topic.metadata.propagation.max.ms\" = \"60000\"\n\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"raw\"\nschema = \"{}\"\n\
         dead_letter_topic = \"{dlq}\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\n\n\
         [sink]\nroot = \"{}\"\nroll_rows = 5\ngroup_id = \"{group}\"\n\n\
         [[sink.tables]]\ntopic = \"{topic}\"\npartition_by = []\n",
        brokers(),
        schema.display(),
        root.display(),
    );
    let running =
        lakewire::app::start_role(Config::from_toml_and_env(&toml, &[], "test")?, Role::Sink)
            .await?;
    let table = topic.replace('-', "_");
    let files = |n: usize| {
        let dir = root.join(&table);
        move || {
            std::fs::read_dir(&dir).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                    .count()
            }) >= n
        }
    };
    wait_for(
        "the two files around the refused record",
        Duration::from_secs(60),
        files(2),
    )
    .await?;
    let delivered = format!("lakewire_dead_letter_records_total{{topic=\"{topic}\"}} ");
    assert_eq!(
        metric(&running, &delivered).unwrap_or(0.0),
        0.0,
        "the copy cannot be delivered yet"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        committed(&group, &topic).await?,
        Some(5),
        "the commit passed a record whose dead-letter copy Kafka does not have"
    );
    // The second file's range starts at the refused record (its rows are 6-10).
    let name = |a: i64, b: i64| format!("{topic}+0+{a}+{b}.parquet");
    assert_eq!(
        resume_marks(&toml, &table).await?,
        vec![
            (name(0, 4), "5".to_string()),
            (name(5, 10), "5".to_string())
        ],
        "a resume mark passed the unconfirmed copy"
    );

    // Kafka takes the copy once its topic exists.
    create_topic(&dlq, 1).await?;
    wait_for(
        "the dead-letter copy delivered",
        Duration::from_secs(30),
        || metric(&running, &delivered) == Some(1.0),
    )
    .await?;
    for n in 11..16 {
        send(&p, &topic, &avro_long(n)).await?;
    }
    wait_for("the file after the copy", Duration::from_secs(30), files(3)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(committed(&group, &topic).await?, Some(16));
    running.stop().await;
    Ok(())
}

/// Issue 26 item 10: in `--role all` a record that cannot be decoded is copied to the
/// dead-letter topic once, by the sink (which reads every record, from where it resumes), not
/// by the live reader as well. (Before: two copies of each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_all_dead_letters_a_bad_record_once() -> anyhow::Result<()> {
    let topic = unique_topic("all-dlq");
    let dlq = format!("{topic}-dlq");
    create_topic(&topic, 1).await?;
    create_topic(&dlq, 1).await?;
    let dir = tempfile::tempdir()?;
    let schema = long_schema(dir.path())?;
    let root = dir.path().join("lake");
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\nrequest_timeout_ms = 5000\n\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"raw\"\nschema = \"{}\"\n\
         dead_letter_topic = \"{dlq}\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\n\n\
         [sink]\nroot = \"{}\"\nroll_rows = 5\ngroup_id = \"{topic}-sink\"\n\n\
         [[sink.tables]]\ntopic = \"{topic}\"\npartition_by = []\n",
        brokers(),
        schema.display(),
        root.display(),
    );
    let running = start_ready(&toml, &topic).await?;
    let p = producer()?;
    send_one_bad_among_good(&p, &topic).await?;
    let delivered = format!("lakewire_dead_letter_records_total{{topic=\"{topic}\"}} ");
    wait_for("the dead-letter copy", Duration::from_secs(60), || {
        metric(&running, &delivered).unwrap_or(0.0) >= 1.0
    })
    .await?;
    let files = root.join(topic.replace('-', "_"));
    wait_for("the sink's two files", Duration::from_secs(60), || {
        std::fs::read_dir(&files).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        }) >= 2
    })
    .await?;
    // Both readers have read the record by now; a second copy would have come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metric(&running, &delivered),
        Some(1.0),
        "copies of the one bad record"
    );
    running.stop().await;
    Ok(())
}
