//! The `wsload` command; see the crate documentation and `integration-tests/bin/wsload`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use lakewire_wsload::gateway::{self, Spawned};
use lakewire_wsload::load::{self, FilterMode, IdleOutcome, Outcome, Point, Protocol, Watched};
use lakewire_wsload::{procstat, produce};

/// Load tool for the Lakewire gateway: real Kafka in, N WebSocket clients out.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One point: produce at --rate for --duration seconds and report.
    Run {
        #[command(flatten)]
        common: Common,
        /// Records per second to produce.
        #[arg(long)]
        rate: u64,
    },
    /// Step the rate up (×--factor) until a point is not sustainable; report the maximum.
    Sweep {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sweep: SweepArgs,
    },
    /// The scenarios in one go, per server: fan-out sweep; at its maximum rate the same with
    /// --stalled-share of the clients stalled; latency at half its maximum.
    Suite {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sweep: SweepArgs,
        /// Share of clients that stall in the stalled scenario.
        #[arg(long, default_value_t = 0.1)]
        stalled_share: f64,
    },
    /// The selective scenario: a sweep where each client has its own filter matching ~1% of
    /// the records (Lakewire: a CEL filter; Centrifugo: a tags filter on the same field).
    Selective {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sweep: SweepArgs,
    },
    /// The connections scenario: --clients idle subscribed connections (no records), the
    /// server's resident memory per connection.
    Connections {
        #[command(flatten)]
        common: Common,
        /// Seconds to wait with every connection open before reading the memory.
        #[arg(long, default_value_t = 5.0)]
        settle: f64,
    },
    /// The Kafka leg alone, no server: produce→consume latency of the same records through
    /// librdkafka's StreamConsumer (as the gateway reads) and BaseConsumer::poll on a thread.
    KafkaLatency {
        /// Kafka bootstrap brokers.
        #[arg(long, env = "WSLOAD_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Records per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// A librdkafka property for both consumers, `key=value` (repeatable).
        #[arg(long = "kafka-property", value_parser = key_value)]
        kafka_properties: Vec<(String, String)>,
    },
    /// The decode scenario: no clients; --records records produced as fast as the producer
    /// can, the server's CPU time until it has read (and decoded) them all: records/s per
    /// core.
    Decode {
        #[command(flatten)]
        common: Common,
        /// Records to produce.
        #[arg(long, default_value_t = 300_000)]
        records: u64,
    },
    /// The sink scenario (issue 6): --records realistic Avro records (schemas/order.avsc,
    /// single-object) produced to a fresh topic first, then `lakewire run --role sink` (a
    /// local-filesystem root in a temporary folder) timed from its start until every record
    /// is in a landed Parquet file; the files are checked (exactly N rows, every offset once).
    /// Baseline in the same run: a gateway decoding the same records (Avro → JSON).
    Sink {
        /// Kafka bootstrap brokers.
        #[arg(long, env = "WSLOAD_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The `lakewire` binary (release).
        #[arg(long)]
        spawn_gateway: PathBuf,
        /// Records to produce; each partition's share must be a multiple of --roll-rows.
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        /// Partitions of the topic (record i goes to partition i % partitions).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// `sink.compression`.
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "snappy"])]
        compression: String,
        /// `sink.roll_rows`: rows per file.
        #[arg(long, default_value_t = 100_000)]
        roll_rows: u64,
        /// Seconds each server may take.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Skip the baseline (the gateway's decode path on the same records).
        #[arg(long)]
        no_baseline: bool,
        /// The broker's pid, for its CPU (optional; bin/wsload passes it).
        #[arg(long)]
        broker_pid: Option<u32>,
        /// A librdkafka property for both servers' consumers, `key=value` (repeatable).
        #[arg(long = "kafka-property", value_parser = key_value)]
        kafka_properties: Vec<(String, String)>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Kafka bootstrap brokers.
    #[arg(long, env = "WSLOAD_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Start this `lakewire` binary with a generated configuration on a free port, serving a
    /// fresh topic; it is stopped at the end.
    #[arg(long, conflicts_with = "gateway")]
    spawn_gateway: Option<PathBuf>,
    /// Also start this Centrifugo v6 binary (needs --spawn-gateway) with a generated
    /// configuration: its Kafka consumer reads a sibling topic (`<topic>-centrifugo`) that gets
    /// the same records, with a `centrifugo-channels` header; every point runs against both
    /// servers, one after the other, and the ratios are printed.
    #[arg(long, requires = "spawn_gateway")]
    centrifugo: Option<PathBuf>,
    /// A librdkafka property for a spawned gateway's consumers, `key=value` (repeatable).
    #[arg(long = "gateway-kafka-property", value_parser = key_value)]
    gateway_kafka_properties: Vec<(String, String)>,
    /// Address of a running gateway (needs --topic, a `format = "json"` topic it serves).
    #[arg(long, requires = "topic")]
    gateway: Option<SocketAddr>,
    /// Topic to use with --gateway.
    #[arg(long)]
    topic: Option<String>,
    /// The gateway's pid, for its CPU and RSS (found by name `lakewire` when there is one).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// The broker's pid, for its CPU (optional).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Partitions of the topic the tool creates.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// `websocket.queue_size` of a spawned gateway.
    #[arg(long, default_value_t = 1024)]
    queue_size: usize,
    /// Approximate size of each record's value, bytes.
    #[arg(long, default_value_t = 200)]
    record_bytes: usize,
    /// WebSocket clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Share of the clients that subscribe and then never read (0..1).
    #[arg(long, default_value_t = 0.0)]
    stalled: f64,
    /// What the clients subscribe with.
    #[arg(long, value_enum, default_value_t = FilterMode::None)]
    filter: FilterMode,
    /// Seconds of load before the measurement window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds in the measurement window.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// A point is sustainable only if its p99 is at most this many milliseconds.
    #[arg(long, default_value_t = 250)]
    max_p99_ms: u64,
}

