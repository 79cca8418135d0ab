//! What the gateway's tests share: a gateway started in this process on a configuration and
//! ready (its topic's live consumer assigned), and a `lakewire demo` child process. Each test
//! binary uses some of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
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

/// A `lakewire demo` child, killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start() -> anyhow::Result<Gateway> {
    start_with(&[])
}

pub fn start_with(env: &[(&str, &str)]) -> anyhow::Result<Gateway> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakewire"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut addr = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.trim().strip_prefix("WebSocket:") {
            let rest = rest.trim();
            addr = rest
                .strip_prefix("ws://")
                .or_else(|| rest.strip_prefix("wss://"))
                .and_then(|a| a.strip_suffix("/ws"))
                .map(str::to_string);
            break;
        }
    }
    // Keep reading, so the demo's later lines never meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let addr = addr.ok_or_else(|| anyhow::anyhow!("the demo did not print its address"))?;
    Ok(Gateway { child, addr })
}
