//! The `lakewire` command: `run`, `check`, `demo`, `tail`, `produce-demo`, `health`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lakewire::config::Config;

/// Exit status for a configuration that cannot be used (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;
/// Exit status for bad command-line arguments (BSD `EX_USAGE`, as for a bad configuration).
const EXIT_USAGE: u8 = 64;
/// Exit status for a failure at run time.
const EXIT_FAILURE: u8 = 1;

/// Lakewire: Kafka-to-WebSocket streaming gateway for real-time data lakes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--role` of `lakewire run`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    All,
    Gateway,
    Sink,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        /// The TOML configuration file; `LAKEWIRE_*` variables override its keys.
        #[arg(long, short)]
        config: PathBuf,
        /// all: the WebSocket gateway, plus the sink when [sink] is configured; gateway: never
        /// the sink; sink: only the sink (serving /healthz, /readyz and /metrics).
        #[arg(long, value_enum, default_value = "all")]
        role: RoleArg,
    },
    /// Validate a configuration file and exit (status 64 when it is bad).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an in-process Kafka, a synthetic producer and the gateway on it.
    Demo {
        /// Address for the dashboard and WebSocket endpoint.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Write the demo's synthetic Avro records to a real Kafka (creating the topics) until
    /// stopped: Confluent framing with --registry, else single-object.
    ProduceDemo {
        /// Bootstrap brokers, comma-separated host:port.
        #[arg(long)]
        brokers: String,
        /// A Confluent-compatible schema registry to register the schemas in
        /// (subjects `<topic>-value`).
        #[arg(long)]
        registry: Option<String>,
        /// Put this before each topic name (trades, sensors, orders).
        #[arg(long, default_value = "")]
        topic_prefix: String,
    },
    /// Exit 0 if the URL answers 2xx within the timeout, 1 otherwise (the container health
    /// check: no curl needed in the image).
    Health {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// How long the whole request may take.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// For https:// URLs: accept any certificate (a self-signed listener probed locally).
        #[arg(long)]
        insecure: bool,
    },
    /// Print a topic's records as they arrive: one JSON line each (or a table), resuming by
    /// offsets when the connection drops.
    Tail {
        /// The gateway: ws://host:port (the /ws path is added) or a full WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080")]
        url: String,
        /// The topic.
        topic: String,
        /// A CEL filter, e.g. "value.price > 100.0".
        #[arg(long)]
        filter: Option<String>,
        /// Only these fields, comma-separated dotted paths (value.symbol,value.price).
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// latest | earliest | PARTITION:OFFSET[,...] | ms since the epoch | RFC 3339 UTC time |
        /// -N(s|m|h|d) ago.
        #[arg(long, default_value = "latest")]
        from: String,
        /// A JWT, sent as `Authorization: Bearer`.
        #[arg(long)]
        token: Option<String>,
        /// An aligned table instead of JSON lines.
        #[arg(long)]
        table: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let env: Vec<(String, String)> = std::env::vars().collect();
    match cli.command {
        Command::Check { config } => match load_and_check(&config, &env) {
            Ok(built) => {
                let c = built.config();
                println!(
                    "{}: OK ({} topic(s), listening on {})",
                    config.display(),
                    c.topics.len(),
                    c.websocket.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Run { config, role } => {
            let built = match load_and_check(&config, &env) {
                Ok(b) => b,
                Err(e) => return config_error(&e),
            };
            let role = match role {
                RoleArg::All => lakewire::app::Role::All,
                RoleArg::Gateway => lakewire::app::Role::Gateway,
                RoleArg::Sink => lakewire::app::Role::Sink,
            };
            if role == lakewire::app::Role::Sink && built.config().sink.is_none() {
                eprintln!("lakewire: --role sink: the configuration has no [sink] section");
                return ExitCode::from(EXIT_CONFIG);
            }
            runtime_then(|| async move {
                let stop = lakewire::app::shutdown_signal();
                let running = lakewire::app::start_built(built, role).await?;
                stop.await;
                running.stop().await;
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::Tail {
            url,
            topic,
            filter,
            fields,
            from,
            token,
            table,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let from = match lakewire::tail::parse_from(&from, now) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("lakewire tail: --from {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let args = lakewire::tail::TailArgs {
                url,
                topic,
                filter,
                fields,
                from,
                token,
                table,
                colour: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            };
            runtime_then(|| async move {
                lakewire::tail::run(args, lakewire::app::shutdown_signal()).await?;
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::ProduceDemo {
            brokers,
            registry,
            topic_prefix,
        } => runtime_then(|| async move {
            lakewire::demo::produce_to(
                &brokers,
                registry.as_deref(),
                &topic_prefix,
                lakewire::app::shutdown_signal(),
            )
            .await?;
            Ok::<_, anyhow::Error>(())
        }),
        Command::Health {
            url,
            timeout_ms,
            insecure,
        } => runtime_then(|| async move {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_millis(timeout_ms))
                .danger_accept_invalid_certs(insecure)
                .build()?;
            let status = client.get(&url).send().await?.status();
            if !status.is_success() {
                anyhow::bail!("{url} answered {status}");
            }
            Ok::<_, anyhow::Error>(())
        }),
        Command::Demo { listen } => runtime_then(|| async move {
            let stop = lakewire::app::shutdown_signal();
            lakewire::demo::run(listen, &env, stop).await?;
            Ok::<_, anyhow::Error>(())
        }),
    }
}

/// Loads the file and builds what it names, dry ([`lakewire::app::build`]): a schema, key or
/// certificate file that cannot be used is a configuration error too.
fn load_and_check(
    path: &std::path::Path,
    env: &[(String, String)],
) -> Result<lakewire::app::Built, String> {
    let config = Config::load(path, env).map_err(|e| e.to_string())?;
    lakewire::app::build(config).map_err(|e| e.to_string())
}

fn config_error(e: &str) -> ExitCode {
    eprintln!("lakewire: bad configuration:\n{e}");
    ExitCode::from(EXIT_CONFIG)
}

fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lakewire: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lakewire: {e:#}");
            let config_problem = e
                .downcast_ref::<lakewire::demo::DemoError>()
                .is_some_and(|d| matches!(d, lakewire::demo::DemoError::Config(_)));
            ExitCode::from(if config_problem {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            })
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG, not a LAKEWIRE_ variable: those are all configuration keys.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
