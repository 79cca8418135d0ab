//! The gateway under load: one this tool starts (`--spawn-gateway`) with a generated
//! configuration on a free port, or one already running; and the topic it serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("creating topic {topic} on {brokers}"))?;
    for r in results {
        r.map_err(|(t, e)| anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// A topic name no earlier run used.
pub fn unique_topic() -> String {
    format!("wsload-{}-{}", std::process::id(), crate::now_us())
}

/// A free TCP port on 127.0.0.1 (bound and released; the gateway binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A `[kafka.properties]` table of librdkafka properties (nothing when there are none).
pub fn kafka_properties_toml(kafka_properties: &[(String, String)]) -> String {
    let mut props = String::new();
    if !kafka_properties.is_empty() {
        props.push_str("\n[kafka.properties]\n");
        for (k, v) in kafka_properties {
            props.push_str(&format!("{k:?} = {v:?}\n"));
        }
    }
    props
}

/// The configuration the tool gives a gateway it starts.
pub fn config_toml(brokers: &str, topic: &str, port: u16, queue_size: usize) -> String {
    config_toml_with(brokers, topic, port, queue_size, &[])
}

/// [`config_toml`] with librdkafka properties for the gateway's consumers (`[kafka.properties]`).
pub fn config_toml_with(
    brokers: &str,
    topic: &str,
    port: u16,
    queue_size: usize,
    kafka_properties: &[(String, String)],
) -> String {
    let props = kafka_properties_toml(kafka_properties);
    // Stalled clients never answer pings: the idle timeout is raised so that they stay
    // connected (and stalled) for the whole run instead of being closed after 60 s. Every
    // load client connects from 127.0.0.1, so the per-IP cap (1,000 by default) is raised
    // for scenarios with 10,000 clients, and so is their share of HTTP places while they
    // upgrade (a quarter of max_http_connections by default).
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[websocket]\nlisten = \"127.0.0.1:{port}\"\n\
         queue_size = {queue_size}\nping_interval_ms = 20000\nidle_timeout_ms = 3600000\n\
         max_connections_per_ip = 100000\nmax_http_connections_per_ip = 10000\n\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"json\"\n{props}"
    )
}

/// The channel the load's records are published to in Centrifugo.
pub const CENTRIFUGO_CHANNEL: &str = "wsload";

/// Centrifugo v6's configuration for the load: one Kafka consumer in publication data mode,
/// insecure client connections (no JWT: the load measures delivery, not auth), the same
/// per-connection queue bound as the gateway's default (`queue_max_size` 1 MiB is also
/// Centrifugo's default), pings every hour so that stalled clients stay connected for the run.
///
/// With `deflate`, its WebSocket transport negotiates permessage-deflate and compresses every
/// message (see [`centrifugo_compression`]).
pub fn centrifugo_config(
    brokers: &str,
    topic: &str,
    port: u16,
    deflate: bool,
) -> serde_json::Value {
    let mut c = serde_json::json!({
        "log": {"level": "warn"},
        "http_server": {"address": "127.0.0.1", "port": port},
        "health": {"enabled": true},
        "prometheus": {"enabled": true},
        "client": {
            "insecure": true,
            "allowed_origins": ["*"],
            "ping_interval": "3600s",
            "pong_timeout": "1800s",
            "queue_max_size": 1_048_576
        },
        "channel": {"without_namespace": {"allow_tags_filter": true}},
        "consumers": [{
            "name": "wsload",
            "enabled": true,
            "type": "kafka",
            "kafka": {
                "brokers": brokers.split(',').collect::<Vec<_>>(),
                "topics": [topic],
                "consumer_group": format!("wsload-{topic}"),
                "publication_data_mode": {"enabled": true}
            }
        }]
    });
    if deflate {
        c["websocket"] = centrifugo_compression();
    }
    c
}

/// Centrifugo v6's `websocket` section with per-message compression on. The keys, from
/// centrifugo v6.9.1 `internal/configtypes/types.go` (`type WebSocket struct`, tags and docs
/// shortened):
///
/// ```go
/// Compression        bool `mapstructure:"compression" ... doc:"Enables permessage-deflate WebSocket compression. Adds CPU overhead."`
/// CompressionMinSize int  `mapstructure:"compression_min_size" ... doc:"Minimum message size in bytes before compression is applied. Zero compresses all messages when compression is enabled."`
/// CompressionLevel   int  `mapstructure:"compression_level" ... default:"1" ... doc:"Compression level for permessage-deflate (1=fastest, 9=best compression). Default <<1>>."`
/// ```
///
/// `compression_min_size` 0 compresses every message; level 1 is its default. Its upgrader
/// (centrifuge `internal/websocket/server.go`, a gorilla/websocket fork) supports only "no
/// context takeover" and answers the offer with
/// `permessage-deflate; server_no_context_takeover; client_no_context_takeover`.
pub fn centrifugo_compression() -> serde_json::Value {
    serde_json::json!({"compression": true, "compression_min_size": 0, "compression_level": 1})
}

/// A gateway process this tool started; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
    stopped: bool,
}

