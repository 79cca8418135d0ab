//! Fault tests on a real broker of their own (ports 29192/29193, its own run dir), so stopping it
//! disturbs no other test: the gateway reports not-ready during a broker outage, keeps its
//! WebSocket clients, and delivers what is produced after the broker is back, with no loss.
#![cfg(feature = "real-kafka")]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lakewire::config::Config;
use lakewire_integration_tests::{WsClient, config_toml, http_get, unique_topic, wait_ready};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

// Below the ephemeral port range (32768 and up), so no outgoing connection can hold it.
const PORT: &str = "29192";

/// The second broker; the owner takes it `down` when dropped, whatever the test's outcome.
struct Broker {
    run_dir: PathBuf,
    owner: bool,
}

impl Broker {
    fn script(&self, cmd: &str, pause: &str) -> anyhow::Result<()> {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/kafka"))
            .arg(cmd)
            .env("KAFKA_PORT", PORT)
            .env("KAFKA_CONTROLLER_PORT", "29193")
            .env("KAFKA_RUN_DIR", &self.run_dir)
            .env("KAFKA_RESTART_PAUSE", pause)
            .status()?;
        anyhow::ensure!(status.success(), "kafka {cmd} failed: {status}");
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.script("down", "0");
        }
    }
}

async fn produce(
    p: &FutureProducer,
    topic: &str,
    range: std::ops::Range<i64>,
) -> anyhow::Result<()> {
    for n in range {
        let payload = json!({"n": n}).to_string();
        p.send(
            FutureRecord::to(topic).key("k").payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_reported_and_streaming_resumes_without_loss() -> anyhow::Result<()> {
    let run_dir = std::env::temp_dir().join(unique_topic("lakewire-fault-broker"));
    let broker = Broker {
        run_dir,
        owner: true,
    };
    broker.script("up", "0")?;
    let brokers = format!("127.0.0.1:{PORT}");
    let topic = unique_topic("outage");
    let config = Config::from_toml_and_env(&config_toml(&brokers, &[&topic], ""), &[], "test")?;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create()?;
    // The topic exists once something is produced to it (auto-create).
    produce(&p, &topic, 0..1).await?;
    let gw = lakewire::app::start(config).await?;
    wait_ready(gw.addr, Duration::from_secs(30)).await?;
    let mut ws = WsClient::connect(gw.addr).await?;
    ws.subscribe(json!({"op":"subscribe","id":"s","topic":topic}))
        .await?;
    produce(&p, &topic, 1..11).await?;
    let (before, _) = ws.records("s", 10, Duration::from_secs(30)).await?;
    assert_eq!(before.len(), 10);

    // The outage: the broker is down for a few seconds.
    let restarting = std::thread::spawn({
        let run_dir = broker.run_dir.clone();
        move || {
            Broker {
                run_dir,
                owner: false,
            }
            .script("restart", "6")
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_not_ready = false;
    while Instant::now() < deadline {
        let (status, _) = http_get(gw.addr, "/readyz").await?;
        if status == 503 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_not_ready, "/readyz never reported the outage");
    restarting
        .join()
        .map_err(|_| anyhow::anyhow!("restart thread panicked"))??;
    wait_ready(gw.addr, Duration::from_secs(60)).await?;

    // The same connection, still open, gets what is produced after the outage: nothing lost.
    produce(&p, &topic, 11..31).await?;
    let (after, _) = ws.records("s", 20, Duration::from_secs(60)).await?;
    let ns: Vec<i64> = after
        .iter()
        .filter_map(|r| r["value"]["n"].as_i64())
        .collect();
    assert_eq!(ns, (11..31).collect::<Vec<_>>());
    gw.stop().await;
    drop(broker);
    Ok(())
}