#[derive(Args, Clone)]
struct SweepArgs {
    /// First rate, records/s.
    #[arg(long, default_value_t = 250)]
    start_rate: u64,
    /// Each next rate is this times the last.
    #[arg(long, default_value_t = 1.25)]
    factor: f64,
    /// Stop here even if still sustainable.
    #[arg(long, default_value_t = 20_000)]
    max_rate: u64,
}

/// One server under test.
struct Target {
    protocol: Protocol,
    addr: SocketAddr,
    /// The topic (Lakewire) or channel (Centrifugo) clients subscribe to.
    subscribe_to: String,
    pid: Option<u32>,
    /// Index of its topic in the producer's sinks.
    sink: usize,
    _spawned: Option<Spawned>,
}

/// The servers, their topics and the producer of a whole invocation.
struct Setup {
    targets: Vec<Target>,
    broker: Option<u32>,
    control: Arc<produce::Control>,
    producer: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    sinks: Vec<produce::Sink>,
}

impl Setup {
    async fn new(c: &Common) -> anyhow::Result<Self> {
        if !(0.0..1.0).contains(&c.stalled) {
            bail!("--stalled must be in 0..1");
        }
        let mut targets = Vec::new();
        let mut sinks = Vec::new();
        match (&c.spawn_gateway, c.gateway) {
            (Some(bin), _) => {
                let topic = gateway::unique_topic();
                gateway::create_topic(&c.brokers, &topic, c.partitions).await?;
                let gw = Spawned::start(
                    bin,
                    &c.brokers,
                    &topic,
                    c.queue_size,
                    &c.gateway_kafka_properties,
                )
                .await?;
                eprintln!(
                    "wsload: started {} (pid {}) on {}, topic {topic}; log {}",
                    bin.display(),
                    gw.pid(),
                    gw.addr,
                    gw.log_path().display()
                );
                sinks.push(produce::Sink {
                    topic: topic.clone(),
                    centrifugo_channel: None,
                });
                targets.push(Target {
                    protocol: Protocol::Lakewire,
                    addr: gw.addr,
                    subscribe_to: topic.clone(),
                    pid: Some(gw.pid()),
                    sink: 0,
                    _spawned: Some(gw),
                });
                if let Some(cbin) = &c.centrifugo {
                    let ctopic = format!("{topic}-centrifugo");
                    gateway::create_topic(&c.brokers, &ctopic, c.partitions).await?;
                    let cf = Spawned::start_centrifugo(cbin, &c.brokers, &ctopic).await?;
                    eprintln!(
                        "wsload: started {} (pid {}) on {}, topic {ctopic}; log {}",
                        cbin.display(),
                        cf.pid(),
                        cf.addr,
                        cf.log_path().display()
                    );
                    sinks.push(produce::Sink {
                        topic: ctopic,
                        centrifugo_channel: Some(gateway::CENTRIFUGO_CHANNEL.into()),
                    });
                    targets.push(Target {
                        protocol: Protocol::Centrifugo,
                        addr: cf.addr,
                        subscribe_to: gateway::CENTRIFUGO_CHANNEL.into(),
                        pid: Some(cf.pid()),
                        sink: 1,
                        _spawned: Some(cf),
                    });
                }
            }
            (None, Some(addr)) => {
                let topic = c.topic.clone().context("--gateway needs --topic")?;
                let pid = c
                    .gateway_pid
                    .or_else(|| match procstat::find_by_name("lakewire")[..] {
                        [pid] => Some(pid),
                        _ => None,
                    });
                if pid.is_none() {
                    eprintln!(
                        "wsload: gateway pid unknown (give --gateway-pid): no CPU/RSS figures"
                    );
                }
                sinks.push(produce::Sink {
                    topic: topic.clone(),
                    centrifugo_channel: None,
                });
                targets.push(Target {
                    protocol: Protocol::Lakewire,
                    addr,
                    subscribe_to: topic,
                    pid,
                    sink: 0,
                    _spawned: None,
                });
            }
            (None, None) => bail!("give --spawn-gateway PATH or --gateway ADDR --topic NAME"),
        }
        let control = Arc::new(produce::Control::default());
        let producer = produce::start(&c.brokers, sinks.clone(), c.record_bytes, control.clone())?;
        Ok(Self {
            targets,
            broker: c.broker_pid,
            control,
            producer: Some(producer),
            sinks,
        })
    }

