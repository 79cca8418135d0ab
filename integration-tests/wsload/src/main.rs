//! The `wsload` command; see the crate documentation and `integration-tests/bin/wsload`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lakewire_wsload::load::FilterMode;

mod scenarios;
mod setup;
mod summary;

use scenarios::{connections, decode, kafka_latency, suite};
use setup::Setup;
use summary::{banner, ratio};

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
    /// Bytes on the wire per record on a running gateway (e.g. `lakewire demo`, whose dashboard
    /// and `/ws` are on 127.0.0.1:8080): one client per topic (--topic, repeatable; without it
    /// every topic of `GET /api/topics`, all at once) subscribes from `latest` and reads for
    /// --seconds; prints records, WebSocket frame bytes after the `subscribed` reply, payload
    /// bytes (inflated) and both per record. Run once with --deflate and once without to
    /// compare.
    Wire {
        /// The gateway's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// A topic to subscribe to (repeatable); default: every topic the gateway lists.
        #[arg(long)]
        topic: Vec<String>,
        /// Seconds to read, per topic (the topics are read at the same time).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Offer permessage-deflate (as browsers do) and require it.
        #[arg(long)]
        deflate: bool,
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
        /// Hive partitions (hours, `dt`/`hr`) each Kafka partition's records interleave over,
        /// record by record; each partition's share must be a multiple of hours × roll-rows.
        #[arg(long, default_value_t = 1)]
        hours: u32,
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
    /// permessage-deflate (RFC 7692): every client offers it as browsers do
    /// (`permessage-deflate; client_max_window_bits`) and inflates what arrives compressed; a
    /// client whose server does not accept it fails the point. A spawned Centrifugo gets its
    /// compression enabled. Without it nothing is offered.
    #[arg(long)]
    deflate: bool,
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

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

async fn main_local(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { common, rate } => {
            let setup = Setup::new(&common).await?;
            banner(&common, common.stalled);
            let mut outs = Vec::new();
            let mut r = Ok(());
            // A server whose point fails (e.g. it refused --deflate) does not keep the next
            // one from being measured; the first failure is the command's.
            for t in &setup.targets {
                match setup
                    .run("run", t, &setup.point(&common, t, rate, common.stalled))
                    .await
                {
                    Ok(o) => outs.push(o),
                    Err(e) => {
                        eprintln!("wsload: {} point failed: {e:#}", t.protocol.name());
                        if r.is_ok() {
                            r = Err(e);
                        }
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
            hours,
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
                hours,
                timeout: Duration::from_secs(timeout),
                baseline: !no_baseline,
                broker_pid,
                kafka_properties,
            })
            .await
        }
        Command::Wire {
            url,
            topic,
            seconds,
            deflate,
        } => wire(&url, topic, seconds, deflate).await,
        Command::Decode { common, records } => {
            let setup = Setup::new(&common).await?;
            let r = decode(&setup, &common, records).await;
            setup.finish()?;
            r
        }
    }
}

async fn wire(url: &str, topics: Vec<String>, secs: f64, deflate: bool) -> anyhow::Result<()> {
    use lakewire_wsload::wire::{self, WireOutcome};
    let u = wire::parse_url(url)?;
    let addr = tokio::net::lookup_host(&u.authority)
        .await
        .with_context(|| format!("resolving {}", u.authority))?
        .next()
        .with_context(|| format!("{} resolves to no address", u.authority))?;
    let topics = if topics.is_empty() {
        wire::topics(addr).await?
    } else {
        topics
    };
    println!(
        "== wire: {url}, {secs} s, topics {}, permessage-deflate {}",
        topics.join(", "),
        if deflate {
            "offered (required)"
        } else {
            "not offered"
        }
    );
    let tasks: Vec<_> = topics
        .iter()
        .map(|t| {
            let (path, t) = (u.path.clone(), t.clone());
            tokio::task::spawn_local(
                async move { wire::measure(addr, &path, &t, secs, deflate).await },
            )
        })
        .collect();
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await??);
    }
    if let Some(d) = outs.iter().find_map(|o| o.deflate.as_ref()) {
        println!("accepted: {d}");
    }
    println!("{}", WireOutcome::table_header());
    for o in &outs {
        println!("{}", o.table_row());
    }
    for o in &outs {
        println!("{}", o.json());
    }
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
