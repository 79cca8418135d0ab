//! Scale-out against a real Apache Kafka broker, with the gateway as real processes
//! (`lakewire run`): WebSocket replicas are independent, and a client that moves from one replica
//! to another resumes by offsets with nothing lost and nothing repeated while records keep being
//! produced. Also: `lakewire health` against a live and a dead replica, and the Grafana dashboard
//! and Prometheus alerts name only metrics a real gateway (and, for `lakewire_sink_*`, a real
//! `lakewire run --role sink` worker) exports.
#![cfg(feature = "real-kafka")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakewire_integration_tests::monitoring::{monitoring_queries, referenced_names};
use lakewire_integration_tests::process::{GatewayProcess, lakewire_command};
use lakewire_integration_tests::{
    WsClient, brokers, config_toml, create_topic, http_get, unique_topic, wait_ready,
};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 3;

/// What the continuous producer wrote: record `n` at `at[n]` = (partition, offset).
type Produced = Vec<(i32, i64)>;

/// Produces `{"n": n}` for n = 0, 1, ... round-robin over the partitions, each acknowledged
/// before the next, until `stop`; then returns where each went.
fn produce_until(
    topic: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Produced>> {
    tokio::spawn(async move {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("acks", "all")
            .create()?;
        let mut at = Vec::new();
        let mut n: usize = 0;
        while !stop.load(Ordering::Relaxed) {
            let payload = json!({ "n": n }).to_string();
            let partition = (n % PARTITIONS as usize) as i32;
            let d = p
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key("k")
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            at.push((d.partition, d.offset));
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(at)
    })
}

/// (n, partition, offset) of each record.
fn triples(records: &[Value]) -> Vec<(usize, i32, i64)> {
    records
        .iter()
        .map(|r| {
            (
                r["value"]["n"].as_u64().unwrap_or(u64::MAX) as usize,
                r["partition"].as_i64().unwrap_or(-1) as i32,
                r["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// Reads subscription `id` until `total` records arrived in all (counting `already`).
async fn read_until(
    ws: &mut WsClient,
    id: &str,
    already: usize,
    total: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while already + got.len() < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{id}: {} of {total} records within {T:?}",
            already + got.len()
        );
        let v = ws.next_json(T).await?;
        anyhow::ensure!(
            v["type"] == "records" && v["id"] == id,
            "unexpected frame on {id}: {v}"
        );
        got.extend(v["records"].as_array().cloned().unwrap_or_default());
    }
    Ok(got)
}

async fn start_replica(config: &str) -> anyhow::Result<GatewayProcess> {
    let gw = GatewayProcess::start(config, &[]).await?;
    if let Err(e) = wait_ready(gw.addr, T).await {
        anyhow::bail!("replica on {} not ready: {e}\n{}", gw.addr, gw.log());
    }
    Ok(gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moved_to_another_replica_resumes_by_offsets_exactly_once() -> anyhow::Result<()> {
    let topic = unique_topic("scaleout");
    create_topic(&topic, PARTITIONS).await?;
    // Queues big enough that the watcher, read only at the end, is never `lagged`.
    let config = config_toml(
        &brokers(),
        &[&topic],
        "shutdown_grace_ms = 2000\nqueue_size = 100000\nqueue_bytes = 67108864",
    );
    let mut a = start_replica(&config).await?;
    let b = start_replica(&config).await?;
    let c = start_replica(&config).await?;

    // A watcher on C, and the client on A; both from the start of the (fresh) topic.
    let sub = |id: &str, from: Value| json!({"op":"subscribe","id":id,"topic":topic,"from":from});
    let mut watcher = WsClient::connect(c.addr).await?;
    watcher.subscribe(sub("w", json!("earliest"))).await?;
    let mut on_a = WsClient::connect(a.addr).await?;
    let subscribed = on_a.subscribe(sub("s", json!("earliest"))).await?;
    assert_eq!(subscribed["partitions"], json!([0, 1, 2]));

    let stop = Arc::new(AtomicBool::new(false));
    let producing = produce_until(topic.clone(), stop.clone());

    // Some records from A, then A's client goes (no close frame) and A itself dies (SIGKILL),
    // while records keep coming.
    let from_a = read_until(&mut on_a, "s", 0, 150).await?;
    drop(on_a);
    a.kill()?;
    // Where to resume: after the last record of each partition, or the `start` the subscribed
    // frame named for a partition that had none yet (as lakewire-client.js does).
    let mut resume: BTreeMap<String, i64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let start = subscribed["start"][p.to_string()].as_i64().unwrap_or(0);
        let next = triples(&from_a)
            .iter()
            .filter(|t| t.1 == p)
            .map(|t| t.2 + 1)
            .max()
            .unwrap_or(start);
        resume.insert(p.to_string(), next);
    }

    // `lakewire health`: 1 against the dead replica, 0 against a live one.
    let health = |addr: std::net::SocketAddr| -> anyhow::Result<bool> {
        Ok(lakewire_command()?
            .args(["health", "--url", &format!("http://{addr}/healthz")])
            .output()?
            .status
            .success())
    };
    assert!(
        !health(a.addr)?,
        "health check passed against a killed replica"
    );
    assert!(
        health(b.addr)?,
        "health check failed against a live replica:\n{}",
        b.log()
    );

    let mut on_b = WsClient::connect(b.addr).await?;
    on_b.subscribe(sub("s", json!({ "offsets": resume })))
        .await?;
    // Records keep flowing for a while after the switch, then the producer stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producing.await??;
    let total = produced.len();
    assert!(
        total > from_a.len() + 100,
        "too few records after the switch: {total}"
    );

    let from_b = read_until(&mut on_b, "s", from_a.len(), total).await?;
    // Nothing more is pending: the next frame is the answer to a ping.
    on_b.send(json!({"op":"ping"})).await?;
    assert_eq!(
        on_b.next_json(T).await?,
        json!({"type":"pong"}),
        "records beyond what was produced"
    );

    // Every record exactly once, where it was produced, offsets contiguous per partition across
    // the switch.
    let got: Vec<(usize, i32, i64)> = triples(&from_a)
        .into_iter()
        .chain(triples(&from_b))
        .collect();
    let mut ns: Vec<usize> = got.iter().map(|t| t.0).collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        (0..total).collect::<Vec<_>>(),
        "lost or repeated records"
    );
    for (n, p, o) in &got {
        assert_eq!(produced[*n], (*p, *o), "record {n} at the wrong place");
    }
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = got.iter().filter(|t| t.1 == p).map(|t| t.2).collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p}: offsets not contiguous across the switch: {offsets:?}"
        );
        if let Some(first_b) = triples(&from_b).iter().find(|t| t.1 == p) {
            assert_eq!(
                first_b.2,
                resume[&p.to_string()],
                "partition {p} resumed elsewhere"
            );
        }
    }

    // C was unaffected by A's death, and (no consumer group between replicas) read every
    // partition: its client got every record once.
    let watched = read_until(&mut watcher, "w", 0, total).await?;
    let mut wn: Vec<usize> = triples(&watched).iter().map(|t| t.0).collect();
    wn.sort_unstable();
    assert_eq!(
        wn,
        (0..total).collect::<Vec<_>>(),
        "the other replica's client lost or repeated records"
    );
    let distinct: BTreeSet<i32> = triples(&watched).iter().map(|t| t.1).collect();
    assert_eq!(distinct.len(), PARTITIONS as usize);
    eprintln!(
        "scale-out: {total} records produced; {} read on replica A, {} on replica B after the switch, {} on replica C",
        from_a.len(),
        from_b.len(),
        watched.len()
    );

    // A rolling update's SIGTERM: B closes its client with 1001 and exits well within
    // websocket.shutdown_grace_ms (2000 here) plus a margin, which is what the chart's
    // terminationGracePeriodSeconds is sized on.
    let sent = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let mut b = b;
        b.terminate(Duration::from_secs(10))
    });
    let closed = loop {
        match on_b.next(T).await? {
            lakewire_integration_tests::Frame::Closed(c) => break c,
            lakewire_integration_tests::Frame::Json(_) => {}
        }
    };
    assert_eq!(closed.map(|c| c.0), Some(1001), "close code on SIGTERM");
    let status = stopping.await??;
    let took = sent.elapsed();
    assert!(status.success(), "exit status on SIGTERM: {status}");
    assert!(
        took < Duration::from_millis(2000 + 2000),
        "SIGTERM to exit took {took:?}"
    );
    eprintln!("scale-out: replica B closed its client with 1001 and exited {took:?} after SIGTERM");
    drop(c);
    Ok(())
}