    fn point(&self, c: &Common, t: &Target, rate: u64, stalled: f64) -> Point {
        Point {
            protocol: t.protocol,
            addr: t.addr,
            topic: t.subscribe_to.clone(),
            clients: c.clients,
            stalled,
            filter: c.filter,
            rate,
            warmup: Duration::from_secs_f64(c.warmup),
            duration: Duration::from_secs_f64(c.duration),
            max_p99: Duration::from_millis(c.max_p99_ms),
        }
    }

    async fn run(&self, scenario: &str, t: &Target, p: &Point) -> anyhow::Result<Outcome> {
        self.control.target.store(t.sink, Ordering::SeqCst);
        self.control
            .tag_bucket
            .store(p.filter == FilterMode::Selective, Ordering::SeqCst);
        let watched = Watched {
            gateway: t.pid,
            broker: self.broker,
        };
        let o = load::run(p, &self.control, watched).await?;
        println!("{}", load::table_row(&o));
        println!("{}", o.json(scenario));
        // Let the server notice the closed connections before the next point.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(o)
    }

    /// Steps the rate up until a point fails; returns every point and the best sustainable one.
    async fn sweep(
        &self,
        scenario: &str,
        c: &Common,
        s: &SweepArgs,
        t: &Target,
        stalled: f64,
    ) -> anyhow::Result<(Vec<Outcome>, Option<Outcome>)> {
        let mut all = Vec::new();
        let mut best: Option<Outcome> = None;
        let mut rate = s.start_rate.max(1);
        while rate <= s.max_rate {
            let mut o = self
                .run(scenario, t, &self.point(c, t, rate, stalled))
                .await?;
            if !o.sustainable {
                // The machine is shared: one retry before calling the rate unsustainable.
                all.push(o);
                o = self
                    .run(scenario, t, &self.point(c, t, rate, stalled))
                    .await?;
            }
            let ok = o.sustainable;
            if ok {
                best = Some(o.clone());
            }
            all.push(o);
            if !ok {
                break;
            }
            rate = ((rate as f64 * s.factor).round() as u64).max(rate + 1);
        }
        Ok((all, best))
    }

