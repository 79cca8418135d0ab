//! What the in-process gateway tests share: a gateway started on a configuration and ready,
//! its topic's live consumer assigned.

use std::time::Duration;

use lakewire::config::Config;

/// Starts the gateway on `toml` and waits (10 s at most) until `topic`'s live consumer is
/// assigned, so that records produced from now on reach `latest` subscribers.
pub async fn start_ready(toml: &str, topic: &str) -> anyhow::Result<lakewire::app::Running> {
    let running = lakewire::app::start(Config::from_toml_and_env(toml, &[], "test")?).await?;
    let hub = running
        .services
        .hub
        .topic(topic)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no topic {topic}"))?;
    anyhow::ensure!(
        hub.wait_assigned(Duration::from_secs(10)).await.is_some(),
        "the live consumer was not assigned"
    );
    Ok(running)
}
