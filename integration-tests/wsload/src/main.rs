//! The `wsload` command; see the crate documentation and `integration-tests/bin/wsload`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use lakewire_wsload::gateway::{self, Spawned};
use lakewire_wsload::load::{self, FilterMode, Outcome, Point, Watched};
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
    /// The scenarios in one go: fan-out sweep, the same with --stalled-share of the clients
    /// stalled, and latency at half the fan-out maximum.
    Suite {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sweep: SweepArgs,
        /// Share of clients that stall in the stalled scenario.
        #[arg(long, default_value_t = 0.1)]
        stalled_share: f64,
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

/// The gateway, the topic and the producer of a whole invocation.
struct Setup {
    _spawned: Option<Spawned>,
    addr: SocketAddr,
    topic: String,
    watched: Watched,
    control: Arc<produce::Control>,
    producer: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Setup {
    async fn new(c: &Common) -> anyhow::Result<Self> {
        if !(0.0..1.0).contains(&c.stalled) {
            bail!("--stalled must be in 0..1");
        }
        let (spawned, addr, topic) = match (&c.spawn_gateway, c.gateway) {
            (Some(bin), _) => {
                let topic = gateway::unique_topic();
                gateway::create_topic(&c.brokers, &topic, c.partitions).await?;
                let gw = Spawned::start(bin, &c.brokers, &topic, c.queue_size).await?;
                eprintln!(
                    "wsload: started {} (pid {}) on {}, topic {topic}; log {}",
                    bin.display(),
                    gw.pid(),
                    gw.addr,
                    gw.log_path().display()
                );
                let addr = gw.addr;
                (Some(gw), addr, topic)
            }
            (None, Some(addr)) => {
                let topic = c.topic.clone().context("--gateway needs --topic")?;
                (None, addr, topic)
            }
            (None, None) => bail!("give --spawn-gateway PATH or --gateway ADDR --topic NAME"),
        };
        let gateway_pid = c
            .gateway_pid
            .or(spawned.as_ref().map(Spawned::pid))
            .or_else(|| match procstat::find_by_name("lakewire")[..] {
                [pid] => Some(pid),
                _ => None,
            });
        if gateway_pid.is_none() {
            eprintln!("wsload: gateway pid unknown (give --gateway-pid): no CPU/RSS figures");
        }
        let control = Arc::new(produce::Control::default());
        let producer = produce::start(&c.brokers, &topic, c.record_bytes, control.clone())?;
        Ok(Self {
            _spawned: spawned,
            addr,
            topic,
            watched: Watched {
                gateway: gateway_pid,
                broker: c.broker_pid,
            },
            control,
            producer: Some(producer),
        })
    }

    fn point(&self, c: &Common, rate: u64, stalled: f64) -> Point {
        Point {
            addr: self.addr,
            topic: self.topic.clone(),
            clients: c.clients,
            stalled,
            filter: c.filter,
            rate,
            warmup: Duration::from_secs_f64(c.warmup),
            duration: Duration::from_secs_f64(c.duration),
            max_p99: Duration::from_millis(c.max_p99_ms),
        }
    }

    async fn run(&self, scenario: &str, p: &Point) -> anyhow::Result<Outcome> {
        let o = load::run(p, &self.control, self.watched).await?;
        println!("{}", load::table_row(&o));
        println!("{}", o.json(scenario));
        // Let the gateway notice the closed connections before the next point.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(o)
    }

    /// Steps the rate up until a point fails; returns every point and the best sustainable one.
    async fn sweep(
        &self,
        scenario: &str,
        c: &Common,
        s: &SweepArgs,
        stalled: f64,
    ) -> anyhow::Result<(Vec<Outcome>, Option<Outcome>)> {
        let mut all = Vec::new();
        let mut best: Option<Outcome> = None;
        let mut rate = s.start_rate.max(1);
        while rate <= s.max_rate {
            let mut o = self.run(scenario, &self.point(c, rate, stalled)).await?;
            if !o.sustainable {
                // The machine is shared: one retry before calling the rate unsustainable.
                all.push(o);
                o = self.run(scenario, &self.point(c, rate, stalled)).await?;
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

fn banner(c: &Common, stalled: f64) {
    println!(
        "wsload: {} clients ({}% stalled, filter {:?}), {} B records; machine: {} cores shared by the load tool, the gateway and the Kafka broker",
        c.clients,
        stalled * 100.0,
        c.filter,
        c.record_bytes,
        procstat::cores()
    );
    println!("{}", load::table_header());
}

fn summary_of(o: &Option<Outcome>) -> serde_json::Value {
    match o {
        Some(o) => serde_json::json!({
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
            let r = setup
                .run("run", &setup.point(&common, rate, common.stalled))
                .await;
            setup.finish()?;
            r.map(|_| ())
        }
        Command::Sweep { common, sweep } => {
            let setup = Setup::new(&common).await?;
            banner(&common, common.stalled);
            let r = setup.sweep("sweep", &common, &sweep, common.stalled).await;
            setup.finish()?;
            let (_, best) = r?;
            println!(
                "{}",
                serde_json::json!({"wsload": "summary", "scenario": "sweep", "max_sustainable": summary_of(&best)})
            );
            Ok(())
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
    }
}

async fn suite(setup: &Setup, c: &Common, s: &SweepArgs, stalled_share: f64) -> anyhow::Result<()> {
    println!(
        "== (a) fan-out: {} clients, no stalled clients, rate stepped up",
        c.clients
    );
    banner(c, 0.0);
    let (fanout, best) = setup.sweep("fanout", c, s, 0.0).await?;
    let Some(best) = best else {
        bail!(
            "no sustainable fan-out rate from {} records/s",
            s.start_rate
        );
    };
    println!(
        "== (b) stalled: {:.0}% of the clients stalled, same rates",
        stalled_share * 100.0
    );
    banner(c, stalled_share);
    let (stalled, stalled_best) = setup.sweep("stalled", c, s, stalled_share).await?;
    // The last (retried) point at the fan-out maximum's rate.
    let at_best = |v: &[Outcome]| v.iter().rev().find(|o| o.rate == best.rate).cloned();
    let stalled_at = at_best(&stalled);
    let fanout_at = at_best(&fanout);
    let half = (best.rate / 2).max(1);
    println!("== (c) latency at half the fan-out maximum: {half} records/s");
    banner(c, 0.0);
    let latency = setup.run("latency", &setup.point(c, half, 0.0)).await?;
    let change = match (&fanout_at, &stalled_at) {
        (Some(a), Some(b)) => Some(
            ((b.per_fast_client() - a.per_fast_client()) / a.per_fast_client() * 1000.0).round()
                / 10.0,
        ),
        _ => None,
    };
    println!(
        "{}",
        serde_json::json!({
            "wsload": "summary",
            "scenario": "suite",
            "clients": c.clients,
            "cores": procstat::cores(),
            "shared_machine": "load tool, gateway and Kafka broker all run on this machine",
            "fanout_max": summary_of(&Some(best)),
            "stalled_max": summary_of(&stalled_best),
            "stalled_at_fanout_max_rate": summary_of(&stalled_at),
            "fast_client_throughput_change_pct": change,
            "latency_at_half": summary_of(&Some(latency)),
        })
    );
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
