//! The sink scenario (`wsload sink`): Kafka → Parquet end to end, on the real broker.
//!
//! N realistic records (`schemas/order.avsc` orders from the benchmarks' generator,
//! `gateway/benches/common/orders.rs`, in single-object framing) are produced to a fresh topic
//! first; then `lakewire run --role sink` starts with a local-filesystem root and is timed from
//! its start until every record is in a landed file (`lakewire_sink_records_total` = N), and
//! the files are checked: exactly N rows (Parquet footers), each partition's offsets covered
//! once, no temporary file left. The baseline of the same run: a gateway (no sink) reading the
//! same records, produced to a sibling topic while it runs, through its live consumer and the
//! Avro → JSON decoder (`lakewire_kafka_records_total` = N).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};

// The benchmarks' generator, shared (gateway/benches includes it the same way). The gateway
// crate keeps Rust 1.85 as its minimum, where `is_multiple_of` does not exist yet.
#[allow(clippy::manual_is_multiple_of)]
#[path = "../../../gateway/benches/common/orders.rs"]
mod orders;

/// The single-object encoding's marker (`0xC3 0x01`).
const MARKER: [u8; 2] = [0xc3, 0x01];

/// The table the sink writes.
pub const TABLE: &str = "orders";

/// `schemas/order.avsc`.
pub fn schema_text() -> &'static str {
    orders::SCHEMA
}

