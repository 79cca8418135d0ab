//! A graceful stop lands the sink's open files: the process waits for them for
//! `sink.shutdown_timeout_ms`, not just the sessions' `websocket.shutdown_grace_ms`. On
//! librdkafka's in-process mock cluster, with the sink in this process writing to a stand-in S3
//! endpoint that takes 2 s to store the last file (a slow store is what this is about; the real
//! S3 server's tests are in integration-tests).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp::Filter as _;

use lakewire::app::Role;
use lakewire::config::Config;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

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

/// An S3 endpoint for one bucket that lists nothing and stores every PUT, the file starting
/// at offset 10 after 2 s; returns its address and the keys stored so far.
async fn slow_s3() -> anyhow::Result<(std::net::SocketAddr, Arc<Mutex<Vec<String>>>)> {
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
                let stored = stored.clone();
                async move {
                    // The key as named (the client sends `+` as `%2B`).
                    let key = path.as_str().replace("%2B", "+");
                    if key.contains("+10+") {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    if let Ok(mut s) = stored.lock() {
                        s.push(key);
                    }
                    Ok::<_, warp::Rejection>(warp::reply::with_header(
                        warp::reply(),
                        "etag",
                        "\"e\"",
                    ))
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(list.or(put)).incoming(listener).run());
    Ok((addr, stored))
}

fn stored(keys: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    let mut v = keys.lock().map(|k| k.clone()).unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lands_the_open_files_past_the_session_grace() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (s3, keys) = slow_s3().await?;
    let schema = dir.path().join("r.avsc");
    std::fs::write(
        &schema,
        r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
    )?;
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("t", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    // A grace of 1 ms for sessions: before the fix it was all the sink got, and the stop
    // returned while the last file was still open.
    let toml = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[[topics]]\nname = \"t\"\nformat = \"raw\"\nschema = \"{}\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 1\n\n\
         [sink]\nroot = \"s3://b\"\nroll_rows = 10\n\n[sink.s3]\nendpoint = \"http://{s3}\"\nallow_http = true\n\
         access_key_id = \"k\"\nsecret_access_key = \"s\"\n\n[[sink.tables]]\ntopic = \"t\"\npartition_by = []\n",
        schema.display(),
    );
    let running =
        lakewire::app::start_role(Config::from_toml_and_env(&toml, &[], "test")?, Role::Sink)
            .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    for n in 0..15 {
        let payload = avro_long(n);
        producer
            .send(
                FutureRecord::<(), _>::to("t").payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    // The first 10 records land as a file of their own (roll_rows): the worker has read them,
    // and the 5 after them (produced before) sit in its open file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&keys).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no file landed in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&keys), vec!["/b/t/t+0+0+9.parquet".to_string()]);
    let stopping = Instant::now();
    running.stop().await;
    assert_eq!(
        stored(&keys),
        vec![
            "/b/t/t+0+0+9.parquet".to_string(),
            "/b/t/t+0+10+14.parquet".to_string()
        ],
        "the open file was not landed by the time the stop returned ({:?} after it began)",
        stopping.elapsed()
    );
    Ok(())
}
