//! The Hive sink as users run it: `lakewire run --role sink` processes on the real Apache Kafka
//! broker (`TEST_KAFKA_BROKERS`), the files read back by pyarrow and DuckDB
//! (integration-tests/sink/check.py in the venv of integration-tests/run-all, or
//! `TEST_PYTHON`). N records in → exactly N rows out, with their types; a `kill -9` mid-stream
//! and a restart still give exactly N rows and no visible temporary file; a topic whose schema
//! gains an optional field still lands; an unreachable metastore delays registration only; two
//! workers in one group, one killed: the survivor takes over with no file written twice.
//! With the `real-s3` feature and `TEST_S3_ENDPOINT` (integration-tests/bin/s3: S3Proxy), the
//! same through S3. With the `real-metastore` feature and `TEST_HIVE_METASTORE`, Spark SQL reads
//! what the sink registered in a real Hive Metastore, including a new column and the partitions
//! of a metastore outage.
//!
//! The `lakewire` binary is the one `process::lakewire_bin` finds (`cargo build -p lakewire`
//! first, as `run-all` does, or `LAKEWIRE_BIN`).
#![cfg(feature = "real-kafka")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use apache_avro::types::Value as AV;
use lakewire_integration_tests::process::lakewire_bin;
use lakewire_integration_tests::{brokers, create_topic, unique_topic as unique};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const ORDER: &str = include_str!("../../schemas/order.avsc");
/// The records' first timestamp: three hours before the hour this test process started in
/// (brokers refuse timestamps over an hour ahead and delete segments older than their retention,
/// 7 days by default). Fixed for the whole process, so a test that produces in several batches,
/// or works out expected values afterwards, sees one base even when the clock passes a full hour
/// mid-test.
fn base_ts() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (now / 3_600_000 - 3) * 3_600_000
    })
}

fn python() -> PathBuf {
    std::env::var_os("TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python"),
        PathBuf::from,
    )
}

fn check_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sink/check.py")
}