    /// A sweep per server; the JSON summary with the ratio of the maxima.
    async fn sweep_all(
        &self,
        scenario: &str,
        c: &Common,
        s: &SweepArgs,
        stalled: f64,
    ) -> anyhow::Result<Vec<Option<Outcome>>> {
        banner(c, stalled);
        let mut bests = Vec::new();
        for t in &self.targets {
            let (_, best) = self.sweep(scenario, c, s, t, stalled).await?;
            bests.push(best);
        }
        let mut summary = serde_json::json!({"wsload": "summary", "scenario": scenario});
        for (t, b) in self.targets.iter().zip(&bests) {
            summary[format!("{}_max_sustainable", t.protocol.name())] = summary_of(b);
        }
        if let [Some(a), Some(b)] = &bests[..] {
            summary["ratio_lakewire_to_centrifugo"] =
                ratio(a.deliveries_per_s(), b.deliveries_per_s()).into();
            println!(
                "{scenario}: max sustainable deliveries/s lakewire {:.0}, centrifugo {:.0}: ratio {:.2}",
                a.deliveries_per_s(),
                b.deliveries_per_s(),
                a.deliveries_per_s() / b.deliveries_per_s().max(1.0)
            );
        }
        println!("{summary}");
        Ok(bests)
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.producer.take() {
            match p.join() {
                Ok(r) => r?,
                Err(_) => bail!("the producer thread panicked"),
            }
        }
        Ok(())
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 100.0).round() / 100.0
    } else {
        f64::NAN
    }
}

fn banner(c: &Common, stalled: f64) {
    println!(
        "wsload: {} clients ({}% stalled, filter {:?}), {} B records; machine: {} cores shared by the load tool, the server and the Kafka broker; loadavg {}",
        c.clients,
        stalled * 100.0,
        c.filter,
        c.record_bytes,
        procstat::cores(),
        procstat::loadavg()
    );
    println!("{}", load::table_header());
}

fn summary_of(o: &Option<Outcome>) -> serde_json::Value {
    match o {
        Some(o) => serde_json::json!({
            "server": o.protocol.name(),
            "rate": o.rate,
            "deliveries_per_s": o.deliveries_per_s().round(),
            "per_fast_client_per_s": (o.per_fast_client() * 10.0).round() / 10.0,
            "p50_ms": o.p50_ms, "p99_ms": o.p99_ms,
            "gateway_cpu_pct": o.gateway_cpu_pct.map(|c| c.round()),
            "gateway_peak_rss_mib": o.gateway_peak_rss_kib.map(|k| (k as f64 / 1024.0).round()),
        }),
        None => serde_json::Value::Null,
    }
}