/// The metric names a Prometheus text body defines: every sample's name and every `# TYPE`d
/// family (with the suffixes its samples take), so a family with no samples yet counts.
fn exported_names(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["_sum", "_count", "_created"],
                    _ => &[],
                };
                for s in suffixes {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_string());
            }
        }
    }
    names
}

/// Referenced metrics this test does not make a real gateway export, each with why: they must
/// at least be registered in gateway/src/metrics.rs.
const NOT_PROVOKED: &[(&str, &str)] = &[(
    "lakewire_dead_letter_errors_total",
    "needs the broker to refuse a dead-letter write, which a healthy test broker does not",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_a_real_gateway_exports() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let (exprs, alert_exprs) = monitoring_queries()?;
    // What the issue asks the alerts to cover.
    for must in [
        "lakewire_consumer_lag",
        "lakewire_ws_dropped_records_total",
        "lakewire_decode_errors_total",
    ] {
        assert!(
            alert_exprs.iter().any(|e| e.contains(must)),
            "no alert on {must}"
        );
    }
    // The sink's metrics are checked against a sink worker, in the test below.
    let referenced: BTreeSet<String> = exprs
        .iter()
        .chain(&alert_exprs)
        .flat_map(|e| referenced_names(e))
        .filter(|n| !n.starts_with(SINK_PREFIX))
        .collect();
    let registered = std::fs::read_to_string(format!("{root}/gateway/src/metrics.rs"))?;
    for (name, why) in NOT_PROVOKED {
        assert!(
            referenced.contains(*name),
            "{name} is no longer used: drop it from NOT_PROVOKED"
        );
        let base = name
            .trim_start_matches("lakewire_")
            .trim_end_matches("_total");
        assert!(
            registered.contains(&format!("\"{base}\"")),
            "{name} ({why}) is not registered"
        );
    }

    // A gateway where every family gets a sample: records read (and lag), an undecodable record
    // (decode error, dead-letter copy), a client too slow for a 1-record queue (drops), a refused
    // origin, one connection over the limit, a refused request, a closed connection.
    let topic = unique_topic("metrics");
    create_topic(&topic, 1).await?;
    let extra = "queue_size = 1\nqueue_bytes = 1024\nmax_connections = 3\n\n[auth]\nallowed_origins = [\"https://ok.example\"]";
    let mut config = config_toml(&brokers(), &[&topic], extra);
    config.push_str(&format!("dead_letter_topic = \"{topic}.dlq\"\n"));
    let gw = start_replica(&config).await?;
    let sub = json!({"op":"subscribe","id":"m","topic":topic,"from":"latest"});
    let mut reader = WsClient::connect(gw.addr).await?;
    reader.subscribe(sub.clone()).await?;
    let mut stalled = WsClient::connect(gw.addr).await?;
    stalled.subscribe(sub).await?;
    let third = WsClient::connect(gw.addr).await?;
    let over = lakewire_integration_tests::connect_with(gw.addr, "", &[]).await;
    assert!(
        matches!(over, Err(503)),
        "a 4th connection over max_connections = 3 was not refused"
    );
    let evil = lakewire_integration_tests::connect_with(
        gw.addr,
        "",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert!(matches!(evil, Err(403)), "a foreign origin was not refused");
    reader
        .send(json!({"op":"subscribe","id":"x","topic":"no-such-topic"}))
        .await?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let big = json!({ "pad": "x".repeat(60_000) }).to_string();
    let mut payloads = vec!["not json".to_string()];
    payloads.extend(std::iter::repeat_n(big, 150));
    for payload in &payloads {
        p.send(
            FutureRecord::<(), _>::to(&topic).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    // The reader takes what it gets (its queue holds one record too, so it may be told `lagged`).
    let draining = tokio::spawn(async move {
        while let Ok(lakewire_integration_tests::Frame::Json(_)) = reader.next(T).await {}
    });
    third.close().await?;

    // Lag is sampled every 5 s; wait for every family rather than for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let (status, body) = http_get(gw.addr, "/metrics").await?;
        assert_eq!(status, 200);
        let exported = exported_names(&body);
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|n| !exported.contains(*n) && !NOT_PROVOKED.iter().any(|(m, _)| m == n))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "referenced but not exported by the gateway: {missing:?}"
    );
    drop(stalled);
    draining.abort();
    Ok(())
}

const SINK_PREFIX: &str = "lakewire_sink_";

/// The metric names that have at least one sample line in a Prometheus text body (a `# TYPE`
/// line alone does not count).
fn sampled_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.find(['{', ' ']).map(|end| l[..end].to_string()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The value of the first sample of `name` whose labels contain each of `labels`
/// (`key="value"`).
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (series, value) = rest.rsplit_once(' ')?;
        labels
            .iter()
            .all(|kv| series.contains(kv))
            .then(|| value.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_a_real_sink_worker_exports() -> anyhow::Result<()> {
    let (exprs, alert_exprs) = monitoring_queries()?;
    // What the issue asks the sink alerts to cover.
    for must in [
        "lakewire_sink_visibility_seconds_bucket",
        "lakewire_sink_pending_partitions",
        "lakewire_sink_metastore_errors_total",
        "lakewire_sink_storage_errors_total",
        "lakewire_sink_lag",
        "lakewire_sink_skipped_records_total",
        "lakewire_sink_expired_records_total",
        "lakewire_sink_paused_partitions",
    ] {
        assert!(
            alert_exprs
                .iter()
                .any(|e| referenced_names(e).contains(must)),
            "no alert on {must}"
        );
    }
    let referenced: BTreeSet<String> = exprs
        .iter()
        .chain(&alert_exprs)
        .flat_map(|e| referenced_names(e))
        .filter(|n| n.starts_with(SINK_PREFIX))
        .collect();
    for family in [
        "records_total",
        "bytes_total",
        "files_total",
        "file_bytes_bucket",
        "visibility_seconds_bucket",
        "lag",
    ] {
        assert!(
            referenced.contains(&format!("{SINK_PREFIX}{family}")),
            "the dashboard has no panel on {SINK_PREFIX}{family}"
        );
    }

    // A sink worker on a raw-Avro topic with two partitions, files rolled every 50 rows or
    // second, a local lake in a temporary folder, and a metastore that is not there (a port
    // nothing listens on): its registrations fail, are counted and wait.
    let dir = tempfile::tempdir()?;
    let schema_path = dir.path().join("tick.avsc");
    let schema_text = r#"{"type":"record","name":"Tick","fields":[{"name":"n","type":"long"},{"name":"s","type":"string"}]}"#;
    std::fs::write(&schema_path, schema_text)?;
    let topic = unique_topic("sinkmetrics");
    create_topic(&topic, 2).await?;
    let dead_metastore = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[websocket]\nlisten = \"127.0.0.1:0\"\n\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"raw\"\nschema = \"{schema}\"\n\n\
         [sink]\nroot = \"{root}\"\ngroup_id = \"{group}\"\nroll_rows = 50\nroll_interval_ms = 1000\n\
         metastore_uri = \"thrift://{dead_metastore}\"\n\n\
         [[sink.tables]]\ntopic = \"{topic}\"\ntable = \"ticks\"\n",
        brokers = brokers(),
        schema = schema_path.display(),
        root = dir.path().join("lake").display(),
        group = unique_topic("sink-metrics"),
    );
    let sink = GatewayProcess::start(&config, &["--role", "sink"]).await?;
    if let Err(e) = wait_ready(sink.addr, T).await {
        anyhow::bail!("sink worker not ready: {e}\n{}", sink.log());
    }

    // 200 records per partition, then a tombstone (a record without a value) on partition 0.
    const PER_PARTITION: i64 = 200;
    let schema = apache_avro::Schema::parse_str(schema_text)?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()?;
    for n in 0..2 * PER_PARTITION {
        let datum = apache_avro::to_avro_datum(
            &schema,
            apache_avro::types::Value::Record(vec![
                ("n".into(), apache_avro::types::Value::Long(n)),
                (
                    "s".into(),
                    apache_avro::types::Value::String(format!("tick {n}")),
                ),
            ]),
        )?;
        p.send(
            FutureRecord::<(), _>::to(&topic)
                .partition((n % 2) as i32)
                .payload(&datum),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    p.send(
        FutureRecord::<str, ()>::to(&topic).partition(0).key("gone"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("produce a tombstone: {e}"))?;

    // Lag is sampled every 10 s and the metastore retried with backoff: wait for every family
    // and every provoked value rather than for a fixed time.
    let t = format!("topic=\"{topic}\"");
    let table = "table=\"ticks\"";
    let deadline = Instant::now() + Duration::from_secs(45);
    let (missing, body) = loop {
        let (status, body) = http_get(sink.addr, "/metrics").await?;
        assert_eq!(status, 200);
        let sampled = sampled_names(&body);
        let mut missing: Vec<String> = referenced
            .iter()
            .filter(|n| !sampled.contains(*n))
            .cloned()
            .collect();
        let at_least = |series: &str, labels: &[&str], min: f64| {
            (sample(&body, series, labels).unwrap_or(-1.0) < min)
                .then(|| format!("{series}{labels:?} >= {min}"))
        };
        missing.extend(
            [
                // Every record in a file in place, and no more.
                at_least(
                    "lakewire_sink_records_total",
                    &[table],
                    (2 * PER_PARTITION) as f64,
                ),
                at_least("lakewire_sink_files_total", &[table], 2.0),
                at_least("lakewire_sink_bytes_total", &[table], 1.0),
                at_least("lakewire_sink_file_bytes_count", &[], 2.0),
                at_least("lakewire_sink_visibility_seconds_count", &[], 2.0),
                at_least(
                    "lakewire_sink_skipped_records_total",
                    &[&t, "reason=\"tombstone\""],
                    1.0,
                ),
                at_least("lakewire_sink_metastore_errors_total", &[], 1.0),
                at_least("lakewire_sink_pending_partitions", &[], 1.0),
                at_least("lakewire_sink_lag", &[&t, "partition=\"0\""], 0.0),
                at_least("lakewire_sink_lag", &[&t, "partition=\"1\""], 0.0),
            ]
            .into_iter()
            .flatten(),
        );
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "referenced or provoked but not exported by the sink worker: {missing:?}\n{body}\n{}",
        sink.log()
    );
    assert_eq!(
        sample(&body, "lakewire_sink_records_total", &[table]),
        Some((2 * PER_PARTITION) as f64),
        "rows in place"
    );
    // lakewire_sink_storage_errors_total is sampled (at 0; a plain counter is always exported):
    // a local filesystem root that refuses writes cannot be arranged here (the tests may run as
    // root, for whom permissions do not apply) without also stopping the files the other
    // families need.
    assert_eq!(
        sample(&body, "lakewire_sink_storage_errors_total", &[]),
        Some(0.0),
        "storage errors on a healthy local root:\n{}",
        sink.log()
    );

    // A second worker joins the group: the partitions are split, and each worker exports lag
    // only for the partitions it owns (a revoked partition's series goes), so `sum by (topic)`
    // in the dashboard and the lag alert counts each partition once.
    let second = GatewayProcess::start(&config, &["--role", "sink"]).await?;
    let deadline = Instant::now() + Duration::from_secs(45);
    let (a, b) = loop {
        let a = lag_partitions(&http_get(sink.addr, "/metrics").await?.1, &t);
        let b = lag_partitions(&http_get(second.addr, "/metrics").await?.1, &t);
        let split = !a.is_empty()
            && !b.is_empty()
            && a.is_disjoint(&b)
            && a.union(&b).copied().collect::<BTreeSet<_>>() == BTreeSet::from([0, 1]);
        if split || Instant::now() > deadline {
            break (a, b);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.len() + b.len() == 2,
        "lag series after the rebalance: first worker {a:?}, second {b:?}\n{}\n{}",
        sink.log(),
        second.log()
    );
    drop(second);
    drop(sink);
    Ok(())
}

/// The partitions of `topic` (`labels` = `topic="..."`) with a `lakewire_sink_lag` series.
fn lag_partitions(body: &str, topic_label: &str) -> BTreeSet<i32> {
    body.lines()
        .filter(|l| l.starts_with("lakewire_sink_lag{") && l.contains(topic_label))
        .filter_map(|l| {
            l.split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}