/// N orders, each a single-object encoded value (`0xC3 0x01`, the schema's CRC-64-AVRO
/// fingerprint little-endian, the Avro binary), in one buffer.
#[derive(Debug)]
pub struct Encoded {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Encoded {
    /// Orders `0..n` of the benchmarks' generator.
    pub fn orders(n: usize) -> anyhow::Result<Self> {
        let schema = apache_avro::Schema::parse_str(orders::SCHEMA).context("order.avsc")?;
        let header = single_object_header(orders::SCHEMA)?;
        let mut data = Vec::with_capacity(n * 160);
        let mut ends = Vec::with_capacity(n);
        for i in 0..n {
            data.extend_from_slice(&header);
            data.extend_from_slice(&orders::encode(&schema, i));
            ends.push(data.len());
        }
        Ok(Self { data, ends })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Mean bytes per value (framing included).
    pub fn mean_bytes(&self) -> f64 {
        self.data.len() as f64 / self.len().max(1) as f64
    }
}

/// `0xC3 0x01` and the CRC-64-AVRO fingerprint (little-endian) of the schema's Parsing
/// Canonical Form, as the gateway computes it. (Not apache-avro's `Schema::fingerprint`: its
/// 0.21 canonical form keeps logical-type attributes such as `precision`, so its fingerprint of
/// `order.avsc` matches no spec-following reader.)
pub fn single_object_header(schema_text: &str) -> anyhow::Result<[u8; 10]> {
    let parsed = lakewire::decode::schema::ParsedSchema::parse(schema_text)
        .map_err(|e| anyhow::anyhow!("order.avsc: {e}"))?;
    let mut h = [0u8; 10];
    h[..2].copy_from_slice(&MARKER);
    h[2..].copy_from_slice(&parsed.fingerprint.to_le_bytes());
    Ok(h)
}

/// Records of each partition when record `i` goes to partition `i % partitions`.
pub fn per_partition(n: u64, partitions: u32) -> Vec<u64> {
    let p = u64::from(partitions.max(1));
    (0..p).map(|k| n / p + u64::from(k < n % p)).collect()
}

/// The Kafka timestamp of record `i` of `n`: spread over the hour that starts at `hour_ms`,
/// so that every record falls in one Hive partition (`dt`, `hr`) and files are cut by rows
/// only.
pub fn timestamp_ms(hour_ms: i64, i: u64, n: u64) -> i64 {
    hour_ms + (i as i128 * 3_599_000 / i128::from(n.max(1))) as i64
}

/// Like [`timestamp_ms`], but record `i` (of partition `i % partitions`) falls `(i /
/// partitions) % hours` hours before `hour_ms`: each partition's records interleave over
/// `hours` Hive partitions, record by record (`--hours`).
pub fn interleaved_timestamp_ms(hour_ms: i64, i: u64, n: u64, partitions: u32, hours: u32) -> i64 {
    let back = (i / u64::from(partitions.max(1))) % u64::from(hours.max(1));
    timestamp_ms(hour_ms, i, n) - back as i64 * 3_600_000
}

struct Ctx {
    failed: Arc<AtomicU64>,
}

impl rdkafka::ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces every value of `enc` to `topic` (record `i` to partition `i % partitions`, with
/// [`timestamp_ms`]), as fast as the producer goes, and waits until the broker has them all.
pub fn produce(
    brokers: &str,
    topic: &str,
    partitions: u32,
    enc: &Encoded,
    hour_ms: i64,
    hours: u32,
) -> anyhow::Result<()> {
    let failed = Arc::new(AtomicU64::new(0));
    let producer: BaseProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Ctx {
            failed: failed.clone(),
        })
        .context("creating the Kafka producer")?;
    let n = enc.len() as u64;
    let mut i = 0u64;
    while i < n {
        let rec = BaseRecord::<(), [u8]>::to(topic)
            .partition((i % u64::from(partitions.max(1))) as i32)
            .timestamp(interleaved_timestamp_ms(hour_ms, i, n, partitions, hours))
            .payload(enc.get(i as usize));
        match producer.send(rec) {
            Ok(()) => i += 1,
            Err((KafkaError::MessageProduction(_), _)) => {
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {n} records were not delivered to the broker");
    }
    Ok(())
}

/// The sink's settings in the scenario.
#[derive(Debug, Clone)]
pub struct SinkOpts {
    /// `sink.root`: a local folder.
    pub root: PathBuf,
    /// `sink.group_id`.
    pub group: String,
    /// `sink.compression`: `zstd` or `snappy`.
    pub compression: String,
    /// `sink.roll_rows`.
    pub roll_rows: u64,
}

/// A configuration for one `single-object` topic of orders (schema in `schemas_dir`): with
/// `sink`, the sink's table [`TABLE`] of that topic (run it with `--role sink`); without, a
/// plain gateway serving the topic (the baseline).
pub fn config_toml(
    brokers: &str,
    topic: &str,
    port: u16,
    schemas_dir: &Path,
    kafka_properties: &[(String, String)],
    sink: Option<&SinkOpts>,
) -> String {
    let props = crate::gateway::kafka_properties_toml(kafka_properties);
    let mut s = format!(
        "schemas_dir = {:?}\n\n[kafka]\nbrokers = {brokers:?}\n{props}\n[websocket]\n\
         listen = \"127.0.0.1:{port}\"\n\n[[topics]]\nname = {topic:?}\n\
         format = \"single-object\"\n",
        schemas_dir.display().to_string()
    );
    if let Some(o) = sink {
        s.push_str(&format!(
            "\n[sink]\nroot = {:?}\ngroup_id = {:?}\ncompression = {:?}\nroll_rows = {}\n\
             \n[[sink.tables]]\ntopic = {topic:?}\ntable = \"{TABLE}\"\n",
            o.root.display().to_string(),
            o.group,
            o.compression,
            o.roll_rows
        ));
    }
    s
}

pub use crate::landed::{Landed, check_landed, check_landed_interleaved};

/// Polls `read` (a counter) until it reaches `n`; fails when it exceeds `n`, when `check`
/// fails (e.g. the process exited, decode errors) or after `timeout`. The elapsed time.
pub async fn wait_for<R, C>(
    n: u64,
    timeout: Duration,
    mut read: R,
    check: &mut C,
) -> anyhow::Result<Duration>
where
    R: AsyncFnMut() -> anyhow::Result<f64>,
    C: FnMut() -> anyhow::Result<()>,
{
    let t0 = Instant::now();
    loop {
        let v = read().await?;
        if v > n as f64 {
            bail!("the counter read {v}, more than the {n} records produced");
        }
        if v == n as f64 {
            return Ok(t0.elapsed());
        }
        check()?;
        if t0.elapsed() > timeout {
            bail!("{v} of {n} records after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scenario's settings (`wsload sink --help`).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub brokers: String,
    /// The `lakewire` binary.
    pub bin: PathBuf,
    pub records: u64,
    pub partitions: u32,
    pub compression: String,
    pub roll_rows: u64,
    /// Hive partitions (hours) each Kafka partition's records interleave over, record by
    /// record (1: all in one).
    pub hours: u32,
    /// How long each server may take to get through the records.
    pub timeout: Duration,
    /// Also measure the gateway's decode path on the same records.
    pub baseline: bool,
    /// The Kafka broker's pid, for its CPU.
    pub broker_pid: Option<u32>,
    /// librdkafka properties for both servers' consumers (`[kafka.properties]`).
    pub kafka_properties: Vec<(String, String)>,
}

/// One server's run over the records.
#[derive(Debug, Clone, Copy)]
struct Measured {
    records: u64,
    wall: f64,
    cpu: f64,
    peak_rss_kib: u64,
    /// Share of the machine's CPU (all cores) busy over the run, percent.
    machine_busy_pct: f64,
    /// CPU seconds of the broker over the run.
    broker_cpu: Option<f64>,
}

impl Measured {
    fn per_s(&self) -> f64 {
        self.records as f64 / self.wall.max(1e-3)
    }
    fn per_core(&self) -> f64 {
        self.records as f64 / self.cpu.max(0.01)
    }
}

/// The counter `name` of the server at `addr`; fails when it has counted decode errors.
async fn counter(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (status, body) = crate::gateway::http_get(addr, "/metrics").await?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    let errors = crate::gateway::metric_sum(&body, "lakewire_decode_errors_total");
    if errors > 0.0 {
        bail!("the server counted {errors} decode errors (lakewire_decode_errors_total)");
    }
    Ok(crate::gateway::metric_sum(&body, name))
}

fn alive(s: &mut crate::gateway::Spawned) -> anyhow::Result<()> {
    if let Some(st) = s.exited()? {
        bail!(
            "the server exited ({st}); its log: {}",
            s.log_path().display()
        );
    }
    Ok(())
}

fn now_ms() -> i64 {
    (crate::now_us() / 1000) as i64
}

/// Runs the scenario and prints the table, a JSON line per server and a summary line.
pub async fn run(s: &Scenario) -> anyhow::Result<()> {
    use crate::gateway::{Spawned, create_topic, unique_topic};
    use crate::procstat;

    if s.records == 0 || s.partitions == 0 || s.roll_rows == 0 || s.hours == 0 {
        bail!("--records, --partitions, --roll-rows and --hours must be at least 1");
    }
    let counts = per_partition(s.records, s.partitions);
    let per_folder = s.roll_rows * u64::from(s.hours);
    if let Some(c) = counts.iter().find(|c| *c % per_folder != 0) {
        bail!(
            "a partition gets {c} records, not a multiple of --roll-rows {} × --hours {}: its \
             last files would wait for a wall-clock roll; choose --records = partitions × \
             hours × rows × k",
            s.roll_rows,
            s.hours
        );
    }
    let t = Instant::now();
    let enc = Arc::new(Encoded::orders(s.records as usize)?);
    eprintln!(
        "wsload: encoded {} orders ({:.0} B each on average) in {:.1} s",
        enc.len(),
        enc.mean_bytes(),
        t.elapsed().as_secs_f64()
    );
    let schemas = std::env::temp_dir().join(format!("wsload-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&schemas)?;
    std::fs::write(schemas.join("order.avsc"), orders::SCHEMA)?;
    let hour_ms = now_ms() / 3_600_000 * 3_600_000;

    let topic = unique_topic();
    create_topic(&s.brokers, &topic, s.partitions as i32).await?;
    let t = Instant::now();
    produce(&s.brokers, &topic, s.partitions, &enc, hour_ms, s.hours)?;
    eprintln!(
        "wsload: produced them to {topic} ({} partitions) in {:.1} s",
        s.partitions,
        t.elapsed().as_secs_f64()
    );

    println!(
        "== sink: {} orders (schemas/order.avsc, single-object, {:.0} B), {} partitions, \
         interleaved over {} Hive partition(s), {}, files of {} rows, local filesystem; {} \
         cores shared by the tool, the broker, the server and whatever else runs on this \
         machine; loadavg {}",
        s.records,
        enc.mean_bytes(),
        s.partitions,
        s.hours,
        s.compression,
        s.roll_rows,
        procstat::cores(),
        procstat::loadavg()
    );

    let broker_ticks = || s.broker_pid.and_then(|p| procstat::cpu_ticks(p).ok());
    let broker_cpu = |t0: Option<u64>| {
        Some((broker_ticks()?.saturating_sub(t0?)) as f64 / procstat::TICKS_PER_SEC)
    };

    // The sink: from its start until every record is in a landed file.
    let busy0 = procstat::machine_ticks()?;
    let broker0 = broker_ticks();
    let t0 = Instant::now();
    let group = format!("wsload-sink-{topic}");
    let mut sink = Spawned::start_with(&s.bin, &["run", "--role", "sink"], |port, dir| {
        let opts = SinkOpts {
            root: dir.join("lake"),
            group: group.clone(),
            compression: s.compression.clone(),
            roll_rows: s.roll_rows,
        };
        config_toml(
            &s.brokers,
            &topic,
            port,
            &schemas,
            &s.kafka_properties,
            Some(&opts),
        )
    })
    .await?;
    let (pid, addr) = (sink.pid(), sink.addr);
    eprintln!(
        "wsload: started {} --role sink (pid {pid}); log {}",
        s.bin.display(),
        sink.log_path().display()
    );
    let mut probe = || alive(&mut sink);
    wait_for(
        s.records,
        s.timeout,
        async || counter(addr, "lakewire_sink_records_total").await,
        &mut probe,
    )
    .await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = procstat::cpu_ticks(pid)? as f64 / procstat::TICKS_PER_SEC;
    let (peak, _) = procstat::rss_kib(pid)?;
    let busy1 = procstat::machine_ticks()?;
    let sink_broker = broker_cpu(broker0);
    let files_metric = counter(addr, "lakewire_sink_files_total").await?;
    let table_dir = sink.dir().join("lake").join(TABLE);
    let landed = if s.hours == 1 {
        check_landed(&table_dir, &topic, &counts)?
    } else {
        check_landed_interleaved(&table_dir, &topic, &counts, s.hours)?
    };
    if landed.rows != s.records || landed.files as f64 != files_metric {
        bail!(
            "landed {} rows in {} files, the sink reports {files_metric} files",
            landed.rows,
            landed.files
        );
    }
    sink.stop()?;
    let sink_m = Measured {
        records: s.records,
        wall,
        cpu,
        peak_rss_kib: peak,
        machine_busy_pct: busy_pct(busy0, busy1),
        broker_cpu: sink_broker,
    };

    // The baseline: the gateway's live consumer and Avro → JSON decoder on the same records.
    let base_m = if s.baseline {
        let btopic = format!("{topic}-decode");
        create_topic(&s.brokers, &btopic, s.partitions as i32).await?;
        let mut gw = Spawned::start_with(&s.bin, &["run"], |port, _| {
            config_toml(
                &s.brokers,
                &btopic,
                port,
                &schemas,
                &s.kafka_properties,
                None,
            )
        })
        .await?;
        let (pid, addr) = (gw.pid(), gw.addr);
        // Let its live consumer take its place at the end of the empty topic.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ticks0 = procstat::cpu_ticks(pid)?;
        let busy0 = procstat::machine_ticks()?;
        let broker0 = broker_ticks();
        let t0 = Instant::now();
        let producing = {
            let (brokers, btopic, enc) = (s.brokers.clone(), btopic.clone(), enc.clone());
            let parts = s.partitions;
            std::thread::spawn(move || produce(&brokers, &btopic, parts, &enc, hour_ms, 1))
        };
        let mut probe = || alive(&mut gw);
        wait_for(
            s.records,
            s.timeout,
            async || counter(addr, "lakewire_kafka_records_total").await,
            &mut probe,
        )
        .await?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (procstat::cpu_ticks(pid)? - ticks0) as f64 / procstat::TICKS_PER_SEC;
        let (peak, _) = procstat::rss_kib(pid)?;
        let busy1 = procstat::machine_ticks()?;
        let broker = broker_cpu(broker0);
        match producing.join() {
            Ok(r) => r?,
            Err(_) => bail!("the producer thread panicked"),
        }
        gw.stop()?;
        Some(Measured {
            records: s.records,
            wall,
            cpu,
            peak_rss_kib: peak,
            machine_busy_pct: busy_pct(busy0, busy1),
            broker_cpu: broker,
        })
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&schemas);

    println!(
        "{:>34} {:>9} {:>8} {:>8} {:>11} {:>14} {:>9} {:>8} {:>9}",
        "path",
        "records",
        "wall s",
        "CPU s",
        "records/s",
        "records/s/core",
        "peak RSS",
        "machine",
        "broker s"
    );
    let row = |name: &str, m: &Measured| {
        println!(
            "{name:>34} {:>9} {:>8.2} {:>8.2} {:>11.0} {:>14.0} {:>5.0} MiB {:>7.0}% {:>9}",
            m.records,
            m.wall,
            m.cpu,
            m.per_s(),
            m.per_core(),
            m.peak_rss_kib as f64 / 1024.0,
            m.machine_busy_pct,
            m.broker_cpu.map_or("?".into(), |c| format!("{c:.2}"))
        );
    };
    row("sink: Kafka -> Parquet files", &sink_m);
    if let Some(b) = &base_m {
        row("baseline: Kafka -> JSON (gateway)", b);
    }
    println!(
        "sink: {} files, {:.1} MiB ({:.1} B/row), every offset once, {} rows by the footers",
        landed.files,
        landed.bytes as f64 / 1_048_576.0,
        landed.bytes as f64 / landed.rows.max(1) as f64,
        landed.rows
    );
    let json = |m: &Measured| {
        serde_json::json!({"records": m.records, "wall_s": round2(m.wall), "cpu_s": round2(m.cpu),
            "records_per_s": m.per_s().round(), "records_per_s_per_core": m.per_core().round(),
            "peak_rss_mib": (m.peak_rss_kib as f64 / 1024.0).round(),
            "machine_busy_pct": m.machine_busy_pct.round(),
            "broker_cpu_s": m.broker_cpu.map(round2)})
    };
    let mut summary = serde_json::json!({
        "wsload": "sink", "records": s.records, "partitions": s.partitions,
        "compression": s.compression, "roll_rows": s.roll_rows, "hours": s.hours,
        "kafka_properties": s.kafka_properties.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "record_bytes": enc.mean_bytes().round(),
        "sink": json(&sink_m),
        "files": landed.files, "file_bytes": landed.bytes,
        "target_records_per_s_per_core": 500_000,
        "target_met": sink_m.per_core() >= 500_000.0,
        "cores": procstat::cores(), "loadavg": procstat::loadavg(),
        "shared_machine": "the tool, the Kafka broker and the server run on this machine, with other work",
    });
    if let Some(b) = &base_m {
        summary["baseline_decode"] = json(b);
        summary["ratio_sink_to_decode_per_core"] =
            (round2(sink_m.per_core() / b.per_core())).into();
        println!(
            "sink / decode per core: {:.2}; sink per core {:.0} records/s against the 500,000 target ({})",
            sink_m.per_core() / b.per_core(),
            sink_m.per_core(),
            if sink_m.per_core() >= 500_000.0 {
                "met"
            } else {
                "missed"
            }
        );
    }
    println!("{summary}");
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn busy_pct((b0, t0): (u64, u64), (b1, t1): (u64, u64)) -> f64 {
    b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::landed::parse_name;

    #[test]
    fn partitions_split_the_records_round_robin() {
        assert_eq!(per_partition(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(per_partition(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(per_partition(5, 1), vec![5]);
    }

    #[test]
    fn timestamps_stay_inside_the_hour() {
        let h = 1_800_000_000_000 / 3_600_000 * 3_600_000;
        assert_eq!(timestamp_ms(h, 0, 1000), h);
        let last = timestamp_ms(h, 999_999, 1_000_000);
        assert!(last > h && last < h + 3_600_000);
        // Interleaved over 3 hours, 2 partitions: records 0,1 now, 2,3 an hour back, ...
        let hour = |i| interleaved_timestamp_ms(h, i, 1000, 2, 3).div_euclid(3_600_000);
        let now = h / 3_600_000;
        let hours: Vec<i64> = (0..8).map(|i| now - hour(i)).collect();
        assert_eq!(hours, [0, 0, 1, 1, 2, 2, 0, 0]);
    }

    #[test]
    fn names_parse_only_for_the_topic() {
        assert_eq!(
            parse_name("t-1+3+100+199.parquet", "t-1"),
            Some((3, 100, 199))
        );
        assert_eq!(parse_name("t-1+3+100+199.parquet", "t"), None);
        assert_eq!(parse_name("_tmp.t-1+3+100+199.parquet.42.tmp", "t-1"), None);
        assert_eq!(parse_name("t-1+3+200+199.parquet", "t-1"), None);
        assert_eq!(parse_name("t-1+3+100.parquet", "t-1"), None);
    }

    #[test]
    fn values_are_single_object_orders() -> anyhow::Result<()> {
        let enc = Encoded::orders(3)?;
        assert_eq!(enc.len(), 3);
        let schema = apache_avro::Schema::parse_str(schema_text())?;
        for i in 0..3 {
            let v = enc.get(i);
            assert_eq!(&v[..2], &MARKER);
            // (Maps are hash maps: compare decoded values, not bytes.)
            let ours = apache_avro::from_avro_datum(&schema, &mut &v[10..], None)?;
            let direct = orders::encode(&schema, i);
            assert_eq!(
                ours,
                apache_avro::from_avro_datum(&schema, &mut &direct[..], None)?
            );
        }
        assert!(enc.mean_bytes() > 100.0);
        Ok(())
    }

    #[test]
    fn the_gateway_decodes_the_values() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("order.avsc"), schema_text())?;
        let text = config_toml("127.0.0.1:1", "t", 9, dir.path(), &[], None);
        let config = lakewire::config::Config::from_toml_and_env(&text, &[], "test")?;
        let metrics = lakewire::metrics::Metrics::default();
        let cx = lakewire::decode::DecodeContext::new(&config, &metrics)?;
        let d = lakewire::decode::Decoder::new(&config.topics[0], &cx)?;
        let enc = Encoded::orders(2)?;
        for i in 0..2 {
            let r = d.decode(&lakewire::record::RawRecord {
                partition: 0,
                offset: i as i64,
                timestamp: Some(0),
                key: None,
                payload: Some(enc.get(i)),
                headers: None,
            })?;
            let v = r.value();
            assert_eq!(v["id"], 1_000_000 + i as i64, "{v}");
            assert_eq!(v["ship_to"]["city"], "Stuttgart", "{v}");
        }
        Ok(())
    }

    #[test]
    fn sink_and_baseline_configurations_parse() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let opts = SinkOpts {
            root: dir.path().join("lake"),
            group: "g".into(),
            compression: "zstd".into(),
            roll_rows: 1000,
        };
        let props = [("fetch.queue.backoff.ms".to_string(), "10".to_string())];
        let with = config_toml("127.0.0.1:1", "t", 9, dir.path(), &props, Some(&opts));
        let c = lakewire::config::Config::from_toml_and_env(&with, &[], "test")?;
        let sink = c.sink.context("no [sink]")?;
        assert_eq!(sink.roll_rows, 1000);
        assert_eq!(sink.tables[0].topic, "t");
        assert_eq!(
            c.kafka
                .properties
                .get("fetch.queue.backoff.ms")
                .map(String::as_str),
            Some("10")
        );
        let without = config_toml("127.0.0.1:1", "t", 9, dir.path(), &[], None);
        let c = lakewire::config::Config::from_toml_and_env(&without, &[], "test")?;
        assert!(c.sink.is_none());
        assert_eq!(c.topics[0].name, "t");
        Ok(())
    }

    /// A table folder as the sink leaves it, built by hand with the parquet crate.
    fn write_file(dir: &Path, name: &str, rows: usize) -> anyhow::Result<()> {
        use std::sync::Arc;
        let col = arrow_array::Int64Array::from_iter_values(0..rows as i64);
        let batch = arrow_array::RecordBatch::try_from_iter([(
            "x",
            Arc::new(col) as arrow_array::ArrayRef,
        )])?;
        std::fs::create_dir_all(dir)?;
        let f = std::fs::File::create(dir.join(name))?;
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None)?;
        w.write(&batch)?;
        w.close()?;
        Ok(())
    }

    #[test]
    fn landed_files_must_cover_every_offset_once() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let part = d.path().join("dt=2026-11-27/hr=11");
        write_file(&part, "t+0+0+9.parquet", 10)?;
        write_file(&part, "t+0+10+14.parquet", 5)?;
        write_file(&part, "t+1+0+14.parquet", 15)?;
        let l = check_landed(d.path(), "t", &[15, 15])?;
        assert_eq!(l.rows, 30);
        assert_eq!(l.files, 3);
        assert!(l.bytes > 0);
        // Fewer records than produced in a partition.
        assert!(check_landed(d.path(), "t", &[15, 16]).is_err());
        // A duplicate range (a replay that cut differently).
        write_file(&part, "t+1+10+14.parquet", 5)?;
        assert!(check_landed(d.path(), "t", &[15, 15]).is_err());
        std::fs::remove_file(part.join("t+1+10+14.parquet"))?;
        // A file whose rows do not match its name.
        write_file(&part, "t+2+0+9.parquet", 9)?;
        let e = check_landed(d.path(), "t", &[15, 15, 10]).err();
        assert!(format!("{e:?}").contains("9 rows"), "{e:?}");
        std::fs::remove_file(part.join("t+2+0+9.parquet"))?;
        // A temporary file left behind.
        std::fs::write(part.join("_tmp.t+0+15+19.parquet.1.tmp"), b"x")?;
        assert!(check_landed(d.path(), "t", &[15, 15]).is_err());
        Ok(())
    }
}