async fn main_local(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { common, rate } => {
            let setup = Setup::new(&common).await?;
            banner(&common, common.stalled);
            let mut outs = Vec::new();
            let mut r = Ok(());
            for t in &setup.targets {
                match setup
                    .run("run", t, &setup.point(&common, t, rate, common.stalled))
                    .await
                {
                    Ok(o) => outs.push(o),
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            if let [a, b] = &outs[..] {
                println!(
                    "{}",
                    serde_json::json!({"wsload": "summary", "scenario": "run",
                        "ratio_deliveries_lakewire_to_centrifugo": ratio(a.deliveries_per_s(), b.deliveries_per_s()),
                        "ratio_p99_lakewire_to_centrifugo": ratio(a.p99_ms, b.p99_ms),
                        "ratio_cpu_lakewire_to_centrifugo": ratio(a.gateway_cpu_pct.unwrap_or(0.0), b.gateway_cpu_pct.unwrap_or(0.0))})
                );
            }
            setup.finish()?;
            r
        }
        Command::Sweep { common, sweep } => {
            let setup = Setup::new(&common).await?;
            let r = setup
                .sweep_all("sweep", &common, &sweep, common.stalled)
                .await;
            setup.finish()?;
            r.map(|_| ())
        }
        Command::Selective { mut common, sweep } => {
            common.filter = FilterMode::Selective;
            let setup = Setup::new(&common).await?;
            let r = setup
                .sweep_all("selective", &common, &sweep, common.stalled)
                .await;
            setup.finish()?;
            r.map(|_| ())
        }
        Command::Suite {
            common,
            sweep,
            stalled_share,
        } => {
            let setup = Setup::new(&common).await?;
            let r = suite(&setup, &common, &sweep, stalled_share).await;
            setup.finish()?;
            r
        }
        Command::Connections { common, settle } => {
            let setup = Setup::new(&common).await?;
            let r = connections(&setup, &common, Duration::from_secs_f64(settle)).await;
            setup.finish()?;
            r
        }
        Command::KafkaLatency {
            brokers,
            rate,
            duration,
            kafka_properties,
        } => kafka_latency(&brokers, rate, duration, &kafka_properties).await,
        Command::Sink {
            brokers,
            spawn_gateway,
            records,
            partitions,
            compression,
            roll_rows,
            timeout,
            no_baseline,
            broker_pid,
            kafka_properties,
        } => {
            lakewire_wsload::sinkbench::run(&lakewire_wsload::sinkbench::Scenario {
                brokers,
                bin: spawn_gateway,
                records,
                partitions,
                compression,
                roll_rows,
                timeout: Duration::from_secs(timeout),
                baseline: !no_baseline,
                broker_pid,
                kafka_properties,
            })
            .await
        }
        Command::Decode { common, records } => {
            let setup = Setup::new(&common).await?;
            let r = decode(&setup, &common, records).await;
            setup.finish()?;
            r
        }
    }
}

async fn kafka_latency(
    brokers: &str,
    rate: u64,
    duration: f64,
    props: &[(String, String)],
) -> anyhow::Result<()> {
    let topic = gateway::unique_topic();
    gateway::create_topic(brokers, &topic, 1).await?;
    let control = Arc::new(produce::Control::default());
    let sink = produce::Sink {
        topic: topic.clone(),
        centrifugo_channel: None,
    };
    let producer = produce::start(brokers, vec![sink], 200, control.clone())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumers = {
        let (brokers, topic, props) = (brokers.to_string(), topic.clone(), props.to_vec());
        let (stop, ready) = (stop.clone(), ready.clone());
        std::thread::spawn(move || {
            lakewire_wsload::kafkalat::measure(&brokers, &topic, 1, &props, &stop, &ready)
        })
    };
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let both consumers settle on the partition's end before producing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    control.open_window();
    control.rate.store(rate, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    control.rate.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    control.stop.store(true, Ordering::SeqCst);
    let legs = consumers
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    match producer.join() {
        Ok(r) => r?,
        Err(_) => bail!("the producer thread panicked"),
    }
    println!(
        "== kafka latency: {rate} records/s for {duration} s, no server; loadavg {}",
        procstat::loadavg()
    );
    println!(
        "{:>42} {:>8} {:>7} {:>7} {:>7} {:>8}",
        "consumer", "records", "p50ms", "p90ms", "p99ms", "maxms"
    );
    for l in &legs {
        println!(
            "{:>42} {:>8} {:>7.1} {:>7.1} {:>7.1} {:>8.1}",
            l.name, l.records, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
        println!(
            "{}",
            serde_json::json!({"wsload": "kafka_latency", "consumer": l.name, "rate": rate,
                "records": l.records, "latency_ms": {"p50": l.p50_ms, "p90": l.p90_ms,
                "p99": l.p99_ms, "max": l.max_ms}, "loadavg": procstat::loadavg()})
        );
    }
    Ok(())
}

async fn connections(setup: &Setup, c: &Common, settle: Duration) -> anyhow::Result<()> {
    println!(
        "== connections: {} idle subscribed connections per server; loadavg {}",
        c.clients,
        procstat::loadavg()
    );
    println!("{}", IdleOutcome::table_header());
    let mut outs = Vec::new();
    for t in &setup.targets {
        let pid = t
            .pid
            .context("the server's pid is unknown (--gateway-pid)")?;
        let o = load::idle(t.protocol, t.addr, &t.subscribe_to, c.clients, pid, settle).await?;
        println!("{}", o.table_row());
        println!("{}", o.json());
        outs.push(o);
        // Let the server close them before the next one is measured.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if let [a, b] = &outs[..] {
        println!(
            "{}",
            serde_json::json!({"wsload": "summary", "scenario": "connections",
                "lakewire_kib_per_connection": (a.per_connection_kib() * 10.0).round() / 10.0,
                "centrifugo_kib_per_connection": (b.per_connection_kib() * 10.0).round() / 10.0,
                "ratio_lakewire_to_centrifugo": ratio(a.per_connection_kib(), b.per_connection_kib())})
        );
    }
    Ok(())
}

/// The Prometheus counter of records a server has read from Kafka.
fn read_counter(p: Protocol) -> &'static str {
    match p {
        Protocol::Lakewire => "lakewire_kafka_records_total",
        Protocol::Centrifugo => "centrifugo_consumers_messages_processed_total",
    }
}

async fn decode(setup: &Setup, c: &Common, records: u64) -> anyhow::Result<()> {
    println!(
        "== decode: {records} records of {} B, no clients; records/s per core of the server's CPU; loadavg {}",
        c.record_bytes,
        procstat::loadavg()
    );
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>12} {:>14}",
        "server", "records", "wall s", "CPU s", "records/s", "records/s/core"
    );
    let mut per_core = Vec::new();
    for t in &setup.targets {
        let pid = t
            .pid
            .context("the server's pid is unknown (--gateway-pid)")?;
        let counter = read_counter(t.protocol);
        let read = || async {
            let (status, body) = gateway::http_get(t.addr, "/metrics").await?;
            if status != 200 {
                bail!("GET /metrics: {status}");
            }
            Ok(gateway::metric_sum(&body, counter))
        };
        let before = read().await?;
        let ticks0 = procstat::cpu_ticks(pid)?;
        let t0 = std::time::Instant::now();
        let sink = setup.sinks[t.sink].clone();
        let brokers = c.brokers.clone();
        let bytes = c.record_bytes;
        let producing = std::thread::spawn(move || produce::burst(&brokers, &sink, records, bytes));
        let deadline = t0 + Duration::from_secs(300);
        let mut done = before;
        while done - before < records as f64 {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} read {} of {records} records in 300 s",
                    t.protocol.name(),
                    done - before
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            done = read().await?;
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (procstat::cpu_ticks(pid)? - ticks0) as f64 / procstat::TICKS_PER_SEC;
        match producing.join() {
            Ok(r) => r?,
            Err(_) => bail!("the producer thread panicked"),
        }
        let rate_core = records as f64 / cpu.max(0.01);
        println!(
            "{:>10} {:>9} {:>8.2} {:>8.2} {:>12.0} {:>14.0}",
            t.protocol.name(),
            records,
            wall,
            cpu,
            records as f64 / wall,
            rate_core
        );
        println!(
            "{}",
            serde_json::json!({"wsload": "decode", "server": t.protocol.name(), "records": records,
                "record_bytes": c.record_bytes, "wall_s": (wall * 100.0).round() / 100.0,
                "cpu_s": (cpu * 100.0).round() / 100.0, "records_per_s": (records as f64 / wall).round(),
                "records_per_s_per_core": rate_core.round(), "loadavg": procstat::loadavg()})
        );
        per_core.push(rate_core);
    }
    if let [a, b] = &per_core[..] {
        println!(
            "{}",
            serde_json::json!({"wsload": "summary", "scenario": "decode",
                "ratio_lakewire_to_centrifugo": ratio(*a, *b)})
        );
    }
    Ok(())
}