/// What check.py reads from the table.
fn check(root: &str, table: &str, env: &[(&str, String)]) -> anyhow::Result<Value> {
    let out = Command::new(python())
        .arg(check_script())
        .args([root, table])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| {
            format!(
                "running {} (integration-tests/run-all makes the venv)",
                python().display()
            )
        })?;
    if !out.status.success() {
        bail!("check.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits until the table has at least `n` rows (pyarrow), then gives check.py's answer.
fn wait_rows(
    root: &str,
    table: &str,
    n: u64,
    within: Duration,
    env: &[(&str, String)],
) -> anyhow::Result<Value> {
    let end = Instant::now() + within;
    loop {
        let v = check(root, table, env)?;
        if v["rows_pyarrow"].as_u64().unwrap_or(0) >= n {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("the table did not reach {n} rows in {within:?}: {v}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A `lakewire run --role sink` child, killed when dropped.
struct Sink {
    child: Child,
    port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    fn start(config: &Path, log: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(config)?;
        let port = text
            .split("listen = \"127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|p| p.parse().ok())
            .context("listen port in the config")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(lakewire_bin()?)
            .args(["run", "--role", "sink", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,lakewire::sink=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Self { child, port })
    }

    fn metrics(&self) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    }

    fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let body = self.metrics()?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0))
    }
}

/// The end of a sink's log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes a sink configuration for one raw-Avro (order.avsc) or single-object topic.
fn config(
    dir: &Path,
    topic: &str,
    format: &str,
    root: &str,
    sink_extra: &str,
) -> anyhow::Result<PathBuf> {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas)?;
    let order = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/order.avsc");
    let schema_line = if format == "raw" {
        format!("schema = \"{}\"\n", order.display())
    } else {
        String::new()
    };
    let text = format!(
        "schemas_dir = \"{schemas}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\
         \"heartbeat.interval.ms\" = \"1000\"\n\n\
         [websocket]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"{format}\"\n{schema_line}\n\
         [sink]\nroot = \"{root}\"\ngroup_id = \"{group}\"\n{sink_extra}\n\n\
         [[sink.tables]]\ntopic = \"{topic}\"\ntable = \"orders\"\n",
        schemas = schemas.display(),
        brokers = brokers(),
        port = free_port()?,
        group = unique("sink-group"),
    );
    let path = dir.join("lakewire.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn order(i: i64, base: i64) -> AV {
    let s = |v: &str| AV::String(v.to_string());
    AV::Record(vec![
        ("id".into(), AV::Long(i)),
        ("ts".into(), AV::TimestampMillis(base + i)),
        ("customer".into(), s(&format!("customer-{:05}", i % 1000))),
        (
            "status".into(),
            AV::Enum(
                (i % 4) as u32,
                ["NEW", "PAID", "SHIPPED", "CANCELLED"][(i % 4) as usize].into(),
            ),
        ),
        (
            "amount".into(),
            AV::Decimal(apache_avro::Decimal::from(
                ((i * 1234 + 99) as i32).to_be_bytes(),
            )),
        ),
        ("currency".into(), s("EUR")),
        ("quantity".into(), AV::Int((i % 17) as i32 + 1)),
        ("price".into(), AV::Double(12.5 + i as f64 * 0.25)),
        (
            "discount".into(),
            if i % 3 == 0 {
                AV::Union(1, Box::new(AV::Float(0.1)))
            } else {
                AV::Union(0, Box::new(AV::Null))
            },
        ),
        ("express".into(), AV::Boolean(i % 5 == 0)),
        ("coupon".into(), AV::Union(0, Box::new(AV::Null))),
        ("tags".into(), AV::Array(vec![s("gift"), s("web")])),
        (
            "attributes".into(),
            AV::Map([("channel".to_string(), s("web"))].into_iter().collect()),
        ),
        (
            "ship_to".into(),
            AV::Record(vec![
                ("street".into(), s("Main Street 1")),
                ("city".into(), s("Bern")),
                ("zip".into(), s("3000")),
                ("country".into(), s("CH")),
            ]),
        ),
        (
            "delivery_date".into(),
            AV::Union(1, Box::new(AV::Date(20_419))),
        ),
    ])
}

/// Produces `n` orders round-robin over `partitions`, record timestamps `step_ms` apart from
/// [`base_ts`] (so they span Hive hours).
async fn produce_orders(topic: &str, n: i64, partitions: i32, step_ms: i64) -> anyhow::Result<()> {
    produce_order_range(topic, 0..n, partitions, step_ms).await
}

/// Like [`produce_orders`], for the orders with ids in `ids`.
async fn produce_order_range(
    topic: &str,
    ids: std::ops::Range<i64>,
    partitions: i32,
    step_ms: i64,
) -> anyhow::Result<()> {
    let base = base_ts();
    let schema = apache_avro::Schema::parse_str(ORDER)?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let mut pending = Vec::new();
    for i in ids {
        let datum = apache_avro::to_avro_datum(&schema, order(i, base))?;
        let topic = topic.to_string();
        let part = (i % i64::from(partitions)) as i32;
        let p = p.clone();
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::<(), _>::to(&topic)
                    .partition(part)
                    .timestamp(base + i * step_ms)
                    .payload(&datum),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
        }));
        if pending.len() >= 2000 {
            for h in pending.drain(..) {
                h.await??;
            }
        }
    }
    for h in pending {
        h.await??;
    }
    Ok(())
}

fn assert_exact(v: &Value, n: u64) {
    assert_eq!(v["rows_pyarrow"].as_u64(), Some(n), "pyarrow rows: {v}");
    assert_eq!(v["distinct"].as_u64(), Some(n), "duplicates: {v}");
    if v.get("rows_duckdb").is_some() {
        assert_eq!(v["rows_duckdb"].as_u64(), Some(n), "DuckDB rows: {v}");
        assert_eq!(
            v["distinct_duckdb"].as_u64(),
            Some(n),
            "DuckDB duplicates: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_records_become_n_typed_rows_and_a_metastore_outage_only_delays_registration()
-> anyhow::Result<()> {
    const N: u64 = 3000;
    let dir = tempfile::tempdir()?;
    let topic = unique("sink-orders");
    create_topic(&topic, 2).await?;
    produce_orders(&topic, N as i64, 2, 2000).await?;
    let root = dir.path().join("lake").display().to_string();
    let cfg = config(
        dir.path(),
        &topic,
        "raw",
        &root,
        "roll_rows = 1000\nroll_interval_ms = 1500\nmetastore_uri = \"thrift://127.0.0.1:9\"",
    )?;
    let sink = Sink::start(&cfg, &dir.path().join("sink.log"))?;
    let v = wait_rows(&root, "orders", N, Duration::from_secs(90), &[])?;
    assert_exact(&v, N);
    let t = &v["types"];
    for (col, ty) in [
        ("id", "int64"),
        ("ts", "timestamp[ms, tz=UTC]"),
        ("customer", "string"),
        (
            "status",
            "dictionary<values=string, indices=int32, ordered=0>",
        ),
        ("amount", "decimal128(12, 2)"),
        ("quantity", "int32"),
        ("price", "double"),
        ("discount", "float"),
        ("express", "bool"),
        ("tags", "list<item: string not null>"),
        ("attributes", "map<string, string ('attributes')>"),
        (
            "ship_to",
            "struct<street: string not null, city: string not null, zip: string not null, country: string not null>",
        ),
        ("delivery_date", "date32[day]"),
        ("_topic", "string"),
        ("_partition", "int32"),
        ("_offset", "int64"),
        ("_timestamp", "timestamp[ms, tz=UTC]"),
    ] {
        assert_eq!(t[col].as_str(), Some(ty), "column {col}: {t}");
    }
    let d = &v["duckdb_types"];
    assert_eq!(d["amount"].as_str(), Some("DECIMAL(12,2)"), "{d}");
    assert_eq!(d["ts"].as_str(), Some("TIMESTAMP WITH TIME ZONE"), "{d}");
    assert_eq!(
        d["attributes"].as_str(),
        Some("MAP(VARCHAR, VARCHAR)"),
        "{d}"
    );
    assert!(d.get("dt").is_some() && d.get("hr").is_some(), "{d}");
    // Values survive: the first order.
    let s = &v["sample"];
    assert_eq!(s["id"].as_str(), Some("0"), "{s}");
    assert_eq!(s["amount"].as_str(), Some("0.99"), "{s}");
    assert_eq!(s["status"].as_str(), Some("NEW"), "{s}");
    // 3000 records 2 s apart: 100 minutes from a full hour, so two Hive partitions; the first
    // is the UTC date and hour pyarrow gives the first record's Kafka timestamp.
    let first_ts = s["_timestamp"].as_str().context("_timestamp")?;
    let first_part = format!("dt={}/hr={}", &first_ts[..10], &first_ts[11..13]);
    let parts: Vec<&str> = v["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(parts.len(), 2, "{v}");
    assert_eq!(parts[0], first_part, "{v}");
    assert!(v["hidden"].as_array().is_some_and(Vec::is_empty), "{v}");

    // The metastore is unreachable: files landed anyway, partitions wait for it.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = sink.metric("lakewire_sink_pending_partitions ")?;
        let errors = sink.metric("lakewire_sink_metastore_errors_total ")?;
        if pending >= 2.0 && errors >= 1.0 {
            break;
        }
        if Instant::now() > end {
            bail!(
                "pending {pending}, metastore errors {errors}:\n{}",
                sink.metrics()?
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        sink.metric("lakewire_sink_records_total{table=\"orders\"} ")?,
        N as f64
    );
    assert!(sink.metric("lakewire_sink_files_total{table=\"orders\"} ")? >= 4.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_still_gives_exactly_n_rows() -> anyhow::Result<()> {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir()?;
    let topic = unique("sink-kill");
    create_topic(&topic, 2).await?;
    produce_orders(&topic, N as i64, 2, 400).await?;
    let root = dir.path().join("lake");
    let root_s = root.display().to_string();
    // The wall-clock roll closes the last files once the stream is idle.
    let cfg = config(
        dir.path(),
        &topic,
        "raw",
        &root_s,
        "roll_rows = 300\nroll_interval_ms = 1500",
    )?;
    let log = dir.path().join("sink.log");
    let mut first = Sink::start(&cfg, &log)?;
    // Kill it once some files are in place and more are being written.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let files = count_files(&root, ".parquet");
        if files >= 4 {
            break;
        }
        if Instant::now() > end {
            bail!(
                "no files after 60 s; log:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.child.kill()?; // SIGKILL
    first.child.wait()?;
    let at_kill = check(&root_s, "orders", &[])?;
    let rows_at_kill = at_kill["rows_pyarrow"].as_u64().unwrap_or(0);
    assert!(rows_at_kill < N, "the kill came too late: {at_kill}");
    // Whatever was cut off is invisible: every visible file is whole (check.py read them all).
    assert_eq!(
        at_kill["distinct"].as_u64(),
        Some(rows_at_kill),
        "{at_kill}"
    );
    drop(first);

    let second = Sink::start(&cfg, &log)?;
    let v = wait_rows(&root_s, "orders", N, Duration::from_secs(120), &[])
        .with_context(|| log_tail(&log))?;
    // Give a late duplicate the chance to show up before counting.
    std::thread::sleep(Duration::from_secs(2));
    let v2 = check(&root_s, "orders", &[])?;
    assert_exact(&v2, N);
    assert_eq!(v["files"], v2["files"], "files were still being added");
    drop(second);
    Ok(())
}

/// A sink test's own topic, a local table root and a [`config`] for it, with `partition_by`.
struct Table {
    /// Removed with the test's files when dropped.
    _dir: tempfile::TempDir,
    topic: String,
    root: PathBuf,
    root_s: String,
    cfg: PathBuf,
    log: PathBuf,
}

impl Table {
    /// A raw-Avro (order.avsc) topic `prefix-...` of `partitions` partitions; `sink_extra` goes
    /// into `[sink]`, `partition_by` (TOML) into the table.
    async fn new(
        prefix: &str,
        partitions: i32,
        sink_extra: &str,
        partition_by: &str,
    ) -> anyhow::Result<Self> {
        Self::new_with(prefix, partitions, "raw", sink_extra, partition_by).await
    }

    /// Like [`Table::new`], the topic in `format`.
    async fn new_with(
        prefix: &str,
        partitions: i32,
        format: &str,
        sink_extra: &str,
        partition_by: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let topic = unique(prefix);
        create_topic(&topic, partitions).await?;
        let root = dir.path().join("lake");
        let root_s = root.display().to_string();
        let cfg = config(dir.path(), &topic, format, &root_s, sink_extra)?;
        let mut text = std::fs::read_to_string(&cfg)?;
        text.push_str(&format!("partition_by = {partition_by}\n"));
        std::fs::write(&cfg, text)?;
        let log = dir.path().join("sink.log");
        Ok(Self {
            _dir: dir,
            topic,
            root,
            root_s,
            cfg,
            log,
        })
    }

    fn start(&self) -> anyhow::Result<Sink> {
        Sink::start(&self.cfg, &self.log)
    }

    /// Waits for `n` rows (see [`wait_rows`]), the sink's log in the error.
    fn wait_rows(&self, n: u64) -> anyhow::Result<Value> {
        wait_rows(&self.root_s, "orders", n, Duration::from_secs(120), &[])
            .with_context(|| log_tail(&self.log))
    }
}

/// Records whose partition values interleave (`status` cycles NEW, PAID, SHIPPED, CANCELLED
/// record by record) fill one open file per folder: 4,000 records with `roll_rows = 500` are 8
/// files, not one file per record (before open files were kept per folder: 4,000 files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_partition_values_fill_one_file_per_folder() -> anyhow::Result<()> {
    const N: u64 = 4000;
    let t = Table::new("sink-interleaved", 1, "roll_rows = 500", r#"["status"]"#).await?;
    produce_orders(&t.topic, N as i64, 1, 10).await?;
    let sink = t.start()?;
    let v = t.wait_rows(N)?;
    std::thread::sleep(Duration::from_secs(1));
    let v2 = check(&t.root_s, "orders", &[])?;
    assert_exact(&v2, N);
    assert_eq!(v["files"], v2["files"], "files were still being added");
    assert_eq!(
        v2["partitions"],
        serde_json::json!([
            "status=CANCELLED",
            "status=NEW",
            "status=PAID",
            "status=SHIPPED"
        ]),
        "{v2}"
    );
    assert_eq!(v2["files"].as_u64(), Some(8), "{v2}");
    assert_eq!(count_files(&t.root, ".parquet"), 8);
    // Four folders were open at once, under the default cap; none was closed early.
    assert_eq!(
        sink.metric(r#"lakewire_sink_early_rolls_total{reason="max_open_files"}"#)?,
        0.0
    );
    drop(sink);
    Ok(())
}

/// With `max_open_files = 2` and four interleaved folders, every new folder closes the oldest
/// open file: many small files, counted, and still exactly N rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_open_files_closes_the_oldest_and_loses_nothing() -> anyhow::Result<()> {
    const N: u64 = 400;
    let t = Table::new(
        "sink-max-open",
        1,
        "roll_rows = 500\nmax_open_files = 2\nroll_interval_ms = 1000",
        r#"["status"]"#,
    )
    .await?;
    produce_orders(&t.topic, N as i64, 1, 10).await?;
    let sink = t.start()?;
    let v = t.wait_rows(N)?;
    assert_exact(&v, N);
    // Each record's folder is the one opened longest ago: it closes a file of one row (or the
    // wall clock closed it first, when the records came in bursts). Without the cap: 4 files.
    let early = sink.metric(r#"lakewire_sink_early_rolls_total{reason="max_open_files"}"#)?;
    assert!(early >= (N / 2) as f64, "early rolls: {early}; {v}");
    assert!(v["files"].as_u64() >= Some(N / 2), "{v}");
    drop(sink);
    Ok(())
}

/// `max_open_bytes` caps the bytes of all open files of a worker together: 8 partitions whose
/// files would never fill (`roll_rows` and `roll_bytes` far away) share 64 KiB, so the largest
/// open file lands each time the cap is reached. The open bytes, sampled while the records
/// arrive, stay within the cap plus one record; and exactly N rows land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_open_bytes_bounds_the_open_files_of_many_partitions() -> anyhow::Result<()> {
    const N: u64 = 8000;
    const CAP: f64 = 65_536.0;
    let t = Table::new(
        "sink-open-bytes",
        8,
        "roll_rows = 1000000\nmax_open_bytes = 65536\nroll_interval_ms = 2000",
        "[]",
    )
    .await?;
    let sink = t.start()?;
    let producer = {
        let topic = t.topic.clone();
        tokio::spawn(async move { produce_orders(&topic, N as i64, 8, 10).await })
    };
    let mut highest: f64 = 0.0;
    while !producer.is_finished() {
        // (Refused until the worker's listener is up.)
        if let Ok(v) = sink.metric("lakewire_sink_open_bytes ") {
            highest = highest.max(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    producer.await??;
    let v = t.wait_rows(N)?;
    assert_exact(&v, N);
    // An order is about 200 Avro bytes.
    assert!(
        highest > 0.0 && highest <= CAP + 1024.0,
        "open bytes reached {highest}"
    );
    let early = sink.metric(r#"lakewire_sink_early_rolls_total{reason="max_open_bytes"}"#)?;
    assert!(early >= 5.0, "early rolls: {early}; {v}");
    drop(sink);
    Ok(())
}

/// `roll_record_ms` cuts files by the records' Kafka timestamps: 600 records a second apart
/// (read in one go, well inside the wall-clock roll) with `roll_record_ms = 60000` are 10 files
/// of a minute each, whenever they are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_record_ms_cuts_files_by_record_time() -> anyhow::Result<()> {
    const N: u64 = 600;
    let t = Table::new(
        "sink-record-time",
        1,
        "roll_rows = 1000000\nroll_record_ms = 60000\nroll_interval_ms = 8000",
        "[]",
    )
    .await?;
    // One at a time, so that offsets are in timestamp order.
    for i in 0..N as i64 {
        produce_order_range(&t.topic, i..i + 1, 1, 1000).await?;
    }
    let sink = t.start()?;
    let v = t.wait_rows(N)?;
    assert_exact(&v, N);
    let mut files: Vec<(i64, i64, i64)> = landed(&t.log);
    files.sort_unstable();
    let want: Vec<(i64, i64, i64)> = (0..10).map(|k| (0, k * 60, k * 60 + 59)).collect();
    assert_eq!(files, want, "{v}");
    drop(sink);
    Ok(())
}

/// A resume point below the low watermark: 100 records landed, 100 more produced, the first
/// 150 of the partition deleted (as retention would) before the worker comes back. It says so,
/// counts the 50 lost records, and reads on from offset 150.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expired_before_they_landed_are_counted_and_skipped() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let t = Table::new("sink-expired", 1, "roll_rows = 50", "[]").await?;
    produce_order_range(&t.topic, 0..100, 1, 10).await?;
    let first = t.start()?;
    t.wait_rows(100)?;
    drop(first);
    produce_order_range(&t.topic, 100..200, 1, 10).await?;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&t.topic, 0, rdkafka::Offset::Offset(150))?;
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await?
        .elements()
        .iter()
        .try_for_each(|e| e.error())?;
    let second = t.start()?;
    let v = t.wait_rows(150)?;
    std::thread::sleep(Duration::from_secs(1));
    let v2 = check(&t.root_s, "orders", &[])?;
    assert_exact(&v2, 150);
    assert_eq!(v["files"], v2["files"]);
    let topic = &t.topic;
    assert_eq!(
        second.metric(&format!(
            r#"lakewire_sink_expired_records_total{{topic="{topic}"}}"#
        ))?,
        50.0
    );
    assert_eq!(
        second.metric(&format!(
            r#"lakewire_sink_resume_gaps_total{{topic="{topic}",kind="expired"}}"#
        ))?,
        1.0
    );
    assert!(
        std::fs::read_to_string(&t.log)?.contains("records expired from Kafka before they landed"),
        "{}",
        log_tail(&t.log)
    );
    drop(second);
    Ok(())
}

/// A resume point above the high watermark: the topic is deleted and created again under its
/// name, so its offsets start over below what the files hold. The partition is paused, not
/// read: its new records are not skipped as written, no file is overwritten, and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_pauses_its_partition_instead_of_overwriting_files() -> anyhow::Result<()>
{
    use rdkafka::admin::{AdminClient, AdminOptions};
    let t = Table::new("sink-recreated", 1, "roll_rows = 50", "[]").await?;
    produce_order_range(&t.topic, 0..100, 1, 10).await?;
    let first = t.start()?;
    t.wait_rows(100)?;
    drop(first);
    let before = inodes(&t.root);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    for r in admin
        .delete_topics(&[&t.topic], &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
    }
    // The broker takes a moment before the name can be used again.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match create_topic(&t.topic, 1).await {
            Ok(()) => break,
            Err(e) if Instant::now() < end => {
                eprintln!("recreating the topic: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
    produce_order_range(&t.topic, 1000..1050, 1, 10).await?;
    let second = t.start()?;
    let topic = &t.topic;
    let end = Instant::now() + Duration::from_secs(60);
    while second
        .metric("lakewire_sink_paused_partitions ")
        .unwrap_or(0.0)
        < 1.0
    {
        if Instant::now() > end {
            bail!("the partition was not paused in 60 s\n{}", log_tail(&t.log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        second.metric(&format!(
            r#"lakewire_sink_resume_gaps_total{{topic="{topic}",kind="ahead"}}"#
        ))?,
        1.0
    );
    // Long enough for 50 records to land had the partition been read.
    std::thread::sleep(Duration::from_secs(3));
    let v = check(&t.root_s, "orders", &[])?;
    assert_exact(&v, 100);
    assert_eq!(inodes(&t.root), before, "files were written again");
    drop(second);
    Ok(())
}

/// Records framed with a schema id the registry does not know yet (produced before their schema
/// is registered, as a new user's producer may do) are not lost: the partition waits on the
/// first of them, backing off, and nothing after it is committed; once the schema is registered
/// every record lands, exactly once. (Before: each was skipped as `unknown_schema_id`, and
/// without a dead-letter topic it was gone.) Against the real registry (Apicurio's Confluent
/// API): the records carry the id it gives the schema registered later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_schema_is_registered_later_land_once_it_is() -> anyhow::Result<()> {
    let registry = lakewire_integration_tests::registry::Registry::start().await?;
    let id = registry.next_id().await?;
    let t = Table::new_with(
        "sink-late-schema",
        1,
        "confluent",
        "roll_rows = 100\nroll_interval_ms = 1000",
        "[]",
    )
    .await?;
    let mut text = std::fs::read_to_string(&t.cfg)?;
    text.push_str(&format!(
        "\n[schema_registry]\nurl = \"{}\"\nmax_backoff_ms = 500\n",
        registry.url
    ));
    std::fs::write(&t.cfg, text)?;
    produce_confluent(&t.topic, 0..300, id).await?;
    let sink = t.start()?;
    let topic = &t.topic;
    let waits = format!(
        r#"lakewire_sink_decode_waits_total{{topic="{topic}",reason="unknown_schema_id"}}"#
    );
    let end = Instant::now() + Duration::from_secs(60);
    while sink.metric(&waits).unwrap_or(0.0) < 2.0 {
        if Instant::now() > end {
            bail!("the sink did not wait on the record\n{}", log_tail(&t.log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sink.metric("lakewire_sink_waiting_partitions ")?, 1.0);
    assert_eq!(check(&t.root_s, "orders", &[])?["rows_pyarrow"], 0);
    // A schema text of its own: the registry gives a text it has seen before its old id.
    let schema = ORDER.replacen('{', &format!("{{\"doc\":\"{topic}\","), 1);
    let given = registry
        .register(&format!("{topic}-value"), &schema)
        .await?;
    anyhow::ensure!(
        given == id,
        "the registry gave the schema id {given}, not {id}: something else registered meanwhile"
    );
    produce_confluent(&t.topic, 300..400, id).await?;
    let v = t.wait_rows(400)?;
    std::thread::sleep(Duration::from_secs(2));
    let v2 = check(&t.root_s, "orders", &[])?;
    assert_exact(&v2, 400);
    assert_eq!(v["files"], v2["files"]);
    assert_eq!(sink.metric("lakewire_sink_waiting_partitions ")?, 0.0);
    assert_eq!(
        sink.metric(&format!(
            r#"lakewire_decode_errors_total{{topic="{topic}",reason="unknown_schema_id"}}"#
        ))?,
        0.0,
        "records were refused instead of waited for"
    );
    drop(sink);
    Ok(())
}

/// Produces the orders with ids in `ids` to partition 0, Confluent-framed with schema id `id`.
async fn produce_confluent(topic: &str, ids: std::ops::Range<i64>, id: u32) -> anyhow::Result<()> {
    let base = base_ts();
    let schema = apache_avro::Schema::parse_str(ORDER)?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()?;
    for i in ids {
        let mut payload = vec![0u8];
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&apache_avro::to_avro_datum(&schema, order(i, base))?);
        p.send(
            FutureRecord::<(), _>::to(topic)
                .partition(0)
                .timestamp(base + i)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

/// kill -9 while records of two folders are open in two files, then a restart:
/// the new worker resumes at the highest resume mark in the files' footers, skips the records
/// after it that a file in place holds, and writes the rest: exactly N rows, no file twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_interleaved_folders_then_restart_gives_exactly_n_rows() -> anyhow::Result<()> {
    const N: u64 = 12_000;
    // `express` is true for one record in 5: the `false` folder fills its file four times while
    // the `true` folder's stays open, so the files in place overlap in offsets, and the resume
    // mark (the oldest open file's start) is below files in place. No wall-clock roll in the
    // first run, so that files are open whenever it is killed.
    let t = Table::new(
        "sink-kill-folders",
        1,
        "roll_rows = 250\nroll_interval_ms = 0",
        r#"["express"]"#,
    )
    .await?;
    produce_orders(&t.topic, N as i64, 1, 10).await?;
    let mut first = t.start()?;
    // Files land in cycles of five: four `false` ones while the `true` one fills, then it.
    // Killed mid-cycle, the `true` file is open and `false` ones after its start are in place.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let files = count_files(&t.root, ".parquet");
        if files >= 10 && (1..=3).contains(&(files % 5)) {
            break;
        }
        if Instant::now() > end {
            bail!("no files after 60 s; log:\n{}", log_tail(&t.log));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    first.child.kill()?; // SIGKILL
    first.child.wait()?;
    let at_kill = check(&t.root_s, "orders", &[])?;
    let rows_at_kill = at_kill["rows_pyarrow"].as_u64().unwrap_or(0);
    assert!(rows_at_kill < N, "the kill came too late: {at_kill}");
    assert_eq!(
        at_kill["distinct"].as_u64(),
        Some(rows_at_kill),
        "{at_kill}"
    );
    let before = inodes(&t.root);
    drop(first);

    // The restart lands the last, partly filled, files by the wall clock.
    let text = std::fs::read_to_string(&t.cfg)?;
    std::fs::write(
        &t.cfg,
        text.replace("roll_interval_ms = 0", "roll_interval_ms = 1500"),
    )?;
    let second = t.start()?;
    let v = t.wait_rows(N)?;
    std::thread::sleep(Duration::from_secs(3));
    let v2 = check(&t.root_s, "orders", &[])?;
    assert_exact(&v2, N);
    assert_eq!(v["files"], v2["files"], "files were still being added");
    let after = inodes(&t.root);
    for (path, ino) in &before {
        assert_eq!(after.get(path), Some(ino), "{path} was written again");
    }
    // The restart found records in place after its resume point and did not write them again.
    let skipped = second.metric(&format!(
        r#"lakewire_sink_skipped_records_total{{topic="{}",reason="already_written"}}"#,
        t.topic
    ))?;
    assert!(
        skipped > 0.0,
        "the restart skipped no record as already written; {v2}\n{}",
        std::fs::read_to_string(&t.log)?
            .lines()
            .filter(|l| l.contains("assigned") || l.contains("in place"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(second);
    Ok(())
}

/// The files a sink's log says it put in place: (partition, start, end).
fn landed(log: &Path) -> Vec<(i64, i64, i64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, k: &str| -> Option<i64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.parse().ok())
    };
    text.lines()
        .filter(|l| l.contains("sink: file in place"))
        .filter_map(|l| {
            Some((
                field(l, "partition=")?,
                field(l, "start=")?,
                field(l, "end=")?,
            ))
        })
        .collect()
}

/// The configuration of a second worker beside `cfg` (same group and settings, another
/// listen port), written next to it.
fn second_worker(cfg: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(cfg)?;
    let port = text
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("port")?
        .to_string();
    let path = cfg.with_file_name("lakewire-b.toml");
    std::fs::write(
        &path,
        text.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()?),
        ),
    )?;
    Ok(path)
}

/// The partitions a sink's log says it put files of in place.
fn landed_partitions(log: &Path) -> std::collections::BTreeSet<i64> {
    landed(log).iter().map(|f| f.0).collect()
}

/// Two sink workers' set-up on a fresh 4-partition topic: configurations (same group), logs,
/// and the lake's root.
struct TwoWorkers {
    dir: tempfile::TempDir,
    topic: String,
    root_s: String,
    cfg_a: PathBuf,
    cfg_b: PathBuf,
    log_a: PathBuf,
    log_b: PathBuf,
}

impl TwoWorkers {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let topic = unique(prefix);
        create_topic(&topic, 4).await?;
        let root_s = dir.path().join("lake").display().to_string();
        let cfg_a = config(
            dir.path(),
            &topic,
            "raw",
            &root_s,
            "roll_rows = 300\nroll_interval_ms = 1500",
        )?;
        let cfg_b = second_worker(&cfg_a)?;
        let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        Ok(Self {
            dir,
            topic,
            root_s,
            cfg_a,
            cfg_b,
            log_a,
            log_b,
        })
    }

    /// Produces `n` orders over the 4 partitions in 20 chunks, 400 ms apart: the records arrive
    /// over several seconds while the workers run.
    fn produce(&self, n: u64) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let topic = self.topic.clone();
        tokio::spawn(async move {
            for chunk in 0..20i64 {
                let per = n as i64 / 20;
                produce_order_range(&topic, chunk * per..(chunk + 1) * per, 4, 200).await?;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            anyhow::Ok(())
        })
    }

    /// Fails if the two workers' logs name a file twice.
    fn assert_no_file_twice(&self) {
        let mut all: Vec<(i64, i64, i64)> = landed(&self.log_a);
        all.extend(landed(&self.log_b));
        let mut names = all.clone();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "a file was written twice: {all:?}");
    }
}

/// A worker joining the group mid-stream moves only the partitions it gets: with the default
/// assignment strategy (cooperative-sticky) the worker already there gives up 2 of its 4
/// partitions and keeps the other two's open files, where the eager strategies took all 4 from
/// it (every open file dropped and read again) and gave 2 back. Exactly N rows, no file twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_worker_takes_only_the_partitions_that_move() -> anyhow::Result<()> {
    const N: u64 = 24_000;
    const REVOKED: &str = "lakewire_sink_revoked_partitions_total ";
    let w = TwoWorkers::new("sink-join").await?;
    let a = Sink::start(&w.cfg_a, &w.log_a)?;
    let producer = w.produce(N);
    let wait_for = |what: &str, done: &dyn Fn() -> bool| -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(90);
        while !done() {
            if Instant::now() > end {
                bail!(
                    "{what} within 90 s\nA:\n{}\nB:\n{}",
                    log_tail(&w.log_a),
                    log_tail(&w.log_b)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    wait_for("A did not write files of all 4 partitions", &|| {
        landed_partitions(&w.log_a).len() == 4
    })?;
    assert_eq!(a.metric(REVOKED)?, 0.0, "A alone lost partitions");
    let b = Sink::start(&w.cfg_b, &w.log_b)?;
    wait_for("B did not write files of 2 partitions", &|| {
        landed_partitions(&w.log_b).len() == 2
    })?;
    assert_eq!(
        a.metric(REVOKED)?,
        2.0,
        "A gave up other partitions than the 2 B got (B: {:?})\n{}",
        landed_partitions(&w.log_b),
        log_tail(&w.log_a)
    );
    producer.await??;
    wait_rows(&w.root_s, "orders", N, Duration::from_secs(120), &[])
        .with_context(|| log_tail(&w.log_b))?;
    std::thread::sleep(Duration::from_secs(2));
    assert_exact(&check(&w.root_s, "orders", &[])?, N);
    w.assert_no_file_twice();
    assert_eq!(a.metric(REVOKED)?, 2.0, "A lost partitions later");
    drop((a, b));
    Ok(())
}

/// Two sink workers in one group on a 4-partition topic; one is killed with SIGKILL
/// mid-stream and the other takes its partitions over: exactly N rows, and no file was
/// written twice (by either worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_the_survivor_takes_over() -> anyhow::Result<()> {
    const N: u64 = 40_000;
    let w = TwoWorkers::new("sink-group").await?;
    let root = w.dir.path().join("lake");
    let mut a = Sink::start(&w.cfg_a, &w.log_a)?;
    let b = Sink::start(&w.cfg_b, &w.log_b)?;
    let producer = w.produce(N);
    // Both have put files in place: the partitions are split. Then A dies mid-stream.
    let end = Instant::now() + Duration::from_secs(90);
    while landed(&w.log_a).len() < 3 || landed(&w.log_b).len() < 3 {
        if Instant::now() > end {
            bail!(
                "both workers did not write files in 90 s\nA:\n{}\nB:\n{}",
                log_tail(&w.log_a),
                log_tail(&w.log_b)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    a.child.kill()?;
    a.child.wait()?;
    let at_kill = check(&w.root_s, "orders", &[])?;
    assert!(
        at_kill["rows_pyarrow"].as_u64().unwrap_or(0) < N,
        "A was killed too late: {at_kill}"
    );
    // Every file in place now, with its inode: a file written again would be a new inode.
    let before = inodes(&root);
    producer.await??;
    drop(a);
    let v = wait_rows(&w.root_s, "orders", N, Duration::from_secs(120), &[])
        .with_context(|| log_tail(&w.log_b))?;
    std::thread::sleep(Duration::from_secs(2));
    let v2 = check(&w.root_s, "orders", &[])?;
    assert_exact(&v2, N);
    assert_eq!(v["files"], v2["files"], "files were still being added");
    // No file was written twice, and B wrote files for all four partitions after A died.
    w.assert_no_file_twice();
    let b_parts = landed_partitions(&w.log_b);
    assert_eq!(
        b_parts.len(),
        4,
        "the survivor did not take over: {b_parts:?}"
    );
    let after = inodes(&root);
    for (path, ino) in &before {
        assert_eq!(after.get(path), Some(ino), "{path} was written again");
    }
    drop(b);
    Ok(())
}

/// Path → inode of every visible Parquet file under `dir`.
fn inodes(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(inodes(&p));
        } else if visible_parquet(&e.file_name().to_string_lossy())
            && let Ok(m) = e.metadata()
        {
            out.insert(p.display().to_string(), m.ino());
        }
    }
    out
}

fn visible_parquet(name: &str) -> bool {
    name.ends_with(".parquet") && !name.starts_with(['_', '.'])
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, suffix)
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                usize::from(name.ends_with(suffix) && visible_parquet(&name))
            }
        })
        .sum()
}

const V1: &str = r#"{"type":"record","name":"Reading","namespace":"it.evo","fields":[
  {"name":"sensor","type":"string"},{"name":"value","type":"double"}]}"#;
const V2: &str = r#"{"type":"record","name":"Reading","namespace":"it.evo","fields":[
  {"name":"sensor","type":"string"},{"name":"value","type":"double"},
  {"name":"note","type":["null","string"],"default":null}]}"#;

fn single_object(schema: &str, v: AV) -> anyhow::Result<Vec<u8>> {
    let parsed = lakewire::decode::schema::ParsedSchema::parse(schema)?;
    let s = apache_avro::Schema::parse_str(schema)?;
    let mut out = vec![0xc3, 0x01];
    out.extend_from_slice(&parsed.fingerprint.to_le_bytes());
    out.extend_from_slice(&apache_avro::to_avro_datum(&s, v)?);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_schema_gains_an_optional_field_still_lands() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = unique("sink-evolve");
    create_topic(&topic, 1).await?;
    let root = dir.path().join("lake").display().to_string();
    // The schema change closes the v1 file; the wall-clock roll closes the v2 one.
    let cfg = config(
        dir.path(),
        &topic,
        "single-object",
        &root,
        "roll_interval_ms = 1000",
    )?;
    std::fs::write(dir.path().join("schemas/v1.avsc"), V1)?;
    std::fs::write(dir.path().join("schemas/v2.avsc"), V2)?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let base = base_ts();
    for i in 0..200i64 {
        let rec = |extra: Option<AV>| {
            let mut f = vec![
                ("sensor".to_string(), AV::String(format!("s{}", i % 7))),
                ("value".to_string(), AV::Double(i as f64)),
            ];
            if let Some(x) = extra {
                f.push(("note".to_string(), x));
            }
            AV::Record(f)
        };
        let payload = if i < 100 {
            single_object(V1, rec(None))?
        } else {
            single_object(
                V2,
                rec(Some(AV::Union(1, Box::new(AV::String("v2".into()))))),
            )?
        };
        p.send(
            FutureRecord::<(), _>::to(&topic)
                .timestamp(base + i)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let _sink = Sink::start(&cfg, &dir.path().join("sink.log"))?;
    let v = wait_rows(&root, "orders", 200, Duration::from_secs(60), &[])
        .with_context(|| log_tail(&dir.path().join("sink.log")))?;
    assert_exact(&v, 200);
    assert_eq!(v["evolved"].as_u64(), Some(100), "{v}");
    assert_eq!(v["types"]["note"].as_str(), Some("string"), "{v}");
    assert!(v["files"].as_u64() >= Some(2), "{v}");
    Ok(())
}

#[cfg(feature = "real-s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_path_lands_exactly_n_rows() -> anyhow::Result<()> {
    const N: u64 = 2000;
    let endpoint = std::env::var("TEST_S3_ENDPOINT")
        .context("TEST_S3_ENDPOINT (integration-tests/bin/s3 up; run-all sets it)")?;
    let bucket = std::env::var("TEST_S3_BUCKET").unwrap_or_else(|_| "lakewire-test".into());
    let dir = tempfile::tempdir()?;
    let topic = unique("sink-s3");
    create_topic(&topic, 2).await?;
    produce_orders(&topic, N as i64, 2, 2000).await?;
    let root = format!("s3://{bucket}/{}", unique("lake"));
    let s3 = format!(
        "roll_rows = 700\nroll_interval_ms = 1500\n\n[sink.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"lakewire\"\nsecret_access_key = \"lakewire-secret\"\nallow_http = true"
    );
    let cfg = config(dir.path(), &topic, "raw", &root, &s3)?;
    // [sink.s3] must come after the [sink] keys and before [[sink.tables]]: config() puts the
    // extra text there.
    let _sink = Sink::start(&cfg, &dir.path().join("sink.log"))?;
    let env = [
        ("S3_ENDPOINT", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "lakewire".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "lakewire-secret".to_string()),
    ];
    let v = wait_rows(&root, "orders", N, Duration::from_secs(90), &env).with_context(|| {
        std::fs::read_to_string(dir.path().join("sink.log")).unwrap_or_default()
    })?;
    assert_exact(&v, N);
    assert_eq!(
        v["types"]["amount"].as_str(),
        Some("decimal128(12, 2)"),
        "{v}"
    );
    assert!(v["files"].as_u64() >= Some(3), "{v}");
    Ok(())
}

/// The sink registering in a real Hive Metastore (`TEST_HIVE_METASTORE`, started by
/// `integration-tests/bin/metastore up`), read by Spark SQL through it
/// (integration-tests/sink/spark_read.py).
#[cfg(feature = "real-metastore")]
mod hive {
    use super::*;
    use lakewire_integration_tests::metastore::{OwnMetastore, run, shared_uri, spark_columns};

    fn it_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// What Spark SQL (Hive support, through the metastore at `uri`) reads of `table`.
    fn spark_read(uri: &str, table: &str, queries: &[String]) -> anyhow::Result<Value> {
        let mut cmd = Command::new(python());
        cmd.arg(it_dir().join("sink/spark_read.py"))
            .args(["--metastore", uri, "--table", table]);
        for q in queries {
            cmd.arg("--query").arg(q);
        }
        let started = Instant::now();
        let out = run(&mut cmd)?;
        println!("spark_read.py: {:.1}s", started.elapsed().as_secs_f64());
        Ok(serde_json::from_str(out.trim())?)
    }

    /// The `dt=../hr=..` directories of `table` holding visible Parquet files, sorted.
    fn partition_dirs(table_dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for dt in std::fs::read_dir(table_dir).into_iter().flatten().flatten() {
            for hr in std::fs::read_dir(dt.path()).into_iter().flatten().flatten() {
                if count_files(&hr.path(), ".parquet") > 0 {
                    out.push(format!(
                        "{}/{}",
                        dt.file_name().to_string_lossy(),
                        hr.file_name().to_string_lossy()
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// Waits until the sink has no partition waiting for the metastore (seen twice in a row:
    /// a file is queued just after it becomes visible).
    async fn wait_registered(sink: &Sink, within: Duration, log: &Path) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        let mut zero = 0;
        while zero < 2 {
            if sink.metric("lakewire_sink_pending_partitions ")? == 0.0 {
                zero += 1;
            } else {
                zero = 0;
            }
            if Instant::now() > end {
                bail!(
                    "partitions still pending after {within:?}:\n{}\n{}",
                    sink.metrics()?,
                    log_tail(log)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// Starts a sink of `topic` into `root`, registering in the metastore `uri`, database
    /// `db`; gives it and its log's path.
    fn start_registering(
        dir: &Path,
        topic: &str,
        format: &str,
        root: &str,
        (roll_rows, uri, db): (u32, &str, &str),
    ) -> anyhow::Result<(Sink, PathBuf)> {
        let cfg = config(
            dir,
            topic,
            format,
            root,
            &format!(
                "roll_rows = {roll_rows}\nroll_interval_ms = 1000\nmetastore_uri = \"{uri}\"\n\
                 database = \"{db}\""
            ),
        )?;
        let log = dir.join("sink.log");
        Ok((Sink::start(&cfg, &log)?, log))
    }

    /// A database name for this run only.
    fn unique_db(prefix: &str) -> String {
        unique(prefix).replace('-', "_")
    }

    /// Order `i` with the evolved schema's `note` field set.
    fn order_with_note(i: i64, base: i64) -> AV {
        match order(i, base) {
            AV::Record(mut fields) => {
                fields.push((
                    "note".into(),
                    AV::Union(1, Box::new(AV::String(format!("n{i}")))),
                ));
                AV::Record(fields)
            }
            other => other,
        }
    }

    /// order.avsc with a new optional field `note` (last).
    fn order_v2() -> anyhow::Result<String> {
        let mut v: Value = serde_json::from_str(ORDER)?;
        v["fields"]
            .as_array_mut()
            .context("fields")?
            .push(serde_json::json!({"name": "note", "type": ["null", "string"], "default": null}));
        Ok(v.to_string())
    }

    /// Produces orders `ids` as single-object Avro (v2 with a note when `evolved`), record
    /// timestamps `step_ms` apart from [`base_ts`].
    async fn produce_single(
        topic: &str,
        ids: std::ops::Range<i64>,
        step_ms: i64,
        evolved: bool,
    ) -> anyhow::Result<()> {
        let base = base_ts();
        let schema = if evolved {
            order_v2()?
        } else {
            ORDER.to_string()
        };
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        for i in ids {
            let v = if evolved {
                order_with_note(i, base)
            } else {
                order(i, base)
            };
            let payload = single_object(&schema, v)?;
            p.send(
                FutureRecord::<(), _>::to(topic)
                    .timestamp(base + i * step_ms)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        }
        Ok(())
    }

    /// N records over several hours → the sink registers every partition, Spark reads exactly
    /// N rows with the Avro types; then records with a new optional field → the table gains
    /// the column and Spark reads its values.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spark_reads_what_the_sink_registered_and_the_new_column() -> anyhow::Result<()> {
        const N: i64 = 1200;
        const M: i64 = 150;
        // 10 s apart: 1200 records span 3 h 20 min, so four or five Hive hours.
        const STEP: i64 = 10_000;
        let uri = shared_uri();
        let dir = tempfile::tempdir()?;
        let topic = unique("sink-hms");
        create_topic(&topic, 1).await?;
        let root = dir.path().join("lake");
        let root_s = root.display().to_string();
        let db = unique_db("lw_e2e");
        let schemas = dir.path().join("schemas");
        std::fs::create_dir_all(&schemas)?;
        std::fs::write(schemas.join("order.avsc"), ORDER)?;
        std::fs::write(schemas.join("order_v2.avsc"), order_v2()?)?;
        produce_single(&topic, 0..N, STEP, false).await?;
        let (sink, log) = start_registering(
            dir.path(),
            &topic,
            "single-object",
            &root_s,
            (500, &uri, &db),
        )?;
        let v = wait_rows(&root_s, "orders", N as u64, Duration::from_secs(90), &[])
            .with_context(|| log_tail(&log))?;
        assert_exact(&v, N as u64);
        wait_registered(&sink, Duration::from_secs(60), &log).await?;
        assert_eq!(
            sink.metric("lakewire_sink_metastore_errors_total ")?,
            0.0,
            "{}",
            log_tail(&log)
        );

        let table = format!("{db}.orders");
        let dirs = partition_dirs(&root.join("orders"));
        assert!(dirs.len() >= 4, "{dirs:?}");
        let got = spark_read(
            &uri,
            &table,
            &[format!(
                "SELECT id, amount, status, ship_to.city AS city, tags[1] AS tag, \
                 attributes['channel'] AS channel, delivery_date, discount, \
                 cast(ts AS bigint) AS ts_s, cast(_timestamp AS bigint) AS kafka_s \
                 FROM {table} WHERE id = 7"
            )],
        )?;
        assert_eq!(got["rows"], N, "{got}");
        assert_eq!(got["distinct_keys"], N, "{got}");
        assert_eq!(got["partitions"], serde_json::json!(dirs), "{got}");
        let columns = spark_columns(&got);
        let expected: Vec<(String, String)> = [
            ("id", "bigint"),
            ("ts", "timestamp"),
            ("customer", "string"),
            ("status", "string"),
            ("amount", "decimal(12,2)"),
            ("currency", "string"),
            ("quantity", "int"),
            ("price", "double"),
            ("discount", "float"),
            ("express", "boolean"),
            ("coupon", "string"),
            ("tags", "array<string>"),
            ("attributes", "map<string,string>"),
            (
                "ship_to",
                "struct<street:string,city:string,zip:string,country:string>",
            ),
            ("delivery_date", "date"),
            ("_topic", "string"),
            ("_partition", "int"),
            ("_offset", "bigint"),
            ("_timestamp", "timestamp"),
            ("dt", "string"),
            ("hr", "string"),
        ]
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
        assert_eq!(columns, expected, "{got}");
        let base_s = base_ts() / 1000;
        assert_eq!(
            got["queries"][0],
            serde_json::json!([{
                "id": 7, "amount": "87.37", "status": "CANCELLED", "city": "Bern",
                "tag": "web", "channel": "web", "delivery_date": "2025-11-27",
                "discount": null, "ts_s": base_s, "kafka_s": base_s + 70
            }]),
            "{got}"
        );

        // Schema evolution: records with a new optional field, in the last hour and the next.
        produce_single(&topic, N..N + M, STEP, true).await?;
        let v = wait_rows(
            &root_s,
            "orders",
            (N + M) as u64,
            Duration::from_secs(60),
            &[],
        )
        .with_context(|| log_tail(&log))?;
        assert_exact(&v, (N + M) as u64);
        wait_registered(&sink, Duration::from_secs(60), &log).await?;
        let dirs = partition_dirs(&root.join("orders"));
        let got = spark_read(
            &uri,
            &table,
            &[format!(
                "SELECT count(note) AS notes, min(id) AS first, max(note) AS last \
                 FROM {table} WHERE note IS NOT NULL"
            )],
        )?;
        assert_eq!(got["rows"], N + M, "{got}");
        assert_eq!(got["distinct_keys"], N + M, "{got}");
        assert_eq!(got["partitions"], serde_json::json!(dirs), "{got}");
        let names: Vec<String> = spark_columns(&got).into_iter().map(|c| c.0).collect();
        assert_eq!(names[names.len() - 3..], ["note", "dt", "hr"], "{got}");
        assert_eq!(
            got["queries"][0],
            serde_json::json!([{"notes": M, "first": N, "last": format!("n{}", N + M - 1)}]),
            "{got}"
        );
        drop(sink);
        Ok(())
    }

    /// `key_column` and `headers_column`: every record's Kafka key (Avro, decoded with the
    /// topic's `key_format`) and headers (repeated names, a null value, bytes that are not
    /// UTF-8) are columns that pyarrow, DuckDB and Spark (through the metastore) read back, and
    /// Spark joins the table on `_key`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_and_headers_columns_are_read_back_and_joined_on() -> anyhow::Result<()> {
        use rdkafka::message::{Header, OwnedHeaders};
        const N: i64 = 300;
        let uri = shared_uri();
        let dir = tempfile::tempdir()?;
        let topic = unique("sink-keys");
        create_topic(&topic, 2).await?;
        let root = dir.path().join("lake");
        let root_s = root.display().to_string();
        let db = unique_db("lw_keys");
        let cfg = config(
            dir.path(),
            &topic,
            "raw",
            &root_s,
            &format!(
                "roll_rows = 100\nroll_interval_ms = 1000\nmetastore_uri = \"{uri}\"\n\
                 database = \"{db}\""
            ),
        )?;
        // An Avro string key: on the wire a length byte, then the text. The column must hold
        // the decoded text.
        let key_schema = dir.path().join("key.avsc");
        std::fs::write(&key_schema, "\"string\"")?;
        let text = std::fs::read_to_string(&cfg)?
            .replace(
                "format = \"raw\"\n",
                &format!(
                    "format = \"raw\"\nkey_format = \"raw\"\nkey_schema = \"{}\"\n",
                    key_schema.display()
                ),
            )
            .replace(
                "table = \"orders\"\n",
                "table = \"orders\"\nkey_column = true\nheaders_column = true\n",
            );
        std::fs::write(&cfg, text)?;

        let base = base_ts();
        let schema = apache_avro::Schema::parse_str(ORDER)?;
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("acks", "all")
            .create()?;
        for i in 0..N {
            let key = apache_avro::to_avro_datum(
                &apache_avro::Schema::String,
                AV::String(format!("customer-{}", i % 10)),
            )?;
            let trace = format!("t-{i}");
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some(trace.as_bytes()),
            });
            if i % 50 == 0 {
                headers = headers
                    .insert(Header {
                        key: "trace",
                        value: Some(b"again".as_slice()),
                    })
                    .insert(Header {
                        key: "gone",
                        value: None::<&[u8]>,
                    })
                    .insert(Header {
                        key: "bin",
                        value: Some([0xffu8, 0x00].as_slice()),
                    });
            }
            let datum = apache_avro::to_avro_datum(&schema, order(i, base))?;
            p.send(
                FutureRecord::to(&topic)
                    .partition((i % 2) as i32)
                    .timestamp(base + i * 1000)
                    .key(&key)
                    .headers(headers)
                    .payload(&datum),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        }
        let log = dir.path().join("sink.log");
        let sink = Sink::start(&cfg, &log)?;
        let v = wait_rows(&root_s, "orders", N as u64, Duration::from_secs(90), &[])
            .with_context(|| log_tail(&log))?;
        assert_exact(&v, N as u64);
        assert_eq!(v["types"]["_key"].as_str(), Some("string"), "{v}");
        assert_eq!(
            v["types"]["_headers"].as_str(),
            Some("list<element: struct<key: string not null, value: binary> not null>"),
            "{v}"
        );
        // The sample is order 0: all four headers, in the order they were sent.
        assert_eq!(v["sample"]["_key"].as_str(), Some("customer-0"), "{v}");
        assert_eq!(
            v["sample_headers"],
            serde_json::json!([
                ["trace", "t-0"],
                ["trace", "again"],
                ["gone", null],
                ["bin", "\\xff\u{0}"]
            ]),
            "{v}"
        );
        let per_key: serde_json::Map<String, Value> = (0..10)
            .map(|k| (format!("customer-{k}"), serde_json::json!(N / 10)))
            .collect();
        assert_eq!(v["keys_duckdb"], Value::Object(per_key), "{v}");

        wait_registered(&sink, Duration::from_secs(60), &log).await?;
        let table = format!("{db}.orders");
        let got = spark_read(
            &uri,
            &table,
            &[
                format!(
                    "SELECT o._key AS k, count(*) AS n FROM {table} o \
                     JOIN (SELECT 'customer-3' AS k UNION ALL SELECT 'customer-7') c \
                     ON o._key = c.k GROUP BY o._key ORDER BY k"
                ),
                format!(
                    "SELECT id, size(_headers) AS headers, _headers[1].key AS second, \
                     cast(_headers[1].value AS string) AS again, \
                     _headers[2].value IS NULL AS gone FROM {table} WHERE id = 50"
                ),
            ],
        )?;
        assert_eq!(got["rows"], N, "{got}");
        let columns = spark_columns(&got);
        let tail: Vec<(String, String)> = columns[columns.len() - 4..].to_vec();
        let expected: Vec<(String, String)> = [
            ("_key", "string"),
            ("_headers", "array<struct<key:string,value:binary>>"),
            ("dt", "string"),
            ("hr", "string"),
        ]
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
        assert_eq!(tail, expected, "{got}");
        assert_eq!(
            got["queries"][0],
            serde_json::json!([{"k": "customer-3", "n": N / 10}, {"k": "customer-7", "n": N / 10}]),
            "{got}"
        );
        assert_eq!(
            got["queries"][1],
            serde_json::json!([{"id": 50, "headers": 4, "second": "trace", "again": "again", "gone": true}]),
            "{got}"
        );
        drop(sink);
        Ok(())
    }

    /// The metastore stopped while records flow: files keep landing, partitions wait
    /// (pending gauge > 0, errors counted); the metastore back: every partition registered,
    /// Spark reads them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_metastore_outage_delays_registration_only() -> anyhow::Result<()> {
        const N1: i64 = 400;
        const N2: i64 = 800;
        // 8 s apart from a full hour: the first batch fills 53 min of that hour, the second
        // reaches 2 h 40 min (two new Hive hours); brokers refuse timestamps over an hour ahead.
        const STEP: i64 = 8_000;
        // Its own metastore, stopped below: never the shared one.
        let own = OwnMetastore::start()?;
        let uri = own.uri();
        let dir = tempfile::tempdir()?;
        let topic = unique("sink-hms-outage");
        create_topic(&topic, 2).await?;
        let root = dir.path().join("lake");
        let root_s = root.display().to_string();
        let (sink, log) =
            start_registering(dir.path(), &topic, "raw", &root_s, (200, &uri, "outage"))?;
        produce_order_range(&topic, 0..N1, 2, STEP).await?;
        wait_rows(&root_s, "orders", N1 as u64, Duration::from_secs(60), &[])
            .with_context(|| log_tail(&log))?;
        wait_registered(&sink, Duration::from_secs(60), &log).await?;
        let before = partition_dirs(&root.join("orders"));

        own.command("stop")?;
        produce_order_range(&topic, N1..N1 + N2, 2, STEP).await?;
        let v = wait_rows(
            &root_s,
            "orders",
            (N1 + N2) as u64,
            Duration::from_secs(60),
            &[],
        )
        .with_context(|| log_tail(&log))?;
        assert_exact(&v, (N1 + N2) as u64);
        let dirs = partition_dirs(&root.join("orders"));
        let new_parts = dirs.iter().filter(|d| !before.contains(d)).count();
        assert!(new_parts >= 2, "{before:?} {dirs:?}");
        // Files landed, partitions wait for the metastore.
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let pending = sink.metric("lakewire_sink_pending_partitions ")?;
            let errors = sink.metric("lakewire_sink_metastore_errors_total ")?;
            if pending >= new_parts as f64 && errors >= 1.0 {
                break;
            }
            if Instant::now() > end {
                bail!("pending {pending}, errors {errors}:\n{}", log_tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // An outage is not a refusal.
        assert_eq!(
            sink.metric("lakewire_sink_metastore_refused_total ")?,
            0.0,
            "{}",
            log_tail(&log)
        );

        own.command("up")?;
        // The backoff is at most 60 s.
        wait_registered(&sink, Duration::from_secs(90), &log).await?;
        let got = spark_read(&uri, "outage.orders", &[])?;
        assert_eq!(got["rows"], N1 + N2, "{got}");
        assert_eq!(got["distinct_keys"], N1 + N2, "{got}");
        assert_eq!(got["partitions"], serde_json::json!(dirs), "{got}");
        drop(sink);
        Ok(())
    }

    /// A table the metastore already has with other partition columns: `add_partition` is
    /// refused (a permanent error). The refusal is counted, the partitions stay pending, files
    /// land, and the refused partitions are not retried in a loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_registration_is_counted_and_not_retried_in_a_loop() -> anyhow::Result<()> {
        const N: i64 = 300;
        let uri = shared_uri();
        let db = unique_db("lw_refused");
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("lake");
        let root_s = root.display().to_string();
        // The table exists, partitioned by `day` only (the sink's is dt, hr).
        let ms = lakewire::sink::metastore::Metastore::connect(&uri).await?;
        let schema = arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "id",
            arrow_schema::DataType::Int64,
            true,
        )]);
        ms.ensure_table(
            &db,
            "orders",
            &format!("file:{root_s}/orders"),
            &schema,
            &["day".to_string()],
        )
        .await?;
        let topic = unique("sink-hms-refused");
        create_topic(&topic, 1).await?;
        produce_order_range(&topic, 0..N, 1, 20_000).await?;
        let (sink, log) = start_registering(dir.path(), &topic, "raw", &root_s, (100, &uri, &db))?;
        let v = wait_rows(&root_s, "orders", N as u64, Duration::from_secs(60), &[])
            .with_context(|| log_tail(&log))?;
        assert_exact(&v, N as u64);
        let parts = partition_dirs(&root.join("orders")).len();
        assert!(parts >= 2, "{v}");
        let end = Instant::now() + Duration::from_secs(30);
        while sink.metric("lakewire_sink_metastore_refused_total ")? < parts as f64 {
            if Instant::now() > end {
                bail!(
                    "refusals not counted:\n{}\n{}",
                    sink.metrics()?,
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Each partition once, then parked: no retry loop.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            sink.metric("lakewire_sink_metastore_refused_total ")?,
            parts as f64,
            "{}",
            log_tail(&log)
        );
        assert_eq!(
            sink.metric("lakewire_sink_metastore_errors_total ")?,
            parts as f64
        );
        assert_eq!(
            sink.metric("lakewire_sink_pending_partitions ")?,
            parts as f64
        );
        let text = std::fs::read_to_string(&log)?;
        assert!(
            text.contains("the metastore refused the partition's registration"),
            "{}",
            log_tail(&log)
        );
        // Nothing registered.
        assert!(ms.get_partitions(&db, "orders").await?.is_empty());
        drop(sink);
        Ok(())
    }
}