impl Spawned {
    /// Starts `bin run --config <generated>` and waits until `/readyz` answers 200.
    pub async fn start(
        bin: &Path,
        brokers: &str,
        topic: &str,
        queue_size: usize,
        kafka_properties: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, &["run"], |port, _| {
            config_toml_with(brokers, topic, port, queue_size, kafka_properties)
        })
        .await
    }

    /// Starts `bin <args> --config <dir>/lakewire.toml`, the configuration made by `config`
    /// from a free port and the process's own folder (removed when it stops; e.g. for a sink's
    /// root), and waits until `/readyz` answers 200.
    pub async fn start_with(
        bin: &Path,
        args: &[&str],
        config: impl FnOnce(u16, &Path) -> String,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = Self::make_dir(port)?;
        let path = dir.join("lakewire.toml");
        std::fs::write(&path, config(port, &dir))?;
        let mut cmd = Command::new(bin);
        cmd.args(args).arg("--config").arg(&path).env(
            "RUST_LOG",
            std::env::var("WSLOAD_GATEWAY_LOG").unwrap_or("warn".into()),
        );
        Self::spawn(cmd, port, dir, "/readyz").await
    }

    /// Starts Centrifugo (`bin`, v6) with a generated configuration: its Kafka consumer reads
    /// `topic` in publication data mode (each record's value is published as it is to the
    /// channels named by its `centrifugo-channels` header), client connections without auth
    /// (`client.insecure`), tags filters allowed; waits until `/health` answers 200 and the
    /// consumer has had time to join its group.
    pub async fn start_centrifugo(
        bin: &Path,
        brokers: &str,
        topic: &str,
        deflate: bool,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = Self::make_dir(port)?;
        let config = dir.join("centrifugo.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&centrifugo_config(brokers, topic, port, deflate))?,
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config);
        let gw = Self::spawn(cmd, port, dir, "/health").await?;
        // Its consumer joins a fresh consumer group after start-up (franz-go: a few seconds);
        // records produced before that are read from the start of the fresh topic anyway, but
        // the first point's latency would include the join.
        tokio::time::sleep(Duration::from_secs(6)).await;
        Ok(gw)
    }

    fn make_dir(port: u16) -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("wsload-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Runs `cmd` (output to `<dir>/gateway.log`) and waits until `GET ready` answers 200.
    async fn spawn(mut cmd: Command, port: u16, dir: PathBuf, ready: &str) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let bin = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let mut gw = Self {
            child,
            addr,
            dir,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gw.child.try_wait()? {
                bail!(
                    "the gateway exited at start-up ({status}); its log: {}",
                    gw.log_path().display()
                );
            }
            if matches!(http_status(addr, ready).await, Ok(200)) {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway was not ready within 30 s; its log: {}",
                    gw.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its folder (configuration, log; removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Where its output goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    /// Stops it: SIGTERM, and SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the gateway did not stop within 10 s of SIGTERM; killed it")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("wsload: {e:#}");
        }
    }
}

/// `GET path` over a fresh connection; the HTTP status.
pub async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    Ok(http_get(addr, path).await?.0)
}

/// The sum of the values of the Prometheus samples named `name` (any labels) in the text
/// exposition format.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path` over a fresh connection; the HTTP status and the body (as text; a chunked body
/// keeps its chunk-size lines, which metric parsing skips).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response from {addr}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_labels_and_only_that_metric() {
        let text = "# TYPE x counter\nlakewire_kafka_records_total{topic=\"a\"} 3\n\
                    lakewire_kafka_records_total{topic=\"b\"} 4\n\
                    lakewire_kafka_records_total_other 100\nplain 2.5\n";
        assert_eq!(metric_sum(text, "lakewire_kafka_records_total"), 7.0);
        assert_eq!(metric_sum(text, "plain"), 2.5);
        assert_eq!(metric_sum(text, "absent"), 0.0);
    }

    #[test]
    fn centrifugo_reads_the_topic_in_publication_data_mode() {
        let c = centrifugo_config("127.0.0.1:1,127.0.0.1:2", "t", 9000, false);
        let k = &c["consumers"][0]["kafka"];
        assert_eq!(k["topics"], serde_json::json!(["t"]));
        assert_eq!(
            k["brokers"],
            serde_json::json!(["127.0.0.1:1", "127.0.0.1:2"])
        );
        assert_eq!(k["publication_data_mode"]["enabled"], true);
        assert_eq!(c["http_server"]["port"], 9000);
        assert_eq!(c["client"]["insecure"], true);
        assert!(c.get("websocket").is_none());
        let c = centrifugo_config("127.0.0.1:1", "t", 9000, true);
        assert_eq!(c["websocket"]["compression"], true);
        assert_eq!(c["websocket"]["compression_min_size"], 0);
    }
}
