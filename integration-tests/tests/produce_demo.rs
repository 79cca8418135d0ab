//! `lakewire produce-demo`, the demo producer of docker-compose.yml, as a real process against
//! the real broker: with a schema registry it registers the demo schemas and writes the
//! Confluent framing, without one the single-object framing; either way a gateway configured as
//! in deploy/compose/lakewire.toml decodes every record it reads (no decode error).
#![cfg(feature = "real-kafka")]

use std::process::{Child, Stdio};
use std::time::Duration;

use lakewire_integration_tests::process::{GatewayProcess, lakewire_command};
use lakewire_integration_tests::registry::Registry;
use lakewire_integration_tests::{WsClient, brokers, http_get, unique_topic, wait_ready};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// The producer process; killed when dropped.
struct Producer(Child);

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_producer(prefix: &str, registry: Option<&str>) -> anyhow::Result<Producer> {
    let mut cmd = lakewire_command()?;
    cmd.args([
        "produce-demo",
        "--brokers",
        &brokers(),
        "--topic-prefix",
        prefix,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(url) = registry {
        cmd.args(["--registry", url]);
    }
    Ok(Producer(cmd.spawn()?))
}

/// The gateway configuration of the compose file for these topics, in `format`.
fn config(prefix: &str, format: &str, registry: Option<&str>) -> String {
    let mut s = format!(
        "schemas_dir = \"{}/../schemas\"\n\n[kafka]\nbrokers = \"{}\"\n\n[websocket]\nlisten = \"127.0.0.1:0\"\n",
        env!("CARGO_MANIFEST_DIR"),
        brokers()
    );
    if let Some(url) = registry {
        s.push_str(&format!("\n[schema_registry]\nurl = \"{url}\"\n"));
    }
    for t in ["trades", "sensors", "orders"] {
        s.push_str(&format!(
            "\n[[topics]]\nname = \"{prefix}{t}\"\nformat = \"{format}\"\n"
        ));
    }
    s
}

/// Reads `n` records of each demo topic from the start and checks what users see of them.
async fn check_gateway_reads_the_demo(prefix: &str, config: &str) -> anyhow::Result<()> {
    let gw = GatewayProcess::start(config, &[]).await?;
    if let Err(e) = wait_ready(gw.addr, T).await {
        anyhow::bail!(
            "gateway not ready (are the demo topics there?): {e}\n{}",
            gw.log()
        );
    }
    let mut ws = WsClient::connect(gw.addr).await?;
    for (t, partitions, field) in [
        ("trades", 3, "symbol"),
        ("sensors", 2, "site"),
        ("orders", 2, "customer"),
    ] {
        let topic = format!("{prefix}{t}");
        let sub = ws
            .subscribe(json!({"op":"subscribe","id":t,"topic":topic,"from":"earliest"}))
            .await?;
        assert_eq!(
            sub["partitions"].as_array().map(Vec::len),
            Some(partitions),
            "{topic}: created with the demo's partitions"
        );
        let (records, others) = ws.records(t, 3, T).await?;
        assert!(others.is_empty(), "{others:?}");
        for r in &records {
            assert!(r["value"].is_object(), "{topic}: not decoded: {r}");
            assert!(
                r["value"].get(field).is_some_and(|v| !v.is_null()),
                "{topic}: no {field}: {r}"
            );
        }
        ws.send(json!({"op":"unsubscribe","id":t})).await?;
        let reply = ws.next_reply(T).await?;
        assert_eq!(reply["type"], "unsubscribed", "{reply}");
    }
    let (_, metrics) = http_get(gw.addr, "/metrics").await?;
    assert!(
        !metrics.contains("lakewire_decode_errors_total{"),
        "records the gateway could not decode:\n{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_demo_with_a_registry_writes_confluent_avro_the_gateway_decodes()
-> anyhow::Result<()> {
    let real = Registry::start().await?;
    let registry = real.url.clone();
    let prefix = format!("{}-", unique_topic("demo"));
    let _producer = start_producer(&prefix, Some(&registry))?;
    check_gateway_reads_the_demo(&prefix, &config(&prefix, "confluent", Some(&registry))).await?;
    // The schemas are registered under the subjects the Confluent serializers use.
    let subjects = real.subjects().await?;
    for t in ["trades", "sensors", "orders"] {
        assert!(
            subjects.contains(&format!("{prefix}{t}-value")),
            "{t}: {subjects:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_demo_without_a_registry_writes_single_object_avro() -> anyhow::Result<()> {
    let prefix = format!("{}-", unique_topic("demo-so"));
    let _producer = start_producer(&prefix, None)?;
    check_gateway_reads_the_demo(&prefix, &config(&prefix, "single-object", None)).await
}