async fn suite(setup: &Setup, c: &Common, s: &SweepArgs, stalled_share: f64) -> anyhow::Result<()> {
    println!(
        "== (a) fan-out: {} clients, no stalled clients, rate stepped up",
        c.clients
    );
    let fanout = setup.sweep_all("fanout", c, s, 0.0).await?;
    let Some(Some(best)) = fanout.first() else {
        bail!(
            "no sustainable fan-out rate from {} records/s",
            s.start_rate
        );
    };
    // Each server at its own maximum (stalled) and at half of it (latency); a server with no
    // sustainable point is measured at lakewire's.
    let own = |i: usize| fanout[i].as_ref().map_or(best.rate, |o| o.rate);
    println!(
        "== (b) stalled: {:.0}% of the clients stalled, each server at its fan-out maximum",
        stalled_share * 100.0
    );
    banner(c, stalled_share);
    let mut stalled = Vec::new();
    for (i, t) in setup.targets.iter().enumerate() {
        stalled.push(
            setup
                .run("stalled", t, &setup.point(c, t, own(i), stalled_share))
                .await?,
        );
    }
    println!("== (c) latency: each server at half its fan-out maximum");
    banner(c, 0.0);
    let mut latency = Vec::new();
    for (i, t) in setup.targets.iter().enumerate() {
        let half = (own(i) / 2).max(1);
        latency.push(
            setup
                .run("latency", t, &setup.point(c, t, half, 0.0))
                .await?,
        );
    }
    let change = |fan: &Option<Outcome>, st: &Outcome| {
        fan.as_ref().filter(|f| f.rate == st.rate).map(|f| {
            ((st.per_fast_client() - f.per_fast_client()) / f.per_fast_client() * 1000.0).round()
                / 10.0
        })
    };
    let mut summary = serde_json::json!({
        "wsload": "summary",
        "scenario": "suite",
        "clients": c.clients,
        "cores": procstat::cores(),
        "loadavg": procstat::loadavg(),
        "shared_machine": "load tool, servers and Kafka broker all run on this machine",
    });
    for (i, t) in setup.targets.iter().enumerate() {
        let n = t.protocol.name();
        summary[n] = serde_json::json!({
            "fanout_max": summary_of(&fanout[i]),
            "stalled_at_fanout_max": summary_of(&Some(stalled[i].clone())),
            "fast_client_throughput_change_pct": change(&fanout[i], &stalled[i]),
            "latency_at_half": summary_of(&Some(latency[i].clone())),
        });
    }
    if let ([Some(fa), fb], [sa, sb], [la, lb]) = (&fanout[..], &stalled[..], &latency[..]) {
        summary["ratios_lakewire_to_centrifugo"] = serde_json::json!({
            "fanout_max_deliveries": fb.as_ref().map(|fb| ratio(fa.deliveries_per_s(), fb.deliveries_per_s())),
            "stalled_fast_deliveries": ratio(sa.deliveries_per_s(), sb.deliveries_per_s()),
            "latency_p99_at_own_half": ratio(la.p99_ms, lb.p99_ms),
            "latency_cpu": ratio(la.gateway_cpu_pct.unwrap_or(0.0), lb.gateway_cpu_pct.unwrap_or(0.0)),
        });
    }
    println!("{summary}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, main_local(cli))
}
