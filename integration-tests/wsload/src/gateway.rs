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

/// The configuration the tool gives a gateway it starts.
pub fn config_toml(brokers: &str, topic: &str, port: u16, queue_size: usize) -> String {
    // Stalled clients never answer pings: the idle timeout is raised so that they stay
    // connected (and stalled) for the whole run instead of being closed after 60 s.
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[websocket]\nlisten = \"127.0.0.1:{port}\"\n\
         queue_size = {queue_size}\nping_interval_ms = 20000\nidle_timeout_ms = 3600000\n\n\
         [[topics]]\nname = \"{topic}\"\nformat = \"json\"\n"
    )
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
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let dir = std::env::temp_dir().join(format!("wsload-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("lakewire.toml");
        std::fs::write(&config, config_toml(brokers, topic, port, queue_size))?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("WSLOAD_GATEWAY_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
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
            if matches!(http_status(addr, "/readyz").await, Ok(200)) {
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
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response from {addr}"))
}
